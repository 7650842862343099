"""Table 1 of the paper from a run: each test task's in-task single-task editor against editors trained on other
tasks, as the paper reports it (changes against the in-task editor, here paired on the same records with 95%
intervals), its cells beside ours (:mod:`~instructedit_utils.data.paper`) and the verdict on its blocks
(:mod:`~instructedit_utils.analysis.verdicts`).

The cases come from :func:`instructedit_utils.experiments.transfer` (chapter 4); nothing here edits.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from ..data import paper

from . import verdicts
from ..evaluation.summaries import metric_label, paired_difference
from ..models.metrics import bootstrap_ci

TRANSFER_METRICS = ("edit/acc", "gen/acc", "port/acc")  # Table 1's columns


def transfer_drops(cases: Sequence[dict[str, Any]], test_tasks: Sequence[str], metrics: Sequence[str] =
                   TRANSFER_METRICS, seed: int = 0) -> pd.DataFrame:
    """Table 1 as the paper reports it: per test task, the in-task single-task editor's value (``kind`` in-task,
    ``diff`` its mean) and, for every editor trained on another task, its change against the in-task editor on the
    same records (``kind`` drop: other − in-task, paired, 95% CI). Rows: ``test_task``, ``train_task``, ``kind``,
    ``metric``, ``diff``, ``ci_low``, ``ci_high``, ``n``, ``a`` (in-task editor), ``b``."""
    rows = []
    editors = {c["train_task"]: c["method"] for c in cases}
    for test in test_tasks:
        own = editors.get(test)
        here = [c for c in cases if c["task"] == test]
        if own is None or not here:
            continue
        for metric in metrics:
            values = [c[metric] for c in here if c["method"] == own and c.get(metric) is not None]
            if values:
                mean, lo, hi = bootstrap_ci(values, seed=seed)
                rows.append({"test_task": test, "train_task": test, "kind": "in-task", "metric": metric, "diff": mean,
                             "ci_low": lo, "ci_high": hi, "n": len(values), "a": own, "b": own})
            for train, other in editors.items():
                if train == test:
                    continue
                d = paired_difference(here, metric, "method", own, other, seed=seed)
                if len(d):
                    r = d.iloc[0]
                    rows.append({"test_task": test, "train_task": train, "kind": "drop", "metric": metric,
                                 **{k: r[k] for k in ("diff", "ci_low", "ci_high", "n", "a", "b")}})
    return pd.DataFrame(rows)


def table1_comparison(drops: pd.DataFrame) -> pd.DataFrame:
    """Table 1 beside the paper's: per test task and training task, our in-task value or change against the in-task
    editor (points, paired 95% CI) and the paper's GPT2-XL cell, for each of Table 1's metrics; rows the paper lacks
    show — in its columns."""
    cells = paper.table1().set_index(["test_task", "train_task", "metric"])["printed"]
    rows = []
    for (test, train), part in drops.groupby(["test_task", "train_task"], sort=False):
        row = {"test task": test, "trained on": train, "kind": part["kind"].iloc[0]}
        for r in part.itertuples():
            label = metric_label(r.metric)
            row[f"{label} (ours)"] = f"{100 * r.diff:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]" \
                if r.kind == "drop" else f"{100 * r.diff:.1f} [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]"
            row[f"{label} (paper)"] = cells.get((test, train, r.metric), "—")
        rows.append(row)
    return pd.DataFrame(rows).set_index(["test task", "trained on"]).fillna("—") if rows else pd.DataFrame()


def table1_verdicts(drops: pd.DataFrame, done: Mapping[str, Mapping[str, Any] | None] | None = None,
                    metric: str = "edit/acc") -> pd.DataFrame:
    """The paper's Table 1 claim on each of its (test task, other editor) pairs: the editor trained on another
    task edits the test task worse than the in-task editor — :data:`~instructedit_utils.analysis.verdicts.REPRODUCED`
    when the paired change's interval lies below 0 (:func:`~instructedit_utils.analysis.verdicts.direction` of in-task −
    other); with ``done`` (editor → its ``done.json``) a pair resting on an editor that did not train is not measured."""
    pairs = paper.table1()
    pairs = pairs[pairs["kind"] == "drop"][["test_task", "train_task"]].drop_duplicates()
    rows = []
    for test, train in pairs.itertuples(index=False):
        part = drops[(drops["test_task"] == test) & (drops["train_task"] == train) & (drops["metric"] == metric)
                     & (drops["kind"] == "drop")] if len(drops) else drops
        if not len(part):
            rows.append({"test_task": test, "train_task": train, "verdict": verdicts.MISSING, "evidence": ""})
            continue
        r = part.iloc[0].to_dict()
        v = verdicts.direction({**r, "diff": -r["diff"], "ci_low": -r["ci_high"], "ci_high": -r["ci_low"]})
        v = verdicts.Verdict(v.word, f"change {verdicts.interval_text(r)}") if v.measured else v
        if done is not None:
            v = verdicts.gate(v, {r["a"]: done.get(r["a"]), r["b"]: done.get(r["b"])})
        rows.append({"test_task": test, "train_task": train, "verdict": v.word, "evidence": v.evidence})
    return pd.DataFrame(rows, columns=["test_task", "train_task", "verdict", "evidence"])
