"""Split forward passes: compute the frozen lower blocks once, replay only the edited upper blocks.

An edit changes only blocks ``start..L-1`` (the edited MLPs), so everything below them is the same before and after
the edit. :class:`SplitForward` therefore

* runs the lower blocks once per sequence (no grad) and keeps the residual stream entering block ``start``
  (:meth:`SplitForward.lower`); a shared **instruction header** ("Task: …\\nDescription: …\\nInput:") is computed once
  and kept as a key/value cache, so later sequences with the same header only pay for their own tokens;
* replays the upper blocks, the final norm and the LM head on a batch of such states (:meth:`SplitForward.upper`),
  computing logits only at the positions a loss or metric needs.

Scoring (:func:`score_split`, used by the evaluation harness) goes further, since it needs no gradients: rows with
*different* headers share one lower pass (:meth:`SplitForward.lower_rows`, each row attending to its own cached
prefix), each header goes through the upper blocks once per batch (:meth:`SplitForward.upper_prefixed`), batches are
cut to minimise padding (:func:`length_batches`), sequences stop before their last (label-only) token and the LM head
runs on the hidden states of several batches at once.

The results equal a full forward pass up to float rounding (tests compare both). Architectures whose blocks receive
different masks (Gemma-3's sliding-window layers) are not supported (:func:`supports_split`); callers fall back to
full forward passes there.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .losses import fused_head_nll, nll
from .metrics import _pad_batch
from .loading import arch_spec, lower_dtype_of


class StopForward(Exception):
    """Raised by a hook that has what it needs, to end the forward pass there (:func:`forward_until_stop`);
    ``payload`` carries what it found."""

    def __init__(self, payload: Any = None):
        super().__init__()
        self.payload = payload


def forward_until_stop(model: nn.Module, **model_kwargs) -> StopForward | None:
    """``model(**model_kwargs)`` until one of its hooks raises :class:`StopForward`: that stop (with its payload), or
    None when the pass ran to its end. The caller registers and removes its hooks."""
    try:
        model(**model_kwargs)
    except StopForward as stop:
        return stop
    return None


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

    def __init__(self, model: nn.Module, start: int, max_headers: int = 64):
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
        self.headers: OrderedDict[tuple[int, ...], tuple[list, torch.Tensor]] = OrderedDict()
        self.max_headers = max_headers
        self._states: dict[tuple[int, ...], torch.Tensor] | None = None
        self.lower_dtype = lower_dtype_of(model)

    def _lower_precision(self):
        """The context of every pass through the lower blocks: bfloat16 autocast when the model's lower precision
        says so (:func:`~instructedit_utils.models.loading.set_lower_dtype`), else none. Read when the runner is
        built, so that its header cache holds states of one precision only."""
        if self.lower_dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @contextlib.contextmanager
    def reusing_states(self, states: dict | None = None):
        """Inside the block, lower states are kept and served again for the same sequence or any prefix of it.

        Scoring many prompts of one model and its edits (which never touch the lower blocks) then runs the lower
        blocks once per distinct prompt. Off by default: a training step must not depend on what was computed before
        (resumed runs are bit-exact). The kept states are dropped on exit, unless the caller hands in ``states``, a
        dict it keeps: they are kept there and served again in a later block with the same dict (the trainer's
        validation rounds score the same requests every time; the states do not depend on the editor).
        """
        outer = self._states
        self._states = states if states is not None else ({} if outer is None else outer)
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
            raise StopForward((args, kwargs))

        handle = block.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            stopped = forward_until_stop(self.model, **model_kwargs)
        finally:
            handle.remove()
        if stopped is None:
            raise RuntimeError(f"Block {block.__class__.__name__} was never called")
        return stopped.payload

    @staticmethod
    def _hidden(args, kwargs) -> torch.Tensor:
        return args[0] if args else kwargs["hidden_states"]

    @torch.no_grad()
    def _headers(self, headers: Sequence[tuple[int, ...]]) -> list[tuple[list, torch.Tensor]]:
        """Per header, its key/value states (one ``(keys, values)`` pair per lower block, each ``[1, heads, P, d]``)
        and residual stream ``[P, d]``, kept in an LRU cache. The missing ones are computed in one right-padded
        batch (causal attention: a row's states at its own positions do not depend on the padding after them). A
        single missing header is computed alone, as the training step needs (results independent of the cache's
        history)."""
        from transformers import DynamicCache

        missing = list(dict.fromkeys(h for h in headers if h not in self.headers))
        if missing:
            ids, mask = _pad_batch(missing, 0, device=self.device)
            cache = DynamicCache(config=self.model.config)
            kwargs = dict(input_ids=ids, cache=cache, use_cache=True)
            if len(missing) > 1:
                kwargs["attention_mask"] = mask
            with self._lower_precision():
                args, kw = self._run_until(self.blocks[self.start], **kwargs)
            hidden = self._hidden(args, kw).detach().to(self.final_norm.weight.dtype)
            for i, h in enumerate(missing):
                kv = [(layer.keys[i:i + 1, :, :len(h)].clone(), layer.values[i:i + 1, :, :len(h)].clone())
                      for layer in cache.layers[:self.start]]
                self.headers[h] = (kv, hidden[i, :len(h)].clone())
        out = []
        for h in headers:
            self.headers.move_to_end(h)
            out.append(self.headers[h])
        while len(self.headers) > self.max_headers:
            self.headers.popitem(last=False)
        return out

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
        n_h = len(seqs) if header_rows is None else header_rows
        header = tuple(header)
        return self.lower_rows(seqs, [header if i < n_h else () for i in range(len(seqs))])

    @torch.no_grad()
    def lower_rows(self, seqs: Sequence[Sequence[int]], headers: Sequence[Sequence[int]],
                   batch_size: int | None = None) -> list[torch.Tensor]:
        """:meth:`lower` with a header per row (``()`` for none): rows with different instruction headers share a
        batched pass, each attending to its own cached prefix (padded to the longest one and masked). All headers
        missing from the cache are computed first, in one batch. With ``batch_size`` the rows go in batches of at
        most that many, of similar length after their header (:func:`length_batches`). Inside
        :meth:`reusing_states` only sequences not seen before are computed."""
        if len(seqs) != len(headers):
            raise ValueError(f"{len(seqs)} sequences but {len(headers)} headers")
        seqs = [tuple(s) for s in seqs]
        headers = [tuple(h) for h in headers]
        found: list[torch.Tensor | None] = [None] * len(seqs)
        if self._states is not None:
            found = [self._kept(s) for s in seqs]
        missing = [i for i, f in enumerate(found) if f is None]
        if not missing:
            return found  # type: ignore[return-value]
        lens = self._prefix_lens([seqs[i] for i in missing], [headers[i] for i in missing])
        keys = list(dict.fromkeys(seqs[i][:p] for i, p in zip(missing, lens) if p))
        entries = dict(zip(keys, self._headers(keys)))  # held here: the LRU may drop some before the last batch
        parts = ([list(range(len(missing)))] if batch_size is None or batch_size >= len(missing) else
                 length_batches([len(seqs[i]) - p for i, p in zip(missing, lens)], batch_size))
        for part in parts:
            rows = [missing[k] for k in part]
            for i, h in zip(rows, self._lower([seqs[i] for i in rows], [lens[k] for k in part], entries)):
                found[i] = h
                if self._states is not None:
                    self._states[seqs[i]] = h
        return found  # type: ignore[return-value]

    def lower_each(self, seqs: Sequence[Sequence[int]], headers: Sequence[Sequence[int]], store=None
                   ) -> list[torch.Tensor]:
        """:meth:`lower_rows` with every sequence computed **alone**: its states then depend on its tokens and
        header only, never on what else is in the batch (padding changes the float rounding), so they can be kept
        and served again bit for bit. With ``store`` (a :class:`~instructedit_utils.models.states.LowerStates`) a
        sequence's states come from it when it holds them, and are put there when computed. Alone costs about what
        the batch costs (``bench_levers.py --levers cache``)."""
        if len(seqs) != len(headers):
            raise ValueError(f"{len(seqs)} sequences but {len(headers)} headers")
        out = []
        for seq, header in zip(seqs, headers):
            state = store.get(header, seq) if store is not None else None
            if state is None:
                state = self.lower_rows([seq], [header])[0]
                if store is not None:
                    store.put(header, seq, state)
            out.append(state.to(self.device))
        return out

    @staticmethod
    def _prefix_lens(seqs: Sequence[tuple[int, ...]], headers: Sequence[tuple[int, ...]]) -> list[int]:
        """Per row, how many leading tokens come from its header's cache: per header, the prefix all its rows share
        with it (never a whole row: each keeps a token of its own); 0 where that is under 2 tokens."""
        prefix: dict[tuple[int, ...], int] = {}
        for s, h in zip(seqs, headers):
            if h:
                prefix[h] = min(prefix.get(h, len(h)), common_prefix_len(s, h), len(s) - 1)
        return [prefix[h] if h and prefix[h] >= 2 else 0 for h in headers]

    def _lower(self, seqs: list[tuple[int, ...]], lens: list[int], entries: dict[tuple[int, ...], tuple]
               ) -> list[torch.Tensor]:
        """One batched pass; row ``i``'s first ``lens[i]`` tokens come from its header's ``entries`` (as given by
        :meth:`_headers`)."""
        kv = [entries[s[:p]][0] if p else None for s, p in zip(seqs, lens)]
        with self._lower_precision():
            args, kw = self._run_until(self.blocks[self.start], **self._prefixed_inputs(seqs, lens, kv))
        hidden = self._hidden(args, kw).to(self.final_norm.weight.dtype)  # the upper blocks' dtype, whatever autocast
        parts = [s[p:] for s, p in zip(seqs, lens)]
        out = []
        for i, (s, full, p) in enumerate(zip(parts, seqs, lens)):
            h = hidden[i, :len(s)]
            out.append(torch.cat([entries[full[:p]][1], h], 0) if p else h.clone())
        return out

    def _prefixed_inputs(self, seqs: Sequence[tuple[int, ...]], lens: Sequence[int], kv: Sequence[list | None]
                         ) -> dict[str, Any]:
        """Model inputs for rows whose first ``lens[i]`` tokens are given as key/value states ``kv[i]`` (one
        ``(keys, values)`` pair per cached layer, ``[1, heads, lens[i], d]``): the prefixes are padded to the
        longest one and masked, each row's own tokens get position ids after its own prefix."""
        width_p = max(lens)
        parts = [s[p:] for s, p in zip(seqs, lens)]
        width = max(len(s) for s in parts)
        ids = torch.zeros((len(seqs), width), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(seqs), width_p + width), dtype=torch.long, device=self.device)
        positions = torch.zeros((len(seqs), width), dtype=torch.long, device=self.device)
        for i, (s, p) in enumerate(zip(parts, lens)):
            ids[i, :len(s)] = torch.tensor(s, device=self.device)
            mask[i, :p] = 1
            mask[i, width_p:width_p + len(s)] = 1
            positions[i] = torch.arange(p, p + width, device=self.device)
        kwargs: dict[str, Any] = dict(input_ids=ids, attention_mask=mask, position_ids=positions,
                                      use_cache=width_p > 0)
        if not width_p:
            return kwargs
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        template = next(r for r in kv if r is not None)
        shared = len({id(r) for r in kv}) == 1 and all(p == width_p for p in lens)
        for layer_idx, (k0, v0) in enumerate(template):
            if shared:
                k, v = k0.expand(len(seqs), -1, -1, -1).clone(), v0.expand(len(seqs), -1, -1, -1).clone()
            else:
                k = k0.new_zeros((len(seqs), k0.shape[1], width_p, k0.shape[3]))
                v = v0.new_zeros((len(seqs), v0.shape[1], width_p, v0.shape[3]))
                for i, (r, p) in enumerate(zip(kv, lens)):
                    if p:
                        k[i, :, :p] = r[layer_idx][0][0]
                        v[i, :, :p] = r[layer_idx][1][0]
            cache.layers[layer_idx].update(k, v)
        kwargs["cache"] = cache
        return kwargs

    @torch.no_grad()
    def upper_prefixed(self, seqs: Sequence[Sequence[int]], lowers: Sequence[torch.Tensor],
                       headers: Sequence[Sequence[int]], pad_id: int, rows: torch.Tensor, positions: torch.Tensor,
                       logits: bool = True) -> torch.Tensor:
        """:meth:`upper` for scoring (no grad): each distinct header's tokens go through the upper blocks once
        (with the current weights, never kept across calls: an edit changes them), and the rows starting with it
        only replay their own tokens against that key/value prefix. Same logits as
        ``upper(batch(seqs, lowers, pad_id), rows, positions)`` up to float rounding. With ``logits=False`` the
        final hidden states at those positions (:meth:`head` turns them into logits)."""
        seqs = [tuple(s) for s in seqs]
        lens = self._prefix_lens(seqs, [tuple(h) for h in headers])
        row_list = rows.tolist()
        if not any(lens) or any(p < lens[r] for r, p in zip(row_list, positions.tolist())):
            batch = self.batch(seqs, lowers, pad_id)
            h = self._replay(batch.hidden, batch.block_args, batch.block_kwargs)[rows, positions]
            return self.head(h) if logits else h
        keys = list(dict.fromkeys(s[:p] for s, p in zip(seqs, lens) if p))
        lower_kv = [kv for kv, _ in self._headers(keys)]
        first = {k: next(i for i, (s, p) in enumerate(zip(seqs, lens)) if p and s[:p] == k) for k in keys}
        # the headers through the upper blocks, in one right-padded batch
        from transformers import DynamicCache

        head = self._prefixed_inputs(keys, [0] * len(keys), [None] * len(keys))
        head["use_cache"], head["cache"] = True, (cache := DynamicCache(config=self.model.config))
        args, kw = self._run_until(self.blocks[0], **head)
        h = lowers[0].new_zeros((len(keys), max(map(len, keys)), lowers[0].shape[-1]))
        for j, k in enumerate(keys):
            h[j, :len(k)] = lowers[first[k]][:len(k)]
        self._replay(h, tuple(args[1:]), kw)
        upper_kv = {k: [(layer.keys[j:j + 1, :, :len(k)], layer.values[j:j + 1, :, :len(k)])
                        for layer in cache.layers[self.start:]]
                    for j, k in enumerate(keys)}
        kv_of = {k: lower_kv[j] + upper_kv[k] for j, k in enumerate(keys)}
        kv = [kv_of[s[:p]] if p else None for s, p in zip(seqs, lens)]
        args, kw = self._run_until(self.blocks[0], **self._prefixed_inputs(seqs, lens, kv))
        own = lowers[0].new_zeros((len(seqs), max(len(s) - p for s, p in zip(seqs, lens)), lowers[0].shape[-1]))
        for i, (low, p) in enumerate(zip(lowers, lens)):
            own[i, :len(low) - p] = low[p:]
        h = self._replay(own, tuple(args[1:]), kw)
        shift = torch.tensor([lens[r] for r in row_list], device=positions.device)
        h = h[rows, positions - shift]
        return self.head(h) if logits else h

    @torch.no_grad()
    def prefix_states(self, seq: Sequence[int], lower: torch.Tensor, p: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Key/value states of the first ``p`` tokens of ``seq`` in the upper blocks (``lower``: the sequence's
        residual stream entering block ``start``), under the hooks active now; for :meth:`suffix_logits`, which
        replays only the tokens after them. One ``(keys, values)`` pair per block from 0 (zeros below ``start``:
        those blocks never run on the suffix)."""
        from transformers import DynamicCache

        prefix = tuple(seq[:p])
        head = self._prefixed_inputs([prefix], [0], [None])
        head["use_cache"], head["cache"] = True, (cache := DynamicCache(config=self.model.config))
        args, kw = self._run_until(self.blocks[0], **head)
        self._replay(lower[None, :p], tuple(args[1:]), kw)
        upper = [(layer.keys[:, :, :p].clone(), layer.values[:, :, :p].clone())
                 for layer in cache.layers[self.start:]]
        zeros = [(torch.zeros_like(upper[0][0]), torch.zeros_like(upper[0][1]))] * self.start
        return zeros + upper

    def suffix_logits(self, seq: Sequence[int], lower: torch.Tensor, p: int,
                      kv: list[tuple[torch.Tensor, torch.Tensor]], positions: torch.Tensor) -> torch.Tensor:
        """Logits at ``positions`` (all ``>= p``) of ``seq``, replaying only tokens ``p…`` through the upper blocks
        against the prefix states ``kv`` of :meth:`prefix_states` (differentiable; the same logits as
        :meth:`upper` on the whole sequence up to float rounding, as long as what changes acts at positions ``>= p``
        only)."""
        seq = tuple(seq)
        args, kw = self._run_until(self.blocks[0], **self._prefixed_inputs([seq], [p], [kv]))
        h = self._replay(lower[None, p:], tuple(args[1:]), kw)
        return self.head(h[0, positions - p])

    def _replay(self, h: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        for block in self.blocks[self.start:]:
            out = block(h, *args, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def upper_hidden(self, batch: UpperBatch, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``[N, d]`` (before the final norm) at (row, position) pairs: :meth:`upper` without
        the head."""
        return self._replay(batch.hidden, batch.block_args, batch.block_kwargs)[rows, positions]

    def head_nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean NLL of ``targets`` [N] at final hidden states ``h`` [N, d]: ``nll(head(h), targets)`` with one read
        of the LM head's weight (:func:`fused_head_nll`) where the head is a frozen, bias-free matrix without a soft
        cap, else through :meth:`head`."""
        weight = getattr(self.lm_head, "weight", None)
        if self.softcap is not None or getattr(self.lm_head, "bias", None) is not None or weight is None or \
                weight.requires_grad:

            return nll(self.head(h), targets)
        return fused_head_nll(self.final_norm(h), weight, targets)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from final hidden states: final norm, LM head (and Gemma's soft cap)."""
        logits = self.lm_head(self.final_norm(h))
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

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
        h = self._replay(batch.hidden, batch.block_args, batch.block_kwargs)
        return self.head(h[rows, positions])


class FullForward:
    """The runner interface of :class:`SplitForward` with plain full forward passes
    (architectures whose blocks cannot be replayed separately)."""

    def __init__(self, model: nn.Module):
        self.model = model

    @contextlib.contextmanager
    def reusing_states(self, states: dict | None = None):
        yield self

    def lower(self, seqs: Sequence[Sequence[int]], header: Sequence[int] = (), header_rows: int | None = None
              ) -> list[None]:
        return [None] * len(seqs)

    def lower_rows(self, seqs: Sequence[Sequence[int]], headers: Sequence[Sequence[int]],
                   batch_size: int | None = None) -> list[None]:
        return [None] * len(seqs)

    def lower_each(self, seqs: Sequence[Sequence[int]], headers: Sequence[Sequence[int]], store=None) -> list[None]:
        return [None] * len(seqs)

    def batch(self, seqs: Sequence[Sequence[int]], lowers, pad_id: int):

        ids, mask = _pad_batch(seqs, pad_id, device=next(self.model.parameters()).device)
        return UpperBatch(ids, mask, None, (), {})

    def upper(self, batch, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[rows, positions]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def upper_prefixed(self, seqs, lowers, headers, pad_id: int, rows: torch.Tensor, positions: torch.Tensor,
                       logits: bool = True) -> torch.Tensor:
        if not logits:
            raise ValueError("FullForward gives logits only")
        return self.upper(self.batch(seqs, lowers, pad_id), rows, positions)


def length_batches(lengths: Sequence[int], max_rows: int, overhead: int = 16) -> list[list[int]]:
    """Split indices into batches of at most ``max_rows`` rows of similar length, minimising padded tokens plus
    ``overhead`` token-equivalents per batch (the fixed cost of a pass): sort by length, then the optimal cut
    of the sorted list into contiguous batches (dynamic programming, ``O(n · max_rows)``)."""
    if max_rows < 1:
        raise ValueError("max_rows must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + (j - i) * lengths[order[i]] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], n
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]
