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


@torch.no_grad()
def collect_moment(model: nn.Module, tokenizer, module_name: str, texts: Sequence[str], batch_size: int = 16,
                   max_length: int = 128) -> tuple[torch.Tensor, int]:
    """``(Σ k kᵀ, token count)`` of ``module_name``'s inputs over every token of ``texts`` (each cut to
    ``max_length`` tokens), in float64; padded positions are left out."""
    module = model.get_submodule(module_name)
    if not isinstance(module, nn.Linear):
        raise ValueError(f"{module_name} is a {type(module).__name__}, not a linear layer whose inputs are keys")
    device = next(model.parameters()).device
    total = torch.zeros(module.in_features, module.in_features, dtype=torch.float64, device=device)
    count = 0
    mask: torch.Tensor | None = None

    def hook(_module, inputs, _output):
        nonlocal total, count
        keys = inputs[0][mask.bool()].double()  # [tokens, in]
        total += keys.T @ keys
        count += keys.shape[0]

    handle = module.register_forward_hook(hook)
    try:
        encoded = [tokenizer(t)["input_ids"][:max_length] for t in texts if t.strip()]
        for start in range(0, len(encoded), batch_size):
            ids, mask = _pad_batch(encoded[start:start + batch_size], tokenizer.pad_token_id, device=device)
            model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    return total.cpu(), count


def key_statistics(model: nn.Module, tokenizer, module_name: str, texts: Sequence[str], source: str,
                   folder: Path | None = None, batch_size: int = 16, max_length: int = 128) -> KeyStatistics:
    """The keys' second moment of ``module_name`` over ``texts`` (see the module docstring), read from the cache
    ``folder`` (default ``<cache_dir>/key_statistics``) when it holds them, else computed and kept there."""
    if not re.fullmatch(r"[\w.-]+", source):
        raise ValueError(f"source must be a short name (letters, digits, '.', '-', '_'), got {source!r}")
    if not any(t.strip() for t in texts):
        raise ValueError(f"key statistics of {source!r}: no text")
    fingerprint = model_fingerprint(model)
    digest = texts_digest([*texts, f"max_length={max_length}"])
    path = (folder or cache_dir() / STATS_DIR) / fingerprint / f"{module_name}.{source}.{digest}.pt"
    if path.exists():
        return KeyStatistics.load(path, fingerprint, module_name)
    total, count = collect_moment(model, tokenizer, module_name, texts, batch_size, max_length)
    stats = KeyStatistics(total / count, count, fingerprint, module_name, source, digest)
    stats.save(path)
    return stats
