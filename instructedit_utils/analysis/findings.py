"""Chapter 7's findings (paper Fig. 4b-d, Findings 2 and 3) from the mixture editors' cases
(:mod:`instructedit_utils.experiments.mixtures`) and the plan (:mod:`instructedit_utils.training.plan`): the
editors' results beside what they are, paired differences of task scaling (most − fewest tasks) and of balance (each
balanced mixture − the ConvSent-dominated one), per-seed verdicts through :mod:`.verdicts` (gated on editors that
did not train), the kept checkpoints, the book's tables and the gradient-norm remark.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..evaluation.summaries import metric_label, paired_difference
from ..training.plan import BALANCE, BALANCED, DOMINATED, SCALING, UNIFORM, MixtureEditor, Plan
from . import verdicts

def results(the_plan: Plan, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per chapter-6 editor × task × metric: the editor's description beside the summary of its folder."""
    info = pd.DataFrame([{**dataclasses.asdict(e), "n_tasks": e.n_tasks, "tasks": " + ".join(e.tasks)}
                         for e in the_plan.editors]).drop(columns=["weights"])
    return info.merge(summary.rename(columns={"method": "folder"}), on="folder")


def norm_summary(norms: pd.DataFrame, by: Sequence[str] = ("group", "task")) -> pd.DataFrame:
    """Per ``by`` group of a ``norm`` column: count, mean, median, 90th percentile, max and the coefficient of
    variation (population std / mean: how irregular the magnitudes are)."""
    def cv(x):
        return float(np.std(x, ddof=0) / np.mean(x)) if len(x) and np.mean(x) else float("nan")

    return norms.groupby(list(by), sort=False)["norm"].agg(
        count="count", mean="mean", median="median", q90=lambda x: float(np.quantile(x, 0.9)), max="max",
        cv=cv).reset_index()


def scaling_differences(the_plan: Plan, cases: Sequence[dict[str, Any]], metrics: Sequence[str] = ("edit/acc",
                        "gen/acc", "loc/acc"), seed: int = 0) -> pd.DataFrame:
    """Paired differences (same records) of the editor with the most training tasks minus the one with the fewest,
    per method, seed, task and metric (the paper's Finding 2: more tasks, better out-of-distribution editing).
    Columns ``a``/``b`` name the two editors' folders."""
    rows = []
    by_key: dict[tuple[str, int], list[MixtureEditor]] = {}
    for e in the_plan.editors:
        if e.experiment == SCALING:
            by_key.setdefault((e.method, e.seed), []).append(e)
    for (method, s), eds in by_key.items():
        few, most = min(eds, key=lambda e: e.n_tasks), max(eds, key=lambda e: e.n_tasks)
        for metric in metrics:
            d = paired_difference(cases, metric, "method", few.folder, most.folder, seed=seed)
            if len(d):
                rows.append(d.assign(method=method, seed=s, comparison=f"{most.n_tasks} tasks − {few.n_tasks}"))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def balance_differences(the_plan: Plan, cases: Sequence[dict[str, Any]], metrics: Sequence[str] = ("edit/acc",
                        "gen/acc", "loc/acc"), seed: int = 0) -> pd.DataFrame:
    """Paired differences of each other mixture (``arm``: the paper-balanced one, the uniform one) minus the
    ConvSent-dominated one trained with the same seed, per seed, task and metric (Finding 3: balancing the data
    improves hold-out editing)."""
    rows = []
    seeds = sorted({e.seed for e in the_plan.editors if e.experiment == BALANCE})
    for s in seeds:
        pair = {e.mixture: e for e in the_plan.editors if e.experiment == BALANCE and e.seed == s}
        if DOMINATED not in pair:
            continue
        for arm in (BALANCED, UNIFORM):
            if arm not in pair:
                continue
            for metric in metrics:
                d = paired_difference(cases, metric, "method", pair[DOMINATED].folder, pair[arm].folder, seed=seed)
                if len(d):
                    rows.append(d.assign(seed=s, arm=arm, comparison=f"{arm} − {DOMINATED}"))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def editor_done(editors_dir: Path, folders: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Each editor folder's ``done.json`` in chapter 2's run folder (None where there is none)."""
    out = {}
    for folder in folders:
        path = Path(editors_dir) / folder / "done.json"
        out[folder] = json.loads(path.read_text()) if path.is_file() else None
    return out


def verdict(diffs: pd.DataFrame, task: str, metric: str = "edit/acc", method: str | None = None,
            arm: str | None = None, done: Mapping[str, Mapping[str, Any] | None] | None = None) -> dict[str, Any]:
    """One finding's verdict from paired differences on ``task``/``metric`` (optionally one ``method`` or balance
    ``arm``), through :mod:`~instructedit_utils.analysis.verdicts`: each seed's difference by
    :func:`~instructedit_utils.analysis.verdicts.direction` (claimed side: above 0), the seeds by
    :func:`~instructedit_utils.analysis.verdicts.combine`; with ``done`` (editor folder → its ``done.json``), a seed
    whose editors did not train is *not measured (editor did not train)*. Returns the word, the per-seed differences,
    their mean and seed-to-seed spread (max − min) and a text."""
    part = diffs[(diffs["task"] == task) & (diffs["metric"] == metric)] if len(diffs) else diffs
    for column, value in (("method", method), ("arm", arm)):
        if value is not None and len(part):
            part = part[part[column] == value]
    if not len(part):
        return {"verdict": verdicts.MISSING, "seeds": 0, "text": verdicts.MISSING}
    per_seed = []
    for r in part.to_dict("records"):
        v = verdicts.direction(r)
        if done is not None:
            v = verdicts.gate(v, {f: done.get(f) for f in (r["a"], r["b"])})
        per_seed.append((r, v))
    word = verdicts.combine(v for _, v in per_seed)
    spread = float(part["diff"].max() - part["diff"].min())
    text = "; ".join(f"seed {r['seed']}: {v}" for r, v in per_seed)
    return {"verdict": word, "seeds": len(part), "mean_diff": float(part["diff"].mean()), "seed_spread": spread,
            "text": f"{word} — {text}" + (f"; seed-to-seed spread {spread * 100:.1f} points" if len(part) > 1 else "")}


def best_steps(the_plan: Plan, done: Mapping[str, Mapping[str, Any] | None]) -> pd.DataFrame:
    """Per chapter-7 editor: its folder, the step its kept checkpoint comes from and that checkpoint's validation
    score (``done.json``), and whether it trained (best step above 0)."""
    rows = []
    for e in the_plan.editors:
        d = done.get(e.folder) or {}
        rows.append({"editor": e.label, "folder": e.folder, "best step": d.get("best_step"),
                     "of steps": d.get("step"), "val/score": d.get("best"), "trained": verdicts.trained(d)})
    return pd.DataFrame(rows).set_index("editor")


def wide(res: pd.DataFrame, experiment: str, metrics: Sequence[str] = ("edit/acc", "gen/acc", "loc/acc"),
         tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """The book's table of one experiment: rows = editor, columns = task × metric, cells ``mean ± half-CI`` (%)."""
    part = res[(res["experiment"] == experiment) & res["metric"].isin(metrics)]
    if tasks is not None:
        part = part[part["task"].isin(tasks)]
    part = part.assign(cell=[f"{m * 100:.1f} ± {(hi - lo) * 50:.1f}" for m, lo, hi in
                             zip(part["mean"], part["ci_low"], part["ci_high"])],
                       metric=part["metric"].map(metric_label))
    index = ["method", "n_tasks", "seed"] if experiment == SCALING else ["mixture", "seed"]
    out = part.pivot_table(index=index, columns=["task", "metric"], values="cell", aggfunc="first")
    order_tasks = list(dict.fromkeys(tasks or part["task"]))
    order_metrics = [metric_label(m) for m in metrics]
    return out.reindex(columns=pd.MultiIndex.from_product([order_tasks, order_metrics])).dropna(axis=1, how="all")


def norm_findings(norms: pd.DataFrame, the_plan: Plan, task: str = "convsent", arm: str = BALANCED) -> pd.DataFrame:
    """Per balance seed: the median and coefficient of variation of ``task``'s editing-gradient norms under the
    ``arm`` mixture (default: the paper-balanced one) and the ConvSent-dominated one, and their ratio (dominated /
    ``arm``): the paper's remark that the dominating task's gradients are large and irregular."""
    summary = norm_summary(norms)
    rows = []
    for seed in sorted({e.seed for e in the_plan.editors if e.experiment == BALANCE}):
        pair = {e.mixture: e.folder for e in the_plan.editors if e.experiment == BALANCE and e.seed == seed}
        if arm not in pair or DOMINATED not in pair:
            continue
        got = {m: summary[(summary["group"] == pair[m]) & (summary["task"] == task)] for m in (arm, DOMINATED)}
        if any(not len(g) for g in got.values()):
            continue
        u, d = got[arm].iloc[0], got[DOMINATED].iloc[0]
        rows.append({"seed": seed, "task": task, "arm": arm, f"median {arm}": u["median"],
                     "median dominated": d["median"], "median ratio": d["median"] / u["median"],
                     f"cv {arm}": u["cv"], "cv dominated": d["cv"]})
    return pd.DataFrame(rows)
