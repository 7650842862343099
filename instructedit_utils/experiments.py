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

Each setting writes ``<run_dir>/<setting>/``: ``cases_<method>[_<condition>].jsonl`` (one line per case, resumable)
and ``summary.csv`` (mean and 95% bootstrap CI per method × task × metric). The notebooks (03, 04) and the command
line call the same functions::

    instructedit-eval multitask --profile cpu
    instructedit-eval unseen --profile cpu --descriptions my_descriptions.json
    instructedit-eval transfer --profile gpu -p single_task_steps=5000
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
        requests = task_requests(tasks, cfg.split, cfg.sample_per_task, seed=cfg.seed,
                                 instructions=method.use_instructions, data_dir=cfg.data_dir,
                                 instruct_locality=cfg.instruct_locality,
                                 description=description if method.use_instructions else None)
        file = f"cases_{name}" + (f"_{condition}" if condition else "")
        cases = evaluate_method(method, model, tokenizer, requests, run=folder, name=file, progress=progress,
                                **cfg.score_kwargs())
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
    """The same methods on ``cfg.holdout_tasks`` (ZsRE), which no editor saw in training."""
    methods = methods if methods is not None else load_methods(cfg, model, tokenizer)
    cases = _evaluate(cfg, "holdout", methods, model, tokenizer, cfg.holdout_tasks, progress=progress)
    return cases, _summary(cfg, "holdout", cases, ("method", "task"))


def read_descriptions(path: str | Path, tasks: Sequence[str]) -> dict[str, list[str]]:
    """External descriptions: JSON ``{task: [description, ...]}`` or a text file with one description per line
    (used for every task). ``[LABEL]``/``[TOPIC]`` slots are filled per record (ConvSent)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No descriptions file {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        raw = json.loads(text)
        if not isinstance(raw, dict) or not all(isinstance(v, list) and all(isinstance(d, str) and d.strip()
                                                                            for d in v) for v in raw.values()):
            raise ValueError(f"{path}: expected {{task: [non-empty description, ...]}}")
        unknown = set(raw) - set(tasks)
        if unknown:
            raise ValueError(f"{path}: descriptions for tasks not evaluated here: {sorted(unknown)} "
                             f"(tasks: {list(tasks)})")
        return {t: [d.strip() for d in raw.get(t, [])] for t in tasks}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no descriptions (one per line)")
    return {t: list(lines) for t in tasks}


def unseen(cfg: ExperimentConfig, model, tokenizer, method: EditingMethod | None = None,
           descriptions: Mapping[str, Sequence[str]] | None = None, progress: Callable | None = None
           ) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """An instructed editor (default: ``instructedit``) on all tasks (training + hold-out) with a seen description
    (condition ``seen``), the held-out one (``held_out``) and each external description (``external<i>``)."""
    method = method or load_methods(cfg, model, tokenizer, ["instructedit"])["instructedit"]
    if not method.use_instructions:
        raise ValueError(f"{method.name} was trained without instructions; the unseen-instruction setting needs "
                         "an instructed editor")
    if descriptions is None and cfg.descriptions_file:
        descriptions = read_descriptions(cfg.descriptions_file, cfg.tasks + cfg.holdout_tasks)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one evaluation setting with a profile's parameters (those of notebook 03 or 04), without the notebook."""
    import yaml

    from . import setup_torch
    from .models import load_model
    from .runner import notebook_parameters, notebook_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", choices=SETTINGS)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a parameter of the setting's notebook (YAML value)")
    parser.add_argument("--descriptions", help="external descriptions file (unseen setting)")
    parser.add_argument("--train-only", nargs="*", metavar="EDITOR",
                        help="transfer: only train (or load) these single-task editors, e.g. mend-counterfact "
                             "(all when none are named), without evaluating (parallel training processes)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--param expects NAME=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    if args.descriptions:
        overrides["descriptions_file"] = args.descriptions
    params = notebook_parameters(notebook_path(NOTEBOOKS[args.setting]), args.profile, overrides)
    cfg = ExperimentConfig.from_parameters(**params)
    setup_torch(cfg.model.num_threads, cfg.seed)
    RunFolder(Path(cfg.run_dir) / args.setting).write_params({**cfg.to_dict(), "setting": args.setting})
    model, tokenizer = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype)
    model.requires_grad_(False)
    if args.train_only is not None:
        if args.setting != "transfer":
            parser.error("--train-only goes with the transfer setting")
        known = set(single_task_configs(cfg))
        if set(args.train_only) - known:
            parser.error(f"unknown single-task editor(s) {sorted(set(args.train_only) - known)}; have {sorted(known)}")
        train_single_task_editors(cfg, model, tokenizer, progress=True, names=args.train_only)
        return 0
    _, summary = {"multitask": multitask, "holdout": holdout, "unseen": unseen, "transfer": transfer}[args.setting](
        cfg, model, tokenizer)
    print(summary.to_string())
    print(f"[instructedit-eval] wrote {Path(cfg.run_dir) / args.setting}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
