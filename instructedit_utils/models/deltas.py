"""Weight deltas applied to a model and taken back: :func:`applied` (in place, restored bit-exactly on exit) and
:func:`applied_per_row` (many edited models in one batch, through removable forward hooks). Every weight-changing
editing method returns its edit as such deltas."""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from .loading import arch_spec


def nbytes(deltas: Mapping[str, torch.Tensor] | None) -> int:
    """Bytes a set of weight deltas holds (0 for None)."""
    return sum(d.numel() * d.element_size() for d in deltas.values()) if deltas else 0


def nonfinite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of ``tensors`` holding a NaN or an infinity (a weight change or a weight no edit may leave)."""
    return [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]


@contextlib.contextmanager
def applied(model: nn.Module, deltas: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Add ``deltas`` to the model's weights inside the block; the original tensors are copied back bit-exactly on
    exit (also after an exception)."""
    params = dict(model.named_parameters())
    missing = [n for n in deltas if n not in params]
    if missing:
        raise KeyError(f"Deltas for unknown parameters: {missing}")
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for n, d in deltas.items():
                saved[n] = params[n].detach().clone()
                params[n].add_(d.to(params[n].dtype))
        yield model
    finally:
        with torch.no_grad():
            for n, original in saved.items():
                params[n].copy_(original)


@contextlib.contextmanager
def applied_per_row(model: nn.Module, deltas: Sequence[Mapping[str, torch.Tensor]]) -> Iterator[nn.Module]:
    """Run a batch of ``len(deltas)`` rows as if row ``i`` ran on the model with ``deltas[i]`` added to its weights
    (:func:`applied` for one row), so many edited models generate in one batch: each edited module's output gets
    ``x_i Δ_iᵀ`` (``Linear``; ``x_i Δ_i`` for GPT-2's ``Conv1D``) through forward hooks removed on exit. Weights are
    never touched; every batch run inside must have ``len(deltas)`` rows. Equal to :func:`applied` row by row up to
    float rounding. Every mapping must name the same parameters (a missing one in a row counts as zero)."""
    if not deltas:
        yield model
        return
    params = dict(model.named_parameters())
    names = list(dict.fromkeys(n for d in deltas for n in d))
    missing = [n for n in names if n not in params or not n.endswith(".weight")]
    if missing:
        raise KeyError(f"Deltas for unknown weight matrices: {missing}")
    conv1d = arch_spec(model).conv1d
    handles = []

    def make_hook(name: str):
        weight = params[name]
        stacked = torch.stack([d[name].to(weight.dtype) if name in d else torch.zeros_like(weight) for d in deltas])
        if not conv1d:
            stacked = stacked.transpose(1, 2)  # [rows, in, out]

        def hook(module, inputs, output):
            x = inputs[0]
            if x.shape[0] != len(stacked):
                raise ValueError(f"applied_per_row: a batch of {x.shape[0]} rows for {len(stacked)} sets of deltas")
            return output + torch.bmm(x, stacked).to(output.dtype)
        return hook

    try:
        for name in names:
            handles.append(model.get_submodule(name[: -len(".weight")]).register_forward_hook(make_hook(name)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
