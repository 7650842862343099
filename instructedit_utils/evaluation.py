"""Evaluation: score a model on edit requests, one flat metrics dict per case, summaries with bootstrap CIs.

Metric keys (slash-separated, MEND style):

=====================  ==========================================================================================
``edit/acc``           Reliability: token accuracy of the target on the edit prompt; for ConvSent the paper's
                       measure, its sentiment edit success ``sentiment/es`` (see below)
``gen/acc``            Generalization: mean token accuracy of the target over the rephrases (none for ConvSent: the
                       paper reports no ConvSent Generalization)
``port/acc``           Portability: mean over portability probes of the best accuracy over (up to N) aliases
``loc/acc``            Locality: agreement of edited and unedited argmax on locality answers (edited models only);
                       for ConvSent the answers are another topic's responses of both sentiments
``loc/gold_acc``       accuracy of the model on the locality answers themselves (how much it knows there)
``sentiment/es``       ConvSent: SERAC/EasyEdit's edit success ``z_sent · z_topic``
                       (:func:`~instructedit_utils.metrics.sentiment_edit_success`), the edit's own target response
                       left out of the responses scored; ``sentiment/z_sent`` and ``sentiment/z_topic`` its factors
``edit/token_acc``     ConvSent: teacher-forced token accuracy of the edit's target response (what ``edit/acc`` was
                       for ConvSent before it became the paper's measure)
``sentiment/success``  ConvSent: share of (target, opposite) response pairs ranked correctly (see metrics)
``sentiment/margin``   ConvSent: mean log-prob of target-sentiment minus opposite-sentiment responses
``fluency/entropy``    weighted bi/tri-gram entropy of a greedy continuation of the edit prompt (the generated text
                       only; missing when the continuation is empty, see :func:`~instructedit_utils.metrics.fluency`)
``fluency/empty``      1 when that continuation has fewer than 3 words (the model ended its answer at once), else 0
``edit/greedy``        generation-based Reliability: 1 when the greedy continuation of the edit prompt starts with the
                       target (:func:`~instructedit_utils.metrics.generation_success`), with ``success_max_new_tokens``
``gen/greedy``         the same on the rephrases (mean); both left out for ConvSent, whose targets are responses
=====================  ==========================================================================================

All (prompt, answer) pairs of many cases are scored in shared batches; results are regrouped per case.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import random
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .data import EditRecord, load_task, sample
from .instructions import EditRequest, make_edit_request
from .metrics import (Encoded, TargetScore, bootstrap_ci, encode_pair, fluency, generate, generation_success,
                      locality_agreement, score_encoded, sentiment_edit_success, sentiment_success)
from .runs import RunFolder

METRIC_LABELS = {
    "edit/acc": "Reliability",
    "gen/acc": "Generalization",
    "loc/acc": "Locality",
    "port/acc": "Portability",
    "fluency/entropy": "Fluency",
    "fluency/empty": "Empty generations",
    "sentiment/es": "Sentiment edit success",
    "sentiment/success": "Sentiment pair ranking",
    "loc/gold_acc": "Loc. answer acc.",
    "sentiment/margin": "Sentiment margin",
    "search/score": "Search score",
    "edit/greedy": "Reliability (greedy)",
    "gen/greedy": "Generalization (greedy)",
    "edit/token_acc": "Reliability (token accuracy)",
    "sentiment/z_sent": "Sentiment preference (z_sent)",
    "sentiment/z_topic": "Topic kept (z_topic)",
}
# Metrics that are shares in [0, 1] (shown in percent); the others (entropy in bits, log-prob margin) are raw.
FRACTION_METRICS = ("edit/acc", "gen/acc", "loc/acc", "port/acc", "sentiment/success", "loc/gold_acc",
                    "fluency/empty", "search/score", "edit/greedy", "gen/greedy", "sentiment/es", "sentiment/z_sent",
                    "sentiment/z_topic", "edit/token_acc")


def metric_label(metric: str) -> str:
    """Display name; ``base/<metric>`` (the unedited model's value in an edit run) becomes ``Base <label>``."""
    if metric.startswith("base/"):
        return "Base " + METRIC_LABELS.get(metric[5:], metric[5:])
    return METRIC_LABELS.get(metric, metric)


def is_fraction(metric: str) -> bool:
    """Whether a metric is a share in [0, 1] (shown in percent)."""
    return (metric[5:] if metric.startswith("base/") else metric) in FRACTION_METRICS


def build_requests(records: Sequence[EditRecord], *, instructions: bool, description: int | str | None = None,
                   seed: int = 0, instruct_locality: bool = False, pool=None) -> list[EditRequest]:
    """Edit requests for records; with ``description=None`` each record draws a seen description (seeded)."""
    rng = random.Random(seed)
    return [make_edit_request(r, instructions=instructions, description=description, rng=rng,
                              instruct_locality=instruct_locality, pool=pool) for r in records]


Scorer = Callable[[Sequence[Encoded]], list[TargetScore]]


class _Jobs:
    """Collects (prompt, target) pairs from many cases, scores them in one batched pass, hands results back."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.encoded: list[Encoded] = []
        self.keys: list[tuple] = []

    def add(self, key: tuple, prompt: str, target: str) -> None:
        self.encoded.append(encode_pair(self.tokenizer, prompt, target))
        self.keys.append(key)

    def run(self, model, batch_size: int, scorer: Scorer | None = None) -> dict[tuple, TargetScore]:
        scores = (scorer(self.encoded) if scorer is not None
                  else score_encoded(model, self.encoded, self.tokenizer.pad_token_id, batch_size))
        return dict(zip(self.keys, scores))


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def score_requests(model, tokenizer, requests: Sequence[EditRequest], *, batch_size: int = 16, max_rephrases: int = 3,
                   max_probes: int = 3, max_aliases: int = 1, sentiment_responses: int = 4,
                   fluency_max_new_tokens: int = 0, success_max_new_tokens: int = 0,
                   reference: dict[tuple, TargetScore] | None = None,
                   scorer: Scorer | None = None) -> tuple[list[dict[str, Any]], dict]:
    """Score ``model`` on each request; returns (cases, raw reference scores).

    ``reference`` holds the unedited model's locality and ConvSent target-response scores (as returned by an earlier
    call on the base model); given it, ``loc/acc`` is the agreement with them and ConvSent's ``sentiment/z_topic``
    compares with them. The raw scores returned can serve as such a reference.

    Costs are bounded per case: the first ``max_rephrases`` rephrases, the first ``max_probes`` locality and
    portability probes (file order), the first ``max_aliases`` aliases of each answer (an answer counts as
    predicted if any of them is), ``sentiment_responses`` responses per sentiment.

    ``scorer`` replaces the plain batched forward passes (e.g. :func:`~instructedit_utils.forward.score_split`,
    which replays only the edited blocks); it must score ``model``. With ``success_max_new_tokens``, the greedy
    continuations of the edit prompt and the scored rephrases give ``edit/greedy`` and ``gen/greedy``
    (:func:`greedy_success`).
    """
    scores = _scoring_jobs(tokenizer, requests, max_rephrases, max_probes, max_aliases,
                           sentiment_responses).run(model, batch_size, scorer)
    grouped: dict[int, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for key, sc in scores.items():
        grouped[key[0]][key[1]][key[2:]] = sc
    generations = (generate(model, tokenizer, [r.prompt for r in requests], fluency_max_new_tokens, batch_size)
                   if fluency_max_new_tokens > 0 else None)
    greedy = (greedy_success(requests, tokenizer, max_rephrases, success_max_new_tokens,
                             lambda prompts, _owners, n: generate(model, tokenizer, prompts, n, batch_size))
              if success_max_new_tokens > 0 else None)
    cases = []
    for c, req in enumerate(requests):
        case = _case(req, grouped[c], reference)
        if generations is not None:
            case.update(generation_fields(generations[c]))
        if greedy is not None:
            case.update(greedy[c])
        cases.append({k: v for k, v in case.items() if v is not None or k in ("instruction", "description_index")})
    raw = {(requests[key[0]].case_id, *key[1:]): sc for key, sc in scores.items()
           if key[1] == "loc" or key[1:3] == ("sent", "t")}
    return cases, raw


def _scoring_jobs(tokenizer, requests: Sequence[EditRequest], max_rephrases: int, max_probes: int,
                  max_aliases: int, sentiment_responses: int) -> _Jobs:
    """Every (prompt, answer) pair :func:`score_requests` scores, keyed ``(case, kind, ...)``."""
    jobs = _Jobs(tokenizer)
    for c, req in enumerate(requests):
        jobs.add((c, "edit"), req.prompt, req.target)
        for j, reph in enumerate(req.rephrases[:max_rephrases] if req.task != "convsent" else ()):
            jobs.add((c, "gen", j), reph, req.target)
        for j, probe in enumerate(req.portability[:max_probes]):
            for a, ans in enumerate(probe.answers[:max_aliases]):
                jobs.add((c, "port", j, a), probe.prompt, ans)
        for j, probe in enumerate(req.locality[:max_probes]):
            for a, ans in enumerate(probe.answers[:max_aliases]):
                jobs.add((c, "loc", j, a), probe.prompt, ans)
        if req.record.task == "convsent":
            for side, responses in zip(("t", "o"), sentiment_responses_of(req, sentiment_responses)):
                for j, resp in enumerate(responses):
                    jobs.add((c, "sent", side, j), req.prompt, resp)
    return jobs


def sentiment_responses_of(req: EditRequest, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ConvSent responses a case is scored on: up to ``n`` of the target sentiment other than the edit's own
    target response (the edit was computed on that one) and up to ``n`` of the opposite sentiment."""
    rec = req.record
    targets = tuple(r for r in rec.target_responses if r != req.target)[:n]
    if not targets:
        raise ValueError(f"{rec.record_id} ({rec.source} record {rec.index}): no {rec.target_sentiment} response "
                         "other than the edit's own target to score the sentiment edit on")
    return targets, tuple(rec.opposite_responses[:n])


def _case(req: EditRequest, g: dict[str, dict], reference: dict[tuple, TargetScore] | None) -> dict[str, Any]:
    """One case's teacher-forced metrics from its scores ``g`` (kind → key → score)."""
    case: dict[str, Any] = {"case_id": req.case_id, "task": req.task, "instruction": req.description,
                            "description_index": req.description_index, "edit/acc": g["edit"][()].acc,
                            "gen/acc": _mean([sc.acc for sc in g["gen"].values()])}
    for kind, metric in (("port", "port/acc"), ("loc", "loc/gold_acc")):  # an answer is right if any alias is
        best = defaultdict(list)
        for (j, _a), sc in g[kind].items():
            best[j].append(sc.acc)
        case[metric] = _mean([max(v) for v in best.values()])
    if reference is not None:
        case["loc/acc"] = _mean([locality_agreement(reference[(req.case_id, "loc", j, 0)], sc)
                                 for (j, a), sc in g["loc"].items() if a == 0])
    if req.task == "convsent":
        token_acc = case["edit/acc"]
        case.update(_sentiment_fields(req, g["sent"], reference))
        case.update({"edit/acc": case["sentiment/es"], "edit/token_acc": token_acc})
    return case


def _sentiment_fields(req: EditRequest, sent: dict, reference: dict[tuple, TargetScore] | None) -> dict[str, Any]:
    """ConvSent's metrics of one case from its response scores (``(side, j)`` → score): the paper's Reliability is
    the sentiment edit success (``edit/acc`` = ``sentiment/es``, against the unedited scores of ``reference``; the
    unedited model itself without one); the token accuracy of the target response stays as ``edit/token_acc``."""
    t = [sc for (side, _j), sc in sorted(sent.items()) if side == "t"]
    o = [sc for (side, _j), sc in sorted(sent.items()) if side == "o"]
    pre = None if reference is None else [reference[(req.case_id, "sent", "t", j)] for j in range(len(t))]
    es = sentiment_edit_success([sc.logprobs for sc in t], [sc.logprobs for sc in o],
                                None if pre is None else [sc.logprobs for sc in pre])
    t_mean, o_mean = [sc.mean_logprob for sc in t], [sc.mean_logprob for sc in o]
    return {**es, "edit/token_acc": None, "gen/acc": None, "sentiment/success": sentiment_success(t_mean, o_mean),
            "sentiment/margin": float(np.mean(t_mean) - np.mean(o_mean))}


def greedy_success(requests: Sequence[EditRequest], tokenizer, max_rephrases: int, max_new_tokens: int,
                   generate_fn: Callable[[list[str], list[int], int], list[str]]) -> list[dict[str, float]]:
    """``edit/greedy`` and ``gen/greedy`` of each request (empty for ConvSent): whether the greedy continuation of
    its edit prompt, and of each of its first ``max_rephrases`` rephrases (mean), starts with the target
    (:func:`~instructedit_utils.metrics.generation_success`). ``generate_fn(prompts, owners, n)`` continues every
    prompt by ``n`` tokens (``owners[i]``: the request prompt ``i`` belongs to); ``n`` is the longest target in
    tokens plus two, at most ``max_new_tokens`` (greedy text does not depend on how far it runs)."""
    prompts, owners, kinds = [], [], []
    for c, req in enumerate(requests):
        if req.record.target_responses:  # ConvSent: the target is a sentiment, not a text to generate
            continue
        for kind, prompt in (("edit", req.prompt), *(("gen", r) for r in req.rephrases[:max_rephrases])):
            prompts.append(prompt)
            owners.append(c)
            kinds.append(kind)
    out: list[dict[str, float]] = [{} for _ in requests]
    if not prompts:
        return out
    longest = max(len(tokenizer(" " + requests[c].target)["input_ids"]) for c in set(owners))
    texts = generate_fn(prompts, owners, min(max_new_tokens, longest + 2))
    rephrased: dict[int, list[float]] = defaultdict(list)
    for c, kind, text in zip(owners, kinds, texts):
        success = generation_success(text, requests[c].target)
        if kind == "edit":
            out[c]["edit/greedy"] = success
        else:
            rephrased[c].append(success)
    for c, values in rephrased.items():
        out[c]["gen/greedy"] = float(np.mean(values))
    return out


def generation_fields(continuation: str) -> dict[str, Any]:
    """A case's Fluency fields from its greedy continuation. The continuation alone: neither the prompt nor a
    prepended instruction may count as generated text."""
    return {**fluency(continuation), "generation": continuation}


#: bytes of stacked weight deltas one batched generation of edited models may hold (:func:`generate_edited`)
GENERATION_DELTA_BYTES = 2 ** 30


@torch.no_grad()
def generate_edited(model, tokenizer, prompts: Sequence[str], deltas: Sequence[Mapping[str, Any]],
                    max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy continuations of ``prompts[i]`` by the model edited with ``deltas[i]``, many edited models per batch
    (:func:`~instructedit_utils.editor.applied_per_row`): at 1 CPU thread a batch-1 decoding step of SmolLM2 costs
    about as much as a step of 16 rows (each step reads every weight once), so one batch replaces up to
    ``batch_size`` generations. Batches hold at most :data:`GENERATION_DELTA_BYTES` of stacked deltas. Same text as
    generating under each edit alone up to float rounding (a greedy near-tie may resolve differently)."""
    from .editor import applied_per_row

    per_edit = max((sum(d.numel() * d.element_size() for d in ds.values()) for ds in deltas), default=1)
    size = max(1, min(batch_size, GENERATION_DELTA_BYTES // max(1, per_edit)))
    out: list[str] = []
    for start in range(0, len(prompts), size):
        with applied_per_row(model, deltas[start:start + size]):
            out += generate(model, tokenizer, prompts[start:start + size], max_new_tokens, batch_size=size)
    return out


def requests_digest(requests: Sequence[EditRequest]) -> str:
    """Digest of everything scored for ``requests``: ids, (instructed) prompts, targets, rephrases, probes, ConvSent
    responses, in order. Any change of data, sample, seed, description or instruction flag changes it."""
    digest = hashlib.sha256()
    for r in requests:
        item = [r.case_id, r.prompt, r.target, list(r.rephrases),
                [[p.prompt, list(p.answers)] for p in r.locality], [[p.prompt, list(p.answers)] for p in r.portability],
                list(r.record.target_responses), list(r.record.opposite_responses)]
        digest.update(json.dumps(item, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


_SCORE_DEFAULTS = {k: p.default for k, p in inspect.signature(score_requests).parameters.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in ("reference", "scorer")}
#: scoring options added after case files existed: recorded only when on, so that older case files stay valid
_RECORDED_WHEN_ON = ("success_max_new_tokens",)


def scoring_settings(score_kwargs: dict[str, Any]) -> dict[str, Any]:
    """What of the scoring options changes a case's numbers: every cap and generation length (defaults filled in),
    not the batch size; options of :data:`_RECORDED_WHEN_ON` only when on."""
    scoring = {**_SCORE_DEFAULTS, **score_kwargs}
    scoring.pop("batch_size", None)
    return {k: v for k, v in scoring.items() if not (k in _RECORDED_WHEN_ON and not v)}


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
    the file's settings (:func:`case_settings`) must match (see :meth:`~instructedit_utils.runs.RunFolder.
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


def model_fingerprint(model) -> str:
    """A digest of a model's identity and weights (name, dtype, every parameter's shape and float64 sum): unedited
    scores computed for one model are never reused for another."""
    digest = hashlib.sha256(str(getattr(model.config, "_name_or_path", "")).encode())
    with torch.no_grad():
        for key, param in model.named_parameters():
            digest.update(f"{key}:{tuple(param.shape)}:{param.dtype}:{param.double().sum().item()!r}".encode())
    return digest.hexdigest()[:16]


class UneditedScores:
    """The unedited model's scores of chunks of requests, kept in a folder and shared by every method evaluated on
    the same requests (in this process or another): Table 3's methods without instructions all see the same
    requests, so the unedited pass (scores, locality reference, Fluency generations) runs once per chunk instead of
    once per method. A file is named by a digest of the model (:func:`model_fingerprint`), the requests
    (:func:`requests_digest`) and the scoring settings; it is written atomically, so workers computing the same
    chunk at once only duplicate work."""

    def __init__(self, folder, model, score_kwargs: dict[str, Any]):
        from pathlib import Path

        self.folder = Path(folder)
        self._prefix = json.dumps([model_fingerprint(model), scoring_settings(score_kwargs)], sort_keys=True)

    def path(self, requests: Sequence[EditRequest]):
        key = hashlib.sha256((self._prefix + requests_digest(requests)).encode()).hexdigest()[:24]
        return self.folder / f"{key}.json"

    def get(self, requests: Sequence[EditRequest], compute: Callable[[], tuple[list[dict[str, Any]], dict]]
            ) -> tuple[list[dict[str, Any]], dict]:
        """``compute()`` (→ ``score_requests``' (cases, raw locality scores)) unless a file holds them already."""
        from .runs import _atomic_write_text

        path = self.path(requests)
        if path.is_file():
            payload = json.loads(path.read_text())
            reference = {tuple(k): TargetScore(tuple(t), tuple(p), tuple(lp)) for k, t, p, lp in payload["reference"]}
            return payload["cases"], reference
        cases, reference = compute()
        rows = [[list(k), list(sc.targets), list(sc.predictions), list(sc.logprobs)] for k, sc in reference.items()]
        _atomic_write_text(path, json.dumps({"cases": cases, "reference": rows}))
        return cases, reference


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
    """Apply each request's edit alone with ``method`` (an :class:`~instructedit_utils.baselines.EditingMethod`),
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
    (:class:`~instructedit_utils.baselines.Unedited`) is not scored a second time as its own edit. With
    ``batch_generation``, methods whose edits are weight deltas (``weight_deltas``) generate the Fluency and
    greedy-success continuations of a chunk's edited models in shared batches (:func:`generate_edited`) instead of
    one by one.
    """
    from .baselines import EditingMethod, Unedited
    from .editor import applied

    from functools import partial

    from .forward import score_split

    name = name or f"cases_{method.name}"
    fingerprint = method.fingerprint
    if run is not None:
        _check_editor(run, name, fingerprint)
    runner = method.runner(model) if split else None
    batch_size = score_kwargs.get("batch_size", 16)
    unedited = UneditedScores(run.path / "unedited", model, score_kwargs) if run is not None and shared else None
    gen_tokens = score_kwargs.get("fluency_max_new_tokens", 0)
    success_tokens = score_kwargs.get("success_max_new_tokens", 0)
    batched = batch_generation and (gen_tokens > 0 or success_tokens > 0) and not isinstance(method, Unedited) \
        and type(method).weight_deltas is not EditingMethod.weight_deltas
    edited_kwargs = ({**score_kwargs, "fluency_max_new_tokens": 0, "success_max_new_tokens": 0} if batched
                     else score_kwargs)

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
            _generate_edited_fields(model, tokenizer, part, deltas, edited_cases, score_kwargs)
        return [{"method": method.name, "editor": fingerprint, **case,
                 **{f"base/{k}": v for k, v in base.items() if "/" in k}} for case, base in zip(edited_cases, base_cases)]

    return resumable_cases(requests, score_chunk, run, name, chunk, progress,
                           case_settings(requests, score_kwargs, settings))


def _check_editor(run: RunFolder, name: str, fingerprint: str) -> None:
    """A case file holds the cases of one editor: another fingerprint there is an error."""
    other = {c.get("editor") for c in run.read_cases(name)} - {fingerprint}
    if other:
        raise ValueError(f"{run.cases_path(name)} holds cases of another editor ({sorted(map(str, other))}, "
                         f"now {fingerprint}); delete the file or use another run folder")


def _generate_edited_fields(model, tokenizer, part: Sequence[EditRequest], deltas: Sequence[Mapping[str, Any]],
                            cases: Sequence[dict[str, Any]], score_kwargs: dict[str, Any]) -> None:
    """Add the generation fields (Fluency, greedy success) of a chunk's edited models to their ``cases``, every edited
    model generating in shared batches (:func:`generate_edited`; ``deltas[i]`` is request ``i``'s edit)."""
    batch_size = score_kwargs.get("batch_size", 16)
    gen_tokens = score_kwargs.get("fluency_max_new_tokens", 0)
    success_tokens = score_kwargs.get("success_max_new_tokens", 0)
    if gen_tokens > 0:
        texts = generate_edited(model, tokenizer, [r.prompt for r in part], deltas, gen_tokens, batch_size)
        for case, text in zip(cases, texts):
            case.update(generation_fields(text))
    if success_tokens > 0:
        greedy = greedy_success(part, tokenizer, score_kwargs.get("max_rephrases", 3), success_tokens,
                                lambda prompts, owners, n: generate_edited(
                                    model, tokenizer, prompts, [deltas[c] for c in owners], n, batch_size))
        for case, fields in zip(cases, greedy):
            case.update(fields)


def summarize(cases: Sequence[dict[str, Any]], by: Sequence[str] = ("task",), metrics: Sequence[str] | None = None,
              n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Long table: one row per group × metric with ``mean``, ``ci_low``, ``ci_high`` (95% bootstrap) and ``n``."""
    df = pd.DataFrame(cases)
    metrics = metrics or [m for m in METRIC_LABELS if m in df.columns] + \
        [m for m in df.columns if "/" in m and m not in METRIC_LABELS]
    rows = []
    for keys, group in df.groupby(list(by), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for m in metrics:
            if m not in group or group[m].isna().all():
                continue
            vals = group[m].dropna().astype(float).tolist()
            mean, lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
            rows.append({**dict(zip(by, keys)), "metric": m, "mean": mean, "ci_low": lo, "ci_high": hi, "n": len(vals)})
    return pd.DataFrame(rows)


def paired_difference(cases: Sequence[dict[str, Any]], metric: str, column: str, a: str, b: str,
                      by: Sequence[str] = ("task",), n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
                      ) -> pd.DataFrame:
    """``b − a`` of ``metric`` on the cases both have (same ``case_id``; ``column`` names what differs, e.g.
    ``method`` or ``condition``), per group, with a ``1 − alpha`` (default 95%) bootstrap CI of the paired mean
    difference."""
    df = pd.DataFrame(cases)
    df = df[df[column].isin([a, b]) & df[metric].notna()]
    wide = df.pivot_table(index=[*by, "case_id"], columns=column, values=metric, aggfunc="first").dropna()
    rows = []
    if a not in wide or b not in wide:
        return pd.DataFrame(rows)
    for keys, group in wide.groupby(level=list(range(len(by))), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        mean, lo, hi = bootstrap_ci((group[b] - group[a]).tolist(), n_boot=n_boot, alpha=alpha, seed=seed)
        rows.append({**dict(zip(by, keys)), "metric": metric, "a": a, "b": b, "diff": mean, "ci_low": lo,
                     "ci_high": hi, "n": len(group)})
    return pd.DataFrame(rows)


def difference_table(diffs: pd.DataFrame, index: str = "task", columns: str = "metric", digits: int = 1
                     ) -> pd.DataFrame:
    """Paired differences (:func:`paired_difference` rows) as ``diff [ci_low, ci_high]`` cells (points for shares),
    rows ``index``, columns the metrics' labels."""
    def cell(row) -> str:
        s = 100.0 if is_fraction(row["metric"]) else 1.0
        return f"{row['diff'] * s:+.{digits}f} [{row['ci_low'] * s:+.{digits}f}, {row['ci_high'] * s:+.{digits}f}]"

    tab = diffs.assign(cell=diffs.apply(cell, axis=1), label=diffs[columns].map(metric_label)
                       if columns == "metric" else diffs[columns])
    order = list(dict.fromkeys(tab["label"]))
    rows = list(dict.fromkeys(tab[index]))
    out = tab.pivot(index=index, columns="label", values="cell").reindex(index=rows, columns=order).fillna("—")
    return out.rename_axis(columns=None)


def wide_table(summary: pd.DataFrame, index: str = "task", scale: float = 100.0, digits: int = 1) -> pd.DataFrame:
    """Paper-style table: rows = ``index``, columns = metric labels, cells ``mean ± half-CI`` (shares in percent)."""
    def cell(row) -> str:
        s = scale if is_fraction(row["metric"]) else 1.0
        half = (row["ci_high"] - row["ci_low"]) / 2 * s
        return f"{row['mean'] * s:.{digits}f} ± {half:.{digits}f}"

    tab = summary.assign(cell=summary.apply(cell, axis=1),
                         label=summary["metric"].map(metric_label))
    known = list(METRIC_LABELS)

    def rank(metric: str) -> int:  # the order of METRIC_LABELS; ``base/<m>`` beside ``<m>``; unknown ones last
        bare = metric[5:] if metric.startswith("base/") else metric
        return known.index(bare) if bare in known else len(known)

    order = [metric_label(m) for m in sorted(dict.fromkeys(summary["metric"]), key=rank)]
    return tab.pivot(index=index, columns="label", values="cell").reindex(columns=order).fillna("—")


def task_requests(tasks: Sequence[str], split: str | Mapping[str, str], n: int | None, *, seed: int,
                  instructions: bool, data_dir=None, instruct_locality: bool = False,
                  description: int | str | None = None, pool=None) -> list[EditRequest]:
    """A deterministic sample of ``n`` records per task turned into edit requests (``split``: one for all tasks or
    one per task; ``description``: see :func:`~instructedit_utils.instructions.choose_description`; default a
    seeded random seen one per record)."""
    out: list[EditRequest] = []
    for task in tasks:
        recs = sample(load_task(task, split if isinstance(split, str) else split[task], data_dir), n, seed)
        out += build_requests(recs, instructions=instructions, seed=seed, instruct_locality=instruct_locality,
                              description=description, pool=pool)
    return out
