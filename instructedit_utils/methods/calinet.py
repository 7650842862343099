"""CaliNet: calibration memory slots beside one block's FFN (Dong et al., 2022, *Calibrating Factual Knowledge in
Pretrained Language Models*, Sec. 3.2; Table 3's CaliNet column in InstructEdit).

CaliNet adds ``n`` key/value memory slots in parallel to a feed-forward network: the FFN's output ``FFN(x)`` becomes
``FFN(x) + act(x Kᵀ) V`` with ``K, V ∈ R^{n × d}``, trained on the facts to calibrate while the base model stays
frozen. Here, under Table 3's protocol (one edit, score, restore), the slots are trained on **one** edit: Adam on the
target's NLL after the prompt (teacher forced). ``V`` starts at zero, so untrained slots add exactly nothing; ``K``
starts as a seeded random matrix (scale ``1/√d``). The slots act through a removable forward hook on the block's MLP
module; leaving :meth:`CaliNet.edited` removes it, and no weight of the model is ever written. In a stream of edits
(:meth:`CaliNet.stream`) every edit trains slots of its own beside the earlier ones, which stay.

Deviations from the paper, and why: the paper trains the slots on a batch of facts (calibration) and adds them to
the last FFN layers; Table 3 edits one fact at a time, so each edit gets fresh slots (``slots = 16``, enough for one
fact); the activation is GELU whatever the model's FFN uses; the default block is the highest one the hypernetwork
editors edit (SmolLM2: 29, GPT2-XL: 47), an upper FFN as in the paper.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..config.options import CaliNetConfig, make_config
from .registry import EditingMethod, EditStream, register
from .edit_loop import (OptimizedMethod, hooked, mlp_input_dim, optimize, request_batch,
                        target_loss)


@dataclass
class Slots:
    """Trained calibration memory: keys and values ``[slots, d]``."""

    keys: torch.Tensor
    values: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x @ self.keys.T) @ self.values


class CaliNet(OptimizedMethod):
    """CaliNet as an editing method (see the module docstring)."""

    def __init__(self, model: nn.Module, config: CaliNetConfig, name: str = "calinet", default_layers=()):
        super().__init__(model, config, name, default_layers, top=True)
        self.module = self.mlp(model)
        self.dim = mlp_input_dim(self.module)

    def init_slots(self, device, dtype, offset: int = 0) -> Slots:
        """Fresh slots: seeded random keys (seed ``config.seed + offset``: the ``offset``-th edit of a stream gets
        keys of its own), zero values."""
        gen = torch.Generator().manual_seed(self.config.seed + offset)
        keys = torch.randn(self.config.slots, self.dim, generator=gen) / math.sqrt(self.dim)
        return Slots(keys.to(device, dtype).requires_grad_(True),
                     torch.zeros(self.config.slots, self.dim, device=device, dtype=dtype, requires_grad=True))

    @contextlib.contextmanager
    def attached(self, slots: Slots) -> Iterator[None]:
        """The slots beside the FFN inside the block only."""
        def hook(module, inputs, output):
            return output + slots(inputs[0].to(slots.keys.dtype)).to(output.dtype)

        with hooked(self.module, hook):
            yield

    def train_slots(self, model: nn.Module, tokenizer, request, offset: int = 0) -> Slots:
        """Slots trained on ``request`` (on the model as it is, e.g. with a stream's earlier slots attached)."""
        weight = next(self.module.parameters())
        slots = self.init_slots(weight.device, weight.dtype, offset)
        runner = self.runner(model)
        eb = request_batch(runner, tokenizer, request)
        with self.attached(slots):
            optimize(lambda: target_loss(runner, eb), [slots.keys, slots.values], steps=self.config.steps,
                     lr=self.config.lr, request=request, method=self.name)
        return Slots(slots.keys.detach(), slots.values.detach())

    @contextlib.contextmanager
    def edited(self, model, tokenizer, request) -> Iterator[nn.Module]:
        with self.attached(self.train_slots(model, tokenizer, request)):
            yield model


    def stream(self, model: nn.Module, tokenizer) -> EditStream:
        """Sequential editing: every edit gets slots of its own, trained beside the earlier ones (:class:`SlotStream`)."""
        return SlotStream(self, model, tokenizer)


class SlotStream(EditStream):
    """CaliNet's slots accumulated as an :class:`~instructedit_utils.methods.registry.EditStream`: the ``t``-th edit
    trains ``slots`` new slots (keys seeded ``seed + t - 1``) with every earlier edit's slots attached and frozen;
    the memory then holds all of them (the FFN's output plus the sum over slots). No weight is written: leaving
    removes the hook."""

    def start(self) -> None:
        self.slots: list[Slots] = []

    def merged(self) -> Slots:
        return Slots(torch.cat([s.keys for s in self.slots]), torch.cat([s.values for s in self.slots]))

    def _add(self, request) -> None:
        new = self.method.train_slots(self.model, self.tokenizer, request, offset=len(self.slots))
        self.slots.append(new)
        self.attach(self.method.attached(self.merged()))


@register("calinet")
def _build_calinet(model, tokenizer, *, name: str = "calinet", default_layers=(), **options) -> EditingMethod:
    return CaliNet(model, make_config(CaliNetConfig, options, name), name, default_layers)
