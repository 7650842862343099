"""Chapter 7: what the training mixture does to an editor (paper Fig. 4b-d, Findings 2 and 3).

Two experiments, both on editors trained in chapter 2's pool of workers (:class:`~instructedit_utils.config.
MixtureConfig` in its parameters; :meth:`ExperimentConfig.training_configs` adds them there):

* **task scaling** — InstructEdit and MEND trained on Recent, on Recent + CounterFact and on all three training
  tasks (the order of ``scaling_order``), same budget and hyperparameters, tested on the hold-out ZsRE and on every
  training task;
* **data balance** — InstructEdit with tasks drawn in proportion to the paper's training-set sizes (ConvSent-
  dominated) against tasks drawn in proportion to the paper's balanced set (Recent 570 : CounterFact 1,455 :
  ConvSent 1,427, Fig. 4d), one pair per seed, and against tasks drawn uniformly (the book's default).

:func:`plan` resolves which folder of chapter 2 holds each of these editors: one whose training config an editor of
the chapter already has (e.g. Table 1's ``mend-recent``) is that editor; one that differs from a longer run only in
its budget is that run's best editor at the budget (``<run>@<steps>``, kept by the trainer, see
``MethodConfig.keep_best_at``); the rest are trained under their own names. :func:`evaluate` and :func:`gradients`
run chapter 7's measurements into its run folder (resumable, in workers); the remaining functions turn them into the
chapter's tables and verdicts.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import verdicts
from .config import ExperimentConfig, MethodConfig
from .evaluation import paired_difference, summarize
from .training import budget_dir

if TYPE_CHECKING:
    from .gradients import Areas

SCALING, BALANCE = "scaling", "balance"
UNIFORM, DOMINATED, BALANCED = "uniform", "convsent-dominated", "paper-balanced"
SETTING = "mixtures"  # chapter 7's case files: <run_dir>/mixtures/


@dataclass(frozen=True)
class MixtureEditor:
    """One editor of chapter 7: what it is (experiment, method, training tasks, mixture, seed) and where it is
    (``folder``, a folder of chapter 2's run folder)."""

    label: str
    experiment: str
    method: str  # "instructedit" or "mend"
    tasks: tuple[str, ...]
    mixture: str
    seed: int
    folder: str
    weights: tuple[tuple[str, float], ...]  # task sampling weights, normalised to sum 1

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)


@dataclass
class Plan:
    """Chapter 7's editors and every config chapter 2 trains to provide them (with the multi-task ones)."""

    editors: list[MixtureEditor]
    train: dict[str, MethodConfig]

    def folders(self) -> list[str]:
        return list(dict.fromkeys(e.folder for e in self.editors))

    def table(self) -> pd.DataFrame:
        rows = [{"editor": e.label, "experiment": e.experiment, "method": e.method,
                 "training tasks": " + ".join(e.tasks),
                 "mixture": e.mixture, "weights": ", ".join(f"{t} {w:.2f}" for t, w in e.weights), "seed": e.seed,
                 "folder": e.folder} for e in self.editors]
        return pd.DataFrame(rows)


def _label(method: str, what: str, seed: int) -> str:
    return f"{method}-{what}" + (f"-seed{seed}" if seed else "")


def _normalised(weights: Mapping[str, float], tasks: Sequence[str]) -> tuple[tuple[str, float], ...]:
    total = sum(weights[t] for t in tasks)
    return tuple((t, weights[t] / total) for t in tasks)


def wanted(cfg: ExperimentConfig) -> list[tuple[MixtureEditor, MethodConfig]]:
    """Every editor the two experiments compare, with the training config it needs (``folder`` = its label)."""
    if cfg.method is None or cfg.mixtures is None:
        raise ValueError("This experiment has no method or mixture config (chapter 2's parameters give both)")
    mix, method = cfg.mixtures, cfg.method
    steps = mix.mixture_steps or method.steps

    def one(experiment, name, subset, use_instructions, mixture, weights, seed):
        tasks = tuple(t for t in method.tasks if t in subset)  # chapter 2's task order: same draws, same editor
        label = _label(name, "+".join(t for t in mix.scaling_order if t in subset) if mixture == UNIFORM else mixture,
                       seed)
        config = dataclasses.replace(method, name=label, tasks=tasks, use_instructions=use_instructions, steps=steps,
                                     seed=seed, keep_best_at=(),
                                     task_weights=None if weights is None else {t: weights[t] for t in tasks})
        shown = _normalised(weights or {t: 1.0 for t in tasks}, tasks)
        return MixtureEditor(label, experiment, name, tasks, mixture, seed, label, shown), config

    out = []
    for seed in mix.scaling_seeds:
        for name, on in (("instructedit", True), ("mend", False)):
            for k in range(1, len(mix.scaling_order) + 1):
                out.append(one(SCALING, name, mix.scaling_order[:k], on, UNIFORM, None, seed))
    for seed in mix.uniform_seeds:
        out.append(one(BALANCE, "instructedit", mix.scaling_order, True, UNIFORM, None, seed))
    for seed in mix.balance_seeds:
        out.append(one(BALANCE, "instructedit", mix.scaling_order, True, BALANCED, mix.balanced(), seed))
        out.append(one(BALANCE, "instructedit", mix.scaling_order, True, DOMINATED, mix.weights(), seed))
    return out


def _key(config: MethodConfig, steps: bool = True) -> str:
    d = config.to_dict()
    for k in ("name", "keep_best_at") + (() if steps else ("steps",)):
        d.pop(k)
    return json.dumps(d, sort_keys=True, default=str)


def plan(cfg: ExperimentConfig, base: Mapping[str, MethodConfig] | None = None) -> Plan:
    """Resolve each of :func:`wanted`'s editors to a folder of chapter 2, starting from the ``base`` configs (default:
    its multi-task and single-task editors): an equal config is reused; a longer run with an otherwise equal config
    whose validations include the budget keeps its best editor at the budget; anything else is trained."""
    train = dict(base if base is not None else {**cfg.editor_configs(),
                                                **cfg.single_task_configs(cfg.transfer_instructions)})
    editors = []
    for editor, config in wanted(cfg):
        folder = next((name for name, c in train.items() if _key(c) == _key(config)), None)
        if folder is None:
            for name, c in train.items():
                if _key(c, False) == _key(config, False) and c.can_keep_best_at(config.steps):
                    train[name] = dataclasses.replace(c, keep_best_at=tuple(c.keep_best_at) + (config.steps,))
                    folder = budget_dir(name, config.steps).name
                    break
        if folder is None:
            train[config.name] = config
            folder = config.name
        editors.append(dataclasses.replace(editor, folder=folder))
    return Plan(editors, train)


def trained_plan(cfg: ExperimentConfig) -> Plan:
    """The plan of the chapter-2 run in ``experiments.editors_dir(cfg)`` (read from its ``params.json``)."""
    from .experiments import EDITORS_NOTEBOOK, editors_dir

    params = editors_dir(cfg) / "params.json"
    if not params.is_file():
        raise FileNotFoundError(f"No {params}: run notebook {EDITORS_NOTEBOOK} first (it trains chapter 7's "
                                "mixture editors with the others)")
    raw = {k: v for k, v in json.loads(params.read_text()).items() if not k.startswith("_")}  # "_versions" etc.
    trained = ExperimentConfig(**raw)
    if trained.mixtures is None:
        raise ValueError(f"{params.parent} was trained without mixture editors (its parameters set no mixture)")
    return plan(trained)


# --------------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------------


def _methods_config(cfg: ExperimentConfig, the_plan: Plan) -> ExperimentConfig:
    return dataclasses.replace(cfg, methods=tuple(the_plan.folders()))


def evaluate(cfg: ExperimentConfig, model, tokenizer, the_plan: Plan, progress: Callable | None = None
             ) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Every editor of the plan on the test splits of the training tasks and on the hold-out tasks (resumable case
    files in ``<run_dir>/mixtures/``, editors side by side in ``cfg.workers`` processes). Returns (cases, summary by
    editor folder × task)."""
    from .experiments import evaluate_setting, load_methods
    from .runs import RunFolder

    run_cfg = _methods_config(cfg, the_plan)
    methods = load_methods(run_cfg, model, tokenizer)
    tasks = tuple(dict.fromkeys(cfg.tasks + cfg.holdout_tasks))
    cases = evaluate_setting(run_cfg, SETTING, methods, model, tokenizer, tasks, progress=progress, parallel=True)
    summary = summarize(cases, by=("method", "task"), seed=cfg.seed)
    RunFolder(Path(cfg.run_dir) / SETTING).write_table("summary", summary)
    return cases, summary


def gradients(cfg: ExperimentConfig, model, tokenizer, the_plan: Plan, progress: Callable | None = None
              ) -> dict[str, "Areas"]:
    """Each editor's editing areas on every task (training + hold-out), one group per editor folder, in
    ``<run_dir>/gradients/<folder>/`` (chapter 6's collection)."""
    from .experiments import GradientEditor, gradients as collect, load_methods

    run_cfg = _methods_config(cfg, the_plan)
    tasks = tuple(dict.fromkeys(cfg.tasks + cfg.holdout_tasks))
    editors = {name: GradientEditor(m, tasks, name) for name, m in load_methods(run_cfg, model, tokenizer).items()}
    return collect(run_cfg, model, tokenizer, editors, progress=progress)


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


# --------------------------------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------------------------------


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
    ``arm``), through :mod:`~instructedit_utils.verdicts`: each seed's difference by
    :func:`~instructedit_utils.verdicts.direction` (claimed side: above 0), the seeds by
    :func:`~instructedit_utils.verdicts.combine`; with ``done`` (editor folder → its ``done.json``), a seed whose
    editors did not train is *not measured (editor did not train)*. Returns the word, the per-seed differences,
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
    from .evaluation import metric_label

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
