"""Case records turned into the book's numbers: display names of the metrics (:data:`METRIC_LABELS`), means with
95% bootstrap intervals per group (:func:`summarize`), paired differences on the same records
(:func:`paired_difference`) and the tables the chapters show (:func:`wide_table`, :func:`difference_table`)."""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from ..models.metrics import bootstrap_ci

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
    "edit/natural_em": "Reliability (as said)",
    "gen/natural_em": "Generalization (as said)",
    "edit/natural_contains": "Reliability (said, contained)",
    "gen/natural_contains": "Generalization (said, contained)",
    "probe/ppl": "Held-out perplexity",
}
# Metrics that are shares in [0, 1] (shown in percent); the others (entropy in bits, log-prob margin) are raw.
FRACTION_METRICS = ("edit/acc", "gen/acc", "loc/acc", "port/acc", "sentiment/success", "loc/gold_acc",
                    "fluency/empty", "search/score", "edit/greedy", "gen/greedy", "sentiment/es", "sentiment/z_sent",
                    "sentiment/z_topic", "edit/token_acc", "edit/natural_em", "gen/natural_em",
                    "edit/natural_contains", "gen/natural_contains")


def metric_label(metric: str) -> str:
    """Display name; ``base/<metric>`` (the unedited model's value in an edit run) becomes ``Base <label>``."""
    if metric.startswith("base/"):
        return "Base " + METRIC_LABELS.get(metric[5:], metric[5:])
    return METRIC_LABELS.get(metric, metric)


def is_fraction(metric: str) -> bool:
    """Whether a metric is a share in [0, 1] (shown in percent)."""
    return (metric[5:] if metric.startswith("base/") else metric) in FRACTION_METRICS


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
    if metric not in df:  # a metric none of the cases has (ConvSent's Generalization): nothing to pair
        return pd.DataFrame()
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
