"""Split forward passes: compute the frozen lower blocks once, replay only the edited upper blocks.

An edit changes only blocks ``start..L-1`` (the edited MLPs), so everything below them is the same before and after
the edit. :class:`SplitForward` therefore

* runs the lower blocks once per sequence (no grad) and keeps the residual stream entering block ``start``
  (:meth:`SplitForward.lower`); a shared **instruction header** ("Task: …\\nDescription: …\\nInput:") is computed once
  and kept as a key/value cache, so later sequences with the same header only pay for their own tokens;
* replays the upper blocks, the final norm and the LM head on a batch of such states (:meth:`SplitForward.upper`),
  computing logits only at the positions a loss or metric needs.

The results equal a full forward pass up to float rounding (tests compare both). Architectures whose blocks receive
different masks (Gemma-3's sliding-window layers) are not supported (:func:`supports_split`); callers fall back to
full forward passes there.
"""
from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .metrics import Encoded, TargetScore, _pad_batch, scores_from_logits
from .models import arch_spec


class _Stop(Exception):
    def __init__(self, args, kwargs):
        self.args_, self.kwargs_ = args, kwargs


def supports_split(model: nn.Module) -> bool:
    try:
        return arch_spec(model).uniform_blocks
    except KeyError:
        return False


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class UpperBatch:
    """Residual states entering block ``start`` for a right-padded batch, plus the block arguments."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    hidden: torch.Tensor | None  # [B, T, d] (None for full forward passes)
    block_args: tuple
    block_kwargs: dict[str, Any]


class SplitForward:
    """Lower/upper split of a causal LM at block ``start`` (see the module docstring)."""

    def __init__(self, model: nn.Module, start: int, max_headers: int = 32):
        if not supports_split(model):
            raise ValueError(f"{type(model).__name__}: blocks take different arguments; use full forward passes")
        spec = arch_spec(model)
        self.model = model
        self.blocks = model.get_submodule(spec.layers_path)
        n = len(self.blocks)
        self.start = start + n if start < 0 else start
        if not 0 <= self.start < n:
            raise ValueError(f"start block {start} out of range for {n} blocks")
        self.final_norm = model.get_submodule(spec.final_norm)
        self.lm_head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.headers: OrderedDict[tuple[int, ...], tuple[Any, torch.Tensor]] = OrderedDict()
        self.max_headers = max_headers
        self._states: dict[tuple[int, ...], torch.Tensor] | None = None

    @contextlib.contextmanager
    def reusing_states(self):
        """Inside the block, lower states are kept and served again for the same sequence or any prefix of it.

        Scoring many prompts of one model and its edits (which never touch the lower blocks) then runs the lower
        blocks once per distinct prompt. Off by default: a training step must not depend on what was computed before
        (resumed runs are bit-exact). The kept states are dropped on exit.
        """
        outer = self._states
        self._states = {} if outer is None else outer
        try:
            yield self
        finally:
            self._states = outer

    def _kept(self, seq: tuple[int, ...]) -> torch.Tensor | None:
        state = self._states.get(seq)
        if state is not None:
            return state
        n = len(seq)
        for key, value in self._states.items():
            if len(key) > n and key[:n] == seq:
                return value[:n]
        return None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- lower blocks ---------------------------------------------------------------------------------------------
    def _run_until(self, block: nn.Module, **model_kwargs) -> tuple[tuple, dict]:
        """Run the model until ``block`` is about to be called; return that call's (args, kwargs)."""
        def stop(module, args, kwargs):
            raise _Stop(args, kwargs)

        handle = block.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.model(**model_kwargs)
        except _Stop as s:
            return s.args_, s.kwargs_
        finally:
            handle.remove()
        raise RuntimeError(f"Block {block.__class__.__name__} was never called")

    @staticmethod
    def _hidden(args, kwargs) -> torch.Tensor:
        return args[0] if args else kwargs["hidden_states"]

    @torch.no_grad()
    def _header(self, header: tuple[int, ...]):
        if header in self.headers:
            self.headers.move_to_end(header)
            return self.headers[header]
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([header], device=self.device)
        args, kwargs = self._run_until(self.blocks[self.start], input_ids=ids, cache=cache, use_cache=True)
        entry = (cache, self._hidden(args, kwargs)[0].detach())
        self.headers[header] = entry
        if len(self.headers) > self.max_headers:
            self.headers.popitem(last=False)
        return entry

    @torch.no_grad()
    def lower(self, seqs: Sequence[Sequence[int]], header: Sequence[int] = (), header_rows: int | None = None
              ) -> list[torch.Tensor]:
        """Residual streams entering block ``start``, one ``[T_i, d]`` tensor per sequence, in **one** batched pass
        (small batches on CPU are bound by streaming the weights, so one pass for all sequences is what is fast).

        The first ``header_rows`` sequences (default: all) start with ``header`` (token ids of an instruction
        header); the tokens they share with it come from a cached key/value prefix. The other rows are masked off
        that prefix and get their own position ids, so they are computed exactly as if alone. A header is always
        computed on its own (never as part of a longer sequence), so results do not depend on what the cache held
        before: a resumed training run reproduces an uninterrupted one bit for bit.
        """
        seqs = [tuple(s) for s in seqs]
        n_h = len(seqs) if header_rows is None else header_rows
        if self._states is None:
            return self._lower(seqs, header, n_h)
        found = [self._kept(s) for s in seqs]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            computed = self._lower([seqs[i] for i in missing], header, sum(i < n_h for i in missing))
            for i, h in zip(missing, computed):
                found[i] = self._states[seqs[i]] = h
        return found  # type: ignore[return-value]

    def _lower(self, seqs: list[tuple[int, ...]], header: Sequence[int], n_h: int) -> list[torch.Tensor]:
        p = min([common_prefix_len(s, header) for s in seqs[:n_h]] + [len(s) - 1 for s in seqs[:n_h]]) \
            if n_h and header else 0
        cache, h_prefix = None, None
        if p >= 2:
            cached, h_prefix = self._header(seqs[0][:p])
            cache = copy.deepcopy(cached)
            if len(seqs) > 1:
                cache.batch_repeat_interleave(len(seqs))
        else:
            p = 0
        parts = [s[p:] if i < n_h else s for i, s in enumerate(seqs)]
        width = max(len(s) for s in parts)
        ids = torch.zeros((len(seqs), width), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(seqs), p + width), dtype=torch.long, device=self.device)
        positions = torch.zeros((len(seqs), width), dtype=torch.long, device=self.device)
        for i, s in enumerate(parts):
            ids[i, :len(s)] = torch.tensor(s, device=self.device)
            mask[i, p:p + len(s)] = 1
            offset = p if i < n_h else 0
            positions[i] = torch.arange(offset, offset + width, device=self.device)
            if i < n_h:
                mask[i, :p] = 1
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=cache is not None)
        if cache is not None:
            kwargs["cache"] = cache
        args, kw = self._run_until(self.blocks[self.start], **kwargs)
        hidden = self._hidden(args, kw)
        out = []
        for i, s in enumerate(parts):
            h = hidden[i, :len(s)]
            out.append(torch.cat([h_prefix, h], 0) if p and i < n_h else h.clone())
        return out

    def batch(self, seqs: Sequence[Sequence[int]], lowers: Sequence[torch.Tensor], pad_id: int) -> UpperBatch:
        """Right-pad lower states into a batch and get the block arguments (mask, positions) for it."""
        ids, mask = _pad_batch(seqs, pad_id, device=self.device)
        hidden = lowers[0].new_zeros((*ids.shape, lowers[0].shape[-1]))
        for i, h in enumerate(lowers):
            hidden[i, :len(h)] = h
        with torch.no_grad():
            args, kwargs = self._run_until(self.blocks[0], input_ids=ids, attention_mask=mask, use_cache=False)
        return UpperBatch(ids, mask, hidden, tuple(args[1:]), dict(kwargs))

    # ---- upper blocks ---------------------------------------------------------------------------------------------
    def upper(self, batch: UpperBatch, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, V]`` at (row, position) pairs after replaying blocks ``start..`` on ``batch``."""
        h = batch.hidden
        for block in self.blocks[self.start:]:
            out = block(h, *batch.block_args, **batch.block_kwargs)
            h = out[0] if isinstance(out, tuple) else out
        h = self.final_norm(h[rows, positions])
        logits = self.lm_head(h)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _header_for(seq: Sequence[int], headers: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The header ``seq`` starts with (all but possibly its last token, which may merge with the text), if any."""
    best, best_len = (), 1
    for h in headers:
        p = common_prefix_len(seq, h)
        if p >= max(2, len(h) - 1) and p > best_len:
            best, best_len = h, p
    return best


@torch.no_grad()
def score_split(runner, encoded: Sequence[Encoded], pad_id: int, batch_size: int = 16,
                headers: Sequence[Sequence[int]] = ()) -> list[TargetScore]:
    """Teacher-forced scores like :func:`~instructedit_utils.metrics.score_encoded`, through a runner
    (:class:`SplitForward` or the editor's ``FullForward``): lower states per sequence (instruction ``headers``
    from the key/value cache; reused inside :meth:`SplitForward.reusing_states`), the upper blocks replayed on
    batches of similar length, logits only at the target positions."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    headers = [tuple(h) for h in headers if h]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    results: list[TargetScore | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        seqs = [encoded[i].input_ids for i in idx]
        groups: dict[tuple[int, ...], list[int]] = {}
        for r, seq in enumerate(seqs):
            groups.setdefault(_header_for(seq, headers), []).append(r)
        lowers: list[Any] = [None] * len(seqs)
        for header, rows in groups.items():
            for r, h in zip(rows, runner.lower([seqs[r] for r in rows], header)):
                lowers[r] = h
        batch = runner.batch(seqs, lowers, pad_id)
        dev = batch.input_ids.device
        rows = torch.tensor([r for r, i in enumerate(idx) for _ in encoded[i].target_positions], device=dev)
        pos = torch.tensor([p for i in idx for p in encoded[i].target_positions], device=dev)
        logits = runner.upper(batch, rows, pos - 1)
        for i, score in zip(idx, scores_from_logits(logits, [encoded[i] for i in idx])):
            results[i] = score
    return results  # type: ignore[return-value]
