"""Editing gradients — the paper's "editing areas" (Section 6, Fig. 4a): collect them cheaply, store them resumably,
and measure how well they separate tasks.

**The editing area.** For one edit request and a trained editor, the editor turns the per-token factors of the edit
loss's gradient into transformed factors ``ũ_t``, ``δ̃_t``
(:meth:`~instructedit_utils.methods.mend.MendEditor.transform_all`); the update of an edited matrix is ``-α·G̃`` with
``G̃ = Σ_t δ̃_t ũ_tᵀ`` (``[d_out, d_in]``). The editing area is ``G̃`` (all edited matrices side by side by default) divided by its Frobenius norm.

**Never forming G̃.** ``G̃`` has ``d_out·d_in`` entries (1536 × 576 per SmolLM2 matrix, 11008 × 4096 for LLaMA-2-7B);
thousands of them do not fit anywhere. We keep two things per edit and matrix:

* its exact Frobenius norm, from the factors: ``‖G̃‖² = Σ_{s,t} (ũ_s·ũ_t)(δ̃_s·δ̃_t)`` (a ``T×T`` Gram product);
* a seeded random **sketch** of ``k`` numbers (:class:`Sketch`): rotate both sides of ``G̃`` with random signs and
  an orthonormal Walsh–Hadamard transform, ``M = H_out D_out G̃ D_in H_inᵀ`` (zero-padded to powers of two), and keep
  ``k`` entries of ``M`` at seeded random positions ``(σ_i, τ_i)``, scaled by ``√(n_out·n_in/k)``. From the factors,
  ``M = Σ_t (H D δ̃_t)(H D ũ_t)ᵀ``, so each entry costs one product per token after two fast transforms of
  ``O(d log d)``. The rotations keep the Frobenius inner product and spread every matrix's mass evenly over the
  entries, so ``E[⟨p(G₁), p(G₂)⟩] = ⟨G₁, G₂⟩_F``: inner products, norms and cosines are kept in expectation, with
  errors shrinking like ``1/√k`` (a two-sided subsampled randomised Hadamard transform; ``test_gradients`` checks the
  stated tolerance, and chapter 6 checks it on real edits against cosines computed exactly from the factors).

Memory per stored edit: ``k`` floats per edited matrix (2048 × 4 B × 6 matrices = 48 KB for SmolLM2), independent of
the model's width; the sketch itself holds two sign vectors and ``k`` index pairs per matrix shape (nothing of size
``k·d``), so it costs the same for LLaMA-2-7B.

**Collection** (:func:`collect_areas`) is batched like the evaluation harness: per batch of requests one lower pass
(:meth:`~instructedit_utils.models.forward.SplitForward.lower_rows`, each row's instruction header from the key/value
cache), one forward/backward pass of the edited blocks for all rows at once (``inner_pass(per_row=True)``: each row's loss is
its own mean NLL, so its factors equal those of the edit made alone), one pass of the editor network. Vectors go to
``<folder>/chunk_<n>.safetensors`` with one manifest line per vector (task, split, record, editor and fingerprint,
condition); an interrupted collection resumes, and vectors of another editor or other settings are refused.

The analyses of the stored vectors (PCA, t-SNE, separation numbers with CIs and a permutation control) are in
:mod:`instructedit_utils.analysis.separation`.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..models.targets import EditTarget, Factors
from ..methods.mend import MendEditor
from ..models.forward import SplitForward, length_batches
from ..data.instructions import EditRequest
from ..models.metrics import encode_pair
from ..util.runs import RunFolder
from .requests import requests_digest

MANIFEST = "manifest"


# --------------------------------------------------------------------------------------------------------------------
# The sketch
# --------------------------------------------------------------------------------------------------------------------


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=16)
def _hadamard_matrix(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    h = torch.ones((1, 1), dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.to(device)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh–Hadamard transform (Sylvester order) along the last dimension, a power of two ``n``:
    ``x H/√n``. As ``H_n = H_a ⊗ H_b`` with ``a·b = n``, it is two small matrix products per row (``O(n·(a+b))``)."""
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard transform needs a power-of-two length, got {n}")
    a = 1 << (n.bit_length() - 1) // 2
    b = n // a
    y = x.reshape(*x.shape[:-1], a, b)
    y = _hadamard_matrix(a, x.dtype, str(x.device)) @ y @ _hadamard_matrix(b, x.dtype, str(x.device))
    return y.reshape(x.shape) / math.sqrt(n)


class Sketch:
    """Seeded two-sided subsampled randomised Hadamard sketch of matrices given as ``Σ_t δ_t u_tᵀ`` (see the module
    docstring). Per matrix shape: random signs for both sides and ``k`` random entry positions, drawn from ``seed``
    and the shape, so every editor and every run sketch the same matrix the same way."""

    kind = "two-sided-srht/1"  # recorded with the vectors: sketches of another kind or version never mix

    def __init__(self, targets: Sequence[EditTarget], dim: int, seed: int = 0, device=None):
        if dim < 1:
            raise ValueError("Sketch dimension must be >= 1")
        self.dim, self.seed = dim, seed
        self.targets = {t.name: t for t in targets}
        self._plan: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}
        for t in targets:
            key = (t.in_dim, t.out_dim)
            if key in self._plan:
                continue
            gen = torch.Generator().manual_seed(seed * 1_000_003 + t.in_dim * 7919 + t.out_dim)
            n_out, n_in = _pow2(t.out_dim), _pow2(t.in_dim)
            signs_out = torch.randint(0, 2, (t.out_dim,), generator=gen) * 2.0 - 1.0
            signs_in = torch.randint(0, 2, (t.in_dim,), generator=gen) * 2.0 - 1.0
            rows = torch.randint(0, n_out, (dim,), generator=gen)
            cols = torch.randint(0, n_in, (dim,), generator=gen)
            scale = torch.tensor(math.sqrt(n_out * n_in / dim))
            self._plan[key] = tuple(v.to(device) for v in (signs_out, signs_in, rows, cols, scale))

    def _rotate(self, x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(x * signs.to(x.dtype), (0, _pow2(x.shape[-1]) - x.shape[-1]))
        return hadamard(padded)

    def project(self, name: str, factors: Factors, n_rows: int) -> torch.Tensor:
        """``[n_rows, k]``: the sketch of each edit's ``Σ_t δ_t u_tᵀ`` (tokens grouped by ``factors.rows``)."""
        t = self.targets[name]
        signs_out, signs_in, rows, cols, scale = self._plan[(t.in_dim, t.out_dim)]
        d = self._rotate(factors.delta, signs_out)[:, rows]
        u = self._rotate(factors.u, signs_in)[:, cols]
        index = factors.rows if factors.rows is not None else torch.zeros(len(d), dtype=torch.long, device=d.device)
        out = d.new_zeros((n_rows, self.dim)).index_add_(0, index, d * u)
        return out * scale.to(out.dtype)

    def project_matrix(self, name: str, gradient: torch.Tensor) -> torch.Tensor:
        """The sketch of an explicit ``[d_out, d_in]`` matrix (for tests and checks)."""
        t = self.targets[name]
        signs_out, signs_in, rows, cols, scale = self._plan[(t.in_dim, t.out_dim)]
        m = self._rotate(gradient, signs_in)  # G D_in H_inᵀ, rows padded
        m = self._rotate(m.T, signs_out).T  # H_out D_out (…)
        return m[rows, cols] * scale.to(m.dtype)


def frobenius_norms(factors: Factors, n_rows: int) -> torch.Tensor:
    """``[n_rows]``: ``‖Σ_t δ_t u_tᵀ‖_F`` of each edit, from the factors (``Σ_{s,t} (u_s·u_t)(δ_s·δ_t)``, one batched
    Gram product per edit; ``factors.rows`` must be sorted, as
    :meth:`~instructedit_utils.methods.mend.MendEditor.inner_pass` gives them)."""
    rows = factors.rows if factors.rows is not None else torch.zeros(len(factors.u), dtype=torch.long,
                                                                         device=factors.u.device)
    if len(rows) > 1 and bool((rows[1:] < rows[:-1]).any()):
        raise ValueError("factors.rows must be sorted (tokens grouped by edit)")
    counts = torch.bincount(rows, minlength=n_rows).tolist()
    pad = torch.nn.utils.rnn.pad_sequence
    u = pad(list(factors.u.float().split(counts)), batch_first=True)
    d = pad(list(factors.delta.float().split(counts)), batch_first=True)
    gram = (u @ u.transpose(1, 2)) * (d @ d.transpose(1, 2))
    return gram.double().sum((1, 2)).clamp_min(0).sqrt().cpu()


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


MAX_TARGETS = 64  # target tokens per forward/backward pass: their logits (x vocabulary) dominate its memory


def _target_budget(parts: list[list[int]], n_targets: Sequence[int], budget: int = MAX_TARGETS) -> list[list[int]]:
    """Split batches so that none holds more than ``budget`` target tokens (a single longer edit stays alone):
    the LM head's logits, log-probabilities and their gradient are ``targets × vocabulary`` each."""
    out = []
    for part in parts:
        current, total = [], 0
        for i in part:
            if current and total + n_targets[i] > budget:
                out.append(current)
                current, total = [], 0
            current.append(i)
            total += n_targets[i]
        out.append(current)
    return out


@torch.no_grad()
def editing_areas(editor: MendEditor, model, tokenizer, requests: Sequence[EditRequest], sketch: Sketch,
                  batch_edits: int = 16, runner=None) -> AreaBatch:
    """The editing areas of ``requests`` (module docstring), ``batch_edits`` edits per forward/backward pass.

    ``runner``: the forward runner to use (default: the editor's own). Editors whose first edited block is the same
    can share one :class:`~instructedit_utils.models.forward.SplitForward`; inside its
    :meth:`~instructedit_utils.models.forward.SplitForward.reusing_states` the lower blocks then run once per distinct
    prompt for all of them (the lower blocks are the same for every editor)."""
    runner = runner if runner is not None else editor.runner(model)
    if isinstance(runner, SplitForward) and runner.start != editor.first_block(model):
        raise ValueError(f"runner splits at block {runner.start}, the editor's first edited block is "
                         f"{editor.first_block(model)}")
    encs = [encode_pair(tokenizer, r.prompt, r.target) for r in requests]
    headers = [tuple(tokenizer(r.header)["input_ids"]) if r.header else () for r in requests]
    names = [t.name for t in editor.targets]
    sketches = {n: np.zeros((len(requests), sketch.dim), dtype=np.float32) for n in names}
    norms = {n: np.zeros(len(requests)) for n in names}
    raw = {n: np.zeros(len(requests)) for n in names}
    seqs = [e.inputs for e in encs]
    for part in _target_budget(length_batches([len(s) - len(h) for s, h in zip(seqs, headers)], batch_edits),
                               [len(e.target_positions) for e in encs]):
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


@dataclass
class AreaJob:
    """One editor's collection: its method, requests, folder, sketch, condition and settings (see
    :func:`collect_areas`)."""

    method: Any
    requests: Sequence[EditRequest]
    folder: str | Path
    sketch: Sketch
    condition: str = "seen"
    settings: Mapping[str, Any] | None = None


class _Store:
    """The resumable store of one :class:`AreaJob` (settings and editor checked when opened)."""

    def __init__(self, job: AreaJob):
        self.job, self.run = job, RunFolder(job.folder)
        self.fingerprint = job.method.fingerprint
        full = {**(job.settings or {}), "sketch": {"kind": job.sketch.kind, "dim": job.sketch.dim,
                                                   "seed": job.sketch.seed},
                "condition": job.condition, "requests": requests_digest(job.requests)}
        self.stamp = self.run.check_settings(MANIFEST, full)
        old = read_manifest(self.run)
        others = {row["fingerprint"] for row in old} - {self.fingerprint}
        if others:
            raise ValueError(f"{self.run.cases_path(MANIFEST)} holds vectors of another editor ({sorted(others)}, "
                             f"now {self.fingerprint}); delete the folder or use another run folder")
        self.written = len(old)
        done = {row["case_id"] for row in old}
        self.todo = [r for r in job.requests if r.case_id not in done]

    def write(self, part: Sequence[EditRequest], areas: AreaBatch) -> None:
        """A chunk file (written atomically), then its manifest lines."""
        from safetensors.numpy import save_file

        name = f"chunk_{self.written:06d}.safetensors"
        tmp = self.run.path / (name + ".tmp")
        save_file({n: np.ascontiguousarray(v) for n, v in areas.sketches.items()}, str(tmp))
        tmp.replace(self.run.path / name)
        rows = _manifest_rows(part, areas, self.job.method.name, self.fingerprint, self.job.condition, name)
        self.run.append_cases(MANIFEST, [{**row, "settings": self.stamp} for row in rows])
        self.written += len(part)


def collect_many(jobs: Sequence[AreaJob], model, tokenizer, *, batch_edits: int = 16, chunk: int = 64,
                 progress: Callable | None = None, runner=None) -> None:
    """:func:`collect_areas` for several editors at once. With a shared ``runner``
    (:class:`~instructedit_utils.models.forward.SplitForward`), the records are taken in chunks of ``chunk`` prompts and
    every editor collects its requests of a chunk inside one :meth:`~instructedit_utils.models.forward.SplitForward.
    reusing_states` block: the lower blocks run once per prompt for all editors (e.g. MEND and the single-task editors,
    which see the same prompts), and only one chunk's lower states are held at a time."""
    stores = [_Store(job) for job in jobs]
    prompts = list(dict.fromkeys((r.prompt, r.target) for st in stores for r in st.todo))
    starts = range(0, len(prompts), chunk)
    for start in (progress(starts) if progress else starts):
        wanted = set(prompts[start:start + chunk])
        with runner.reusing_states() if runner is not None else contextlib.nullcontext():
            for st in stores:
                part = [r for r in st.todo if (r.prompt, r.target) in wanted]
                if part:
                    st.write(part, editing_areas(st.job.method.editor, model, tokenizer, part, st.job.sketch,
                                                 batch_edits, runner))


def collect_areas(method, model, tokenizer, requests: Sequence[EditRequest], folder: str | Path, sketch: Sketch, *,
                  condition: str = "seen", settings: Mapping[str, Any] | None = None, batch_edits: int = 16,
                  chunk: int = 64, progress: Callable | None = None, runner=None) -> None:
    """Collect the editing areas of ``requests`` with ``method`` (a trained
    :class:`~instructedit_utils.methods.mend.TrainedEditor`) into ``folder``: ``chunk_<n>.safetensors`` (one tensor per
    edited matrix, ``[rows, k]``) and ``manifest.jsonl`` (one line per vector). Finished cases are skipped; vectors of
    another editor, or of other ``settings`` (recorded with the sketch's dimension and seed), are an error naming the
    folder. ``runner``: see :func:`editing_areas`."""
    collect_many([AreaJob(method, requests, folder, sketch, condition, settings)], model, tokenizer,
                 batch_edits=batch_edits, chunk=chunk, progress=progress, runner=runner)


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
