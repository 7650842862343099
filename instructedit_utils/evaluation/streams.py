"""Many edits on one model through the harness: in sequence (a stream of edits kept on the model, the method's
:class:`~instructedit_utils.methods.registry.EditStream`, scored as it grows) and at once (batch editing,
:func:`evaluate_batches`).

For a stream of requests ``r_1 … r_T`` (:func:`evaluate_stream`):

* **right after each edit** ``t``: request ``r_t``'s Reliability on the model holding edits ``1 … t``
  (``when = "edit"``), teacher forced, without its rephrases and locality probes (every edit, so it stays cheap;
  those are measured at the checkpoints);
* **at each checkpoint** ``t`` (a logarithmic set, :func:`checkpoints`): every request so far, ``r_1 … r_t``,
  scored in shared batches — Reliability as retention of the earlier edits, Generalization, Locality against the
  unedited model (``when = "retention"``); at the last checkpoint (the stream's end) with every scoring option,
  the generation-based ones (greedy and natural-stop success, Fluency) included, which cost the most — and the
  perplexity of held-out text (``when = "probe"``, also at ``t = 0``: the unedited model);
* an edit that breaks the stream (a non-finite loss, weight change or weight:
  :class:`~instructedit_utils.methods.registry.StreamBroken`) ends it with a ``when = "broken"`` row naming the step
  and the reason; nothing after it is scored and nothing is skipped silently.

Every row is one flat dict (``stream``, ``method``, ``editor``, ``when``, ``after`` = edits on the model, ``position``
= the request's place in the stream, then the metrics of :func:`~.scoring.score_requests` and the unedited values as
``base/<metric>``). With a run folder the rows of a finished stream are written at once to ``<name>.jsonl`` with its
settings (other settings are refused) and a rerun reads them instead of editing again; a stream killed half way is
recomputed from its start (its edits depend on every earlier one). The model is as before when the stream ends.
Several streams of one method (:func:`evaluate_streams`) whose edits are weight deltas generate their ends together,
many edited models per batch, and are written as such a group finishes.

**Batch editing** (:func:`evaluate_batches`): the requests in consecutive groups of ``k``, each group one edit call
(:meth:`~instructedit_utils.methods.registry.EditingMethod.batch_deltas`), every request of the group scored on the
model holding that one edit; rows carry ``batch/size`` and ``batch/index`` and go to ``<name>_k<k>.jsonl``
(resumable by chunk of whole groups, whose edited models generate together).
"""
from __future__ import annotations

import contextlib
from functools import partial
from typing import Any, Sequence

from ..data.instructions import EditRequest
from ..methods.registry import EditingMethod, StreamBroken
from ..models.batches import score_split
from ..models.deltas import applied, nbytes, nonfinite
from ..models.metrics import encode_pair, perplexity, perplexity_of
from ..util.runs import RunFolder
from .harness import (UneditedScores, base_fields, case_settings, edits_by_deltas, generate_edited_fields, generates,
                      resumable_cases, teacher_forced)
from .scoring import GENERATION_DELTA_BYTES, score_requests

#: the checkpoints a stream is measured at (those up to its length, and its length)
CHECKPOINTS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_ENDED = ("done", "broken")


def checkpoints(length: int, points: Sequence[int] = CHECKPOINTS) -> tuple[int, ...]:
    """The steps a stream of ``length`` edits is measured at: ``points`` up to ``length``, and ``length``."""
    if length < 1:
        raise ValueError(f"a stream needs at least one edit, got length {length}")
    return tuple(sorted({p for p in points if 1 <= p <= length} | {length}))


def evaluate_stream(method: EditingMethod, model, tokenizer, requests: Sequence[EditRequest], *,
                    points: Sequence[int] = CHECKPOINTS, probes: tuple[Sequence[str], Sequence[str]] | None = None,
                    run: RunFolder | None = None, name: str | None = None, settings: dict[str, Any] | None = None,
                    split: bool = True, unedited: UneditedScores | None = None, lower_states: dict | None = None,
                    **score_kwargs) -> list[dict[str, Any]]:
    """Edit ``requests`` one after the other with ``method`` and score the stream (see the module docstring).

    ``probes`` = (prompts, continuations) of held-out text whose perplexity is measured at every checkpoint.
    ``split`` scores with the method's split runner (the blocks below its edits run once per prompt). ``unedited``
    keeps the unedited model's scores of the requests for every stream and method scoring the same requests
    (:class:`~.harness.UneditedScores`); ``lower_states``, a dict the caller keeps, the split runner's lower states
    for every stream of the same method (they do not depend on the edits). Returns the rows (also those of a finished
    stream read back from ``run``)."""
    return evaluate_streams(method, model, tokenizer, [requests], names=[name or f"stream_{method.name}"],
                            points=points, probes=probes, run=run, settings=settings, split=split, unedited=unedited,
                            lower_states=lower_states, **score_kwargs)[0]


def evaluate_streams(method: EditingMethod, model, tokenizer, streams: Sequence[Sequence[EditRequest]], *,
                     names: Sequence[str], points: Sequence[int] = CHECKPOINTS,
                     probes: tuple[Sequence[str], Sequence[str]] | None = None, run: RunFolder | None = None,
                     settings: dict[str, Any] | None = None, split: bool = True,
                     unedited: UneditedScores | None = None, lower_states: dict | None = None,
                     **score_kwargs) -> list[list[dict[str, Any]]]:
    """Several streams of one method, each as :func:`evaluate_stream` would score it alone (``names[i]`` names
    ``streams[i]``'s file), returning their rows in order.

    Where the method's edits are weight deltas and more than one stream is still to run, the generation-based
    measures of the streams' ends are computed together: each ended stream keeps its edits as one set of deltas
    (:meth:`~instructedit_utils.methods.registry.EditStream.deltas`) and the edited models of up to
    :data:`~.scoring.GENERATION_DELTA_BYTES` of kept deltas generate in shared batches
    (:func:`~.harness.generate_edited_fields`, equal to generating under each stream's weights up to float rounding).
    A file is then written when its group has generated (a killed run recomputes the streams of that group)."""
    if len(names) != len(streams):
        raise ValueError(f"evaluate_streams: {len(streams)} streams but {len(names)} names")
    ready = [_prepare(run, name, requests, points, probes, settings, score_kwargs)
             for name, requests in zip(names, streams)]
    todo = [i for i, (_, _, written) in enumerate(ready) if not _ended(written)]
    defer = len(todo) > 1 and generates(score_kwargs) and edits_by_deltas(method)
    out: dict[int, list[dict[str, Any]]] = {i: ready[i][2] for i in range(len(streams)) if i not in todo}
    pending: list[tuple[int, list[dict[str, Any]], dict | None]] = []
    for i in todo:
        rows, deltas = _run_stream(method, model, tokenizer, streams[i], ready[i][0], probes, split, score_kwargs,
                                   unedited, lower_states, defer)
        pending.append((i, rows, deltas))
        if not defer or i == todo[-1] or sum(nbytes(d) for _, _, d in pending) >= GENERATION_DELTA_BYTES:
            if defer:
                _generate_ends(model, tokenizer, [(streams[j], rows, d) for j, rows, d in pending], score_kwargs)
            for j, rows, _ in pending:
                out[j] = _write(run, method, names[j], rows, *ready[j][1:])
            pending.clear()
    return [out[i] for i in range(len(streams))]


def _prepare(run: RunFolder | None, name: str, requests: Sequence[EditRequest], points: Sequence[int], probes,
             settings: dict[str, Any] | None, score_kwargs: dict[str, Any]):
    """A stream's checkpoints, its settings stamp in ``run`` (other settings there are refused) and the rows
    ``run`` already holds."""
    if not requests:
        raise ValueError("evaluate_stream needs at least one request")
    if len({r.case_id for r in requests}) != len(requests):
        raise ValueError("a stream edits each record once: its requests repeat a case_id")
    marks = checkpoints(len(requests), points)
    if run is None:
        return marks, None, []
    stamp = run.check_settings(name, {**case_settings(requests, score_kwargs, settings),
                                      "stream/points": list(marks), "stream/probes": len(probes[0]) if probes else 0})
    return marks, stamp, run.read_cases(name)


def _write(run: RunFolder | None, method: EditingMethod, name: str, rows: list[dict[str, Any]], stamp,
           written: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stream's rows with their head, written to ``<name>.jsonl`` of ``run`` (a torn earlier file replaced)."""
    head = {"stream": name, "method": method.name, "editor": method.fingerprint}
    rows = [{**head, **row} for row in rows]
    if run is not None:
        if written:
            run.cases_path(name).unlink()  # a torn stream: its rows are recomputed as a whole
        run.append_cases(name, [{**row, "settings": stamp} for row in rows])
    return rows


def _generate_ends(model, tokenizer, ended: Sequence[tuple[Sequence[EditRequest], list[dict[str, Any]], dict | None]],
                   score_kwargs: dict[str, Any]) -> None:
    """The generation fields of the streams' last retention rows, every stream's edited model generating in shared
    batches (a broken stream has no such rows)."""
    part, cases, deltas = [], [], []
    for requests, rows, total in ended:
        last = [r for r in rows if r["when"] == "retention" and r["after"] == len(requests)]
        if last:
            part += list(requests)
            cases += last
            deltas += [total] * len(last)
    if part:
        generate_edited_fields(model, tokenizer, part, deltas, cases, score_kwargs)


class UneditedSubset:
    """The unedited model's scores of a sample computed once, served to every stream cut from it (the interface of
    :class:`~.harness.UneditedScores`: ``get(requests, compute)``; requests outside the sample are computed)."""

    def __init__(self, cases: Sequence[dict[str, Any]], reference: dict):
        self.cases = {c["case_id"]: c for c in cases}
        self.reference = reference

    @classmethod
    def of(cls, unedited: UneditedScores | None, requests: Sequence[EditRequest], model, tokenizer,
           method: EditingMethod, score_kwargs: dict[str, Any], split: bool = True,
           lower_states: dict | None = None) -> "UneditedSubset":
        """The scores of all ``requests`` (kept in ``unedited`` for other methods with the same requests; the lower
        states computed on the way kept in ``lower_states``)."""
        scorer, runner = _scorer(method, model, tokenizer, requests, split, score_kwargs)
        with runner.reusing_states(lower_states) if runner is not None else contextlib.nullcontext():
            return cls(*_unedited_scores(unedited, model, tokenizer, requests, scorer, score_kwargs))

    def get(self, requests: Sequence[EditRequest], compute):
        ids = {r.case_id for r in requests}
        if ids - self.cases.keys():
            return compute()
        return [self.cases[r.case_id] for r in requests], {k: v for k, v in self.reference.items() if k[0] in ids}


def stream_finished(run: RunFolder, name: str) -> bool:
    """Whether ``<name>.jsonl`` of ``run`` holds a whole stream (its last row ends it)."""
    return _ended(run.read_cases(name))


def _ended(rows: Sequence[dict[str, Any]]) -> bool:
    return bool(rows) and rows[-1].get("when") in _ENDED


def _unedited_scores(unedited, model, tokenizer, requests: Sequence[EditRequest], scorer,
                     score_kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], dict]:
    """The unedited model's (cases, reference) of ``requests``: from ``unedited`` where it keeps them (an
    :class:`~.harness.UneditedScores` or :class:`UneditedSubset`), else computed."""
    def compute():
        return score_requests(model, tokenizer, requests, scorer=scorer, **score_kwargs)

    return unedited.get(requests, compute) if unedited is not None else compute()


def _run_stream(method: EditingMethod, model, tokenizer, requests: Sequence[EditRequest], marks: tuple[int, ...],
                probes, split: bool, score_kwargs: dict[str, Any], unedited: UneditedScores | None,
                lower_states: dict | None, defer: bool = False) -> tuple[list[dict[str, Any]], dict | None]:
    """The rows of one stream (without its head): the unedited scores first, then edit by edit; with ``defer`` the
    stream's end is scored teacher forced only and its edits come back as one set of deltas for the generation
    (else None). With a split scorer the lower states are computed once per prompt for the whole stream (no edit
    touches those blocks)."""
    scorer, runner = _scorer(method, model, tokenizer, requests, split, score_kwargs)
    with runner.reusing_states(lower_states) if runner is not None else contextlib.nullcontext():
        base = _unedited_scores(unedited, model, tokenizer, requests, scorer, score_kwargs)
        return _stream_rows(method, model, tokenizer, requests, marks, probes, scorer, score_kwargs, base, defer)


def _stream_rows(method, model, tokenizer, requests, marks, probes, scorer, score_kwargs, unedited, defer
                 ) -> tuple[list[dict[str, Any]], dict | None]:
    base_cases, reference = unedited
    base = {c["case_id"]: base_fields(c) for c in base_cases}
    rows = _probe_rows(model, tokenizer, probes, 0, scorer, score_kwargs)
    quick = teacher_forced(score_kwargs)
    reliability = {**quick, "max_rephrases": 0, "max_probes": 0}  # right after an edit: its own prompt only
    end = quick if defer else score_kwargs  # generation-based measures only once the stream has ended
    with method.stream(model, tokenizer) as stream:
        for t, request in enumerate(requests, 1):
            try:
                stream.add(request)
            except StreamBroken as exc:
                return rows + [{"when": "broken", "after": t, "position": t, "case_id": request.case_id,
                                "error": exc.reason}], None
            case = score_requests(model, tokenizer, [request], reference=reference, scorer=scorer,
                                  **reliability)[0][0]
            rows.append({"when": "edit", "after": t, "position": t, **case, **base[request.case_id]})
            if t in marks:
                cases = score_requests(model, tokenizer, requests[:t], reference=reference, scorer=scorer,
                                       **(end if t == len(requests) else quick))[0]
                rows += [{"when": "retention", "after": t, "position": i, **c, **base[c["case_id"]]}
                         for i, c in enumerate(cases, 1)]
                rows += _probe_rows(model, tokenizer, probes, t, scorer, score_kwargs)
        deltas = stream.deltas() if defer else None
    return rows + [{"when": "done", "after": len(requests)}], deltas


def _scorer(method: EditingMethod, model, tokenizer, requests, split: bool, score_kwargs: dict[str, Any]):
    """The method's split scorer where it has one (the lower blocks are the same for every edit of the stream)."""
    if not split:
        return None, None
    runner = method.runner(model)
    headers = tuple({tuple(tokenizer(r.header)["input_ids"]) for r in requests if r.header})
    return partial(score_split, runner, pad_id=tokenizer.pad_token_id, batch_size=score_kwargs.get("batch_size", 16),
                   headers=headers), runner


def _probe_rows(model, tokenizer, probes, after: int, scorer, score_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The perplexity of the held-out text ``probes`` on the model as it is (through ``scorer`` where given)."""
    if not probes:
        return []
    prompts, continuations = probes
    if scorer is None:
        value = perplexity(model, tokenizer, prompts, continuations, score_kwargs.get("batch_size", 16))
    else:
        scores = scorer([encode_pair(tokenizer, p, c) for p, c in zip(prompts, continuations)])
        value = perplexity_of(scores)
    return [{"when": "probe", "after": after, "probe/ppl": value}]


def evaluate_batches(method: EditingMethod, model, tokenizer, requests: Sequence[EditRequest], sizes: Sequence[int], *,
                     run: RunFolder | None = None, name: str | None = None, settings: dict[str, Any] | None = None,
                     split: bool = True, unedited: UneditedScores | None = None,
                     **score_kwargs) -> list[dict[str, Any]]:
    """Batch editing (see the module docstring) for every group size ``k`` of ``sizes``; every ``k`` must divide
    the number of requests, so that each size edits the same requests. Groups are scored in chunks of whole groups
    (``batch_size`` requests, at least one group): a chunk of several groups generates under their edits in shared
    batches (:func:`~.harness.generate_edited_fields`). ``unedited`` as in :func:`evaluate_stream`. Returns the rows
    of all sizes."""
    bad = [k for k in sizes if k < 1 or len(requests) % k]
    if not requests or bad:
        raise ValueError(f"batch sizes {bad} do not divide the {len(requests)} requests into whole groups")
    name = name or f"batches_{method.name}"
    scorer, runner = _scorer(method, model, tokenizer, requests, split, score_kwargs)
    rows = []
    positions = {r.case_id: i for i, r in enumerate(requests)}
    batch_size = score_kwargs.get("batch_size", 16)
    with runner.reusing_states() if runner is not None else contextlib.nullcontext():
        base_cases, reference = _unedited_scores(unedited, model, tokenizer, requests, scorer, score_kwargs)
        base = {c["case_id"]: base_fields(c) for c in base_cases}
        for k in sizes:
            def score_chunk(part: list[EditRequest], k=k) -> list[dict[str, Any]]:
                groups = [part[i:i + k] for i in range(0, len(part), k)]
                cases = _score_groups(method, model, tokenizer, groups, reference, scorer, score_kwargs)
                return [{"method": method.name, "editor": method.fingerprint, "batch/size": k,
                         "batch/index": positions[c["case_id"]] // k, **c, **base[c["case_id"]]} for c in cases]

            chunk = k * max(1, batch_size // k)
            rows += resumable_cases(requests, score_chunk, run, f"{name}_k{k}", chunk=chunk,
                                    settings={**case_settings(requests, score_kwargs, settings), "batch/size": k})
    return rows


def _score_groups(method: EditingMethod, model, tokenizer, groups: Sequence[Sequence[EditRequest]], reference,
                  scorer, score_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each group edited in one call and its requests scored on the model holding that edit; with several groups
    the generation-based measures afterwards, every group's edited model generating in shared batches."""
    together = len(groups) > 1 and generates(score_kwargs)
    cases, deltas = [], []
    for group in groups:
        change = method.batch_deltas(model, tokenizer, group)
        bad = nonfinite(change)
        if bad:
            raise FloatingPointError(f"{method.name}: non-finite weight change of {bad} in the batch edit of "
                                     f"{len(group)} requests starting at {group[0].case_id!r}")
        with applied(model, change):
            cases += score_requests(model, tokenizer, group, reference=reference, scorer=scorer,
                                    **(teacher_forced(score_kwargs) if together else score_kwargs))[0]
        deltas += [change] * len(group)
    if together:
        generate_edited_fields(model, tokenizer, [r for g in groups for r in g], deltas, cases, score_kwargs)
    return cases
