"""Edits that must last, in numbers: the rows of :mod:`instructedit_utils.experiments.sequential` turned into the
chapter's tables and verdicts. Nothing here edits.

* :func:`final_cases`: each record once its stream ended (one case per method, setting, seed, stream length);
  :func:`length_summary` their means with 95% CIs per stream length ``T`` (``paired``: only the records every
  length covers, so that the lengths compare the same records).
* :func:`checkpoint_summary`: the longest stream's retention of all its edits so far at each checkpoint.
* :func:`forgetting`: per method, a record's value once the whole stream ended minus its value right after its own
  edit (paired on the record; teacher forced).
* :func:`length_drops`: per method and length ``T``, the value at ``T = 1`` minus the value at ``T`` on the same
  records; :func:`breaking_points` the first ``T`` where that drop is resolved and beyond the equivalence margin
  ("where each method breaks"), or the step a stream broke at (non-finite).
* :func:`method_differences`: InstructEdit − MEND (or any pair) on the same records at each length.
* :func:`batch_summary`: means per batch size; :func:`probe_table`: held-out perplexity through the stream.

Every verdict comes from :mod:`instructedit_utils.analysis.verdicts`.
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from ..evaluation.summaries import paired_difference, summarize
from . import verdicts

KEYS = ("setting", "seed", "method")
METRICS = ("edit/acc", "edit/natural_em", "edit/natural_contains", "gen/acc", "gen/natural_em", "loc/acc")


def final_cases(rows: Sequence[dict[str, Any]], paired: bool = False) -> list[dict[str, Any]]:
    """The retention rows measured when each record's stream ended; with ``paired`` only records every stream length
    of their method, setting and seed covers."""
    out = [r for r in rows if r.get("when") == "retention" and r["after"] == r["stream/length"]]
    if not paired:
        return out
    lengths: dict[tuple, set] = {}
    for r in out:
        lengths.setdefault(tuple(r[k] for k in KEYS), set()).add(r["stream/length"])
    seen: dict[tuple, int] = {}
    for r in out:
        key = (*(r[k] for k in KEYS), r["case_id"])
        seen[key] = seen.get(key, 0) + 1
    return [r for r in out if seen[(*(r[k] for k in KEYS), r["case_id"])] == len(lengths[tuple(r[k] for k in KEYS)])]


def length_summary(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS, paired: bool = False,
                   seed: int = 0) -> pd.DataFrame:
    """Mean and 95% CI of each metric per setting, method and stream length (:func:`final_cases`)."""
    cases = final_cases(rows, paired)
    if not cases:
        return pd.DataFrame()
    present = [m for m in metrics if any(m in c for c in cases)]
    return summarize(cases, by=("setting", "method", "stream/length"), metrics=present, seed=seed)


def _longest(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The longest stream length of each method among ``rows`` (methods of ``SequenceConfig.method_records`` stop
    earlier than the others)."""
    out: dict[str, int] = {}
    for r in rows:
        if "stream/length" in r:
            out[r["method"]] = max(out.get(r["method"], 0), r["stream/length"])
    return out


def checkpoint_summary(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = ("edit/acc", "gen/acc", "loc/acc"),
                       seed: int = 0) -> pd.DataFrame:
    """The longest stream's retention at each checkpoint ``after`` (mean over its edits so far, 95% CI)."""
    longest = _longest(rows)
    cases = [r for r in rows if r.get("when") == "retention" and r["stream/length"] == longest[r["method"]]]
    if not cases:
        return pd.DataFrame()
    return summarize(cases, by=("setting", "method", "after"), metrics=list(metrics), seed=seed)


def forgetting(rows: Sequence[dict[str, Any]], metric: str = "edit/acc", seed: int = 0) -> pd.DataFrame:
    """Per setting and method: value right after the record's own edit minus value after the whole (longest) stream,
    paired on the record (``diff`` > 0: later edits undid earlier ones), with the verdict on *the method forgets
    earlier edits*."""
    longest = _longest(rows)
    cases = [{**r, "moment": "right after its edit"} for r in rows
             if r.get("when") == "edit" and r["stream/length"] == longest[r["method"]]]
    cases += [{**r, "moment": "after the stream"} for r in final_cases(rows)
              if r["stream/length"] == longest[r["method"]]]
    if not cases:
        return pd.DataFrame()
    diffs = paired_difference(cases, metric, "moment", "after the stream", "right after its edit",
                              by=("setting", "method"), seed=seed)
    return diffs.assign(verdict=[str(verdicts.direction(r)) for r in diffs.to_dict("records")]) if len(diffs) else diffs


def length_drops(rows: Sequence[dict[str, Any]], metric: str = "edit/acc", seed: int = 0) -> pd.DataFrame:
    """Per setting, method and length ``T`` > 1: the value at ``T = 1`` minus the value at ``T`` on the same records
    (``diff`` > 0: the method edits worse the more edits the model already holds), with the 95% interval and the 90%
    one (``ci90_low``, ``ci90_high``) the equivalence test needs."""
    cases = [{**r, "length": str(r["stream/length"])} for r in final_cases(rows)]
    lengths = sorted({r["stream/length"] for r in cases})
    if not cases or len(lengths) < 2:
        return pd.DataFrame()
    out = []
    for t in lengths[1:]:
        args = (cases, metric, "length", str(t), str(lengths[0]))
        d95 = paired_difference(*args, by=("setting", "method"), seed=seed)
        d90 = paired_difference(*args, by=("setting", "method"), seed=seed, alpha=0.10)
        if len(d95):
            d95 = d95.assign(ci90_low=d90["ci_low"].to_numpy(), ci90_high=d90["ci_high"].to_numpy())
        out.append(d95.assign(length=t, first=lengths[0]))
    return pd.concat(out, ignore_index=True)


def drop_verdict(row: dict[str, Any]) -> verdicts.Verdict:
    """The equivalence test (:func:`~instructedit_utils.analysis.verdicts.equivalence`, margin ±5 points) of one
    :func:`length_drops` row: *different* (with ``diff`` > 0, a drop beyond the margin), *equivalent* or not
    resolved."""
    return verdicts.equivalence({**row, "ci_low": row["ci90_low"], "ci_high": row["ci90_high"]}, row)


def breaking_points(rows: Sequence[dict[str, Any]], metric: str = "edit/acc", seed: int = 0) -> pd.DataFrame:
    """Where each method breaks, per setting: the first length whose drop against ``T = 1`` on the same records is
    resolved and beyond the equivalence margin (:func:`drop_verdict`), or the first step a stream broke at with a
    non-finite weight or loss. Otherwise "holds" when every length is equivalent to ``T = 1`` (or resolvably above
    it), "not resolved" when some length is neither."""
    drops = length_drops(rows, metric, seed)
    broken = broken_streams(rows)
    longest = _longest(rows)
    out = []
    groups = sorted({(r["setting"], r["method"]) for r in rows if "setting" in r and "method" in r})
    for setting, method in groups:
        mine = drops[(drops["setting"] == setting) & (drops["method"] == method)] if len(drops) else drops
        found = [(int(r["length"]), r["diff"], drop_verdict(r)) for r in mine.sort_values("length").to_dict("records")]
        breaks = [(t, v) for t, d, v in found if v.word == verdicts.DIFFERENT and d > 0]
        dead = broken[(broken["setting"] == setting) & (broken["method"] == method)] if len(broken) else broken
        if len(dead):
            where, why = f"broke at edit {int(dead['after'].min())}", str(dead.iloc[0]["error"])
        elif breaks:
            where, why = f"drops by T = {breaks[0][0]}", str(breaks[0][1])
        else:
            held = found and all(v.word == verdicts.EQUIVALENT or (v.word == verdicts.DIFFERENT and d < 0)
                                 for _, d, v in found)
            where = (f"holds up to T = {longest.get(method)}" if held else
                     f"{verdicts.UNRESOLVED} up to T = {longest.get(method)}" if found else verdicts.MISSING)
            why = "; ".join(f"T = {t}: {v}" for t, _, v in found)
        out.append({"setting": setting, "method": method, "where": where, "evidence": why})
    return pd.DataFrame(out)


def method_differences(rows: Sequence[dict[str, Any]], a: str = "mend", b: str = "instructedit",
                       metrics: Sequence[str] = ("edit/acc", "edit/natural_em", "gen/acc", "loc/acc"),
                       seed: int = 0) -> pd.DataFrame:
    """``b − a`` on the same records, per setting and stream length, with its verdict (claim: ``b`` above ``a``)."""
    cases = final_cases(rows)
    out = []
    for metric in metrics:
        if not any(metric in c for c in cases):
            continue
        d = paired_difference(cases, metric, "method", a, b, by=("setting", "stream/length"), seed=seed)
        if len(d):
            out.append(d.assign(verdict=[str(verdicts.direction(r.to_dict())) for _, r in d.iterrows()]))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def broken_streams(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Every stream that broke: setting, method, length, the edit it broke at and why."""
    broken = [r for r in rows if r.get("when") == "broken"]
    cols = ["setting", "seed", "method", "stream/length", "stream/index", "after", "case_id", "error"]
    return pd.DataFrame([{k: r.get(k) for k in cols} for r in broken], columns=cols)


def probe_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Held-out perplexity per setting and method at each checkpoint of the longest stream (``after`` 0: the
    unedited model), as a wide table."""
    probes = [r for r in rows if r.get("when") == "probe"]
    if not probes:
        return pd.DataFrame()
    df = pd.DataFrame(probes)
    return df.pivot_table(index=["setting", "method"], columns="after", values="probe/ppl", aggfunc="mean")


def batch_summary(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS, seed: int = 0) -> pd.DataFrame:
    """Mean and 95% CI per method and batch size."""
    if not rows:
        return pd.DataFrame()
    present = [m for m in metrics if any(m in r for r in rows)]
    return summarize(rows, by=("method", "batch/size"), metrics=present, seed=seed)


def summary_lines(rows: Sequence[dict[str, Any]], a: str = "mend", b: str = "instructedit", seed: int = 0) -> list[str]:
    """The chapter's summary, computed: ``b`` above ``a`` at each length, where each method breaks, forgetting, and
    Reliability forced vs said at each length (paired records)."""
    gaps = method_differences(rows, a, b, metrics=("edit/acc",), seed=seed)
    breaks = breaking_points(rows, seed=seed)
    forget = forgetting(rows, seed=seed)
    held = length_summary(rows, metrics=("edit/acc", "edit/natural_em"), paired=True, seed=seed)
    said = []
    for (setting, method), part in (held.groupby(["setting", "method"], sort=False) if len(held) else []):
        forced = part[part["metric"] == "edit/acc"].set_index("stream/length")["mean"].sort_index()
        natural = part[part["metric"] == "edit/natural_em"].set_index("stream/length")["mean"]
        said.append(f"{setting} {method}: " + ", ".join(
            f"T = {t}: {verdicts.percent(forced.get(t))} forced / {verdicts.percent(natural.get(t))} said"
            for t in forced.index))
    return [
        f"**{b} above {a}** (Reliability, teacher forced, paired): " + ("; ".join(
            f"{r['setting']}, T = {r['stream/length']}: {r['verdict']}" for r in gaps.to_dict("records"))
            or verdicts.MISSING),
        "**Where each method breaks** (Reliability against T = 1, paired, margin ±5 points): " + ("; ".join(
            f"{r['setting']} {r['method']}: {r['where']}" for r in breaks.to_dict("records")) or verdicts.MISSING),
        "**Forgets earlier edits** (right after its edit − after the longest stream): " + ("; ".join(
            f"{r['setting']} {r['method']}: {r['verdict']}" for r in forget.to_dict("records")) or verdicts.MISSING),
        "**Forced vs said** (Reliability, paired records): " + ("; ".join(said) or verdicts.MISSING),
        f"**Streams that broke**: {len(broken_streams(rows))}.",
    ]


def verdict_table(rows: Sequence[dict[str, Any]], a: str = "mend", b: str = "instructedit", seed: int = 0
                  ) -> pd.DataFrame:
    """The chapter's verdicts as one table (what the results page shows): ``b`` above ``a`` per setting and length,
    where each method breaks, whether it forgets earlier edits."""
    out = []
    gaps = method_differences(rows, a, b, metrics=("edit/acc",), seed=seed)
    for r in gaps.to_dict("records"):
        out.append({"question": f"{b} above {a} (Reliability)", "setting": r["setting"],
                    "detail": f"T = {r['stream/length']}", "verdict": r["verdict"]})
    for r in breaking_points(rows, seed=seed).to_dict("records"):
        out.append({"question": "where the method breaks (Reliability against T = 1)", "setting": r["setting"],
                    "detail": r["method"], "verdict": f"{r['where']} ({r['evidence']})" if r["evidence"] else r["where"]})
    for r in forgetting(rows, seed=seed).to_dict("records"):
        out.append({"question": "forgets earlier edits (right after its edit − after the stream)",
                    "setting": r["setting"], "detail": r["method"], "verdict": r["verdict"]})
    return pd.DataFrame(out, columns=["question", "setting", "detail", "verdict"])
