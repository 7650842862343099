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
``<run_dir>/batches/batches_<method>_s<seed>_k<k>.jsonl`` (rows with their settings; resumable by stream and by
group). Jobs with unfinished files run side by side in ``cfg.workers`` processes, the slowest first; the notebook and
``instructedit-eval sequential`` then read them back.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config.experiment import ExperimentConfig
from ..data.instructions import EditRequest
from ..data.records import EditRecord
from ..data.tasks import load_task, sample, task_spec
from ..evaluation.harness import UneditedScores
from ..evaluation.requests import task_requests
from ..evaluation.streams import UneditedSubset, evaluate_batches, evaluate_stream, stream_finished
from ..methods.registry import CONFIGS, EditingMethod
from ..util.runs import RunFolder
from .settings import run_in_workers, worker_method

STREAMS_DIR, BATCHES_DIR = "streams", "batches"
#: the methods that optimise each edit, the slowest first (``benchmarks/bench_levers.py --levers baselines``: CaliNet's
#: 25 steps cost about 1.4 s an edit on SmolLM2, GRACE's about 1 s, FT-L's about 0.4 s)
SLOWEST = ("calinet", "grace", "ft-l")


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
    """One method's streams of one length on one setting's records of one seed."""

    cfg: ExperimentConfig
    name: str
    setting: str
    seed: int
    length: int

    def file(self, index: int) -> str:
        return f"stream_{self.name}_{self.setting}_s{self.seed}_T{self.length}_{index}"

    @property
    def streams(self) -> int:
        return self.cfg.sequence.covered(self.length) // self.length

    @property
    def longest(self) -> bool:
        return self.length == self.cfg.sequence.records

    def finished(self) -> bool:
        folder = RunFolder(Path(self.cfg.run_dir) / STREAMS_DIR)
        return all(stream_finished(folder, self.file(i)) for i in range(self.streams))

    def run(self, model, tokenizer, method: EditingMethod) -> list[dict[str, Any]]:
        """Every stream of this job (finished ones read back); rows with ``setting``, ``seed``, ``stream/length`` and
        ``stream/index``."""
        cfg = self.cfg
        folder = RunFolder(Path(cfg.run_dir) / STREAMS_DIR)
        requests = stream_requests(cfg, method, self.setting, self.seed)
        kwargs = cfg.score_kwargs()
        states: dict = {}  # the lower states of every prompt, for all streams of this method (edits never touch them)
        base = UneditedSubset.of(UneditedScores(folder.path / "unedited", model, kwargs), requests, model, tokenizer,
                                 method, kwargs, lower_states=states)
        settings = {**cfg.case_settings(stream_tasks(cfg, self.setting), instructions=method.use_instructions),
                    "stream/setting": self.setting, "stream/seed": self.seed}
        probes = probe_texts(cfg) if self.longest else None
        rows = []
        for i in range(self.streams):
            part = requests[i * self.length:(i + 1) * self.length]
            points = cfg.sequence.stream_points if self.longest else ()
            out = evaluate_stream(method, model, tokenizer, part, points=points, probes=probes, run=folder,
                                  name=self.file(i), settings=settings, unedited=base, lower_states=states,
                                  **kwargs)
            rows += [{**r, "setting": self.setting, "seed": self.seed, "stream/length": self.length,
                      "stream/index": i} for r in out]
        return rows


@dataclass(frozen=True)
class BatchJob:
    """One hypernetwork editor's batch edits of every size on the training records of one seed."""

    cfg: ExperimentConfig
    name: str
    seed: int

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
        requests = stream_requests(cfg, method, "training", self.seed)[:max(seq.batch_sizes)]
        settings = {**cfg.case_settings(cfg.tasks, instructions=method.use_instructions), "stream/seed": self.seed}
        rows = evaluate_batches(method, model, tokenizer, requests, seq.batch_sizes,
                                run=RunFolder(Path(cfg.run_dir) / BATCHES_DIR), name=self.file, settings=settings,
                                **cfg.score_kwargs())
        return [{**r, "setting": "training", "seed": self.seed} for r in rows]


def jobs(cfg: ExperimentConfig, names: Sequence[str]) -> list[StreamJob | BatchJob]:
    """Every stream and batch job of ``names`` (``base`` left out: it makes no edit), the slowest first: the
    methods that optimise each edit (:data:`SLOWEST`), then the hypernetwork editors, batches last."""
    seq = cfg.sequence
    slow = sorted((n for n in names if n in CONFIGS and n != "base"),
                  key=lambda n: SLOWEST.index(n) if n in SLOWEST else len(SLOWEST))
    fast = [n for n in names if n not in CONFIGS and n != "base"]
    out: list[StreamJob | BatchJob] = [StreamJob(cfg, name, setting, seed, length)
                                       for name in slow + fast for setting in seq.stream_settings
                                       if seq.streams_of(name, setting)
                                       for seed in seq.stream_seeds for length in reversed(seq.stream_lengths)]
    out += [BatchJob(cfg, name, seed) for name in seq.batch_methods if name in names for seed in seq.stream_seeds]
    return out


def _worker(job: StreamJob | BatchJob, threads: int) -> None:
    model, tokenizer, method = worker_method(job.cfg, job.name, threads)
    job.run(model, tokenizer, method)


def evaluate(cfg: ExperimentConfig, model, tokenizer, methods: Mapping[str, EditingMethod]
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every stream and batch of ``methods`` (unfinished jobs first in worker processes, see the module docstring);
    returns (stream rows, batch rows)."""
    if cfg.sequence is None:
        raise ValueError("This experiment has no sequence config (no stream parameters were given)")
    todo = [job for job in jobs(cfg, list(methods)) if not job.finished()]
    if len(todo) > 1 and cfg.n_workers() > 1:
        run_in_workers(cfg, _worker, todo)
    streams, batches = [], []
    for job in jobs(cfg, list(methods)):
        rows = job.run(model, tokenizer, methods[job.name])
        (streams if isinstance(job, StreamJob) else batches).extend(rows)
    return streams, batches


