"""The evaluation harness: each request's edit applied alone by a method of the registry, scored
(:mod:`.scoring`) and taken back, one flat metrics dict per case in a resumable case file whose settings are recorded
(:func:`case_settings`; other settings are refused), the unedited model's scores shared between methods
(:class:`UneditedScores`)."""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..data.instructions import EditRequest
from ..methods.registry import EditingMethod, Unedited
from ..models.deltas import applied
from ..models.loading import model_fingerprint
from ..models.batches import score_split
from ..models.metrics import TargetScore
from ..util.runs import RunFolder, atomic_write_text
from .requests import requests_digest
from .scoring import generate_edited, generation_fields, greedy_success, natural_success_fields, score_requests

_SCORE_DEFAULTS = {k: p.default for k, p in inspect.signature(score_requests).parameters.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in ("reference", "scorer")}
#: scoring options added after case files existed: recorded only when on, so that older case files stay valid
_RECORDED_WHEN_ON = ("success_max_new_tokens", "natural_max_new_tokens")
#: scoring options whose default (None) defers to another option: recorded only when set
_RECORDED_WHEN_SET = ("natural_rephrases",)
#: the scoring options that generate text (batched across a chunk's edited models for weight-changing methods)
GENERATION_OPTIONS = ("fluency_max_new_tokens", "success_max_new_tokens", "natural_max_new_tokens")


def scoring_settings(score_kwargs: dict[str, Any]) -> dict[str, Any]:
    """What of the scoring options changes a case's numbers: every cap and generation length (defaults filled in),
    not the batch size; options of :data:`_RECORDED_WHEN_ON` only when on, of :data:`_RECORDED_WHEN_SET` only when
    set."""
    scoring = {**_SCORE_DEFAULTS, **score_kwargs}
    scoring.pop("batch_size", None)
    return {k: v for k, v in scoring.items()
            if not (k in _RECORDED_WHEN_ON and not v) and not (k in _RECORDED_WHEN_SET and v is None)}


#: how ConvSent's Reliability is measured (recorded in the settings of case files holding ConvSent cases, so that
#: cases measured otherwise — the token accuracy of one target response, before — are refused, never mixed in)
CONVSENT_MEASURE = "sentiment edit success (SERAC/EasyEdit es), own target response excluded"


def case_settings(requests: Sequence[EditRequest], score_kwargs: dict[str, Any],
                  settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a case file records: ``settings`` (the caller's, e.g.
    :meth:`~instructedit_utils.config.ExperimentConfig.case_settings`), every scoring cap and the Fluency length
    (``scoring/…``; the batch size is left out, it does not change what is computed), :func:`requests_digest` and,
    when ConvSent is among the requests, :data:`CONVSENT_MEASURE`."""
    out = {**(settings or {}), "scoring": scoring_settings(score_kwargs), "requests": requests_digest(requests)}
    if any(r.task == "convsent" for r in requests):
        out["convsent_measure"] = CONVSENT_MEASURE
    return out


def evaluate_unedited(model, tokenizer, requests: Sequence[EditRequest], run: RunFolder | None = None,
                      name: str = "base_cases", chunk: int = 32, progress: Callable | None = None,
                      settings: dict[str, Any] | None = None, **score_kwargs) -> list[dict[str, Any]]:
    """Pre-edit metrics of the base model for each request (the Base column of Table 3).

    With a ``run`` folder, cases are appended to ``<name>.jsonl`` in chunks and finished cases are skipped on rerun;
    the file's settings (:func:`case_settings`) must match (see :meth:`~instructedit_utils.util.runs.RunFolder.
    check_settings`).
    """
    return resumable_cases(requests, lambda part: score_requests(model, tokenizer, part, **score_kwargs)[0],
                           run, name, chunk, progress, case_settings(requests, score_kwargs, settings))


def resumable_cases(requests: Sequence[EditRequest], score_chunk: Callable[[list], list[dict[str, Any]]],
                    run: RunFolder | None, name: str, chunk: int = 32, progress: Callable | None = None,
                    settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Score ``requests`` in chunks with ``score_chunk``; with a ``run`` folder, append each chunk's cases to
    ``<name>.jsonl`` and skip cases already there. Returns the cases of ``requests`` (in file order when resumed).

    ``settings`` describe what the cases' numbers depend on: in a run folder they are checked against the file's
    (an error on any difference) and each case carries their digest as ``settings``."""
    stamp = run.check_settings(name, settings or {}) if run else None
    done = run.done_ids(name) if run else set()
    todo = [r for r in requests if r.case_id not in done]
    fresh: list[dict[str, Any]] = []
    chunks = range(0, len(todo), chunk)
    for start in (progress(chunks) if progress else chunks):
        cases = score_chunk(todo[start:start + chunk])
        if run:
            cases = [{**c, "settings": stamp} for c in cases]
            run.append_cases(name, cases)
        fresh += cases
    if not run:
        return fresh
    wanted = {r.case_id for r in requests}
    return [c for c in run.read_cases(name) if c["case_id"] in wanted]


class UneditedScores:
    """The unedited model's scores of chunks of requests, kept in a folder and shared by every method evaluated on
    the same requests (in this process or another): Table 3's methods without instructions all see the same
    requests, so the unedited pass (scores, locality reference, Fluency generations) runs once per chunk instead of
    once per method. A file is named by a digest of the model (:func:`model_fingerprint`), the requests
    (:func:`requests_digest`) and the scoring settings; it is written atomically, so workers computing the same
    chunk at once only duplicate work."""

    def __init__(self, folder, model, score_kwargs: dict[str, Any]):
        self.folder = Path(folder)
        self._prefix = json.dumps([model_fingerprint(model), scoring_settings(score_kwargs)], sort_keys=True)

    def path(self, requests: Sequence[EditRequest]):
        key = hashlib.sha256((self._prefix + requests_digest(requests)).encode()).hexdigest()[:24]
        return self.folder / f"{key}.json"

    def get(self, requests: Sequence[EditRequest], compute: Callable[[], tuple[list[dict[str, Any]], dict]]
            ) -> tuple[list[dict[str, Any]], dict]:
        """``compute()`` (→ ``score_requests``' (cases, raw locality scores)) unless a file holds them already."""
        path = self.path(requests)
        if path.is_file():
            payload = json.loads(path.read_text())
            reference = {tuple(k): TargetScore(tuple(t), tuple(p), tuple(lp)) for k, t, p, lp in payload["reference"]}
            return payload["cases"], reference
        cases, reference = compute()
        rows = [[list(k), list(sc.targets), list(sc.predictions), list(sc.logprobs)] for k, sc in reference.items()]
        atomic_write_text(path, json.dumps({"cases": cases, "reference": rows}))
        return cases, reference


def base_fields(case: dict[str, Any]) -> dict[str, Any]:
    """An unedited case's metrics as ``base/<metric>``, the fields every edited case carries beside its own."""
    return {f"base/{k}": v for k, v in case.items() if "/" in k}


def _unedited_case(base: dict[str, Any], reference: dict, case_id: str) -> dict[str, Any]:
    """What scoring the unedited model as its own edit gives: its scores, Locality 1 wherever it has a probe."""
    case = dict(base)
    if any(k[0] == case_id and k[1] == "loc" and k[3] == 0 for k in reference):
        case["loc/acc"] = 1.0
    return case


def evaluate_method(method, model, tokenizer, requests: Sequence[EditRequest], *, run: RunFolder | None = None,
                    name: str | None = None, chunk: int = 16, progress: Callable | None = None, split: bool = True,
                    settings: dict[str, Any] | None = None, shared: bool = True, batch_generation: bool = True,
                    **score_kwargs) -> list[dict[str, Any]]:
    """Apply each request's edit alone with ``method`` (an :class:`~instructedit_utils.methods.registry.EditingMethod`),
    score it, restore the model.

    Each case holds every metric of :func:`score_requests` (``loc/acc`` against the unedited model), the unedited
    model's values as ``base/<metric>``, the instruction used, ``method`` and ``editor`` (the method's fingerprint).
    Batching: per chunk of requests the unedited scores in shared batches; per request every prompt of the edited
    model in one batch. With ``split`` (where the architecture allows) the blocks below the method's first edited
    block run once per distinct prompt for the whole chunk (they are the same before and after an edit) and only the
    upper blocks are replayed per edit. With a ``run`` folder cases go to ``<name>.jsonl`` (default
    ``cases_<method>``) as chunks finish and a rerun skips finished cases; cases of a different editor or of other
    settings (:func:`case_settings` of ``settings``, the requests and the scoring caps) there are an error. There,
    with ``shared``, the unedited scores of each chunk are kept in ``<run>/unedited/`` and reused by every method
    evaluated on the same requests (:class:`UneditedScores`). The unedited model itself
    (:class:`~instructedit_utils.methods.registry.Unedited`) is not scored a second time as its own edit. With
    ``batch_generation``, methods whose edits are weight deltas (``weight_deltas``) generate the Fluency and
    greedy-success continuations of a chunk's edited models in shared batches (:func:`generate_edited`) instead of
    one by one.
    """
    name = name or f"cases_{method.name}"
    fingerprint = method.fingerprint
    if run is not None:
        _check_editor(run, name, fingerprint)
    runner = method.runner(model) if split else None
    batch_size = score_kwargs.get("batch_size", 16)
    unedited = UneditedScores(run.path / "unedited", model, score_kwargs) if run is not None and shared else None
    batched = batch_generation and generates(score_kwargs) and edits_by_deltas(method)
    edited_kwargs = teacher_forced(score_kwargs) if batched else score_kwargs

    def score_chunk(part: list[EditRequest]) -> list[dict[str, Any]]:
        scorer = None
        context = contextlib.nullcontext()
        if runner is not None:
            headers = tuple({tuple(tokenizer(r.header)["input_ids"]) for r in part if r.header})
            scorer = partial(score_split, runner, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                             headers=headers)
            context = runner.reusing_states()
        with context:
            def compute():
                return score_requests(model, tokenizer, part, scorer=scorer, **score_kwargs)

            base_cases, reference = unedited.get(part, compute) if unedited is not None else compute()
            edited_cases, deltas = [], []
            for req, base in zip(part, base_cases):
                if isinstance(method, Unedited):
                    edited_cases.append(_unedited_case(base, reference, req.case_id))
                elif batched:
                    deltas.append(method.weight_deltas(model, tokenizer, req))
                    with applied(model, deltas[-1]):
                        edited_cases += score_requests(model, tokenizer, [req], reference=reference, scorer=scorer,
                                                       **edited_kwargs)[0]
                else:
                    with method.edited(model, tokenizer, req) as edited:
                        edited_cases += score_requests(edited, tokenizer, [req], reference=reference, scorer=scorer,
                                                       **score_kwargs)[0]
        if batched:
            generate_edited_fields(model, tokenizer, part, deltas, edited_cases, score_kwargs)
        return [{"method": method.name, "editor": fingerprint, **case,
                 **base_fields(base)} for case, base in zip(edited_cases, base_cases)]

    return resumable_cases(requests, score_chunk, run, name, chunk, progress,
                           case_settings(requests, score_kwargs, settings))


def _check_editor(run: RunFolder, name: str, fingerprint: str) -> None:
    """A case file holds the cases of one editor: another fingerprint there is an error."""
    other = {c.get("editor") for c in run.read_cases(name)} - {fingerprint}
    if other:
        raise ValueError(f"{run.cases_path(name)} holds cases of another editor ({sorted(map(str, other))}, "
                         f"now {fingerprint}); delete the file or use another run folder")


def generates(score_kwargs: dict[str, Any]) -> bool:
    """Whether the scoring options ask for a generation-based measure (:data:`GENERATION_OPTIONS`)."""
    return any(score_kwargs.get(k, 0) > 0 for k in GENERATION_OPTIONS)


def teacher_forced(score_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The scoring options without the generation-based measures."""
    return {**score_kwargs, **dict.fromkeys(GENERATION_OPTIONS, 0)}


def edits_by_deltas(method) -> bool:
    """Whether ``method``'s edits are weight deltas (so that many edited models can generate in one batch)."""
    return not isinstance(method, Unedited) and type(method).weight_deltas is not EditingMethod.weight_deltas


def generate_edited_fields(model, tokenizer, part: Sequence[EditRequest], deltas: Sequence[Mapping[str, Any]],
                           cases: Sequence[dict[str, Any]], score_kwargs: dict[str, Any]) -> None:
    """Add the generation fields (Fluency, greedy and natural-stop success) of a chunk's edited models to their
    ``cases``, every edited model generating in shared batches (:func:`generate_edited`; ``deltas[i]`` is the edit
    request ``i`` is scored under: its own, or that of the stream or batch edit it belongs to)."""
    batch_size = score_kwargs.get("batch_size", 16)
    gen_tokens = score_kwargs.get("fluency_max_new_tokens", 0)
    success_tokens = score_kwargs.get("success_max_new_tokens", 0)
    natural_tokens = score_kwargs.get("natural_max_new_tokens", 0)

    def generate_fn(prompts, owners, n):
        return generate_edited(model, tokenizer, prompts, [deltas[c] for c in owners], n, batch_size)

    if gen_tokens > 0:
        texts = generate_edited(model, tokenizer, [r.prompt for r in part], deltas, gen_tokens, batch_size)
        for case, text in zip(cases, texts):
            case.update(generation_fields(text))
    if success_tokens > 0:
        for case, fields in zip(cases, greedy_success(part, tokenizer, score_kwargs.get("max_rephrases", 3),
                                                      success_tokens, generate_fn)):
            case.update(fields)
    if natural_tokens > 0:
        rephrases = score_kwargs.get("natural_rephrases")
        rephrases = score_kwargs.get("max_rephrases", 3) if rephrases is None else rephrases
        for case, fields in zip(cases, natural_success_fields(part, rephrases, natural_tokens, generate_fn)):
            case.update(fields)
