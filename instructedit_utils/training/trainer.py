"""Multi-task training of a MEND editor — InstructEdit (instructions on) or multi-task MEND (instructions off).

One step (per edit; ``grad_accumulation`` edits per optimizer step):

1. draw a task (``task_weights``), the next record of that task's shuffled training split and, with instructions on,
   a fresh *seen* description; build the edit request;
2. capture ``u``/``δ`` of the edit loss on the edit prompt and let the editor turn them into weight deltas;
3. after the edit (:meth:`~instructedit_utils.methods.mend.MendEditor.low_rank_edit`, differentiable in the editor)
compute
   ``L = c_edit · L_edit + c_loc · KL(pre ‖ post)``: ``L_edit`` is the target's NLL on a **rephrase** (the prompt
   when the record has none); for ConvSent it is the NLL of target-sentiment responses plus the unlikelihood
   ``-log(1 - p)`` of opposite-sentiment responses; the KL runs over every token of the record's locality sequence;
4. Adam on the network (``lr``) and on the step sizes (``lr_lr``), gradient clipping, a guard against non-finite
   losses/gradients (the step is skipped and logged; ``max_nonfinite`` in a row abort training).

Every randomness of step ``s`` comes from a generator seeded with ``(seed, s)`` plus per-task cursors saved in the
training state, so a run killed and resumed from its last checkpoint ends with the same editor as an uninterrupted
one. Validation runs every ``val_every`` steps on the tasks' *validation* splits (never the training tail): each
record is edited, scored (Reliability, Generalization, Locality against the unedited model) and restored;
``val/score`` is the mean over tasks of the mean of those three. The best editor by ``early_stop_metric`` is what
lands in the editor folder.

Folder of one editor (``<run>/<name>/``): ``editor.safetensors`` + ``editor.json`` (best editor, small),
``last/`` (latest editor + ``train_state.pt`` with the optimizer: resumable), ``train_log.jsonl`` and
``val_log.jsonl`` (slash-keyed metrics), ``done.json`` (why and when training stopped).

Several editors: :func:`train_editors` trains the unfinished ones side by side, each in its own process with a share
of the threads (never oversubscribed), then loads them all. Multi-GPU: the same code runs under ``accelerate
launch``: a step's ``grad_accumulation × P`` edits are drawn alike in all ``P`` processes and each process edits its
share, the gradients are averaged and the normalisation statistics merged as if one process had seen every row, so
``P`` processes train the editor one process trains with ``grad_accumulation × P`` (tested with two CPU processes,
``tests/integration/test_accelerate_launch.py``); only the main process writes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config.method import MethodConfig
from ..data.instructions import EditRequest, load_pool
from ..data.records import EditRecord
from ..data.tasks import load_task
from ..evaluation.scoring import score_requests
from ..methods.mend import EDITOR_META, MendEditor
from ..methods.networks import RunningNorm
from ..models.forward import SplitForward
from ..models.loading import lower_dtype_of
from ..models.states import LowerStates
from ..util.runs import RunFolder, atomic_write_json, atomic_write_text, jsonl
from .step import TaskSampler, draw_records, edit_step, example_of, initial_editor
from .validation import edit_and_score, validation_metrics, validation_requests
import pandas as pd

STATE_FILE = "train_state.pt"
DONE_FILE = "done.json"


TRAIN_LOG, VAL_LOG = "train_log", "val_log"


@dataclass
class TrainResult:
    editor: MendEditor
    directory: Path
    summary: dict[str, Any]

    def train_log(self):
        return read_log(self.directory, TRAIN_LOG)

    def val_log(self):
        return read_log(self.directory, VAL_LOG)


def read_log(directory: str | os.PathLike, name: str):
    """``<directory>/<name>.jsonl`` as a DataFrame (a torn last line of a killed run is ignored)."""
    return pd.DataFrame(RunFolder(directory).read_cases(name))


def _truncate_log(folder: RunFolder, name: str, step: int) -> None:
    """Drop log rows after ``step`` (written after the checkpoint a resumed run starts from)."""
    path = folder.cases_path(name)
    if path.is_file():
        atomic_write_text(path, jsonl(r for r in folder.read_cases(name) if r.get("step", 0) <= step))


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
        tmp = fh.name
    torch.save(state, tmp)
    os.replace(tmp, path)


def budget_dir(directory: str | os.PathLike, budget: int) -> Path:
    """Where a run keeps its best editor at a smaller step budget (``MethodConfig.keep_best_at``):
    ``<run>@<budget>`` beside it."""
    directory = Path(directory)
    return directory.parent / f"{directory.name}@{budget}"


def is_trained(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a finished training run (``done.json`` and the best editor)."""
    d = Path(directory)
    return (d / DONE_FILE).is_file() and (d / EDITOR_META).is_file()


def _load_same_config(directory: Path, model, config: MethodConfig, device) -> MendEditor:
    """Load the editor in ``directory``; its config must equal ``config`` except for the step budget (a run may be
    extended to more steps: the schedule does not depend on it), which becomes ``config.steps``."""
    editor = MendEditor.load(directory, model, device=device)
    saved, requested = editor.config.to_dict(), config.to_dict()
    if {**saved, "steps": 0} != {**requested, "steps": 0}:
        diff = {k: (saved.get(k), requested.get(k)) for k in sorted(set(saved) | set(requested))
                if saved.get(k) != requested.get(k)}
        raise ValueError(f"{directory} holds an editor trained with a different config; use another run folder "
                         f"or delete it (saved vs requested: {diff})")
    editor.config = config
    return editor


#: what an editor's shape depends on: an editor fine-tuned from another (``init_editor``) must agree on these
ARCHITECTURE = ("method", "rank", "n_blocks", "combine", "normalize", "skip_first_token", "ke_hidden")


def _load_initial(model, config: MethodConfig, device) -> MendEditor:
    """The editor ``config.init_editor`` as the start of a fine-tuning run of ``config`` (same architecture)."""
    folder = Path(config.init_editor)
    if not is_trained(folder):
        raise FileNotFoundError(f"init_editor: no finished editor in {folder}")
    editor = MendEditor.load(folder, model, device=device)
    saved = editor.config.to_dict()
    differ = {k: (saved[k], getattr(config, k)) for k in ARCHITECTURE if saved[k] != getattr(config, k)}
    if differ:
        raise ValueError(f"init_editor {folder} has another architecture than {config.name} (saved vs requested: "
                         f"{differ})")
    editor.config = config
    return editor


def _extendable(directory: Path, config: MethodConfig) -> bool:
    """A finished run that stopped at its step budget, which ``config`` raises: training continues from ``last/``."""
    summary = json.loads((directory / DONE_FILE).read_text())
    return (summary["stop_reason"] == "steps" and summary["step"] < config.steps
            and (directory / "last" / STATE_FILE).is_file())


def train_editor(model, tokenizer, config: MethodConfig, directory: str | os.PathLike, **kwargs) -> TrainResult:
    """Train (or resume, or just load a finished) editor into ``directory``; returns the best editor.

    The model's parameters are frozen (``requires_grad=False``) while training and their flags restored afterwards.
    Keyword arguments: see :func:`_train_editor`.
    """
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(False)
    try:
        return _train_editor(model, tokenizer, config, directory, **kwargs)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


def _train_editor(model, tokenizer, config: MethodConfig, directory: str | os.PathLike, *,
                 edit_layers: Sequence[int] | None = None, data_dir=None, accelerator=None,
                 progress: bool = True, stop_after: int | None = None, log: Callable[[str], None] | None = print,
                 train_records: dict[str, list[EditRecord]] | None = None,
                 val_requests: Sequence[EditRequest] | None = None, score_kwargs: dict | None = None,
                 states_dir: str | os.PathLike | None = None) -> TrainResult:
    """Train (or resume, or just load a finished) editor into ``directory``; returns the best editor.

    ``stop_after`` ends the call after that many steps *without* checkpointing them, as a kill would (tests).
    ``train_records``/``val_requests`` replace the task data (tests, custom data). ``states_dir``: a folder of
    lower states shared with other runs (:class:`~instructedit_utils.models.states.LowerStates`; the same editor
    with or without it).
    """
    from tqdm import tqdm

    directory = Path(directory)
    log = log or (lambda msg: None)
    device = next(model.parameters()).device
    if is_trained(directory) and not _extendable(directory, config):
        return _load_finished(model, config, directory, device, log)
    if lower_dtype_of(model) != config.lower_dtype:
        raise ValueError(f"{config.name}: the model's lower blocks run in {lower_dtype_of(model)} but the config trains "
                         f"with lower_dtype={config.lower_dtype!r}; load the model with "
                         f"load_model(..., lower_dtype={config.lower_dtype!r}) (ModelConfig.load does)")
    run = _Trainer(model, tokenizer, config, directory, accelerator, log, edit_layers, data_dir, train_records,
                   val_requests, score_kwargs, states_dir)
    if run.state["step"] == 0 and run.state["best"] is None:
        run.validate()  # the untrained editor (warm-up statistics filled by initial_editor): the curves' start
        run.checkpoint()

    stop_reason = "steps"
    bar = tqdm(total=config.steps, initial=run.state["step"], disable=not (progress and run.main), desc=config.name)
    done_now = 0
    while run.state["step"] < config.steps:
        if stop_after is not None and done_now >= stop_after:
            bar.close()
            return TrainResult(run.editor, directory, {"stop_reason": "interrupted", **run.state})
        step = run.step()
        done_now += 1
        bar.update(1)
        if step % config.val_every == 0 or step == config.steps:
            stop = run.validate()
            run.checkpoint()
            if stop:
                stop_reason = "early_stopping"
                break
    bar.close()
    return run.finish(stop_reason, device)


def _load_finished(model, config: MethodConfig, directory: Path, device, log) -> TrainResult:
    """The finished editor in ``directory`` (its config must be ``config``'s, its budget not above it)."""
    editor = _load_same_config(directory, model, config, device)
    summary = json.loads((directory / DONE_FILE).read_text())
    if summary["step"] > config.steps:
        raise ValueError(f"{directory} holds an editor trained for {summary['step']} steps, more than the "
                         f"{config.steps} requested; use another run folder or delete it")
    log(f"[{config.name}] already trained ({summary['stop_reason']} at step {summary['step']}); loaded")
    return TrainResult(editor, directory, summary)


#: how validation scores its edits (caps on what is scored per case; no generation), unless a run overrides them
VALIDATION_SCORING = {"max_rephrases": 3, "max_probes": 3, "max_aliases": 1, "sentiment_responses": 2,
                      "fluency_max_new_tokens": 0}


class _Trainer:
    """The state of one training run and its named steps: :meth:`step` (one optimizer step), :meth:`validate`,
    :meth:`checkpoint` and :meth:`finish`. Built fresh or from ``last/`` (resume)."""

    def __init__(self, model, tokenizer, config: MethodConfig, directory: Path, accelerator, log, edit_layers,
                 data_dir, train_records, val_requests, score_kwargs, states_dir=None):
        device = next(model.parameters()).device
        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=device.type == "cpu")
        self.model, self.tokenizer, self.config, self.directory = model, tokenizer, config, directory
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.log = log if self.main else (lambda msg: None)  # one voice per run
        directory.mkdir(parents=True, exist_ok=True)
        self.last = directory / "last"
        self.score_kwargs = {**VALIDATION_SCORING, **(score_kwargs or {})}
        resume = (self.last / STATE_FILE).is_file()
        records = train_records or {t: load_task(t, "train", data_dir) for t in config.tasks}
        if resume:
            self.editor = _load_same_config(self.last, model, config, device)
        elif config.init_editor:
            self.editor = _load_initial(model, config, device)
        else:  # step 0: the seeded editor with its warm-up statistics
            self.editor = initial_editor(model, tokenizer, config, edit_layers=edit_layers, train_records=records)
        self.pool = load_pool(config.instructions_file)
        self.editor.train()
        self.optimizer = torch.optim.Adam([{"params": self.editor.network_parameters(), "lr": config.lr},
                                           {"params": self.editor.step_size_parameters(), "lr": config.lr_lr}],
                                          fused=device.type in ("cpu", "cuda"))
        self.sampler = TaskSampler(records, config.weights(), config.seed)
        self.val_reqs = list(val_requests) if val_requests is not None else validation_requests(config, data_dir)
        self.state = {"step": 0, "best": None, "best_step": None, "bad_rounds": 0, "nonfinite": 0, "skipped": 0,
                      "elapsed_s": 0.0}
        if resume:
            saved = torch.load(self.last / STATE_FILE, map_location=device, weights_only=False)
            self.optimizer.load_state_dict(saved["optimizer"])
            self.sampler.load_state_dict(saved["sampler"])
            self.state.update(saved["state"])
            self.log(f"[{config.name}] resuming from step {self.state['step']}")
        self.logs = RunFolder(directory)
        for name in (TRAIN_LOG, VAL_LOG):
            if self.main:
                _truncate_log(self.logs, name, self.state["step"])
        with torch.no_grad():
            _, self.reference = score_requests(model, tokenizer, self.val_reqs, batch_size=16, **{
                k: v for k, v in self.score_kwargs.items() if k != "fluency_max_new_tokens"})
        self.window: dict[str, list[float]] = defaultdict(list)
        self.val_states: dict = {}  # the validation edits' lower states, kept across rounds (edit_and_score)
        runner = self.editor.runner(model)
        self.store = (LowerStates(states_dir, model, runner.start, writable=self.main)
                      if states_dir is not None and isinstance(runner, SplitForward) else None)

    def checkpoint(self) -> None:
        if self.main:
            self.editor.save(self.last, {"step": self.state["step"]})
            _save_state(self.last / STATE_FILE, {"optimizer": self.optimizer.state_dict(),
                                                 "sampler": self.sampler.state_dict(), "state": dict(self.state)})

    def validate(self) -> bool:
        """Run validation, keep the best editor; return True when early stopping says stop."""
        config, state = self.config, self.state
        t0 = time.perf_counter()
        cases = edit_and_score(self.editor, self.model, self.tokenizer, self.val_reqs, self.reference,
                               states=self.val_states, **self.score_kwargs)
        metrics = validation_metrics(cases)
        value = metrics.get(config.early_stop_metric)
        if value is None:
            raise KeyError(f"early_stop_metric {config.early_stop_metric!r} is not a validation metric; "
                           f"have {sorted(metrics)}")
        better = state["best"] is None or (value > state["best"] if config.early_stop_mode == "max"
                                           else value < state["best"])
        if better:
            state.update(best=value, best_step=state["step"], bad_rounds=0)
            if self.main:
                self.editor.save(self.directory, {"step": state["step"], config.early_stop_metric: value})
        else:
            state["bad_rounds"] += 1
        row = {"step": state["step"], **metrics, "val/best": state["best"], "time/val_s": time.perf_counter() - t0}
        if self.main:
            self.logs.append_cases(VAL_LOG, [row])
        if state["step"] in config.keep_best_at:
            self.keep_best(state["step"])
        self.log(f"[{config.name}] step {state['step']}: " + ", ".join(
            f"{k[4:]}={metrics[k]:.3f}" for k in ("val/edit/acc", "val/gen/acc", "val/loc/acc", "val/score")
            if k in metrics) + (" (best)" if better else f" (no gain {state['bad_rounds']}/{config.patience})"))
        return config.patience > 0 and state["bad_rounds"] >= config.patience

    def keep_best(self, budget: int) -> None:
        """Copy the best editor so far to :func:`budget_dir` as a finished run of ``budget`` steps (what training
        with that budget gives: the draws, validations and early stopping of its first ``budget`` steps are these)."""
        if not self.main:
            return
        folder = budget_dir(self.directory, budget)
        best = MendEditor.load(self.directory, self.model, device=next(self.model.parameters()).device)
        best.config = dataclasses.replace(self.config, name=folder.name, steps=budget, keep_best_at=())
        best.save(folder, {"step": self.state["best_step"], self.config.early_stop_metric: self.state["best"]})
        atomic_write_json(folder / DONE_FILE, {
            "stop_reason": "budget", "step": min(budget, self.state["step"]), "best_step": self.state["best_step"],
            "best": self.state["best"], "metric": self.config.early_stop_metric, "skipped_steps": self.state["skipped"],
            "train_time_s": self.state["elapsed_s"], "processes": self.accelerator.num_processes,
            "kept_from": self.config.name})

    def _edits(self, step: int) -> tuple[bool, dict[str, list[float]]]:
        """Loss and backward pass of this process's ``grad_accumulation`` edits of ``step``; (all finite, metrics).

        With ``P`` processes the step has ``P × grad_accumulation`` edits, drawn in every process
        (:func:`~.step.draw_records`); process ``p`` takes the ``p``-th run of ``grad_accumulation`` of them, so ``P``
        processes train on the edits one process draws with ``grad_accumulation × P``."""
        metrics: dict[str, list[float]] = defaultdict(list)
        g, acc = self.config.grad_accumulation, self.accelerator
        drawn = draw_records(self.config, self.sampler, step, g * acc.num_processes)
        for rng, record in drawn[acc.process_index * g:(acc.process_index + 1) * g]:
            example = example_of(self.config, self.tokenizer, self.pool, rng, record)
            loss, values = edit_step(self.editor, self.model, example, self.config, self.tokenizer.pad_token_id,
                                     self.store)
            if not torch.isfinite(loss):
                return False, metrics
            (loss / g).backward()
            for k, v in values.items():
                metrics[k].append(v)
                if k in ("edit/acc", "loc/acc"):
                    metrics[f"{example.task}/{k}"].append(v)
        return True, metrics

    def _norms(self) -> dict[str, RunningNorm]:
        """The editor's normalisation statistics by module name."""
        return {name: m for name, m in self.editor.named_modules() if isinstance(m, RunningNorm)}

    def _synchronise(self, finite: bool, norms_before: dict[str, torch.Tensor]) -> bool:
        """Across processes: finite only if finite everywhere; then the mean gradient, the normalisation statistics
        of every process's rows (:meth:`~instructedit_utils.methods.networks.RunningNorm.merge`, as one process
        gathers them) and the mean of any other buffer (KE's multiplier)."""
        acc = self.accelerator
        flags = acc.gather(torch.tensor([float(finite)], dtype=torch.float64, device=acc.device))
        finite = bool(flags.min() > 0)
        if finite:
            for p in self.editor.parameters():
                if p.grad is not None:
                    p.grad = acc.reduce(p.grad, reduction="mean")
        norms = self._norms()
        for name, norm in norms.items():
            norm.merge(norms_before[name], acc.gather(norm.state()[None]))
        for name, buf in self.editor.named_buffers():
            if name.rsplit(".", 1)[0] not in norms:
                buf.copy_(acc.reduce(buf, reduction="mean"))
        return finite

    def _update(self, step: int, finite: bool) -> torch.Tensor:
        """Clip and take the optimizer step unless something is non-finite (guarded)."""
        config, state = self.config, self.state
        params = [p for p in self.editor.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip) if params else torch.tensor(0.0)
        if finite and bool(torch.isfinite(grad_norm)):
            self.optimizer.step()
            state["nonfinite"] = 0
            return grad_norm
        self.optimizer.zero_grad(set_to_none=True)
        state["nonfinite"] += 1
        state["skipped"] += 1
        self.log(f"[{config.name}] step {step}: non-finite loss or gradient, update skipped "
                 f"({state['nonfinite']} in a row, {state['skipped']} in total)")
        if state["nonfinite"] >= config.max_nonfinite:
            raise FloatingPointError(f"{config.name}: {state['nonfinite']} non-finite steps in a row at step "
                                     f"{step}; lower lr/edit_lr or check the data")
        return grad_norm

    def step(self) -> int:
        """One optimizer step (edits, update, logging); returns its number."""
        t0 = time.perf_counter()
        step = self.state["step"] + 1
        self.optimizer.zero_grad(set_to_none=True)
        several = self.accelerator.num_processes > 1
        before = {name: norm.state() for name, norm in self._norms().items()} if several else {}
        finite, metrics = self._edits(step)
        if several:
            finite = self._synchronise(finite, before)
        grad_norm = self._update(step, finite)
        self.state["step"] = step
        dt = time.perf_counter() - t0
        self.state["elapsed_s"] += dt
        for k, v in metrics.items():
            self.window[k] += v
        self.window["grad/norm"].append(float(grad_norm))
        self.window["time/step_s"].append(dt)
        if step % self.config.log_every == 0 or step == self.config.steps:
            row = {"step": step, **{k: float(np.mean(v)) for k, v in self.window.items()},
                   "lr/edit_mean": float(torch.stack(self.editor.step_size_parameters()).detach().mean()),
                   "guard/skipped": self.state["skipped"]}
            if self.main:
                self.logs.append_cases(TRAIN_LOG, [row])
            self.window.clear()
        return step

    def finish(self, stop_reason: str, device) -> TrainResult:
        """Write ``done.json`` and return the best editor."""
        config, state = self.config, self.state
        self.accelerator.wait_for_everyone()
        summary = {"stop_reason": stop_reason, "step": state["step"], "best_step": state["best_step"],
                   "best": state["best"], "metric": config.early_stop_metric, "skipped_steps": state["skipped"],
                   "train_time_s": state["elapsed_s"], "processes": self.accelerator.num_processes}
        if self.main:
            atomic_write_json(self.directory / DONE_FILE, summary)
        for budget in config.keep_best_at:  # stopped early before a kept budget: a run of that budget stops here too
            if budget > state["step"]:
                self.keep_best(budget)
        best = MendEditor.load(self.directory, self.model, device=device)
        self.log(f"[{config.name}] finished: {stop_reason} at step {state['step']}, best {config.early_stop_metric}="
                 f"{state['best']:.3f} at step {state['best_step']}")
        return TrainResult(best, self.directory, summary)
