"""Editing gradients — the paper's "editing areas" (Section 6, Fig. 4a): collect them cheaply, store them resumably,
and measure how well they separate tasks.

**The editing area.** For one edit request and a trained editor, the editor turns the per-token factors of the edit
loss's gradient into transformed factors ``ũ_t``, ``δ̃_t`` (:meth:`~instructedit_utils.editor.MendEditor.transform_all`);
the update of an edited matrix is ``-α·G̃`` with ``G̃ = Σ_t δ̃_t ũ_tᵀ`` (``[d_out, d_in]``). The editing area is ``G̃``
(all edited matrices side by side by default) divided by its Frobenius norm.

**Never forming G̃.** ``G̃`` has ``d_out·d_in`` entries (1536 × 576 per SmolLM2 matrix, 11008 × 4096 for LLaMA-2-7B);
thousands of them do not fit anywhere. We keep two things per edit and matrix:

* its exact Frobenius norm, from the factors: ``‖G̃‖² = Σ_{s,t} (ũ_s·ũ_t)(δ̃_s·δ̃_t)`` (a ``T×T`` Gram product);
* a seeded random **sketch** of ``k`` numbers (:class:`Sketch`): ``p_i = a_iᵀ G̃ b_i / √k = Σ_t (a_i·δ̃_t)(b_i·ũ_t) / √k``
  with independent standard Gaussian ``a_i ∈ R^{d_out}``, ``b_i ∈ R^{d_in}`` (a Khatri–Rao projection). Then
  ``E[⟨p(G₁), p(G₂)⟩] = ⟨G₁, G₂⟩_F``: inner products, norms and cosines are kept in expectation, and each ``p_i`` is
  an independent estimate, so cosine errors shrink like ``1/√k`` (``test_gradients`` checks the stated tolerance).

Memory per stored edit: ``k`` floats per edited matrix (2048 × 4 B × 6 matrices = 48 KB for SmolLM2), independent of
the model's width; the projection itself holds ``k·(d_in + d_out)`` floats per matrix shape.

**Collection** (:func:`collect_areas`) is batched like the evaluation harness: per batch of requests one lower pass
(:meth:`~instructedit_utils.forward.SplitForward.lower_rows`, each row's instruction header from the key/value cache),
one forward/backward pass of the edited blocks for all rows at once (``inner_pass(per_row=True)``: each row's loss is
its own mean NLL, so its factors equal those of the edit made alone), one pass of the editor network. Vectors go to
``<folder>/chunk_<n>.safetensors`` with one manifest line per vector (task, split, record, editor and fingerprint,
condition); an interrupted collection resumes, and vectors of another editor or other settings are refused.

The analyses of the stored vectors (PCA, t-SNE, separation numbers with CIs and a permutation control) are in
:mod:`instructedit_utils.separation`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .editor import EditTarget, Factors, MendEditor
from .forward import length_batches
from .instructions import EditRequest
from .metrics import encode_pair
from .runs import RunFolder

MANIFEST = "manifest"


# --------------------------------------------------------------------------------------------------------------------
# The sketch
# --------------------------------------------------------------------------------------------------------------------


class Sketch:
    """Seeded Khatri–Rao random projection of matrices given as ``Σ_t δ_t u_tᵀ`` (see the module docstring).

    One pair ``A [k, d_out]``, ``B [k, d_in]`` of standard Gaussians per matrix shape, drawn from ``seed`` and the
    shape, so every editor and every run project the same matrix the same way."""

    def __init__(self, targets: Sequence[EditTarget], dim: int, seed: int = 0, device=None):
        if dim < 1:
            raise ValueError("Sketch dimension must be >= 1")
        self.dim, self.seed = dim, seed
        self.targets = {t.name: t for t in targets}
        self._ab: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for t in targets:
            key = (t.in_dim, t.out_dim)
            if key not in self._ab:
                gen = torch.Generator().manual_seed(seed * 1_000_003 + t.in_dim * 7919 + t.out_dim)
                a = torch.randn(dim, t.out_dim, generator=gen)
                b = torch.randn(dim, t.in_dim, generator=gen)
                self._ab[key] = (a.to(device), b.to(device))

    def _pair(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.targets[name]
        return self._ab[(t.in_dim, t.out_dim)]

    def project(self, name: str, factors: Factors, n_rows: int) -> torch.Tensor:
        """``[n_rows, k]``: the sketch of each edit's ``Σ_t δ_t u_tᵀ`` (tokens grouped by ``factors.rows``)."""
        a, b = self._pair(name)
        per_token = (factors.delta @ a.to(factors.delta.dtype).T) * (factors.u @ b.to(factors.u.dtype).T)
        rows = factors.rows if factors.rows is not None else torch.zeros(len(per_token), dtype=torch.long,
                                                                            device=per_token.device)
        out = per_token.new_zeros((n_rows, self.dim)).index_add_(0, rows, per_token)
        return out / math.sqrt(self.dim)

    def project_matrix(self, name: str, gradient: torch.Tensor) -> torch.Tensor:
        """The sketch of an explicit ``[d_out, d_in]`` matrix (``diag(A G Bᵀ)/√k``; for tests and checks)."""
        a, b = self._pair(name)
        return ((a.to(gradient.dtype) @ gradient) * b.to(gradient.dtype)).sum(-1) / math.sqrt(self.dim)


def frobenius_norms(factors: Factors, n_rows: int) -> torch.Tensor:
    """``[n_rows]``: ``‖Σ_t δ_t u_tᵀ‖_F`` of each edit, from the factors (``Σ_{s,t} (u_s·u_t)(δ_s·δ_t)``)."""
    rows = factors.rows if factors.rows is not None else torch.zeros(len(factors.u), dtype=torch.long)
    out = torch.zeros(n_rows, dtype=torch.float64)
    for r in range(n_rows):
        sel = rows == r
        if sel.any():
            u, d = factors.u[sel].double(), factors.delta[sel].double()
            out[r] = ((u @ u.T) * (d @ d.T)).sum().clamp_min(0).sqrt()
    return out


# --------------------------------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class AreaBatch:
    """Editing areas of a list of requests: per edited matrix the sketches ``[N, k]``, the exact norms of the
    transformed gradient ``[N]`` and of the raw gradient ``[N]`` (before the editor network)."""

    sketches: dict[str, np.ndarray]
    norms: dict[str, np.ndarray]
    raw_norms: dict[str, np.ndarray]


@torch.no_grad()
def editing_areas(editor: MendEditor, model, tokenizer, requests: Sequence[EditRequest], sketch: Sketch,
                  batch_edits: int = 16) -> AreaBatch:
    """The editing areas of ``requests`` (module docstring), ``batch_edits`` edits per forward/backward pass."""
    runner = editor.runner(model)
    encs = [encode_pair(tokenizer, r.prompt, r.target) for r in requests]
    headers = [tuple(tokenizer(r.header)["input_ids"]) if r.header else () for r in requests]
    names = [t.name for t in editor.targets]
    sketches = {n: np.zeros((len(requests), sketch.dim), dtype=np.float32) for n in names}
    norms = {n: np.zeros(len(requests)) for n in names}
    raw = {n: np.zeros(len(requests)) for n in names}
    seqs = [e.inputs for e in encs]
    for part in length_batches([len(s) - len(h) for s, h in zip(seqs, headers)], batch_edits):
        batch = runner.batch([seqs[i] for i in part], runner.lower_rows([seqs[i] for i in part],
                                                                        [headers[i] for i in part]),
                             tokenizer.pad_token_id)
        dev = batch.attention_mask.device
        rows = torch.tensor([j for j, i in enumerate(part) for _ in encs[i].target_positions], device=dev)
        pos = torch.tensor([p for i in part for p in encs[i].target_positions], device=dev)
        targets = torch.tensor([t for i in part for t in encs[i].targets], device=dev)
        factors, _, _ = editor.inner_pass(model, runner, batch, rows, pos, targets=targets, per_row=True)
        transformed = editor.transform_all(factors)
        for n in names:
            sketches[n][part] = sketch.project(n, transformed[n], len(part)).float().cpu().numpy()
            norms[n][part] = frobenius_norms(transformed[n], len(part)).numpy()
            raw[n][part] = frobenius_norms(factors[n], len(part)).numpy()
    return AreaBatch(sketches, norms, raw)


def _manifest_rows(requests: Sequence[EditRequest], areas: AreaBatch, editor_name: str, fingerprint: str,
                   condition: str, chunk: str) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(requests):
        rec = r.record
        row = {"case_id": r.case_id, "task": r.task, "split": rec.split, "source": rec.source, "index": rec.index,
               "editor": editor_name, "fingerprint": fingerprint, "condition": condition,
               "description_index": r.description_index, "chunk": chunk, "row": i}
        for n in areas.norms:
            row[f"norm/{n}"] = float(areas.norms[n][i])
            row[f"raw_norm/{n}"] = float(areas.raw_norms[n][i])
        out.append(row)
    return out


def collect_areas(method, model, tokenizer, requests: Sequence[EditRequest], folder: str | Path, sketch: Sketch, *,
                  condition: str = "seen", settings: Mapping[str, Any] | None = None, batch_edits: int = 16,
                  chunk: int = 64, progress: Callable | None = None) -> None:
    """Collect the editing areas of ``requests`` with ``method`` (a trained
    :class:`~instructedit_utils.baselines.TrainedEditor`) into ``folder``: ``chunk_<n>.safetensors`` (one tensor per
    edited matrix, ``[rows, k]``) and ``manifest.jsonl`` (one line per vector). Finished cases are skipped; vectors of
    another editor, or of other ``settings`` (recorded with the sketch's dimension and seed), are an error naming the
    folder."""
    from safetensors.numpy import save_file

    from .evaluation import requests_digest

    run = RunFolder(folder)
    fingerprint = method.fingerprint
    full = {**(settings or {}), "sketch": {"dim": sketch.dim, "seed": sketch.seed}, "condition": condition,
            "requests": requests_digest(requests)}
    stamp = run.check_settings(MANIFEST, full)
    old = read_manifest(run)
    others = {row["fingerprint"] for row in old} - {fingerprint}
    if others:
        raise ValueError(f"{run.cases_path(MANIFEST)} holds vectors of another editor ({sorted(others)}, now "
                         f"{fingerprint}); delete the folder or use another run folder")
    done = {row["case_id"] for row in old}
    todo = [r for r in requests if r.case_id not in done]
    starts = range(0, len(todo), chunk)
    for start in (progress(starts) if progress else starts):
        part = todo[start:start + chunk]
        areas = editing_areas(method.editor, model, tokenizer, part, sketch, batch_edits)
        name = f"chunk_{len(done) + start:06d}.safetensors"
        tmp = run.path / (name + ".tmp")
        save_file({n: np.ascontiguousarray(v) for n, v in areas.sketches.items()}, str(tmp))
        tmp.replace(run.path / name)
        rows = _manifest_rows(part, areas, method.name, fingerprint, condition, name)
        run.append_cases(MANIFEST, [{**row, "settings": stamp} for row in rows])


def sketch_check(method, model, tokenizer, requests: Sequence[EditRequest], sketch: Sketch,
                 matrices: Sequence[str] | None = None) -> pd.DataFrame:
    """For every pair of ``requests``' editing areas: the exact cosine (inner products ``Σ_{s,t} (ũ_s·ũ'_t)(δ̃_s·δ̃'_t)``
    from the factors, no matrix formed) and the cosine of the sketches. Columns ``a``, ``b``, ``exact``,
    ``sketch``, ``error``. A check of the sketch on real edits, one edit at a time."""
    names = list(matrices) if matrices else [t.name for t in method.editor.targets]
    factors = [method.editor.edit(model, tokenizer, r.prompt, r.target, header=r.header,
                                  return_factors=True).transformed for r in requests]
    n = len(requests)
    gram = np.zeros((n, n))
    for name in names:
        u = [f[name].u.double() for f in factors]
        d = [f[name].delta.double() for f in factors]
        for i in range(n):
            for j in range(i, n):
                gram[i, j] += float(((u[i] @ u[j].T) * (d[i] @ d[j].T)).sum())
    gram = np.triu(gram) + np.triu(gram, 1).T
    norm = np.sqrt(np.diag(gram))
    exact = gram / np.outer(norm, norm)
    vecs = np.concatenate([np.stack([sketch.project(name, f[name], 1)[0].double().cpu().numpy() for f in factors])
                           for name in names], axis=1)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    approx = vecs @ vecs.T
    rows = [{"a": requests[i].case_id, "b": requests[j].case_id, "exact": exact[i, j], "sketch": approx[i, j]}
            for i in range(n) for j in range(i + 1, n)]
    out = pd.DataFrame(rows)
    out["error"] = (out["sketch"] - out["exact"]).abs()
    return out


# --------------------------------------------------------------------------------------------------------------------
# Reading stored areas
# --------------------------------------------------------------------------------------------------------------------


_MANIFEST_FIELDS = ("case_id", "task", "editor", "fingerprint", "condition", "chunk", "row")


def read_manifest(run: RunFolder) -> list[dict[str, Any]]:
    """The manifest lines of a gradients folder; a line that is not a JSON object with the manifest fields is an error
    naming the file and line (a torn last line, left by a kill mid-write, is dropped)."""
    path = run.cases_path(MANIFEST)
    if not path.exists():
        return []
    rows = run.read_cases(MANIFEST)
    for i, row in enumerate(rows):
        missing = [f for f in _MANIFEST_FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            raise ValueError(f"{path} line {i + 1}: not a manifest line (missing {missing})")
    return rows


@dataclass
class Areas:
    """Stored editing areas: ``manifest`` (one row per vector) and per edited matrix the sketches ``[N, k]``."""

    manifest: pd.DataFrame
    sketches: dict[str, np.ndarray]

    @property
    def matrices(self) -> list[str]:
        return list(self.sketches)

    def vectors(self, matrices: Sequence[str] | None = None) -> np.ndarray:
        """Unit rows ``[N, m·k]``: the chosen matrices' sketches side by side, each row divided by its norm (the
        sketched editing area; cosines between rows estimate cosines between the normalised ``G̃``)."""
        names = list(matrices) if matrices else self.matrices
        unknown = [n for n in names if n not in self.sketches]
        if unknown:
            raise KeyError(f"No editing areas for {unknown}; stored: {self.matrices}")
        x = np.concatenate([self.sketches[n] for n in names], axis=1).astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-30)

    def norms(self, matrices: Sequence[str] | None = None, raw: bool = False) -> np.ndarray:
        """``[N]``: the exact Frobenius norm of the (raw or transformed) gradient over the chosen matrices."""
        names = list(matrices) if matrices else self.matrices
        prefix = "raw_norm/" if raw else "norm/"
        return np.sqrt(sum(self.manifest[prefix + n].to_numpy() ** 2 for n in names))

    @classmethod
    def concat(cls, parts: Sequence["Areas"]) -> "Areas":
        parts = [p for p in parts if len(p.manifest)]
        if not parts:
            raise ValueError("No editing areas to combine")
        names = parts[0].matrices
        return cls(pd.concat([p.manifest for p in parts], ignore_index=True),
                   {n: np.concatenate([p.sketches[n] for p in parts]) for n in names})


def load_areas(folder: str | Path) -> Areas:
    """The vectors of one gradients folder in manifest order; a missing or malformed chunk file is an error naming
    it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    run = RunFolder(folder)
    rows = read_manifest(run)
    if not rows:
        raise FileNotFoundError(f"No editing areas in {run.path} (no {MANIFEST}.jsonl)")
    chunks: dict[str, dict[str, np.ndarray]] = {}
    for name in dict.fromkeys(r["chunk"] for r in rows):
        path = run.path / name
        try:
            chunks[name] = load_file(str(path))
        except (FileNotFoundError, SafetensorError, OSError) as exc:
            raise ValueError(f"{path}: unreadable vector file ({exc})") from None
    names = list(chunks[rows[0]["chunk"]])
    out = {n: np.zeros((len(rows), chunks[rows[0]["chunk"]][n].shape[1]), dtype=np.float32) for n in names}
    for i, r in enumerate(rows):
        data = chunks[r["chunk"]]
        if set(data) != set(names) or r["row"] >= len(data[names[0]]):
            raise ValueError(f"{run.path / r['chunk']}: has no row {r['row']} of matrices {names} "
                             f"(manifest line {i + 1})")
        for n in names:
            out[n][i] = data[n][r["row"]]
    return Areas(pd.DataFrame(rows), out)
