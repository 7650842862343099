"""Multi-task training of a MEND editor — InstructEdit (instructions on) or multi-task MEND (instructions off).

One step (per edit; ``grad_accumulation`` edits per optimizer step):

1. draw a task (``task_weights``), the next record of that task's shuffled training split and, with instructions on,
   a fresh *seen* description; build the edit request;
2. capture ``u``/``δ`` of the edit loss on the edit prompt and let the editor turn them into weight deltas;
3. after the edit (:meth:`~instructedit_utils.editor.MendEditor.low_rank_edit`, differentiable in the editor) compute
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
launch``; each process draws its own edits (seeded with its process index), gradients and normalisation statistics
are averaged across processes, the main process writes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import verdicts
from .config import MethodConfig
from .data import EditRecord, load_task, sample
from .editor import EDITOR_META, MendEditor, _atomic_json, applied, make_editor, nll
from .evaluation import build_requests, score_requests
from .instructions import EditRequest, load_pool, make_edit_request
from .metrics import Encoded, encode_pair
from .runs import RunFolder, _atomic_write_text, _jsonl

STATE_FILE = "train_state.pt"
DONE_FILE = "done.json"


# --------------------------------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainExample:
    """Encoded sequences of one training edit."""

    case_id: str
    task: str
    header: tuple[int, ...]  # token ids of the instruction header (empty without instructions)
    edit: Encoded  # edit prompt + target (the inner, editing loss)
    likely: list[Encoded]  # sequences whose target tokens should become likely after the edit
    unlikely: list[Encoded]  # ConvSent: opposite-sentiment responses that should become unlikely
    loc: list[Encoded]  # locality sequences (KL on all their tokens)


def make_example(request: EditRequest, tokenizer, rng: random.Random, config: MethodConfig) -> TrainExample:
    """Turn an edit request into a :class:`TrainExample` (random rephrase, responses and locality probes)."""
    rec = request.record
    outer_prompt = rng.choice(request.rephrases) if request.rephrases else request.prompt
    if rec.task == "convsent":
        k = config.sentiment_responses
        likely = [_cut(encode_pair(tokenizer, outer_prompt, r), config.max_target_tokens)
                  for r in rng.sample(rec.target_responses, min(k, len(rec.target_responses)))]
        unlikely = [_cut(encode_pair(tokenizer, outer_prompt, r), config.max_target_tokens)
                    for r in rng.sample(rec.opposite_responses, min(k, len(rec.opposite_responses)))]
    else:
        likely = [encode_pair(tokenizer, outer_prompt, request.target)]
        unlikely = []
    if not request.locality:
        raise ValueError(f"{rec.record_id}: no locality probe to train on")
    probes = rng.sample(request.locality, min(config.loc_probes, len(request.locality)))
    loc = [encode_pair(tokenizer, p.prompt, p.answers[0]) for p in probes]
    header = tuple(tokenizer(request.header)["input_ids"]) if request.header else ()
    return TrainExample(request.case_id, rec.task, header, encode_pair(tokenizer, request.prompt, request.target),
                        likely, unlikely, loc)


def _cut(enc: Encoded, max_target_tokens: int) -> Encoded:
    """Keep only the first ``max_target_tokens`` target tokens (long ConvSent responses)."""
    keep = enc.target_positions[:max_target_tokens]
    return Encoded(enc.input_ids[:keep[-1] + 1], keep)


class TaskSampler:
    """Draws (task, record) pairs: task by weight, records of a task in a fresh seeded permutation per epoch.

    Its state (per-task epoch and position) is saved with the training state.
    """

    def __init__(self, records: dict[str, list[EditRecord]], weights: dict[str, float], seed: int):
        self.records = records
        self.tasks = [t for t in records if weights.get(t, 0) > 0]
        self.weights = [weights[t] for t in self.tasks]
        self.seed = seed
        self.cursor = {t: [0, 0] for t in records}  # task -> [epoch, position]

    def _order(self, task: str, epoch: int) -> list[int]:
        order = list(range(len(self.records[task])))
        random.Random(f"{self.seed}/{task}/{epoch}").shuffle(order)
        return order

    def draw(self, rng: random.Random) -> EditRecord:
        task = rng.choices(self.tasks, weights=self.weights)[0]
        epoch, pos = self.cursor[task]
        record = self.records[task][self._order(task, epoch)[pos]]
        pos += 1
        if pos == len(self.records[task]):
            epoch, pos = epoch + 1, 0
        self.cursor[task] = [epoch, pos]
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": {t: list(c) for t, c in self.cursor.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = {t: list(c) for t, c in state["cursor"].items()}


def _targets(seqs: Sequence[Encoded], first_row: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions) of the target tokens of ``seqs`` placed at batch rows ``first_row…``."""
    rows = [first_row + i for i, s in enumerate(seqs) for _ in s.target_positions]
    pos = [p for s in seqs for p in s.target_positions]
    return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(pos, dtype=torch.long, device=device)


def _labels(seqs: Sequence[Encoded], device) -> torch.Tensor:
    """Target token ids of ``seqs`` in the order of :func:`_targets`."""
    return torch.tensor([t for s in seqs for t in s.targets], dtype=torch.long, device=device)


def _all_positions(seqs: Sequence[Encoded], first_row: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [first_row + i for i, s in enumerate(seqs) for _ in s.input_ids]
    pos = [p for s in seqs for p in range(len(s.input_ids))]
    return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(pos, dtype=torch.long, device=device)


def unlikelihood(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean ``-log(1 - p(target))`` (pushes the target tokens down)."""
    p = logits.float().log_softmax(-1).gather(-1, targets[:, None])[:, 0].exp()
    return -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()


def kl_pre_post(pre_logits: torch.Tensor, post_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``KL(softmax(pre) ‖ softmax(post))``; logits are ``[N, V]``."""
    pre = pre_logits.float().log_softmax(-1)
    post = post_logits.float().log_softmax(-1)
    return (pre.exp() * (pre - post)).sum(-1).mean()


def _cosine(a, b) -> float:
    """Cosine between the matrices ``a.delta.T @ a.u`` and ``b.delta.T @ b.u`` without forming them."""
    dot = ((a.delta @ b.delta.T) * (a.u @ b.u.T)).sum()
    na = ((a.delta @ a.delta.T) * (a.u @ a.u.T)).sum().clamp_min(0).sqrt()
    nb = ((b.delta @ b.delta.T) * (b.u @ b.u.T)).sum().clamp_min(0).sqrt()
    return float(dot / (na * nb).clamp_min(1e-30))


# --------------------------------------------------------------------------------------------------------------------
# One training edit
# --------------------------------------------------------------------------------------------------------------------


def edit_step(editor: MendEditor, model, example: TrainExample, config: MethodConfig, pad_id: int
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one training edit (differentiable w.r.t. the editor) and its metrics.

    All sequences of the example go into one batch: lower blocks once per sequence (instruction header cached),
    the upper blocks twice — unedited (edit loss → factors; pre-edit locality logits) and edited (low-rank hooks).
    """
    runner = editor.runner(model)
    n_l, n_u, n_c = len(example.likely), len(example.unlikely), len(example.loc)
    instructed = [example.edit] + example.likely + example.unlikely
    # edit/likely/unlikely sequences need no input after their last target's predecessor; locality needs all tokens
    inputs = [s.inputs for s in instructed] + [s.input_ids for s in example.loc]
    lowers = runner.lower(inputs, example.header, header_rows=len(instructed))
    # unedited pass: edit sequence + locality; edited pass: rephrase/responses + locality
    inner = runner.batch([inputs[0]] + inputs[-n_c:], [lowers[0]] + lowers[-n_c:], pad_id)
    outer = runner.batch(inputs[1:], lowers[1:], pad_id)
    dev = inner.attention_mask.device
    er, ep = _targets([example.edit], 0, dev)
    cr, cp = _all_positions(example.loc, 1, dev)
    factors, pre_loss, pre_loc = editor.inner_pass(model, runner, inner, er, ep, cr, cp,
                                                   targets=_labels([example.edit], dev))
    transformed = editor.transform_all(factors, editor.edit_context(model, example.edit.input_ids))
    lr_, lp = _targets(example.likely, 0, dev)
    ur, up = _targets(example.unlikely, n_l, dev)
    cr, cp = _all_positions(example.loc, n_l + n_u, dev)
    with editor.low_rank_edit(model, transformed):
        post = runner.upper(outer, torch.cat([lr_, ur, cr]), torch.cat([lp - 1, up - 1, cp]))
    nl, nu = len(lr_), len(ur)
    post_l, post_u, post_loc = post[:nl], post[nl:nl + nu], post[nl + nu:]
    likely_ids = _labels(example.likely, dev)
    l_edit = nll(post_l, likely_ids)
    if nu:
        l_edit = l_edit + unlikelihood(post_u, _labels(example.unlikely, dev))
    l_loc = kl_pre_post(pre_loc, post_loc)
    loss = editor.objective(l_edit, l_loc)

    with torch.no_grad():
        acc = (post_l.argmax(-1) == likely_ids).float().mean()
        loc_acc = (pre_loc.argmax(-1) == post_loc.argmax(-1)).float().mean()
        cos = [_cosine(transformed[n], factors[n]) for n in factors]
    metrics = {"loss/edit": l_edit.item(), "loss/loc": l_loc.item(), "loss/total": loss.item(),
               "loss/pre_edit": pre_loss.item(), "edit/acc": acc.item(), "loc/acc": loc_acc.item(),
               "grad/cos": float(np.mean(cos)), "edit/rows": float(np.mean([len(f.u) for f in factors.values()]))}
    return loss, metrics


@torch.no_grad()
def warm_up_normalization(editor: MendEditor, model, tokenizer, records: dict[str, list[EditRecord]],
                          config: MethodConfig) -> None:
    """Fill the running statistics from ``norm_warmup`` training edits (drawn without touching the sampler)."""
    tasks = [t for t, w in config.weights().items() if w > 0]
    pool = load_pool(config.instructions_file)
    for i in range(config.norm_warmup):
        rng = random.Random(f"{config.seed}/warmup/{i}")
        task = tasks[i % len(tasks)]
        record = rng.choice(records[task])
        request = make_edit_request(record, instructions=config.use_instructions, rng=rng, pool=pool)
        factors, _ = editor.raw_factors(model, tokenizer, request.prompt, request.target, header=request.header)
        editor.observe(factors)


def initial_editor(model, tokenizer, config: MethodConfig, *, edit_layers: Sequence[int] | None = None,
                   data_dir=None, train_records: dict[str, list[EditRecord]] | None = None) -> MendEditor:
    """The editor a training run of ``config`` starts from, its step 0: the seeded initialisation (MEND's network
    is the identity) and, with normalisation, the statistics of the warm-up edits. The trainer builds its editor
    with this function; chapter 6 measures it as the untrained control of Finding 1. A fresh editor only (a
    fine-tuning run starts from ``init_editor``)."""
    if config.init_editor:
        raise ValueError(f"{config.name} starts from init_editor {config.init_editor}, not from a fresh editor")
    device = next(model.parameters()).device
    torch.manual_seed(config.seed)
    editor = make_editor(model, config, edit_layers).to(device)
    if config.normalize:
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        model.requires_grad_(False)
        try:
            records = train_records or {t: load_task(t, "train", data_dir) for t in config.tasks}
            warm_up_normalization(editor, model, tokenizer, records, config)
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
    return editor


# --------------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------------


def edit_and_score(editor: MendEditor, model, tokenizer, requests: Sequence[EditRequest], reference: dict,
                   **score_kwargs) -> list[dict[str, Any]]:
    """Apply each request's edit alone, score it (metrics of :func:`~instructedit_utils.evaluation.score_requests`,
    ``loc/acc`` against ``reference``), restore the model. The editor runs in eval mode (statistics frozen).

    Scoring goes through the editor's split forward (:func:`~instructedit_utils.forward.score_split`): the blocks
    below the edited ones run once per distinct prompt for all requests (kept for this call only), each edit replays
    the edited blocks. Measured on the cpu profile's 45 validation edits: 27.4 s instead of 56.7 s, the same
    metrics."""
    from functools import partial

    from .forward import score_split

    was_training = editor.training
    editor.eval()
    runner = editor.runner(model)
    headers = tuple({tuple(tokenizer(r.header)["input_ids"]) for r in requests if r.header})
    scorer = partial(score_split, runner, pad_id=tokenizer.pad_token_id,
                     batch_size=score_kwargs.get("batch_size", 16), headers=headers)
    cases = []
    try:
        with runner.reusing_states():
            for req in requests:
                result = editor.edit(model, tokenizer, req.prompt, req.target, header=req.header)
                with applied(model, result.deltas):
                    case, _ = score_requests(model, tokenizer, [req], reference=reference, scorer=scorer,
                                             **score_kwargs)
                cases.append({**case[0], "loss/pre_edit": result.loss})
    finally:
        editor.train(was_training)
    return cases


def validation_metrics(cases: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``val/<task>/<metric>``, task-averaged ``val/<metric>`` and ``val/score``: the mean over tasks of each task's
    own metrics, the ones the paper reports for it — Reliability, Generalization (when the task has rephrases and
    the paper reports it) and Locality. ConvSent's Reliability is its sentiment edit success and it has no
    Generalization (:mod:`~instructedit_utils.evaluation`), so checkpoint selection sees a sentiment edit learn even
    while the token accuracy of the one target response falls; that token accuracy is logged
    (``val/convsent/edit/token_acc``) but not scored."""
    by_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in cases:
        for k in SCORED + LOGGED:
            if c.get(k) is not None:
                by_task[c["task"]][k].append(c[k])
    out: dict[str, float] = {}
    scores = []
    for task, ms in by_task.items():
        means = {k: float(np.mean(v)) for k, v in ms.items()}
        out.update({f"val/{task}/{k}": v for k, v in means.items()})
        scores.append(float(np.mean([v for k, v in means.items() if k in SCORED])))
    for k in SCORED:
        vals = [out[f"val/{t}/{k}"] for t in by_task if f"val/{t}/{k}" in out]
        if vals:
            out[f"val/{k}"] = float(np.mean(vals))
    out["val/score"] = float(np.mean(scores)) if scores else float("nan")
    return out


#: the validation metrics :func:`validation_metrics` scores, and those it only logs
SCORED, LOGGED = ("edit/acc", "gen/acc", "loc/acc"), ("edit/token_acc",)


# --------------------------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------------------------


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
    import pandas as pd

    return pd.DataFrame(RunFolder(directory).read_cases(name))


def _truncate_log(folder: RunFolder, name: str, step: int) -> None:
    """Drop log rows after ``step`` (written after the checkpoint a resumed run starts from)."""
    path = folder.cases_path(name)
    if path.is_file():
        _atomic_write_text(path, _jsonl(r for r in folder.read_cases(name) if r.get("step", 0) <= step))


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


def validation_requests(config: MethodConfig, data_dir=None) -> list[EditRequest]:
    """The fixed validation edits: ``val_records_per_task`` records of each task's val split, seeded descriptions."""
    out, pool = [], load_pool(config.instructions_file)
    for task in config.tasks:
        recs = sample(load_task(task, "val", data_dir), config.val_records_per_task, config.seed)
        out += build_requests(recs, instructions=config.use_instructions, seed=config.seed, pool=pool)
    return out


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
                 val_requests: Sequence[EditRequest] | None = None, score_kwargs: dict | None = None) -> TrainResult:
    """Train (or resume, or just load a finished) editor into ``directory``; returns the best editor.

    ``stop_after`` ends the call after that many steps *without* checkpointing them, as a kill would (tests).
    ``train_records``/``val_requests`` replace the task data (tests, custom data).
    """
    from tqdm import tqdm

    directory = Path(directory)
    log = log or (lambda msg: None)
    device = next(model.parameters()).device
    if is_trained(directory) and not _extendable(directory, config):
        return _load_finished(model, config, directory, device, log)
    run = _Trainer(model, tokenizer, config, directory, accelerator, log, edit_layers, data_dir, train_records,
                   val_requests, score_kwargs)
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


class _Trainer:
    """The state of one training run and its named steps: :meth:`step` (one optimizer step), :meth:`validate`,
    :meth:`checkpoint` and :meth:`finish`. Built fresh or from ``last/`` (resume)."""

    def __init__(self, model, tokenizer, config: MethodConfig, directory: Path, accelerator, log, edit_layers,
                 data_dir, train_records, val_requests, score_kwargs):
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
        self.score_kwargs = {"max_rephrases": 3, "max_probes": 3, "max_aliases": 1, "sentiment_responses": 2,
                             "fluency_max_new_tokens": 0, **(score_kwargs or {})}
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
                               **self.score_kwargs)
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
        _atomic_json(folder / DONE_FILE, {
            "stop_reason": "budget", "step": min(budget, self.state["step"]), "best_step": self.state["best_step"],
            "best": self.state["best"], "metric": self.config.early_stop_metric, "skipped_steps": self.state["skipped"],
            "train_time_s": self.state["elapsed_s"], "processes": self.accelerator.num_processes,
            "kept_from": self.config.name})

    def _edits(self, step: int) -> tuple[bool, dict[str, list[float]]]:
        """Loss and backward pass of the ``grad_accumulation`` edits of ``step``; (all finite, their metrics)."""
        metrics: dict[str, list[float]] = defaultdict(list)
        for micro in range(self.config.grad_accumulation):
            rng = random.Random(f"{self.config.seed}/{step}/{micro}/{self.accelerator.process_index}")
            record = self.sampler.draw(rng)
            request = make_edit_request(record, instructions=self.config.use_instructions, rng=rng, pool=self.pool)
            example = make_example(request, self.tokenizer, rng, self.config)
            loss, values = edit_step(self.editor, self.model, example, self.config, self.tokenizer.pad_token_id)
            if not torch.isfinite(loss):
                return False, metrics
            (loss / self.config.grad_accumulation).backward()
            for k, v in values.items():
                metrics[k].append(v)
                if k in ("edit/acc", "loc/acc"):
                    metrics[f"{example.task}/{k}"].append(v)
        return True, metrics

    def _update(self, step: int, finite: bool) -> torch.Tensor:
        """Average across processes, clip, and take the optimizer step unless something is non-finite (guarded)."""
        config, state = self.config, self.state
        params = [p for p in self.editor.parameters() if p.grad is not None]
        if self.accelerator.num_processes > 1:
            for p in params:
                p.grad = self.accelerator.reduce(p.grad, reduction="mean")
            for _, buf in self.editor.named_buffers():
                buf.copy_(self.accelerator.reduce(buf, reduction="mean"))
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
        finite, metrics = self._edits(step)
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
            _atomic_json(self.directory / DONE_FILE, summary)
        for budget in config.keep_best_at:  # stopped early before a kept budget: a run of that budget stops here too
            if budget > state["step"]:
                self.keep_best(budget)
        best = MendEditor.load(self.directory, self.model, device=device)
        self.log(f"[{config.name}] finished: {stop_reason} at step {state['step']}, best {config.early_stop_metric}="
                 f"{state['best']:.3f} at step {state['best_step']}")
        return TrainResult(best, self.directory, summary)


def best_step_table(summaries: dict[str, dict[str, Any]]) -> "pd.DataFrame":
    """Per editor (its ``done.json`` summary): why training stopped, its steps, the step of the kept checkpoint
    and that checkpoint's validation score, and whether it trained at all (best step above 0,
    :func:`~instructedit_utils.verdicts.trained`)."""
    import pandas as pd

    rows = [{"editor": name, "stop": s.get("stop_reason"), "steps": s.get("step"), "best step": s.get("best_step"),
             "validation score": None if s.get("best") is None else round(float(s["best"]), 3),
             "minutes": round(s.get("train_time_s", 0.0) / 60, 1), "trained": verdicts.trained(s)}
            for name, s in ((n, s or {}) for n, s in summaries.items())]
    return pd.DataFrame(rows).set_index("editor")


def worker_threads(total: int | None, workers: int) -> int:
    """Torch threads per worker so that ``workers × threads`` never exceeds ``total`` (``None``: the machine's
    cores): oversubscribed cores make every step several times slower (measured: 6× with one extra process)."""
    total = total or os.cpu_count() or 1
    return max(1, total // max(1, workers))


def train_editors(cfg, model, tokenizer, configs: dict[str, MethodConfig] | None = None, *,
                  workers: int | None = None, directory: str | os.PathLike | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = print) -> dict[str, TrainResult]:
    """Train (or load) the editors ``configs`` (default: ``cfg.training_configs()``) into ``<directory>/<name>``
    (default ``directory``: ``cfg.run_dir``).

    With ``workers`` (default ``cfg.n_workers()``) above 1, the editors not finished yet train at the same time,
    each in its own process (spawned, loading ``cfg.model`` itself) with :func:`worker_threads` threads, so workers
    × threads never exceeds ``cfg.model.num_threads``; then every editor is loaded here. Each run is the same as
    alone (its randomness depends only on its config and step), so a result does not depend on ``workers``. A worker
    that fails raises here; the others' finished or checkpointed runs stay (rerun to resume)."""
    configs = configs if configs is not None else cfg.training_configs()
    workers = cfg.n_workers() if workers is None else workers
    run_dir = Path(directory if directory is not None else cfg.run_dir)
    pending = [n for n, c in configs.items() if not is_trained(run_dir / n) or _extendable(run_dir / n, c)]
    if workers > 1 and len(pending) > 1 and cfg.model.device == "cpu":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        n = min(workers, len(pending))
        threads = worker_threads(cfg.model.num_threads, n)
        (log or (lambda msg: None))(f"training {', '.join(pending)} in {n} processes x {threads} thread(s)")
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(_train_worker, dataclasses.asdict(cfg.model), configs[name].to_dict(),
                                str(run_dir / name), cfg.data_dir, threads) for name in pending]
            for job in jobs:
                job.result()
    return {name: train_editor(model, tokenizer, config, run_dir / name, edit_layers=cfg.model.edit_layers,
                               data_dir=cfg.data_dir, progress=progress, log=log)
            for name, config in configs.items()}


def _train_worker(model: dict[str, Any], config: dict[str, Any], directory: str, data_dir, threads: int) -> dict:
    """One editor's training in a worker process (see :func:`train_editors`)."""
    from . import setup_torch
    from .models import load_model

    setup_torch(threads, config["seed"])
    base, tokenizer = load_model(model["name"], model["device"], model["dtype"])
    result = train_editor(base, tokenizer, MethodConfig.from_dict(config), directory,
                          edit_layers=model["edit_layers"], data_dir=data_dir, progress=False, log=None)
    return result.summary


# --------------------------------------------------------------------------------------------------------------------
# Using trained editors
# --------------------------------------------------------------------------------------------------------------------


def evaluate_editor(editor: MendEditor, model, tokenizer, requests: Sequence[EditRequest], *, method: str,
                    run=None, chunk: int = 16, **score_kwargs) -> list[dict[str, Any]]:
    """Edit-and-score every request alone with a trained editor: the harness of
    :func:`~instructedit_utils.evaluation.evaluate_method` (``cases_<method>.jsonl`` in ``run``, resumable, each case
    with the unedited model's values as ``base/<metric>``)."""
    from .baselines import TrainedEditor
    from .evaluation import evaluate_method

    return evaluate_method(TrainedEditor(editor, model, method), model, tokenizer, requests, run=run,
                           name=f"cases_{method}", chunk=chunk, **score_kwargs)


def live_edits(model, tokenizer, editors: dict[str, MendEditor], records: Sequence[EditRecord],
               max_new_tokens: int = 8, description: int = 0):
    """Greedy continuations before and after one edit per (record, editor), on the edit prompt and a rephrase."""
    import pandas as pd

    from .metrics import generate

    rows = []
    for rec in records:
        for name, editor in editors.items():
            req = make_edit_request(rec, instructions=editor.config.use_instructions, description=description,
                                    pool=load_pool(editor.config.instructions_file))
            prompts = [req.prompt] + list(req.rephrases[:1])
            before = generate(model, tokenizer, prompts, max_new_tokens)
            result = editor.edit(model, tokenizer, req.prompt, req.target, header=req.header)
            with applied(model, result.deltas):
                after = generate(model, tokenizer, prompts, max_new_tokens)
            for kind, b, a in zip(("prompt", "rephrase"), before, after):
                rows.append({"record": rec.prompt if kind == "prompt" else rec.rephrases[0], "target": req.target,
                             "editor": name, "input": kind, "before": b.strip(), "after": a.strip()})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Command line (sweeps, GPU machines: ``accelerate launch -m instructedit_utils.training --profile gpu``)
# --------------------------------------------------------------------------------------------------------------------

NOTEBOOK = "02_editor_training"


def build_parser() -> argparse.ArgumentParser:
    from .parameters import add_arguments

    parser = argparse.ArgumentParser(description="Train the editors of notebook 02 with a profile's parameters, "
                                                 "without the notebook (same configuration, same run folder).")
    add_arguments(parser, "notebook 02")
    parser.add_argument("--editor", action="append",
                        help="which editor(s) to train: instructedit, mend, ke, a single-task editor such as "
                             "mend-counterfact, or with --single-task e.g. instructedit-counterfact (default: every "
                             "editor notebook 02 trains)")
    parser.add_argument("--single-task", action="store_true",
                        help="train one editor per training task (instructions on and off) instead")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace):
    """The configuration notebook 02 builds for the same profile and overrides."""
    from .parameters import config_from_args as notebook_config_from_args

    return notebook_config_from_args(NOTEBOOK, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Train the editors of notebook 02 with a profile's parameters, without the notebook."""
    from . import setup_torch
    from .models import load_model
    from .parameters import parse_cli

    parser = build_parser()
    args, cfg = parse_cli(parser, argv, config_from_args)
    configs = ({**cfg.single_task_configs(True), **cfg.single_task_configs(False)} if args.single_task
               else cfg.training_configs())
    unknown = set(args.editor or ()) - set(configs)
    if unknown:
        parser.error(f"unknown editor(s) {sorted(unknown)}; choose from {sorted(configs)}")
    setup_torch(cfg.model.num_threads, cfg.seed)
    RunFolder(cfg.run_dir).write_params(cfg.to_dict())  # as the notebook does (chapter 4 reads the editors' config)
    model, tokenizer = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype)
    chosen = {name: method for name, method in configs.items() if not args.editor or name in args.editor}
    train_editors(cfg, model, tokenizer, chosen, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
