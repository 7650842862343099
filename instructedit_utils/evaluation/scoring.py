"""Scoring one model on edit requests: one flat metrics dict per case (the paper's metrics, keys below), every
(prompt, answer) pair of many cases in shared batches (:func:`score_requests`), greedy generation-based success
(:func:`greedy_success`) and edited models generating in one batch (:func:`generate_edited`).

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
                       (:func:`~instructedit_utils.models.metrics.sentiment_edit_success`), the edit's own target
                       response left out of the responses scored; ``sentiment/z_sent`` and ``sentiment/z_topic`` its factors
``edit/token_acc``     ConvSent: teacher-forced token accuracy of the edit's target response (what ``edit/acc`` was
                       for ConvSent before it became the paper's measure)
``sentiment/success``  ConvSent: share of (target, opposite) response pairs ranked correctly (see metrics)
``sentiment/margin``   ConvSent: mean log-prob of target-sentiment minus opposite-sentiment responses
``fluency/entropy``    weighted bi/tri-gram entropy of a greedy continuation of the edit prompt (the generated text
                       only; missing when the continuation is empty, see
                       :func:`~instructedit_utils.models.metrics.fluency`)
``fluency/empty``      1 when that continuation has fewer than 3 words (the model ended its answer at once), else 0
``edit/greedy``        generation-based Reliability: 1 when the greedy continuation of the edit prompt starts with the
                       target (:func:`~instructedit_utils.models.metrics.generation_success`), with
                       ``success_max_new_tokens``
``gen/greedy``         the same on the rephrases (mean); both left out for ConvSent, whose targets are responses
``edit/natural_em``    success as the model says it: the greedy continuation of the edit prompt, run to
                       ``natural_max_new_tokens`` and cut at its natural stop (a line break or a sentence end), is
                       the target after normalisation (:func:`~instructedit_utils.models.metrics.natural_success`)
                       (``edit/natural_contains``, secondary: the answer holds the target as whole words)
``gen/natural_em``     the same on the rephrases (mean; ``gen/natural_contains``); all four left out for ConvSent
=====================  ==========================================================================================

All (prompt, answer) pairs of many cases are scored in shared batches; results are regrouped per case.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..data.instructions import EditRequest
from ..models.deltas import applied_per_row, nbytes
from ..models.metrics import (Encoded, TargetScore, encode_pair, fluency, generate, generation_success,
                              locality_agreement, natural_success, score_encoded, sentiment_edit_success,
                              sentiment_success)

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
                   fluency_max_new_tokens: int = 0, success_max_new_tokens: int = 0, natural_max_new_tokens: int = 0,
                   natural_rephrases: int | None = None, reference: dict[tuple, TargetScore] | None = None,
                   scorer: Scorer | None = None) -> tuple[list[dict[str, Any]], dict]:
    """Score ``model`` on each request; returns (cases, raw reference scores).

    ``reference`` holds the unedited model's locality and ConvSent target-response scores (as returned by an earlier
    call on the base model); given it, ``loc/acc`` is the agreement with them and ConvSent's ``sentiment/z_topic``
    compares with them. The raw scores returned can serve as such a reference.

    Costs are bounded per case: the first ``max_rephrases`` rephrases, the first ``max_probes`` locality and
    portability probes (file order), the first ``max_aliases`` aliases of each answer (an answer counts as
    predicted if any of them is), ``sentiment_responses`` responses per sentiment.

    ``scorer`` replaces the plain batched forward passes (e.g. :func:`~instructedit_utils.models.forward.score_split`,
    which replays only the edited blocks); it must score ``model``. With ``success_max_new_tokens``, the greedy
    continuations of the edit prompt and the scored rephrases give ``edit/greedy`` and ``gen/greedy``
    (:func:`greedy_success`); with ``natural_max_new_tokens``, continuations of that length cut at their natural
    stop give ``edit/natural_em``, ``edit/natural_contains`` and their ``gen/`` twins (:func:`natural_success_fields`),
    on the first ``natural_rephrases`` rephrases (None: ``max_rephrases``; 0: the edit prompt only).
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
    natural = (natural_success_fields(requests, max_rephrases if natural_rephrases is None else natural_rephrases,
                                      natural_max_new_tokens,
                                      lambda prompts, _owners, n: generate(model, tokenizer, prompts, n, batch_size))
               if natural_max_new_tokens > 0 else None)
    cases = []
    for c, req in enumerate(requests):
        case = _case(req, grouped[c], reference)
        if generations is not None:
            case.update(generation_fields(generations[c]))
        for fields in (greedy, natural):
            if fields is not None:
                case.update(fields[c])
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


def _answer_prompts(requests: Sequence[EditRequest], max_rephrases: int) -> tuple[list[str], list[int], list[str]]:
    """The prompts whose continuations are checked for the target: each request's edit prompt and its first
    ``max_rephrases`` rephrases (none for ConvSent, whose target is a sentiment, not a text to say); returns
    (prompts, owning request, kind ``edit``/``gen``)."""
    prompts, owners, kinds = [], [], []
    for c, req in enumerate(requests):
        if req.record.target_responses:
            continue
        for kind, prompt in (("edit", req.prompt), *(("gen", r) for r in req.rephrases[:max_rephrases])):
            prompts.append(prompt)
            owners.append(c)
            kinds.append(kind)
    return prompts, owners, kinds


def _answer_fields(requests: Sequence[EditRequest], owners: Sequence[int], kinds: Sequence[str],
                   values: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """Per request: ``edit/<name>`` of its edit prompt and ``gen/<name>`` as the mean over its rephrases, for every
    ``name`` of the per-prompt ``values``."""
    out: list[dict[str, float]] = [{} for _ in requests]
    rephrased: dict[tuple[int, str], list[float]] = defaultdict(list)
    for c, kind, value in zip(owners, kinds, values):
        for name, v in value.items():
            if kind == "edit":
                out[c][f"edit/{name}"] = v
            else:
                rephrased[(c, name)].append(v)
    for (c, name), vs in rephrased.items():
        out[c][f"gen/{name}"] = float(np.mean(vs))
    return out


def greedy_success(requests: Sequence[EditRequest], tokenizer, max_rephrases: int, max_new_tokens: int,
                   generate_fn: Callable[[list[str], list[int], int], list[str]]) -> list[dict[str, float]]:
    """``edit/greedy`` and ``gen/greedy`` of each request (empty for ConvSent): whether the greedy continuation of
    its edit prompt, and of each of its first ``max_rephrases`` rephrases (mean), starts with the target
    (:func:`~instructedit_utils.models.metrics.generation_success`). ``generate_fn(prompts, owners, n)`` continues every
    prompt by ``n`` tokens (``owners[i]``: the request prompt ``i`` belongs to); ``n`` is the longest target in
    tokens plus two, at most ``max_new_tokens`` (greedy text does not depend on how far it runs)."""
    prompts, owners, kinds = _answer_prompts(requests, max_rephrases)
    if not prompts:
        return [{} for _ in requests]
    longest = max(len(tokenizer(" " + requests[c].target)["input_ids"]) for c in set(owners))
    texts = generate_fn(prompts, owners, min(max_new_tokens, longest + 2))
    values = [{"greedy": generation_success(text, requests[c].target)} for c, text in zip(owners, texts)]
    return _answer_fields(requests, owners, kinds, values)


def natural_success_fields(requests: Sequence[EditRequest], max_rephrases: int, max_new_tokens: int,
                           generate_fn: Callable[[list[str], list[int], int], list[str]]) -> list[dict[str, float]]:
    """Success as the model says it, per request (empty for ConvSent): the greedy continuation of the edit prompt and
    of each of the first ``max_rephrases`` rephrases runs to ``max_new_tokens`` (never cut to the target's length),
    is cut at its natural stop and compared with the target
    (:func:`~instructedit_utils.models.metrics.natural_success`): ``edit/natural_em`` and ``gen/natural_em``
    (normalised exact match; rephrases averaged), ``edit/natural_contains`` and ``gen/natural_contains`` (the
    answer holds the target). ``generate_fn`` as in :func:`greedy_success`."""
    prompts, owners, kinds = _answer_prompts(requests, max_rephrases)
    if not prompts:
        return [{} for _ in requests]
    texts = generate_fn(prompts, owners, max_new_tokens)
    values = [{f"natural_{k}": v for k, v in natural_success(text, requests[c].target).items()}
              for c, text in zip(owners, texts)]
    return _answer_fields(requests, owners, kinds, values)


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
    (:func:`~instructedit_utils.models.deltas.applied_per_row`): at 1 CPU thread a batch-1 decoding step of SmolLM2
    costs about as much as a step of 16 rows (each step reads every weight once), so one batch replaces up to
    ``batch_size`` generations. Batches hold at most :data:`GENERATION_DELTA_BYTES` of stacked deltas. Same text as
    generating under each edit alone up to float rounding (a greedy near-tie may resolve differently)."""
    per_edit = max((nbytes(ds) for ds in deltas), default=1)
    size = max(1, min(batch_size, GENERATION_DELTA_BYTES // max(1, per_edit)))
    out: list[str] = []
    for start in range(0, len(prompts), size):
        with applied_per_row(model, deltas[start:start + size]):
            out += generate(model, tokenizer, prompts[start:start + size], max_new_tokens, batch_size=size)
    return out
