"""Chapter 7's training mixtures as chapter 2 trains them (paper Fig. 4b-d, Findings 2 and 3): which editors the two
experiments compare — task scaling (InstructEdit and MEND on the first 1, 2, 3 tasks) and data balance (ConvSent-
dominated, paper-balanced and uniform mixtures) — and which folder of chapter 2 holds each (:func:`plan`: an equal
config is reused, a longer run's best editor at the budget is kept, the rest are trained), and every editor chapter 2
trains (:func:`training_configs`). The measurements are :mod:`instructedit_utils.experiments.mixtures`', the findings
:mod:`instructedit_utils.analysis.findings`'."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from ..config.experiment import EDITORS_NOTEBOOK, ExperimentConfig
from ..config.method import MethodConfig
from .trainer import budget_dir

SCALING, BALANCE = "scaling", "balance"
UNIFORM, DOMINATED, BALANCED = "uniform", "convsent-dominated", "paper-balanced"


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
    params = cfg.editors_path() / "params.json"
    if not params.is_file():
        raise FileNotFoundError(f"No {params}: run notebook {EDITORS_NOTEBOOK} first (it trains chapter 7's "
                                "mixture editors with the others)")
    raw = {k: v for k, v in json.loads(params.read_text()).items() if not k.startswith("_")}  # "_versions" etc.
    trained = ExperimentConfig(**raw)
    if trained.mixtures is None:
        raise ValueError(f"{params.parent} was trained without mixture editors (its parameters set no mixture)")
    return plan(trained)


def training_configs(cfg: ExperimentConfig) -> dict[str, MethodConfig]:
    """Every editor chapter 2 trains, in one pool of workers: the multi-task editors
    (:meth:`~instructedit_utils.config.experiment.ExperimentConfig.editor_configs`), the single-task editors of
    Table 1 (instructions as ``cfg.transfer_instructions``), which chapters 4 and 6 load, and, with
    ``cfg.mixtures``, chapter 7's mixture editors that no other editor already gives (:func:`plan`)."""
    base = {**cfg.editor_configs(), **cfg.single_task_configs(cfg.transfer_instructions)}
    return base if cfg.mixtures is None else plan(cfg, base).train
