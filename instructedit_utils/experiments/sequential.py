"""Edits that must last: sequential and batch editing of the book's methods (:class:`~instructedit_utils.config.
SequenceConfig`), on the harness's streams and batches (:mod:`instructedit_utils.evaluation.streams`).

* **Records** (:func:`stream_requests`): per setting and seed, ``SequenceConfig.records`` test records —
  ``training``: the training tasks' records interleaved in a seeded order (the same order for every method, whatever
  its prompts); ``holdout``: the hold-out task's records.
* **Streams** (:class:`StreamJob`): for each length ``T`` the records cut into consecutive streams of ``T`` edits, each
  on a fresh copy of the model's state; every record is then measured after the stream it belongs to ended, so
  ``T = 1, 10, 100`` compare the same records, paired. The longest stream is also measured right after each edit,
  at the checkpoints and on held-out text (:func:`probe_texts`).
* **Batches** (:class:`BatchJob`): the first ``max(batch_sizes)`` training records, in groups of each size, one edit
  call per group, for the hypernetwork editors of ``batch_methods``.

Files: ``<run_dir>/streams/stream_<method>_<setting>_s<seed>_T<T>_<i>.jsonl`` and
``<run_dir>/batches/batches_<method>_s<seed>_k<k>.jsonl`` (rows with their settings; resumable by stream, or by the
group of streams generating together, and by chunk of batch groups). A job is one method on one setting (every
length: the unedited scores and lower states are shared) or one editor's batches; jobs with unfinished files run
side by side in ``cfg.workers`` processes, the slowest first, each adding its seconds to
``<run_dir>/job_seconds.jsonl``; the notebook and ``instructedit-eval sequential`` then read them back.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config.experiment import ExperimentConfig
from ..data.instructions import EditRequest
from ..data.records import EditRecord
from ..data.tasks import load_task, sample, task_spec
from ..evaluation.harness import UneditedScores
from ..evaluation.requests import task_requests
from ..evaluation.streams import UneditedSubset, evaluate_batches, evaluate_streams, stream_finished
from ..methods.registry import CONFIGS, EditingMethod
from ..util.runs import RunFolder
from .settings import run_in_workers, worker_method

STREAMS_DIR, BATCHES_DIR = "streams", "batches"
JOB_SECONDS = "job_seconds"  # <run_dir>/job_seconds.jsonl: each job's seconds in its worker (the cost page)
#: the methods whose edits take many optimisation steps, the slowest first: their jobs start first
#: (``benchmarks/bench_levers.py --levers baselines``: CaliNet's 25 steps cost about 1.4 s an edit on SmolLM2, GRACE's
#: about 1 s; FT-L stops at its loss plateau and its streams cost about what MEND's do, see ``job_seconds.jsonl``)
SLOWEST = ("rome", "memit", "alphaedit", "calinet", "grace")  # ROME & co.: a value optimisation through most blocks


def stream_tasks(cfg: ExperimentConfig, setting: str) -> tuple[str, ...]:
    """The tasks a setting's records come from: ``cfg.tasks`` but the hold-out ones, or the hold-out ones."""
    if setting == "training":
        return tuple(t for t in cfg.tasks if t not in cfg.holdout_tasks)
    return tuple(cfg.holdout_tasks)


def stream_requests(cfg: ExperimentConfig, method: EditingMethod, setting: str, seed: int) -> list[EditRequest]:
    """The records of ``setting`` for ``seed`` as ``method`` edits them, in stream order (see the module docstring).
    Too few records in the data is an error naming the tasks."""
    n = cfg.sequence.records
    tasks = stream_tasks(cfg, setting)
    per_task = -(-n // len(tasks))
    requests = task_requests(tasks, cfg.splits(tasks), per_task, seed=seed, instructions=method.use_instructions,
                             data_dir=cfg.data_dir, instruct_locality=cfg.instruct_locality, pool=cfg.pool())
    if len(requests) < n:
        raise ValueError(f"The {setting} streams need {n} records of {list(tasks)}; the data holds {len(requests)}")
    order = sorted(r.case_id for r in requests)  # by id, so that every method gets the same order
    random.Random(seed).shuffle(order)
    by_id = {r.case_id: r for r in requests}
    return [by_id[case_id] for case_id in order[:n]]


def probe_texts(cfg: ExperimentConfig) -> tuple[list[str], list[str]] | None:
    """Held-out text the edits never aimed at: ``probe_records`` validation records of each training task (test
    records where a task has no validation split), each as (prompt, `` `` + answer) by :func:`probe_pair`. None
    without probes."""
    prompts, answers = [], []
    for task in stream_tasks(cfg, "training"):
        split = "val" if "val" in task_spec(task).splits else cfg.split
        for record in sample(load_task(task, split, cfg.data_dir), cfg.sequence.probe_records, cfg.seed):
            prompt, answer = probe_pair(record)
            prompts.append(prompt)
            answers.append(" " + answer)
    return (prompts, answers) if prompts else None


def probe_pair(record: EditRecord) -> tuple[str, str]:
    """A record's text as the unedited world has it: its prompt and true answer; without one (Recent's new facts)
    its first locality prompt and answer; ConvSent's prompt and a response of the record's sentiment. A record with
    none of them is an error naming it."""
    if record.ground_truth and record.ground_truth[0].strip():
        return record.prompt, record.ground_truth[0].strip()
    for probe in record.locality:
        if probe.answers and probe.answers[0].strip():
            return probe.prompt, probe.answers[0].strip()
    if record.target_responses:
        return record.prompt, record.target_responses[0].strip()
    raise ValueError(f"{record.source} record {record.index}: no true answer, locality probe or response to measure "
                     "held-out perplexity on")


@dataclass(frozen=True)
class StreamJob:
    """One method's streams of every length on one setting's records of one seed: the unedited scores and the
    lower states of the records are computed once for all of them."""

    cfg: ExperimentConfig
    name: str
    setting: str
    seed: int

    @property
    def label(self) -> str:
        return f"streams {self.name} {self.setting} s{self.seed}"

    def file(self, length: int, index: int) -> str:
        return f"stream_{self.name}_{self.setting}_s{self.seed}_T{length}_{index}"

    def streams(self, length: int) -> int:
        return self.cfg.sequence.covered(length, self.name) // length

    @property
    def lengths(self) -> tuple[int, ...]:
        return self.cfg.sequence.lengths_of(self.name)

    def finished(self) -> bool:
        folder = RunFolder(Path(self.cfg.run_dir) / STREAMS_DIR)
        return all(stream_finished(folder, self.file(t, i)) for t in self.lengths for i in range(self.streams(t)))

    def run(self, model, tokenizer, method: EditingMethod) -> list[dict[str, Any]]:
        """Every stream of this job (finished ones read back), the longest first; rows with ``setting``, ``seed``,
        ``stream/length`` and ``stream/index``."""
        cfg = self.cfg
        folder = RunFolder(Path(cfg.run_dir) / STREAMS_DIR)
        requests = stream_requests(cfg, method, self.setting, self.seed)[:cfg.sequence.covered(self.lengths[-1],
                                                                                               self.name)]
        kwargs = cfg.score_kwargs()
        states: dict = {}  # the lower states of every prompt, for all streams of this method (edits never touch them)
        base = UneditedSubset.of(UneditedScores(folder.path / "unedited", model, kwargs), requests, model, tokenizer,
                                 method, kwargs, lower_states=states)
        settings = {**cfg.case_settings(stream_tasks(cfg, self.setting), instructions=method.use_instructions),
                    "stream/setting": self.setting, "stream/seed": self.seed}
        rows = []
        for length in reversed(self.lengths):
            longest = length == self.lengths[-1]
            n = self.streams(length)
            out = evaluate_streams(method, model, tokenizer,
                                   [requests[i * length:(i + 1) * length] for i in range(n)],
                                   names=[self.file(length, i) for i in range(n)],
                                   points=cfg.sequence.stream_points if longest else (),
                                   probes=probe_texts(cfg) if longest else None, run=folder, settings=settings,
                                   unedited=base, lower_states=states, **kwargs)
            rows += [{**r, "setting": self.setting, "seed": self.seed, "stream/length": length, "stream/index": i}
                     for i, stream in enumerate(out) for r in stream]
        return rows


@dataclass(frozen=True)
class BatchJob:
    """One hypernetwork editor's batch edits of every size on the training records of one seed."""

    cfg: ExperimentConfig
    name: str
    seed: int

    @property
    def label(self) -> str:
        return f"batches {self.name} s{self.seed}"

    @property
    def file(self) -> str:
        return f"batches_{self.name}_s{self.seed}"

    def finished(self) -> bool:
        folder = RunFolder(Path(self.cfg.run_dir) / BATCHES_DIR)
        n = max(self.cfg.sequence.batch_sizes)
        return all(len(folder.done_ids(f"{self.file}_k{k}")) >= n for k in self.cfg.sequence.batch_sizes)

    def run(self, model, tokenizer, method: EditingMethod) -> list[dict[str, Any]]:
        cfg = self.cfg
        seq = cfg.sequence
        every = stream_requests(cfg, method, "training", self.seed)
        requests = every[:max(seq.batch_sizes)]
        settings = {**cfg.case_settings(cfg.tasks, instructions=method.use_instructions), "stream/seed": self.seed}
        kwargs = cfg.score_kwargs()
        # the unedited scores of the training streams' records (computed here if no stream job has yet)
        base = UneditedSubset.of(UneditedScores(Path(cfg.run_dir) / STREAMS_DIR / "unedited", model, kwargs), every,
                                 model, tokenizer, method, kwargs)
        rows = evaluate_batches(method, model, tokenizer, requests, seq.batch_sizes,
                                run=RunFolder(Path(cfg.run_dir) / BATCHES_DIR), name=self.file, settings=settings,
                                unedited=base, **kwargs)
        return [{**r, "setting": "training", "seed": self.seed} for r in rows]


def jobs(cfg: ExperimentConfig, names: Sequence[str]) -> list[StreamJob | BatchJob]:
    """Every stream and batch job of ``names`` (``base`` left out: it makes no edit), roughly the slowest first
    (workers take them in this order): the methods of :data:`SLOWEST`, then the trained editors, then the other
    methods, batches last."""
    seq = cfg.sequence
    slow = [n for n in SLOWEST if n in names]
    trained = [n for n in names if n not in CONFIGS and n != "base"]
    other = [n for n in names if n in CONFIGS and n not in SLOWEST and n != "base"]
    out: list[StreamJob | BatchJob] = [StreamJob(cfg, name, setting, seed)
                                       for name in slow + trained + other for setting in seq.stream_settings
                                       if seq.streams_of(name, setting) for seed in seq.stream_seeds]
    out += [BatchJob(cfg, name, seed) for name in seq.batch_methods if name in names for seed in seq.stream_seeds]
    return out


def _worker(job: StreamJob | BatchJob, threads: int) -> None:
    model, tokenizer, method = worker_method(job.cfg, job.name, threads)
    _timed(job, model, tokenizer, method, threads)


def _timed(job: StreamJob | BatchJob, model, tokenizer, method: EditingMethod, threads: int) -> list[dict[str, Any]]:
    """``job.run``, its seconds added to ``<run_dir>/job_seconds.jsonl``."""
    start = time.perf_counter()
    rows = job.run(model, tokenizer, method)
    RunFolder(job.cfg.run_dir).append_cases(JOB_SECONDS, [{"job": job.label, "threads": threads,
                                                           "seconds": round(time.perf_counter() - start, 1)}])
    return rows


def evaluate(cfg: ExperimentConfig, model, tokenizer, methods: Mapping[str, EditingMethod]
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every stream and batch of ``methods`` (unfinished jobs first in worker processes, see the module docstring);
    returns (stream rows, batch rows)."""
    if cfg.sequence is None:
        raise ValueError("This experiment has no sequence config (no stream parameters were given)")
    every = jobs(cfg, list(methods))
    todo = [job for job in every if not job.finished()]
    if len(todo) > 1 and cfg.n_workers() > 1:
        run_in_workers(cfg, _worker, todo)
        todo = []  # done there: read back here
    streams, batches = [], []
    for job in every:
        if any(job is t for t in todo):  # one process: the unfinished jobs run here
            rows = _timed(job, model, tokenizer, methods[job.name], cfg.model.num_threads or 1)
        else:
            rows = job.run(model, tokenizer, methods[job.name])
        (streams if isinstance(job, StreamJob) else batches).extend(rows)
    return streams, batches


def job_seconds(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The seconds each job of this run folder took where it ran (``job``, ``threads``, ``seconds``; a job run
    again after a kill has one row per run)."""
    return RunFolder(cfg.run_dir).read_cases(JOB_SECONDS)


