"""Chapter 7's measurements: every editor of the mixture plan (:mod:`instructedit_utils.training.plan`) on the
test splits of the training tasks and on the hold-out tasks, and their editing areas, through the one harness and
chapter 6's collection (resumable, in workers)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..config.experiment import ExperimentConfig
from ..evaluation.gradients import Areas
from ..evaluation.summaries import summarize
from ..training.plan import Plan
from ..util.runs import RunFolder
from .settings import GradientEditor, evaluate_setting, gradients as collect, load_methods

SETTING = "mixtures"  # chapter 7's case files: <run_dir>/mixtures/


def _methods_config(cfg: ExperimentConfig, the_plan: Plan) -> ExperimentConfig:
    return dataclasses.replace(cfg, methods=tuple(the_plan.folders()))


def evaluate(cfg: ExperimentConfig, model, tokenizer, the_plan: Plan, progress: Callable | None = None
             ) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Every editor of the plan on the test splits of the training tasks and on the hold-out tasks (resumable case
    files in ``<run_dir>/mixtures/``, editors side by side in ``cfg.workers`` processes). Returns (cases, summary by
    editor folder × task)."""
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
    run_cfg = _methods_config(cfg, the_plan)
    tasks = tuple(dict.fromkeys(cfg.tasks + cfg.holdout_tasks))
    editors = {name: GradientEditor(m, tasks, name) for name, m in load_methods(run_cfg, model, tokenizer).items()}
    return collect(run_cfg, model, tokenizer, editors, progress=progress)
