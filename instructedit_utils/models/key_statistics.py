"""Second moments of a linear layer's inputs — the **keys** ROME, MEMIT and AlphaEdit weigh their updates with
(``C = E[k kᵀ]``, :mod:`instructedit_utils.methods.closed_form`) — computed once from text available offline and
cached beside the model.

ROME and MEMIT estimate ``C`` from 100,000 Wikipedia samples (kmeng01/rome ``rome/layer_stats.py``); nothing may be
downloaded here, so the caller hands in the text (issue 29: e.g. the task files' own text) and names its source.
:func:`key_statistics` runs the texts through the model (no gradients, pad positions left out), sums ``k kᵀ`` in
float64 over every token, and keeps :class:`KeyStatistics` — the moment, the token count, the model's fingerprint,
the module, the source and a digest of the texts — in ``<cache>/key_statistics/<model>/<module>.<source>.<digest>.pt``.
A later call with the same model, module and texts reads it; a file of another model or module is refused.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..util.paths import cache_dir
from .forward import StopForward, forward_until_stop
from .loading import model_fingerprint
from .metrics import _pad_batch

STATS_DIR = "key_statistics"


@dataclass
class KeyStatistics:
    """``moment`` = ``E[k kᵀ]`` (float64, ``[in, in]``) of ``module``'s inputs over ``tokens`` tokens of ``source``."""

    moment: torch.Tensor
    tokens: int
    model: str
    module: str
    source: str
    digest: str

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"moment": self.moment, "tokens": self.tokens, "model": self.model, "module": self.module,
                    "source": self.source, "digest": self.digest}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, model: str, module: str) -> "KeyStatistics":
        """The statistics in ``path``; statistics of another model (fingerprint) or module are an error naming the
        file."""
        stored = torch.load(path, map_location="cpu", weights_only=True)
        for key, want in (("model", model), ("module", module)):
            if stored[key] != want:
                raise ValueError(f"{path}: key statistics of {key} {stored[key]!r}, not {want!r}; they cannot be "
                                 "reused for another model or layer")
        return cls(**stored)


def texts_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]


def input_width(model: nn.Module, module_name: str) -> int:
    """The width of a linear layer's inputs (``nn.Linear`` or GPT-2's ``Conv1D``, whose weight is ``[in, out]``);
    any other module is an error naming it."""
    module = model.get_submodule(module_name)
    if isinstance(module, nn.Linear):
        return module.in_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0]
    raise ValueError(f"{module_name} is a {type(module).__name__}, not a linear layer whose inputs are keys")


@torch.no_grad()
def collect_moments(model: nn.Module, tokenizer, module_names: Sequence[str], texts: Sequence[str],
                    batch_size: int = 16, max_length: int = 128) -> tuple[list[torch.Tensor], int]:
    """``([Σ k kᵀ per module], token count)`` of each module's inputs over every token of ``texts`` (each cut to
    ``max_length`` tokens), in float64, in one pass per batch that stops after the last of the modules; padded
    positions are left out."""
    widths = [input_width(model, name) for name in module_names]
    modules = [model.get_submodule(name) for name in module_names]
    device = next(model.parameters()).device
    totals = [torch.zeros(w, w, dtype=torch.float64, device=device) for w in widths]
    seen: set[int] = set()
    mask: torch.Tensor | None = None

    def make_hook(index: int):
        def hook(_module, inputs, _output):
            keys = inputs[0][mask.bool()].double()  # [tokens, in]
            totals[index] += keys.T @ keys
            seen.add(index)
            if len(seen) == len(modules):
                raise StopForward
        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    count = 0
    try:
        encoded = [tokenizer(t)["input_ids"][:max_length] for t in texts if t.strip()]
        for start in range(0, len(encoded), batch_size):
            ids, mask = _pad_batch(encoded[start:start + batch_size], tokenizer.pad_token_id, device=device)
            seen.clear()
            forward_until_stop(model, input_ids=ids, attention_mask=mask)
            count += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
    return [t.cpu() for t in totals], count


def collect_moment(model: nn.Module, tokenizer, module_name: str, texts: Sequence[str], batch_size: int = 16,
                   max_length: int = 128) -> tuple[torch.Tensor, int]:
    """:func:`collect_moments` of one module."""
    totals, count = collect_moments(model, tokenizer, [module_name], texts, batch_size, max_length)
    return totals[0], count


def key_statistics(model: nn.Module, tokenizer, module_name: str, texts: Sequence[str], source: str,
                   folder: Path | None = None, batch_size: int = 16, max_length: int = 128) -> KeyStatistics:
    """The keys' second moment of ``module_name`` over ``texts`` (see the module docstring), read from the cache
    ``folder`` (default ``<cache_dir>/key_statistics``) when it holds them, else computed and kept there."""
    return key_statistics_many(model, tokenizer, [module_name], texts, source, folder, batch_size, max_length)[0]


def key_statistics_many(model: nn.Module, tokenizer, module_names: Sequence[str], texts: Sequence[str], source: str,
                        folder: Path | None = None, batch_size: int = 16, max_length: int = 128
                        ) -> list[KeyStatistics]:
    """:func:`key_statistics` of several modules; those not cached are computed in one pass over the texts."""
    if not re.fullmatch(r"[\w.-]+", source):
        raise ValueError(f"source must be a short name (letters, digits, '.', '-', '_'), got {source!r}")
    if not any(t.strip() for t in texts):
        raise ValueError(f"key statistics of {source!r}: no text")
    fingerprint = model_fingerprint(model)
    digest = texts_digest([*texts, f"max_length={max_length}"])
    paths = [(folder or cache_dir() / STATS_DIR) / fingerprint / f"{name}.{source}.{digest}.pt"
             for name in module_names]
    missing = [i for i, path in enumerate(paths) if not path.exists()]
    if missing:
        totals, count = collect_moments(model, tokenizer, [module_names[i] for i in missing], texts, batch_size,
                                        max_length)
        for i, total in zip(missing, totals):
            KeyStatistics(total / count, count, fingerprint, module_names[i], source, digest).save(paths[i])
    return [KeyStatistics.load(path, fingerprint, name) for path, name in zip(paths, module_names)]
