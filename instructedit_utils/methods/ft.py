"""FT-L: constrained fine-tuning of one MLP matrix on the edit (the fine-tuning baseline of ROME, Meng et al. 2022,
Sec. 3 / Appendix "FT-L"; Table 3's FT-L column in InstructEdit).

For one edit request, a delta ``Δ`` of one MLP weight matrix of one block is optimised with Adam on the NLL of the
target tokens after the prompt (teacher forced), and after every step clamped to ``|Δ| ≤ norm_constraint`` entry by
entry (ROME's L∞ constraint on the change). The delta is applied with
:func:`~instructedit_utils.models.deltas.applied` (weights restored bit-exactly on exit). While optimising, the delta
acts through a removable forward hook (``W + Δ`` without touching ``W``) and only the blocks from the edited one on are
replayed (:mod:`~instructedit_utils.methods.edit_loop`).

Defaults and why: 25 steps, ``lr = 5e-4`` and ``norm_constraint = 5e-4`` are ROME's/EasyEdit's FT-L settings; the
matrix is the MLP's output matrix (``down_proj``, GPT-2's ``c_proj``), as in ROME's FT-L. **Deviation:** the layer
defaults to the lowest block the hypernetwork editors edit (SmolLM2: 27, GPT2-XL: 45, LLaMA-2: 29), not ROME's
mid-depth layer, so that every method of Table 3 changes the same part of the model and the comparison is about
*how* the update is found; it also keeps the per-step cost at three blocks on CPU. ``layer`` selects any other.

**Deviation (cost):** the loop stops once a step lowers the loss by less than ``plateau = 1e-3`` of its value. With
Adam at ``lr`` equal to the bound, the first step moves every entry by about ``lr`` and the clamp holds it there; the
later steps move a few percent of the entries and the loss by under 0.1 % (measured on SmolLM2's validation edits:
``benchmarks/bench_levers.py --levers baselines``), so FT-L stops after two or three steps instead of 25. ROME's
own loop stops only when the loss is under 0.01 (``baselines/ft/ft_main.py``), which a bounded delta does not reach
here. ``plateau = None`` runs all 25 steps.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..config.options import FTLConfig, make_config
from .registry import EditingMethod, register
from ..models.deltas import applied
from .edit_loop import (OptimizedMethod, hooked, layer_module, optimize, request_batch,
                        target_loss)
from ..models.loading import arch_spec


class FineTuneL(OptimizedMethod):
    """FT-L as an editing method (see the module docstring)."""

    def __init__(self, model: nn.Module, config: FTLConfig, name: str = "ft-l", default_layers=()):
        super().__init__(model, config, name, default_layers)
        spec = arch_spec(model)
        matrix = config.matrix or spec.mlp_weights[-1]
        path, leaf = matrix.rsplit(".", 1)
        module_name, self.module = layer_module(model, self.layer, path, name, "matrix", matrix)
        self.param_name = f"{module_name}.{leaf}"
        self.weight = getattr(self.module, leaf, None)
        if not isinstance(self.weight, nn.Parameter) or self.weight.dim() != 2:
            raise ValueError(f"{name}: matrix={matrix!r} is not a weight matrix of block {self.layer}")
        self.conv1d = spec.conv1d

    def delta(self, model: nn.Module, tokenizer, request) -> torch.Tensor:
        """The optimised, clamped weight delta for ``request`` (in the parameter's own layout)."""
        cfg = self.config
        runner = self.runner(model)
        eb = request_batch(runner, tokenizer, request)
        delta = torch.zeros_like(self.weight, requires_grad=True)

        def hook(module, inputs, output):
            x = inputs[0]
            return output + (x @ delta if self.conv1d else x @ delta.T).to(output.dtype)

        def project():
            if cfg.norm_constraint is not None:
                delta.clamp_(-cfg.norm_constraint, cfg.norm_constraint)

        with hooked(self.module, hook):
            optimize(lambda: target_loss(runner, eb), [delta], steps=cfg.steps, lr=cfg.lr, request=request,
                     method=self.name, project=project, plateau=cfg.plateau)
        return delta.detach()

    def weight_deltas(self, model, tokenizer, request) -> dict[str, torch.Tensor]:
        return {self.param_name: self.delta(model, tokenizer, request)}

    @contextlib.contextmanager
    def edited(self, model, tokenizer, request) -> Iterator[nn.Module]:
        with applied(model, self.weight_deltas(model, tokenizer, request)):
            yield model


@register("ft-l")
def _build_ftl(model, tokenizer, *, name: str = "ft-l", default_layers=(), **options) -> EditingMethod:
    return FineTuneL(model, make_config(FTLConfig, options, name), name, default_layers)
