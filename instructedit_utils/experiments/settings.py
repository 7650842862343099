"""The paper's evaluation settings on top of the harness (:func:`~instructedit_utils.evaluation.evaluate_method`).

=============  ========================================================================================================
setting        what is evaluated
=============  ========================================================================================================
``multitask``  every method on the test splits of the training tasks (Table 3, multi-task part)
``holdout``    the same editors on tasks none of them was trained on: ZsRE (Table 3, hold-out part)
``unseen``     the InstructEdit editor with a *seen* description vs the *held-out* one (and any external
               descriptions) on all four tasks (Fig. 3)
``transfer``   single-task editors trained on task A, tested on task B (Table 1's decay matrix)
``gradients``  the editing areas (editing gradients) of the multi-task editors on all tasks and of each single-task
               editor on its own task, stored for chapter 6's analysis (Fig. 4a,
               :mod:`~instructedit_utils.evaluation.gradients`)
``mixtures``   chapter 7's task-scaling and balance editors on all four tasks, and their editing areas (Fig. 4b-d,
               :mod:`~instructedit_utils.analysis.findings`)
``sequential`` streams of edits kept on one model and batch edits (chapter 8, beyond the paper,
               :mod:`~instructedit_utils.experiments.sequential`)
=============  ========================================================================================================

Each setting writes ``<run_dir>/<setting>/``: ``cases_<method>[_<condition>].jsonl`` (one line per case, resumable;
beside it ``….settings.json``, what the cases were scored with — a rerun with other settings is refused) and
``summary.csv`` (mean and 95% bootstrap CI per method × task × metric). Training tasks are sampled from
``cfg.split``, hold-out tasks from ``cfg.holdout_split`` (default ``all``: no multi-task editor saw any record of
them). The notebooks (03, 04) and the command line call the same functions with the same configuration (built by
:mod:`instructedit_utils.config.parameters` from the notebook's parameters cell, the profile and the overrides)::

    instructedit-eval multitask --profile cpu
    instructedit-eval unseen --profile cpu --descriptions my_descriptions.json
    instructedit-eval transfer --profile gpu
    instructedit-eval holdout --profile cpu --runs-dir /tmp/other_runs -p holdout_split=test
    instructedit-eval mixtures --profile cpu
    instructedit-eval sequential --profile cpu
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..methods.registry import CONFIGS, REGISTRY, build

from ..methods.registry import EditingMethod
from ..config.experiment import EDITORS_NOTEBOOK, ExperimentConfig
from ..evaluation.harness import evaluate_method
from ..evaluation.summaries import summarize
from ..evaluation.requests import task_requests
from ..data.instructions import read_descriptions  # noqa: F401  (part of this module's API: external descriptions)
from ..util.runs import RunFolder
from ..evaluation.gradients import collect_many, load_areas, AreaJob, Areas, Sketch
from ..methods.mend import TrainedEditor
from ..training.step import initial_editor
from ..training.trainer import is_trained
from ..training.pool import worker_threads
from ..util.runtime import setup_torch
from concurrent.futures import ProcessPoolExecutor
import multiprocessing

SETTINGS = ("multitask", "holdout", "unseen", "transfer", "gradients", "mixtures", "sequential")
NOTEBOOKS = {"multitask": "03_multitask_and_holdout", "holdout": "03_multitask_and_holdout",
             "unseen": "04_unseen_instructions", "transfer": "04_unseen_instructions",
             "gradients": "06_gradient_analysis", "mixtures": "07_task_scaling_and_balance",
             "sequential": "08_sequential_editing"}
TRANSFER_NOTEBOOK = "04_unseen_instructions"
SINGLE_TASK_GROUP = "single-task MEND"


def editors_dir(cfg: ExperimentConfig) -> Path:
    """Where the trained editors are (:meth:`~instructedit_utils.config.experiment.ExperimentConfig.editors_path`)."""
    return cfg.editors_path()


def load_methods(cfg: ExperimentConfig, model, tokenizer, names: Sequence[str] | None = None
                 ) -> dict[str, EditingMethod]:
    """The methods named in ``cfg.methods``: ``base``; ``ft-l``/``calinet``/``grace``/``rome``/``memit``/``alphaedit``
    built from ``cfg.method_options`` (FT-L's, CaliNet's and GRACE's layer defaults to the edited layers of
    ``cfg.model``; the locate-then-edit methods get ``cfg.data_dir`` for their keys' statistics); any other name is a
    trained editor (MEND, InstructEdit, KE), a folder of :func:`editors_dir`."""
    out: dict[str, EditingMethod] = {}
    layers = cfg.model.edit_layers or ()
    for name in names or cfg.methods:
        if name == "base" or name in CONFIGS:
            options = (cfg.method_options or {}).get(name, {})
            if name != "base":
                options = {"default_layers": layers, **options}
                if "data_dir" in inspect.signature(REGISTRY[name]).parameters:  # methods reading the task files
                    options["data_dir"] = cfg.data_dir
            out[name] = build(name, model, tokenizer, **options)
            continue
        folder = editors_dir(cfg) / name
        if not is_trained(folder):
            raise FileNotFoundError(f"No finished editor {name!r} in {folder}: run notebook {EDITORS_NOTEBOOK} or "
                                    f"`instructedit-train --profile {cfg.profile} --editor {name}` first")
        out[name] = build("mend", model, tokenizer, editor_dir=folder, name=name)
    return out


def _requests(cfg: ExperimentConfig, method: EditingMethod, tasks: Sequence[str], description):
    """``(description used, requests)`` of ``method`` on ``tasks``: the seeded sample of ``cfg.sample_per_task``
    records per task, or its first ``cfg.method_samples[name]`` of each task (the same records as the others')."""
    described = description if method.use_instructions else None
    requests = task_requests(tasks, cfg.splits(tasks), cfg.sample_per_task, seed=cfg.seed,
                             instructions=method.use_instructions, data_dir=cfg.data_dir,
                             instruct_locality=cfg.instruct_locality, description=described, pool=cfg.pool())
    limit = (cfg.method_samples or {}).get(method.name)
    if limit is not None:
        taken: dict[str, int] = {}
        kept = []
        for r in requests:
            taken[r.task] = taken.get(r.task, 0) + 1
            if taken[r.task] <= limit:
                kept.append(r)
        requests = kept
    return described, requests


@dataclass(frozen=True)
class Job:
    """One method evaluated on some tasks in one condition: a case file of a setting's folder."""

    cfg: ExperimentConfig
    name: str
    tasks: tuple[str, ...]
    condition: str | None = None
    description: int | str | None = None
    scope: str | None = None  # what else the case file is particular to (an external description's task)

    @property
    def file(self) -> str:
        """``cases_<method>[_<condition>][_<scope>]``: one file per method, condition and scope, so two jobs that
        score different requests never share a file."""
        return "_".join(["cases", self.name, *(part for part in (self.condition, self.scope) if part)])


def evaluate_setting(cfg: ExperimentConfig, setting: str, methods: Mapping[str, EditingMethod], model, tokenizer,
                     tasks: Sequence[str], *, condition: str | None = None, description: int | str | None = None,
                     scope: str | None = None, progress: Callable | None = None, parallel: bool = False
                     ) -> list[dict[str, Any]]:
    """Evaluate every method (resumable case files, :attr:`Job.file`). With ``parallel``, methods of
    ``cfg.methods`` with unfinished cases are first evaluated in worker processes (:func:`evaluate_in_workers`);
    here they are then read back."""
    folder = RunFolder(Path(cfg.run_dir) / setting)
    if parallel:
        evaluate_in_workers(setting, [Job(cfg, name, tuple(tasks), condition, description, scope) for name in methods
                                      if name in cfg.methods], methods)
    out = []
    for name, method in methods.items():
        described, requests = _requests(cfg, method, tasks, description)
        file = Job(cfg, name, tuple(tasks), condition, scope=scope).file
        settings = cfg.case_settings(tasks, instructions=method.use_instructions, description=described)
        cases = evaluate_method(method, model, tokenizer, requests, run=folder, name=file, progress=progress,
                                settings=settings, **cfg.score_kwargs())
        out += [{**c, "setting": setting, "condition": condition or "seen"} for c in cases]
    return out


def evaluate_in_workers(setting: str, jobs: Sequence[Job], methods: Mapping[str, EditingMethod]) -> None:
    """Evaluate the jobs with unfinished cases side by side: ``n_workers()`` spawned processes (of the first job's
    config) with ``num_threads // workers`` threads each (never oversubscribed), each loading the model once and
    building its jobs' methods from their config by name (so only names of ``cfg.methods`` may be jobs). Every case
    is computed exactly as in this process; each job has its own case file, so workers never write the same file;
    pending jobs go to whichever worker is free. ``methods``: the methods as built here (which requests a job has)."""
    if not jobs or jobs[0].cfg.n_workers() < 2:
        return
    pending = [job for job in jobs
               if {r.case_id for r in _requests(job.cfg, methods[job.name], job.tasks, job.description)[1]}
               - RunFolder(Path(job.cfg.run_dir) / setting).done_ids(job.file)]
    workers = min(jobs[0].cfg.n_workers(), len(pending))
    if workers < 2:
        return
    for job in pending:
        if job.name not in job.cfg.methods:
            raise ValueError(f"A worker builds methods by name from cfg.methods; {job.name!r} is not among them")
    # a method's ``schedule`` orders the jobs (stable): ROME first, since MEMIT and AlphaEdit, last, read its values
    pending.sort(key=lambda job: getattr(methods[job.name], "schedule", 0))

    run_in_workers(jobs[0].cfg, partial(_evaluate_worker, setting), pending)


def run_in_workers(cfg: ExperimentConfig, worker: Callable[[Any, int], None], jobs: Sequence[Any]) -> None:
    """``worker(job, threads)`` for every job in ``min(cfg.n_workers(), len(jobs))`` spawned processes with
    :func:`~instructedit_utils.training.pool.worker_threads` threads each (never oversubscribed), in the given order
    (a free worker takes the next job); a failing job raises here."""
    workers = max(1, min(cfg.n_workers(), len(jobs)))
    threads = worker_threads(cfg.model.num_threads, workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(worker, job, threads) for job in jobs]:
            future.result()


_WORKER_CACHE: dict[tuple, Any] = {}  # in a worker process: the model (and methods) its earlier jobs loaded


def worker_method(cfg: ExperimentConfig, name: str, threads: int) -> tuple[Any, Any, EditingMethod]:
    """In a worker process: ``(model, tokenizer, method)``, the model loaded once per process (with ``threads``
    torch threads) and the method ``name`` of ``cfg`` built for it once (:func:`load_methods`)."""
    model_key = (cfg.model.name, cfg.model.device, cfg.model.dtype, cfg.model.lower_dtype)
    if model_key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        setup_torch(threads, cfg.seed)
        model, tokenizer = cfg.model.load()
        model.requires_grad_(False)
        _WORKER_CACHE[model_key] = (model, tokenizer)
    model, tokenizer = _WORKER_CACHE[model_key]
    method_key = (model_key, str(editors_dir(cfg)), name, json.dumps(cfg.method_options, sort_keys=True))
    if method_key not in _WORKER_CACHE:
        _WORKER_CACHE[method_key] = load_methods(cfg, model, tokenizer, [name])[name]
    return model, tokenizer, _WORKER_CACHE[method_key]


def _evaluate_worker(setting: str, job: Job, threads: int) -> None:
    model, tokenizer, method = worker_method(job.cfg, job.name, threads)
    evaluate_setting(job.cfg, setting, {job.name: method}, model, tokenizer, job.tasks,
                     condition=job.condition, description=job.description, scope=job.scope)


def _summary(cfg: ExperimentConfig, setting: str, cases: list[dict[str, Any]], by: Sequence[str]) -> pd.DataFrame:
    summary = summarize(cases, by=by, seed=cfg.seed)
    RunFolder(Path(cfg.run_dir) / setting).write_table("summary", summary)
    return summary


def multitask(cfg: ExperimentConfig, model, tokenizer, methods: Mapping[str, EditingMethod] | None = None,
              progress: Callable | None = None) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Every method on the test split of each of ``cfg.tasks`` (the training tasks). Returns (cases, summary)."""
    methods = methods if methods is not None else load_methods(cfg, model, tokenizer)
    cases = evaluate_setting(cfg, "multitask", methods, model, tokenizer, cfg.tasks, progress=progress, parallel=True)
    return cases, _summary(cfg, "multitask", cases, ("method", "task"))


def holdout(cfg: ExperimentConfig, model, tokenizer, methods: Mapping[str, EditingMethod] | None = None,
            progress: Callable | None = None) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """The same methods on ``cfg.holdout_tasks`` (ZsRE), which no editor saw in training, sampled from
    ``cfg.holdout_split`` (default: all of the task's records)."""
    methods = methods if methods is not None else load_methods(cfg, model, tokenizer)
    cases = evaluate_setting(cfg, "holdout", methods, model, tokenizer, cfg.holdout_tasks, progress=progress,
                             parallel=True)
    return cases, _summary(cfg, "holdout", cases, ("method", "task"))


def unseen(cfg: ExperimentConfig, model, tokenizer, method: EditingMethod | None = None,
           descriptions: Mapping[str, Sequence[str]] | None = None, progress: Callable | None = None
           ) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """An instructed editor (default: the one editor in ``cfg.methods``) on all tasks (training + hold-out) with a
    seen description (condition ``seen``), the held-out one (``held_out``) and each external description
    (``external<i>``, from ``descriptions`` or ``cfg.descriptions_file``: the i-th description of a task, scored on
    that task alone, in its own case file ``cases_<editor>_external<i>_<task>``)."""
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
        cases += evaluate_setting(cfg, "unseen", methods, model, tokenizer, tasks, condition=condition,
                                  description=description, progress=progress)
    for task, texts in (descriptions or {}).items():
        for i, text in enumerate(texts):
            cases += evaluate_setting(cfg, "unseen", methods, model, tokenizer, (task,),
                                      condition=f"external{i}", description=text, scope=task, progress=progress)
    return cases, _summary(cfg, "unseen", cases, ("condition", "task"))


def single_task_names(cfg: ExperimentConfig) -> list[str]:
    """The single-task editors chapter 2 trained (``mend-<task>``, or ``instructedit-<task>`` when its
    ``transfer_instructions`` was on; one per task of its ``single_tasks``, read from its ``params.json``)."""
    trained = chapter2_params(cfg)
    prefix = "instructedit" if trained.get("transfer_instructions") else "mend"
    return [f"{prefix}-{task}" for task in trained.get("single_tasks") or trained["method"]["tasks"]]


def chapter2_params(cfg: ExperimentConfig) -> dict[str, Any]:
    """Chapter 2's ``params.json`` (what it trained)."""
    params = editors_dir(cfg) / "params.json"
    if not params.is_file():
        raise FileNotFoundError(f"No {params}: run notebook {EDITORS_NOTEBOOK} first (it trains the single-task "
                                "editors with the multi-task editors)")
    return json.loads(params.read_text())


def editor_done(cfg: ExperimentConfig, names: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Each trained editor's ``done.json`` in chapter 2's run folder (None where it has none): its best step says
    whether it trained (:func:`~instructedit_utils.analysis.verdicts.trained`)."""
    out = {}
    for name in names:
        path = editors_dir(cfg) / name / "done.json"
        out[name] = json.loads(path.read_text()) if path.is_file() else None
    return out


def single_task_editors(cfg: ExperimentConfig, model, tokenizer) -> dict[str, EditingMethod]:
    """The single-task editors of Table 1, trained by chapter 2 (:func:`editors_dir`; :func:`single_task_names`)."""
    return load_methods(cfg, model, tokenizer, single_task_names(cfg))


def trained_task(method: EditingMethod) -> str:
    """The one task a single-task editor was trained on."""
    tasks = method.editor.config.tasks
    if len(tasks) != 1:
        raise ValueError(f"{method.name} was trained on {list(tasks)}, not on one task")
    return tasks[0]


def transfer_jobs(cfg: ExperimentConfig, methods: Mapping[str, EditingMethod]) -> dict[str, tuple[str, ...]]:
    """The test tasks of each single-task editor: Table 1's blocks (``cfg.transfer_tasks``) and its own task (its
    in-task value, which chapter 6 reads), in the order of :attr:`~ExperimentConfig.transfer_tasks`."""
    return {name: tuple(dict.fromkeys([*cfg.transfer_tasks, trained_task(m)])) for name, m in methods.items()}


def transfer_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """Table 1 tests on test splits only: a hold-out task's single-task editor trained on its train split, so its
    records come from its test split (ZsRE's 200), never from all of it."""
    return dataclasses.replace(cfg, holdout_split="test")


def transfer(cfg: ExperimentConfig, model, tokenizer, methods: Mapping[str, EditingMethod] | None = None,
             progress: Callable | None = None) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Each single-task editor on the test split of Table 1's test tasks and of its own task
    (:func:`transfer_jobs`); summary rows carry ``train_task``. The editors of chapter 2 (default) are evaluated side
    by side in ``cfg.workers`` processes."""
    parallel = methods is None
    methods = methods if methods is not None else single_task_editors(cfg, model, tokenizer)
    run_cfg = transfer_config(dataclasses.replace(cfg, methods=tuple(methods)) if parallel else cfg)
    jobs = transfer_jobs(run_cfg, methods)
    if parallel:
        evaluate_in_workers("transfer", [Job(run_cfg, name, tasks) for name, tasks in jobs.items()], methods)
    cases = []
    for name, tasks in jobs.items():
        cases += evaluate_setting(run_cfg, "transfer", {name: methods[name]}, model, tokenizer, tasks,
                                  progress=progress)
    for c in cases:
        c["train_task"] = trained_task(methods[c["method"]])
    return cases, _summary(cfg, "transfer", cases, ("train_task", "task"))


# --------------------------------------------------------------------------------------------------------------------
# Editing gradients (chapter 6)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class GradientEditor:
    """One editor of the gradient analysis: the method, the tasks its editing areas are collected on and the group
    it is drawn in (a multi-task editor is its own group; the single-task editors form one group, each on its own
    task)."""

    method: EditingMethod
    tasks: tuple[str, ...]
    group: str


UNTRAINED_SUFFIX = "@0"  # an editor's step 0 (chapter 6's control): "<name>@0"


def gradient_editors(cfg: ExperimentConfig, model, tokenizer) -> dict[str, GradientEditor]:
    """The editors of chapter 6: each of ``cfg.methods`` on every task (training + hold-out); with
    ``cfg.gradients.untrained_control``, each of them as its training started (``<name>@0``, rebuilt with
    :func:`~instructedit_utils.training.initial_editor`: the same inputs, instructions included, through an
    untrained editor); with ``cfg.gradients.single_task``, each single-task editor on the task it was trained on."""
    if "base" in cfg.methods:
        raise ValueError("methods: 'base' makes no edit, so it has no editing gradient; name trained editors")
    all_tasks = tuple(dict.fromkeys(cfg.tasks + cfg.holdout_tasks))
    out = {name: GradientEditor(m, all_tasks, name) for name, m in load_methods(cfg, model, tokenizer).items()}
    if cfg.gradients is not None and cfg.gradients.untrained_control:
        for name in list(out):
            trained = out[name].method.editor
            start = initial_editor(model, tokenizer, trained.config, data_dir=cfg.data_dir,
                                   edit_layers=trained.blocks(model))
            out[name + UNTRAINED_SUFFIX] = GradientEditor(TrainedEditor(start, model, name + UNTRAINED_SUFFIX),
                                                          all_tasks, name + UNTRAINED_SUFFIX)
    if cfg.gradients is not None and cfg.gradients.single_task:
        for name, m in single_task_editors(cfg, model, tokenizer).items():
            task = trained_task(m)
            if task in all_tasks:
                out[name] = GradientEditor(m, (task,), SINGLE_TASK_GROUP)
    return out


def gradients(cfg: ExperimentConfig, model, tokenizer, editors: Mapping[str, GradientEditor] | None = None,
              progress: Callable | None = None) -> dict[str, "Areas"]:
    """Collect (or resume) the editing areas of every editor into ``<run_dir>/gradients/<editor>/`` and return them
    per group (:class:`~instructedit_utils.evaluation.gradients.Areas`, manifest column ``group`` added)."""
    if cfg.gradients is None:
        raise ValueError("This experiment has no gradient config (no gradient-analysis parameters were given)")
    editors = editors if editors is not None else gradient_editors(cfg, model, tokenizer)
    device = next(model.parameters()).device
    areas: dict[str, Areas] = {}
    # editors that see the same prompts (instructions on, or off) and split at the same block share one runner: the
    # lower blocks run once per distinct prompt for all of them
    for on in (True, False):
        names = [n for n, ed in editors.items() if ed.method.use_instructions == on]
        if not names:
            continue
        starts = {editors[n].method.editor.first_block(model) for n in names}
        shared = editors[names[0]].method.runner(model) if len(starts) == 1 else None
        jobs = []
        for name in names:
            ed = editors[name]
            requests = task_requests(ed.tasks, cfg.splits(ed.tasks), cfg.sample_per_task, seed=cfg.seed,
                                     instructions=on, data_dir=cfg.data_dir, instruct_locality=cfg.instruct_locality)
            sketch = Sketch(ed.method.editor.targets, cfg.gradients.sketch_dim, cfg.gradients.sketch_seed, device)
            jobs.append(AreaJob(ed.method, requests, Path(cfg.run_dir) / "gradients" / name, sketch,
                                settings=cfg.case_settings(ed.tasks, instructions=on)))
        collect_many(jobs, model, tokenizer, batch_edits=cfg.gradients.edit_batch, progress=progress, runner=shared)
        for name, job in zip(names, jobs):
            areas[name] = load_areas(job.folder)
            areas[name].manifest["group"] = editors[name].group
    groups: dict[str, list[Areas]] = {}
    for name, ed in editors.items():
        groups.setdefault(ed.group, []).append(areas[name])
    return {g: Areas.concat(parts) for g, parts in groups.items()}


def edit_quality(cfg: ExperimentConfig, metrics: Sequence[str] = ("edit/acc", "loc/acc")) -> pd.DataFrame:
    """Each gradient-analysis group's Reliability/Locality per task from the case summaries of chapter 3
    (``multitask``, ``holdout``) and, for the single-task group, chapter 4's ``transfer`` diagonal (each editor on its
    own task). Columns: ``group``, ``task``, ``metric``, ``mean``, ``ci_low``, ``ci_high``; files that do not exist
    (a chapter not run) add no rows."""
    root = Path(cfg.run_dir).parent
    frames = []
    for setting in ("multitask", "holdout"):
        path = root / NOTEBOOKS[setting] / setting / "summary.csv"
        if path.is_file():
            frames.append(pd.read_csv(path, index_col=0).rename(columns={"method": "group"}))
    path = root / TRANSFER_NOTEBOOK / "transfer" / "summary.csv"
    if path.is_file():
        tr = pd.read_csv(path, index_col=0)
        frames.append(tr[tr["train_task"] == tr["task"]].assign(group=SINGLE_TASK_GROUP))
    if not frames:
        return pd.DataFrame(columns=["group", "task", "metric", "mean", "ci_low", "ci_high"])
    out = pd.concat(frames, ignore_index=True)
    wanted = set(cfg.methods) | ({SINGLE_TASK_GROUP} if cfg.gradients and cfg.gradients.single_task else set())
    out = out[out["metric"].isin(metrics) & out["group"].isin(wanted)]
    return out[["group", "task", "metric", "mean", "ci_low", "ci_high"]].reset_index(drop=True)


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
