"""The paper's evaluation settings on top of the harness (:func:`~instructedit_utils.evaluation.evaluate_method`).

=============  ========================================================================================================
setting        what is evaluated
=============  ========================================================================================================
``multitask``  every method on the test splits of the training tasks (Table 3, multi-task part)
``holdout``    the same editors on tasks none of them was trained on: ZsRE (Table 3, hold-out part)
``unseen``     the InstructEdit editor with a *seen* description vs the *held-out* one (and any external
               descriptions) on all four tasks (Fig. 3)
``transfer``   single-task editors trained on task A, tested on task B (Table 1's decay matrix)
=============  ========================================================================================================

Each setting writes ``<run_dir>/<setting>/``: ``cases_<method>[_<condition>].jsonl`` (one line per case, resumable;
beside it ``….settings.json``, what the cases were scored with — a rerun with other settings is refused) and
``summary.csv`` (mean and 95% bootstrap CI per method × task × metric). Training tasks are sampled from
``cfg.split``, hold-out tasks from ``cfg.holdout_split`` (default ``all``: no multi-task editor saw any record of
them). The notebooks (03, 04) and the command line call the same functions with the same configuration (built by
:mod:`instructedit_utils.parameters` from the notebook's parameters cell, the profile and the overrides)::

    instructedit-eval multitask --profile cpu
    instructedit-eval unseen --profile cpu --descriptions my_descriptions.json
    instructedit-eval transfer --profile gpu -p single_task_steps=5000
    instructedit-eval holdout --profile cpu --runs-dir /tmp/other_runs -p holdout_split=test
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from . import baselines
from .baselines import EditingMethod, TrainedEditor
from .config import ExperimentConfig, MethodConfig
from .evaluation import evaluate_method, summarize, task_requests
from .instructions import read_descriptions  # noqa: F401  (part of this module's API: external descriptions)
from .runs import RunFolder

SETTINGS = ("multitask", "holdout", "unseen", "transfer")
NOTEBOOKS = {"multitask": "03_multitask_and_holdout", "holdout": "03_multitask_and_holdout",
             "unseen": "04_unseen_instructions", "transfer": "04_unseen_instructions"}
EDITORS_NOTEBOOK = "02_editor_training"


def editors_dir(cfg: ExperimentConfig) -> Path:
    """Where the trained multi-task editors are: ``cfg.editors_dir`` or the sibling run folder of notebook 02."""
    return Path(cfg.editors_dir) if cfg.editors_dir else Path(cfg.run_dir).parent / EDITORS_NOTEBOOK


def load_methods(cfg: ExperimentConfig, model, tokenizer, names: Sequence[str] | None = None
                 ) -> dict[str, EditingMethod]:
    """``base`` and the trained editors named in ``cfg.methods`` (folders of :func:`editors_dir`)."""
    from .training import is_trained

    out: dict[str, EditingMethod] = {}
    for name in names or cfg.methods:
        if name == "base":
            out[name] = baselines.build("base", model, tokenizer)
            continue
        folder = editors_dir(cfg) / name
        if not is_trained(folder):
            raise FileNotFoundError(f"No finished editor {name!r} in {folder}: run notebook {EDITORS_NOTEBOOK} or "
                                    f"`instructedit-train --profile {cfg.profile} --editor {name}` first")
        out[name] = baselines.build("mend", model, tokenizer, editor_dir=folder, name=name)
    return out


def _evaluate(cfg: ExperimentConfig, setting: str, methods: Mapping[str, EditingMethod], model, tokenizer,
              tasks: Sequence[str], *, condition: str | None = None, description: int | str | None = None,
              progress: Callable | None = None) -> list[dict[str, Any]]:
    folder = RunFolder(Path(cfg.run_dir) / setting)
    out = []
    for name, method in methods.items():
        described = description if method.use_instructions else None
        requests = task_requests(tasks, cfg.splits(tasks), cfg.sample_per_task, seed=cfg.seed,
                                 instructions=method.use_instructions, data_dir=cfg.data_dir,
                                 instruct_locality=cfg.instruct_locality, description=described)
        file = f"cases_{name}" + (f"_{condition}" if condition else "")
        settings = cfg.case_settings(tasks, instructions=method.use_instructions, description=described)
        cases = evaluate_method(method, model, tokenizer, requests, run=folder, name=file, progress=progress,
                                settings=settings, **cfg.score_kwargs())
        out += [{**c, "setting": setting, "condition": condition or "seen"} for c in cases]
    return out


def _summary(cfg: ExperimentConfig, setting: str, cases: list[dict[str, Any]], by: Sequence[str]) -> pd.DataFrame:
    summary = summarize(cases, by=by, seed=cfg.seed)
    RunFolder(Path(cfg.run_dir) / setting).write_table("summary", summary)
    return summary


def multitask(cfg: ExperimentConfig, model, tokenizer, methods: Mapping[str, EditingMethod] | None = None,
              progress: Callable | None = None) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Every method on the test split of each of ``cfg.tasks`` (the training tasks). Returns (cases, summary)."""
    methods = methods if methods is not None else load_methods(cfg, model, tokenizer)
    cases = _evaluate(cfg, "multitask", methods, model, tokenizer, cfg.tasks, progress=progress)
    return cases, _summary(cfg, "multitask", cases, ("method", "task"))


def holdout(cfg: ExperimentConfig, model, tokenizer, methods: Mapping[str, EditingMethod] | None = None,
            progress: Callable | None = None) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """The same methods on ``cfg.holdout_tasks`` (ZsRE), which no editor saw in training, sampled from
    ``cfg.holdout_split`` (default: all of the task's records)."""
    methods = methods if methods is not None else load_methods(cfg, model, tokenizer)
    cases = _evaluate(cfg, "holdout", methods, model, tokenizer, cfg.holdout_tasks, progress=progress)
    return cases, _summary(cfg, "holdout", cases, ("method", "task"))


def unseen(cfg: ExperimentConfig, model, tokenizer, method: EditingMethod | None = None,
           descriptions: Mapping[str, Sequence[str]] | None = None, progress: Callable | None = None
           ) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """An instructed editor (default: the one editor in ``cfg.methods``) on all tasks (training + hold-out) with a
    seen description (condition ``seen``), the held-out one (``held_out``) and each external description
    (``external<i>``, from ``descriptions`` or ``cfg.descriptions_file``)."""
    if method is None:
        if len(cfg.methods) != 1 or cfg.methods[0] == "base":
            raise ValueError(f"The unseen-instruction setting tests one instructed editor; methods = "
                             f"{list(cfg.methods)}")
        method = load_methods(cfg, model, tokenizer)[cfg.methods[0]]
    if not method.use_instructions:
        raise ValueError(f"{method.name} was trained without instructions; the unseen-instruction setting needs "
                         "an instructed editor")
    if descriptions is None:
        descriptions = cfg.descriptions()
    tasks = tuple(dict.fromkeys(cfg.tasks + cfg.holdout_tasks))
    methods = {method.name: method}
    cases = []
    for condition, description in (("seen", None), ("held_out", "held_out")):
        cases += _evaluate(cfg, "unseen", methods, model, tokenizer, tasks, condition=condition,
                           description=description, progress=progress)
    for task, texts in (descriptions or {}).items():
        for i, text in enumerate(texts):
            cases += _evaluate(cfg, "unseen", methods, model, tokenizer, (task,), condition=f"external{i}",
                               description=text, progress=progress)
    return cases, _summary(cfg, "unseen", cases, ("condition", "task"))


def single_task_configs(cfg: ExperimentConfig) -> dict[str, MethodConfig]:
    """One single-task editor per training task, with the multi-task editors' hyperparameters (read from the
    ``params.json`` of :func:`editors_dir`) and ``single_task_steps``."""
    params = editors_dir(cfg) / "params.json"
    if cfg.method is None:
        if not params.is_file():
            raise FileNotFoundError(f"No {params}: run notebook {EDITORS_NOTEBOOK} first (its method config is "
                                    "what single-task editors are trained with)")
        cfg = dataclasses.replace(cfg, method=MethodConfig.from_dict(json.loads(params.read_text())["method"]))
    configs = cfg.single_task_configs(cfg.transfer_instructions)
    steps = cfg.single_task_steps or cfg.method.steps
    return {name: dataclasses.replace(c, steps=steps) for name, c in configs.items() if c.tasks[0] in cfg.tasks}


def train_single_task_editors(cfg: ExperimentConfig, model, tokenizer, progress: bool = False,
                              names: Sequence[str] | None = None) -> dict[str, EditingMethod]:
    """Train (or load) the single-task editors into ``<run_dir>/transfer/editors/<name>``."""
    from .training import train_editor

    out = {}
    for name, config in single_task_configs(cfg).items():
        if names and name not in names:
            continue
        result = train_editor(model, tokenizer, config, Path(cfg.run_dir) / "transfer" / "editors" / name,
                              edit_layers=cfg.model.edit_layers, data_dir=cfg.data_dir, progress=progress)
        out[name] = TrainedEditor(result.editor, model, name)
    return out


def transfer(cfg: ExperimentConfig, model, tokenizer, methods: Mapping[str, EditingMethod] | None = None,
             progress: Callable | None = None) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Each single-task editor on the test split of every training task; summary rows carry ``train_task``."""
    methods = methods if methods is not None else train_single_task_editors(cfg, model, tokenizer)
    cases = _evaluate(cfg, "transfer", methods, model, tokenizer, cfg.tasks, progress=progress)
    for c in cases:
        c["train_task"] = c["method"].split("-", 1)[1]
    return cases, _summary(cfg, "transfer", cases, ("train_task", "task"))


def transfer_matrix(summary: pd.DataFrame, metric: str = "edit/acc", relative: bool = False) -> pd.DataFrame:
    """Rows: training task, columns: test task, cells: mean ``metric``; ``relative`` divides each row by its
    diagonal (the in-task value), Table 1's decay."""
    part = summary[summary["metric"] == metric]
    rows = list(dict.fromkeys(part["train_task"]))
    mat = part.pivot(index="train_task", columns="task", values="mean").reindex(index=rows)
    mat = mat.reindex(columns=[t for t in rows if t in mat.columns] + [t for t in mat.columns if t not in rows])
    if relative:
        diag = pd.Series({t: mat.loc[t, t] for t in mat.index if t in mat.columns})
        mat = mat.div(diag, axis=0)
    return mat


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .parameters import add_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", choices=SETTINGS)
    add_arguments(parser, "the setting's notebook (03 for multitask/holdout, 04 for unseen/transfer)")
    parser.add_argument("--descriptions", help="external descriptions file (unseen setting; = -p descriptions_file=…)")
    parser.add_argument("--train-only", nargs="*", metavar="EDITOR",
                        help="transfer: only train (or load) these single-task editors, e.g. mend-counterfact "
                             "(all when none are named), without evaluating (parallel training processes)")
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The configuration of ``instructedit-eval``: the one the setting's notebook builds for the same profile and
    overrides (:func:`instructedit_utils.parameters.notebook_config`). Validates a descriptions file."""
    from .parameters import config_from_args as notebook_config_from_args

    extra = {"descriptions_file": args.descriptions} if args.descriptions else {}
    return notebook_config_from_args(NOTEBOOKS[args.setting], args, extra)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one evaluation setting with a profile's parameters (those of notebook 03 or 04), without the notebook."""
    from . import setup_torch
    from .models import load_model

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train_only is not None and args.setting != "transfer":
        parser.error("--train-only goes with the transfer setting")
    try:
        cfg = config_from_args(args)  # every parameter and the descriptions file are checked before a model loads
    except (KeyError, ValueError, TypeError, FileNotFoundError) as exc:
        parser.error(str(exc.args[0]) if exc.args else str(exc))
    setup_torch(cfg.model.num_threads, cfg.seed)
    RunFolder(Path(cfg.run_dir) / args.setting).write_params({**cfg.to_dict(), "setting": args.setting})
    if args.train_only is not None:
        known = set(single_task_configs(cfg))
        if set(args.train_only) - known:
            parser.error(f"unknown single-task editor(s) {sorted(set(args.train_only) - known)}; have {sorted(known)}")
    model, tokenizer = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype)
    model.requires_grad_(False)
    if args.train_only is not None:
        train_single_task_editors(cfg, model, tokenizer, progress=True, names=args.train_only)
        return 0
    _, summary = {"multitask": multitask, "holdout": holdout, "unseen": unseen, "transfer": transfer}[args.setting](
        cfg, model, tokenizer)
    print(summary.to_string())
    print(f"[instructedit-eval] wrote {Path(cfg.run_dir) / args.setting}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
