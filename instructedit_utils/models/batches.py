"""Batches for the split forward (:class:`~instructedit_utils.models.forward.SplitForward` or
:class:`~instructedit_utils.models.forward.FullForward`): one edit's prompt and target as a batch
(:func:`edit_batch`), sequences grouped by length (:func:`length_batches`) and teacher-forced scoring of many
sequences through a runner (:func:`score_split`: lower blocks once per distinct prompt, headers from a cache)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .metrics import Encoded, TargetScore, encode_pair, scores_from_logits
from .forward import SplitForward, common_prefix_len, length_batches

@dataclass
class EditBatch:
    """One edit (prompt + target) as a one-row batch of a runner: the batch, (row, position) of each target token's
    *predictor* (the position before it), the target ids, the position of the prompt's last token and the tokens."""

    batch: Any
    rows: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    key_position: int
    input_ids: tuple[int, ...]


def edit_batch(runner, tokenizer, prompt: str, target: str, header: str | None = None) -> EditBatch:
    """``prompt + target`` as a one-row batch of ``runner`` (its lower states from the runner's caches: the
    instruction ``header``'s key/values, and kept states inside :meth:`SplitForward.reusing_states`)."""

    enc = encode_pair(tokenizer, prompt, target)
    header_ids = tuple(tokenizer(header)["input_ids"]) if header else ()
    batch = runner.batch([enc.inputs], runner.lower([enc.inputs], header_ids), tokenizer.pad_token_id)
    dev = batch.attention_mask.device
    pos = torch.tensor(enc.target_positions, device=dev) - 1
    return EditBatch(batch, torch.zeros_like(pos), pos, torch.tensor(enc.targets, device=dev),
                     enc.target_positions[0] - 1, enc.input_ids)


def edits_batch(runner, tokenizer, prompts: Sequence[str], targets: Sequence[str],
                headers: Sequence[str | None] | None = None) -> EditBatch:
    """Several edits (``prompts[i] + targets[i]``) as one batch of ``runner``, one row each (right padded; rows never
    attend to each other): ``rows``/``positions`` locate every target token's predictor over all rows, in order.
    ``key_position`` and ``input_ids`` are the first edit's."""
    if not prompts or len(prompts) != len(targets):
        raise ValueError(f"edits_batch needs as many targets as prompts (at least one), got {len(prompts)} and "
                         f"{len(targets)}")
    headers = list(headers) if headers is not None else [None] * len(prompts)
    encs = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    header_ids = [tuple(tokenizer(h)["input_ids"]) if h else () for h in headers]
    seqs = [e.inputs for e in encs]
    batch = runner.batch(seqs, runner.lower_rows(seqs, header_ids), tokenizer.pad_token_id)
    dev = batch.attention_mask.device
    rows = torch.tensor([i for i, e in enumerate(encs) for _ in e.target_positions], device=dev)
    pos = torch.tensor([p for e in encs for p in e.target_positions], device=dev) - 1
    ids = torch.tensor([t for e in encs for t in e.targets], device=dev)
    return EditBatch(batch, rows, pos, ids, encs[0].target_positions[0] - 1, encs[0].input_ids)


def _header_for(seq: Sequence[int], headers: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The header ``seq`` starts with (all but possibly its last token, which may merge with the text), if any."""
    best, best_len = (), 1
    for h in headers:
        p = common_prefix_len(seq, h)
        if p >= max(2, len(h) - 1) and p > best_len:
            best, best_len = h, p
    return best


_HEAD_ROWS = 1024  # target positions per LM-head call when deferred (logits of 1024 × 49k floats: 200 MB)


@torch.no_grad()
def score_split(runner, encoded: Sequence[Encoded], pad_id: int, batch_size: int = 16,
                headers: Sequence[Sequence[int]] = ()) -> list[TargetScore]:
    """Teacher-forced scores like :func:`~instructedit_utils.models.metrics.score_encoded`, through a runner
    (:class:`SplitForward` or :class:`FullForward`), on batches of similar length: lower states (each row's
    instruction header, one of ``headers``, from the key/value cache; states reused inside
    :meth:`SplitForward.reusing_states`), then the upper blocks, with logits only at the target positions.
    Sequences stop before their last target token (:attr:`Encoded.inputs`): it is only a label."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    headers = [tuple(h) for h in headers if h]
    seqs = [e.inputs for e in encoded]
    # lower states and upper blocks in batches of similar length *after* the header: the header tokens come from
    # key/value caches in both
    row_headers = [_header_for(s, headers) for s in seqs]
    lowers = runner.lower_rows(seqs, row_headers, batch_size=batch_size)
    results: list[TargetScore | None] = [None] * len(encoded)
    dev = runner.device
    # the LM head is the largest matrix: with a split runner it runs on the hidden states of several batches at once
    deferred = isinstance(runner, SplitForward)
    pending: list[tuple[list[int], torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        out = torch.cat([h for _, h in pending])
        logits = runner.head(out) if deferred else out
        idx = [i for ids, _ in pending for i in ids]
        for i, score in zip(idx, scores_from_logits(logits, [encoded[i] for i in idx])):
            results[i] = score
        pending.clear()

    # an upper batch also replays its rows' headers once: a larger fixed cost per batch
    for idx in length_batches([len(s) - len(h) for s, h in zip(seqs, row_headers)], batch_size, overhead=48):
        rows = torch.tensor([r for r, i in enumerate(idx) for _ in encoded[i].target_positions], device=dev)
        pos = torch.tensor([p for i in idx for p in encoded[i].target_positions], device=dev)
        out = runner.upper_prefixed([seqs[i] for i in idx], [lowers[i] for i in idx],
                                    [row_headers[i] for i in idx], pad_id, rows, pos - 1, logits=not deferred)
        pending.append((idx, out))
        if not deferred or sum(len(h) for _, h in pending) >= _HEAD_ROWS:
            flush()
    flush()
    return results  # type: ignore[return-value]
