"""Lower states kept on disk and shared by training runs: the frozen model computed once.

The blocks below the edited ones never change while an editor trains, so the residual stream they give a token
sequence is the same in every step, every run and every editor that draws that sequence again (chapter 2's editors
draw the same training records: ``benchmarks/bench_levers.py --levers lower`` counts the repeats). A
:class:`LowerStates` store keeps each sequence's states in a file named by the digest of its tokens (and its
instruction header), under a folder named by everything the states depend on (:func:`lower_fingerprint`: the
weights below the split, the split block, the lower precision, the torch version and thread count). Training then
asks the store first (:meth:`~instructedit_utils.models.forward.SplitForward.lower_each`).

A state is only served where it equals the state that would be computed: the trainer computes every sequence
**alone** (:meth:`~instructedit_utils.models.forward.SplitForward.lower_each`), never in a batch with other sequences
(whose padding changes the float rounding: ``bench_levers.py --levers cache``), so a stored state is the recomputed
one bit for bit, and a run gives the same editor with or without the store, fresh or resumed. Files are written
atomically (a killed run leaves no half file); a file that does not hold its sequence's states is an error naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from .loading import arch_spec, lower_dtype_of

META_FILE = "states.json"


def lower_fingerprint(model: torch.nn.Module, start: int) -> dict[str, object]:
    """What the states entering block ``start`` depend on: a digest of every weight and buffer of ``model`` outside
    blocks ``start…`` (the embeddings and the lower blocks, among others), the split, the model's dtype and lower
    precision, and the torch version and intra-op threads (the float rounding of the kernels)."""
    prefix = arch_spec(model).layers_path + "."
    upper = {f"{prefix}{i}." for i in range(start, len(model.get_submodule(arch_spec(model).layers_path)))}
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if any(name.startswith(u) for u in upper):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return {"weights": digest.hexdigest()[:24], "architecture": type(model).__name__, "start": start,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "lower_dtype": lower_dtype_of(model),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


class LowerStates:
    """A folder of lower states of one model and split (see the module docstring); ``get``/``put`` by tokens."""

    def __init__(self, directory: str | os.PathLike, model: torch.nn.Module, start: int, writable: bool = True):
        """``writable=False``: read what is stored, never write (the other processes of a multi-process run)."""
        self.fingerprint = lower_fingerprint(model, start)
        key = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        self.directory = Path(directory) / key
        self.writable = writable
        if writable:
            self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.directory / META_FILE
        if writable and not meta.is_file():
            _atomic(meta, lambda path: path.write_text(json.dumps(self.fingerprint, indent=2)))
        self.hits = self.misses = 0

    def path(self, header: Sequence[int], seq: Sequence[int]) -> Path:
        key = hashlib.sha256(json.dumps([list(header), list(seq)]).encode()).hexdigest()
        return self.directory / key[:2] / f"{key[2:]}.safetensors"

    def get(self, header: Sequence[int], seq: Sequence[int]) -> torch.Tensor | None:
        """The stored states ``[len(seq), d]`` of ``seq`` (after ``header``), or None."""
        path = self.path(header, seq)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            stored = load_file(path)
        except Exception as exc:  # a damaged file: name it, never serve or skip it silently
            raise ValueError(f"{path}: not a readable lower-state file ({exc}); delete it to recompute") from None
        state, tokens = stored.get("state"), stored.get("tokens")
        if state is None or tokens is None or tokens.tolist() != list(header) + [-1] + list(seq) \
                or state.shape[0] != len(seq):
            raise ValueError(f"{path}: does not hold the states of its sequence ({len(seq)} tokens); delete it")
        self.hits += 1
        return state

    def put(self, header: Sequence[int], seq: Sequence[int], state: torch.Tensor) -> None:
        if not self.writable:
            return
        path = self.path(header, seq)
        path.parent.mkdir(exist_ok=True)
        tokens = torch.tensor(list(header) + [-1] + list(seq), dtype=torch.long)
        _atomic(path, lambda tmp: save_file({"state": state.detach().contiguous().cpu(), "tokens": tokens}, tmp))


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then move it into place (concurrent writers of the same
    state write the same bytes; the last move wins)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
