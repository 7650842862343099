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

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .metrics import _pad_batch
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
