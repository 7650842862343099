"""GRACE: a discrete key/value codebook adaptor at one block (Hartvigsen et al., 2023, *Aging with GRACE: Lifelong
Model Editing with Discrete Key-Value Adaptors*, Sec. 3; Table 3's GRACE column in InstructEdit).

The adaptor wraps one block's MLP. Its codebook holds entries ``(key, value, radius, label)``: a key is the MLP's
input at the last token of an edit prompt, the value a replacement for the MLP's output there, optimised so that
the model says the edit's target (the label). At every position of every input, the MLP input is compared with the
keys (Euclidean distance); if the nearest key is within its **deferral radius**, the MLP's output at that position is
replaced by the key's value, otherwise the model runs unchanged. Adding an edit (GRACE's codebook maintenance):

* no key within ``radius + eps_init`` of the new key → a new entry with radius ``eps_init``;
* the nearest key overlaps and has the **same label** → its radius **expands** to cover the new key;
* it overlaps with **another label** → both radii **split**: the old and the new entry get half their distance.

A value starts as the MLP's original output at the key (GRACE's "warm" start) and is trained with Adam on the NLL of
the target tokens after the prompt (teacher forced) for at most ``steps`` steps, stopping early once the loss is below
``stop_loss``. The codebook acts through a removable forward hook; no weight of the model is ever written.

Both protocols work: :meth:`Grace.edited` (Table 3: one edit, score, remove) and :meth:`Grace.stream` /
:meth:`Grace.sequence` (a sequence of edits kept together in one codebook, each added in order).

Defaults and why (measured on 12 CounterFact/ZsRE validation edits of SmolLM2 at block 27): ``eps_init = 0.5`` is a
tenth of a key's norm (4.4–5.2); rephrases of an edit prompt lie 0.8–2.1 from its key and unrelated prompts 1.4–6, so
the codebook covers the edited prompt and little else (Generalization equal to Base, Locality 100%). ``lr = 5``,
at most 12 steps and ``stop_loss = 0.2`` keep Reliability at 85% (20 steps at ``lr = 3``: 88%) for about 60% of the
time. Deviations, and why: the early stop (cost); the default block is the lowest one the hypernetwork editors edit
(SmolLM2: 27), not a tuned layer, as for FT-L; ``eps_init`` is in the units of this model's MLP inputs, so another
model needs its own (the ``gpu`` profile sets none: measure first). While a value is trained, positions before the
key are taken as unaffected by the new entry (they are computed once, see :meth:`Grace._loss`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

from ..config.options import GraceConfig, make_config
from .registry import EditingMethod, EditStream, register
from .edit_loop import OptimizedMethod, hooked, optimize, request_batch, target_loss
from ..models.forward import SplitForward
from ..models.losses import nll
from ..data.instructions import EditRequest


@dataclass
class Codebook:
    """GRACE's entries; ``values`` may hold a tensor that is being trained."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    radii: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance, index) of the nearest key for each row of ``x`` [N, d] (exact Euclidean distances)."""
        keys = torch.stack(self.keys).to(x.device, torch.float32)
        dist = torch.cdist(x.float(), keys, compute_mode="donot_use_mm_for_euclid_dist")
        return dist.min(-1)

    def replace(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``output`` with the rows whose input ``x`` lies within a key's radius replaced by that key's value."""
        if not self.keys:
            return output
        shape = output.shape
        flat_x, flat_out = x.reshape(-1, x.shape[-1]), output.reshape(-1, shape[-1])
        dist, idx = self.nearest(flat_x)
        hit = dist <= torch.tensor(self.radii, device=dist.device)[idx]
        if not bool(hit.any()):
            return output
        values = torch.stack(self.values).to(output.dtype)[idx]
        return torch.where(hit[:, None], values, flat_out).reshape(shape)

    def add(self, key: torch.Tensor, value: torch.Tensor, label: str, eps_init: float) -> int | None:
        """GRACE's maintenance for a new edit; returns the index of the entry whose value must be trained (a new
        entry), or ``None`` when an entry with the same label expanded to cover the key."""
        if self.keys:
            dist, idx = self.nearest(key[None])
            d, i = float(dist[0]), int(idx[0])
            if d <= self.radii[i] + eps_init:
                if self.labels[i] == label:
                    self.radii[i] = max(self.radii[i], d)
                    return None
                self.radii[i] = d / 2
                eps_init = d / 2
        self.keys.append(key.detach())
        self.values.append(value.detach())
        self.radii.append(eps_init)
        self.labels.append(label)
        return len(self.keys) - 1


class Grace(OptimizedMethod):
    """GRACE as an editing method (see the module docstring)."""

    def __init__(self, model: nn.Module, config: GraceConfig, name: str = "grace", default_layers=()):
        super().__init__(model, config, name, default_layers)
        self.module = self.mlp(model)

    @contextlib.contextmanager
    def attached(self, codebook: Codebook) -> Iterator[None]:
        """The codebook adaptor on the block's MLP inside the block only."""
        def hook(module, inputs, output):
            return codebook.replace(inputs[0], output)

        with hooked(self.module, hook):
            yield

    def add_edit(self, model: nn.Module, tokenizer, request: EditRequest, codebook: Codebook) -> Codebook:
        """Add ``request`` to ``codebook`` (in place; the adaptor with the codebook so far decides the key's
        neighbourhood) and train the new entry's value."""
        runner = self.runner(model)
        eb = request_batch(runner, tokenizer, request)
        loss_fn, key_at = self._loss(runner, eb, codebook)
        seen: dict[str, torch.Tensor] = {}

        def capture(module, inputs, output):
            seen["key"] = inputs[0][0, key_at].detach()
            seen["value"] = output[0, key_at].detach()

        with torch.no_grad(), hooked(self.module, capture):
            loss_fn()
        index = codebook.add(seen["key"], seen["value"], request.target, self.config.eps_init)
        if index is None:
            return codebook
        value = codebook.values[index].clone().requires_grad_(True)
        codebook.values[index] = value
        try:
            with self.attached(codebook):
                optimize(loss_fn, [value], steps=self.config.steps, lr=self.config.lr, request=request,
                         method=self.name, stop_loss=self.config.stop_loss)
        finally:
            codebook.values[index] = value.detach()
        return codebook

    def _loss(self, runner, eb, codebook: Codebook):
        """The target's NLL as a function of the hooks, and where the key's position lies in the MLP input it sees.

        A new value acts at the key (the prompt's last token) and after it; nothing before the key changes while it
        is trained. With a split forward the prompt before the key therefore runs through the upper blocks once (with
        the codebook so far) and every step replays only the key and the target tokens against its key/value states
        (:meth:`~instructedit_utils.models.forward.SplitForward.suffix_logits`): about five tokens instead of thirty."""
        p = eb.key_position
        if not isinstance(runner, SplitForward) or p < 1:
            return (lambda: target_loss(runner, eb)), p
        seq = eb.batch.input_ids[0].tolist()
        lower = eb.batch.hidden[0]
        with self.attached(codebook):
            kv = runner.prefix_states(seq, lower, p)
        return (lambda: nll(runner.suffix_logits(seq, lower, p, kv, eb.positions), eb.targets)), 0

    @contextlib.contextmanager
    def edited(self, model, tokenizer, request) -> Iterator[nn.Module]:
        with self.attached(self.add_edit(model, tokenizer, request, Codebook())):
            yield model

    def stream(self, model: nn.Module, tokenizer) -> EditStream:
        """Sequential editing into one codebook (:class:`CodebookStream`)."""
        return CodebookStream(self, model, tokenizer)

    @contextlib.contextmanager
    def sequence(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest],
                 codebook: Codebook | None = None) -> Iterator[Codebook]:
        """Edit ``requests`` one after the other into one codebook (``codebook`` to continue one) and keep them all
        inside the block; yields the codebook."""
        codebook = codebook if codebook is not None else Codebook()
        for request in requests:
            self.add_edit(model, tokenizer, request, codebook)
        with self.attached(codebook):
            yield codebook


@register("grace")
def _build_grace(model, tokenizer, *, name: str = "grace", default_layers=(), **options) -> EditingMethod:
    return Grace(model, make_config(GraceConfig, options, name), name, default_layers)


class CodebookStream(EditStream):
    """GRACE's sequential protocol as an :class:`~instructedit_utils.methods.registry.EditStream`: one codebook on the
    block's MLP; each edit is added with the codebook so far deciding its key's neighbourhood (expand, split or a new
    entry). No weight is written: leaving removes the adaptor."""

    def start(self) -> None:
        self.codebook = Codebook()
        self.attach(self.method.attached(self.codebook))

    def _add(self, request: EditRequest) -> None:
        self.attach(None)  # add_edit attaches the codebook itself while it trains the new value
        try:
            self.method.add_edit(self.model, self.tokenizer, request, self.codebook)
        finally:
            self.attach(self.method.attached(self.codebook))
