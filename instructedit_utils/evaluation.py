"""Evaluation: score a model on edit requests, one flat metrics dict per case, summaries with bootstrap CIs.

Metric keys (slash-separated, MEND style):

=====================  ==========================================================================================
``edit/acc``           Reliability: token accuracy of the target on the edit prompt
``gen/acc``            Generalization: mean token accuracy of the target over the rephrases
``port/acc``           Portability: mean over portability probes of the best accuracy over (up to N) aliases
``loc/acc``            Locality: agreement of edited and unedited argmax on locality answers (edited models only)
``loc/gold_acc``       accuracy of the model on the locality answers themselves (how much it knows there)
``sentiment/success``  ConvSent: share of (target, opposite) response pairs ranked correctly (see metrics)
``sentiment/margin``   ConvSent: mean log-prob of target-sentiment minus opposite-sentiment responses
``fluency/entropy``    weighted bi/tri-gram entropy of a greedy continuation of the edit prompt (the generated text
                       only; missing when the continuation is empty, see :func:`~instructedit_utils.metrics.fluency`)
``fluency/empty``      1 when that continuation has fewer than 3 words (the model ended its answer at once), else 0
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

from .data import EditRecord, load_task, sample
from .instructions import EditRequest, make_edit_request
from .metrics import (Encoded, TargetScore, bootstrap_ci, encode_pair, fluency, generate, locality_agreement,
                      score_encoded, sentiment_success)
from .runs import RunFolder

METRIC_LABELS = {
    "edit/acc": "Reliability",
    "gen/acc": "Generalization",
    "loc/acc": "Locality",
    "port/acc": "Portability",
    "fluency/entropy": "Fluency",
    "fluency/empty": "Empty generations",
    "sentiment/success": "Sentiment success",
    "loc/gold_acc": "Loc. answer acc.",
    "sentiment/margin": "Sentiment margin",
}
# Metrics that are shares in [0, 1] (shown in percent); the others (entropy in bits, log-prob margin) are raw.
FRACTION_METRICS = ("edit/acc", "gen/acc", "loc/acc", "port/acc", "sentiment/success", "loc/gold_acc",
                    "fluency/empty")


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
                   fluency_max_new_tokens: int = 0, reference: dict[tuple, TargetScore] | None = None,
                   scorer: Scorer | None = None) -> tuple[list[dict[str, Any]], dict]:
    """Score ``model`` on each request; returns (cases, raw locality scores).

    ``reference`` holds the unedited model's locality scores (as returned by an earlier call on the base model);
    given it, ``loc/acc`` is the agreement with them. The raw scores returned can serve as such a reference.

    Costs are bounded per case: the first ``max_rephrases`` rephrases, the first ``max_probes`` locality and
    portability probes (file order), the first ``max_aliases`` aliases of each answer (an answer counts as
    predicted if any of them is), ``sentiment_responses`` responses per sentiment.

    ``scorer`` replaces the plain batched forward passes (e.g. :func:`~instructedit_utils.forward.score_split`,
    which replays only the edited blocks); it must score ``model``.
    """
    jobs = _Jobs(tokenizer)
    for c, req in enumerate(requests):
        jobs.add((c, "edit"), req.prompt, req.target)
        for j, reph in enumerate(req.rephrases[:max_rephrases]):
            jobs.add((c, "gen", j), reph, req.target)
        for j, probe in enumerate(req.portability[:max_probes]):
            for a, ans in enumerate(probe.answers[:max_aliases]):
                jobs.add((c, "port", j, a), probe.prompt, ans)
        for j, probe in enumerate(req.locality[:max_probes]):
            for a, ans in enumerate(probe.answers[:max_aliases]):
                jobs.add((c, "loc", j, a), probe.prompt, ans)
        rec = req.record
        if rec.task == "convsent":
            for side, responses in (("t", rec.target_responses), ("o", rec.opposite_responses)):
                for j, resp in enumerate(responses[:sentiment_responses]):
                    jobs.add((c, "sent", side, j), req.prompt, resp)
    scores = jobs.run(model, batch_size, scorer)

    grouped: dict[int, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for key, sc in scores.items():
        grouped[key[0]][key[1]][key[2:]] = sc
    generations = (generate(model, tokenizer, [r.prompt for r in requests], fluency_max_new_tokens, batch_size)
                   if fluency_max_new_tokens > 0 else None)

    cases = []
    for c, req in enumerate(requests):
        g = grouped[c]
        case: dict[str, Any] = {
            "case_id": req.case_id, "task": req.task, "instruction": req.description,
            "description_index": req.description_index,
            "edit/acc": g["edit"][()].acc,
        }
        case["gen/acc"] = _mean([sc.acc for sc in g["gen"].values()])
        port = defaultdict(list)
        for (j, _a), sc in g["port"].items():
            port[j].append(sc.acc)
        case["port/acc"] = _mean([max(v) for v in port.values()])
        loc = defaultdict(list)
        for (j, _a), sc in g["loc"].items():
            loc[j].append(sc.acc)
        case["loc/gold_acc"] = _mean([max(v) for v in loc.values()])
        if reference is not None:
            case["loc/acc"] = _mean([locality_agreement(reference[(req.case_id, "loc", j, 0)], sc)
                                     for (j, a), sc in g["loc"].items() if a == 0])
        if req.task == "convsent":
            t = [sc.mean_logprob for (side, _j), sc in g["sent"].items() if side == "t"]
            o = [sc.mean_logprob for (side, _j), sc in g["sent"].items() if side == "o"]
            case["sentiment/success"] = sentiment_success(t, o)
            case["sentiment/margin"] = float(np.mean(t) - np.mean(o))
        if generations is not None:
            # the continuation alone: neither the prompt nor a prepended instruction may count as generated text
            case.update(fluency(generations[c]))
            case["generation"] = generations[c]
        cases.append({k: v for k, v in case.items() if v is not None or k in ("instruction", "description_index")})
    raw_loc = {(requests[key[0]].case_id, *key[1:]): sc for key, sc in scores.items() if key[1] == "loc"}
    return cases, raw_loc


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


def case_settings(requests: Sequence[EditRequest], score_kwargs: dict[str, Any],
                  settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a case file records: ``settings`` (the caller's, e.g.
    :meth:`~instructedit_utils.config.ExperimentConfig.case_settings`), every scoring cap and the Fluency length
    (``scoring/…``; the batch size is left out, it does not change what is computed) and :func:`requests_digest`."""
    scoring = {**_SCORE_DEFAULTS, **score_kwargs}
    scoring.pop("batch_size", None)
    return {**(settings or {}), "scoring": scoring, "requests": requests_digest(requests)}


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


def evaluate_method(method, model, tokenizer, requests: Sequence[EditRequest], *, run: RunFolder | None = None,
                    name: str | None = None, chunk: int = 16, progress: Callable | None = None, split: bool = True,
                    settings: dict[str, Any] | None = None, **score_kwargs) -> list[dict[str, Any]]:
    """Apply each request's edit alone with ``method`` (an :class:`~instructedit_utils.baselines.EditingMethod`),
    score it, restore the model.

    Each case holds every metric of :func:`score_requests` (``loc/acc`` against the unedited model), the unedited
    model's values as ``base/<metric>``, the instruction used, ``method`` and ``editor`` (the method's fingerprint).
    Batching: per chunk of requests the unedited scores in shared batches; per request every prompt of the edited
    model in one batch. With ``split`` (where the architecture allows) the blocks below the method's first edited
    block run once per distinct prompt for the whole chunk (they are the same before and after an edit) and only the
    upper blocks are replayed per edit. With a ``run`` folder cases go to ``<name>.jsonl`` (default
    ``cases_<method>``) as chunks finish and a rerun skips finished cases; cases of a different editor or of other
    settings (:func:`case_settings` of ``settings``, the requests and the scoring caps) there are an error.
    """
    from functools import partial

    from .forward import score_split

    name = name or f"cases_{method.name}"
    fingerprint = method.fingerprint
    if run is not None:
        other = {c.get("editor") for c in run.read_cases(name)} - {fingerprint}
        if other:
            raise ValueError(f"{run.cases_path(name)} holds cases of another editor ({sorted(map(str, other))}, "
                             f"now {fingerprint}); delete the file or use another run folder")
    runner = method.runner(model) if split else None
    batch_size = score_kwargs.get("batch_size", 16)

    def score_chunk(part: list[EditRequest]) -> list[dict[str, Any]]:
        scorer = None
        context = contextlib.nullcontext()
        if runner is not None:
            headers = tuple({tuple(tokenizer(r.header)["input_ids"]) for r in part if r.header})
            scorer = partial(score_split, runner, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                             headers=headers)
            context = runner.reusing_states()
        out = []
        with context:
            base_cases, reference = score_requests(model, tokenizer, part, scorer=scorer, **score_kwargs)
            for req, base in zip(part, base_cases):
                with method.edited(model, tokenizer, req) as edited:
                    case = score_requests(edited, tokenizer, [req], reference=reference, scorer=scorer,
                                          **score_kwargs)[0][0]
                out.append({"method": method.name, "editor": fingerprint, **case,
                            **{f"base/{k}": v for k, v in base.items() if "/" in k}})
        return out

    return resumable_cases(requests, score_chunk, run, name, chunk, progress,
                           case_settings(requests, score_kwargs, settings))


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
                      by: Sequence[str] = ("task",), n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``b − a`` of ``metric`` on the cases both have (same ``case_id``; ``column`` names what differs, e.g.
    ``method`` or ``condition``), per group, with a 95% bootstrap CI of the paired mean difference."""
    df = pd.DataFrame(cases)
    df = df[df[column].isin([a, b]) & df[metric].notna()]
    wide = df.pivot_table(index=[*by, "case_id"], columns=column, values=metric, aggfunc="first").dropna()
    rows = []
    if a not in wide or b not in wide:
        return pd.DataFrame(rows)
    for keys, group in wide.groupby(level=list(range(len(by))), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        mean, lo, hi = bootstrap_ci((group[b] - group[a]).tolist(), n_boot=n_boot, seed=seed)
        rows.append({**dict(zip(by, keys)), "metric": metric, "a": a, "b": b, "diff": mean, "ci_low": lo,
                     "ci_high": hi, "n": len(group)})
    return pd.DataFrame(rows)


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
