"""Several editors at once: the unfinished ones train side by side, each in its own spawned process with a share
of the threads (:func:`train_editors`, never oversubscribed: :func:`worker_threads`), then all are loaded; and what a
trained editor is used for (:func:`evaluate_editor` through the harness, :func:`live_edits`)."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config.experiment import ModelConfig
from ..config.method import MethodConfig
from ..data.instructions import EditRequest, load_pool, make_edit_request
from ..data.records import EditRecord
from ..data.tasks import load_task
from ..evaluation.harness import evaluate_method
from ..methods.mend import MendEditor, TrainedEditor
from ..models.deltas import applied
from ..models.metrics import generate
from ..util.runtime import setup_torch
from .plan import training_configs
from .step import example_tokens, first_examples
from .trainer import TrainResult, _extendable, is_trained, train_editor
import pandas as pd

#: the folder of a training run folder where its editors' lower states are kept and shared (models.states)
STATES_DIR = "lower_states"


def worker_threads(total: int | None, workers: int) -> int:
    """Torch threads per worker so that ``workers × threads`` never exceeds ``total`` (``None``: the machine's
    cores): oversubscribed cores make every step several times slower (measured: 6× with one extra process)."""
    total = total or os.cpu_count() or 1
    return max(1, total // max(1, workers))


def train_editors(cfg, model, tokenizer, configs: dict[str, MethodConfig] | None = None, *,
                  workers: int | None = None, directory: str | os.PathLike | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = print) -> dict[str, TrainResult]:
    """Train (or load) the editors ``configs`` (default: :func:`~instructedit_utils.training.plan.training_configs`) into ``<directory>/<name>``
    (default ``directory``: ``cfg.run_dir``).

    With ``workers`` (default ``cfg.n_workers()``) above 1, the editors not finished yet train at the same time,
    each in its own process (spawned, loading ``cfg.model`` itself) with :func:`worker_threads` threads, so workers
    × threads never exceeds ``cfg.model.num_threads``; then every editor is loaded here. Each run is the same as
    alone (its randomness depends only on its config and step), so a result does not depend on ``workers``. The
    runs share the lower states of the sequences they draw in ``<directory>/lower_states``
    (:class:`~instructedit_utils.models.states.LowerStates`). A worker
    that fails raises here; the others' finished or checkpointed runs stay (rerun to resume)."""
    configs = configs if configs is not None else training_configs(cfg)
    workers = cfg.n_workers() if workers is None else workers
    run_dir = Path(directory if directory is not None else cfg.run_dir)
    pending = [n for n, c in configs.items() if not is_trained(run_dir / n) or _extendable(run_dir / n, c)]
    if workers > 1 and len(pending) > 1 and cfg.model.device == "cpu":
        # longest first: no core idles at the end while one long run finishes alone
        pending = longest_first({n: configs[n] for n in pending}, tokenizer, cfg.data_dir)
        n = min(workers, len(pending))
        threads = worker_threads(cfg.model.num_threads, n)
        (log or (lambda msg: None))(f"training {', '.join(pending)} in {n} processes x {threads} thread(s)")
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(_train_worker, dataclasses.asdict(cfg.model), configs[name].to_dict(),
                                str(run_dir / name), cfg.data_dir, threads, str(run_dir / STATES_DIR))
                    for name in pending]
            for job in jobs:
                job.result()
    return {name: train_editor(model, tokenizer, config, run_dir / name, edit_layers=cfg.model.edit_layers,
                               data_dir=cfg.data_dir, progress=progress, log=log, states_dir=run_dir / STATES_DIR)
            for name, config in configs.items()}


def estimated_cost(config: MethodConfig, tokenizer, data_dir=None, draws: int = 16) -> float:
    """A training run's cost in relative units, to order runs: its steps times the mean tokens of its first
    ``draws`` training examples (the trainer's own draws; a ConvSent example, with its likely and unlikely responses,
    has about three times the tokens of a CounterFact one), plus one step's worth per validation round."""
    records = {t: load_task(t, "train", data_dir) for t in config.tasks}
    examples = first_examples(config, tokenizer, records, load_pool(config.instructions_file), min(draws, config.steps))
    tokens = [example_tokens(ex) for ex in examples]
    return (config.steps + config.steps // config.val_every + 1) * sum(tokens) / max(len(tokens), 1)


def longest_first(configs: dict[str, MethodConfig], tokenizer, data_dir=None) -> list[str]:
    """The names of ``configs`` by :func:`estimated_cost`, the most expensive first (ties in the given order):
    list scheduling of a pool of workers ends sooner that way (measured by ``benchmarks/bench_levers.py
    --levers schedule``)."""
    cost = {name: estimated_cost(c, tokenizer, data_dir) for name, c in configs.items()}
    return sorted(configs, key=lambda name: -cost[name])


def _train_worker(model: dict[str, Any], config: dict[str, Any], directory: str, data_dir, threads: int,
                  states_dir: str) -> dict:
    """One editor's training in a worker process (see :func:`train_editors`)."""
    setup_torch(threads, config["seed"])
    base, tokenizer = ModelConfig(**model).load()
    result = train_editor(base, tokenizer, MethodConfig.from_dict(config), directory,
                          edit_layers=model["edit_layers"], data_dir=data_dir, progress=False, log=None,
                          states_dir=states_dir)
    return result.summary


# --------------------------------------------------------------------------------------------------------------------
# Using trained editors
# --------------------------------------------------------------------------------------------------------------------


def evaluate_editor(editor: MendEditor, model, tokenizer, requests: Sequence[EditRequest], *, method: str,
                    run=None, chunk: int = 16, **score_kwargs) -> list[dict[str, Any]]:
    """Edit-and-score every request alone with a trained editor: the harness of
    :func:`~instructedit_utils.evaluation.evaluate_method` (``cases_<method>.jsonl`` in ``run``, resumable, each case
    with the unedited model's values as ``base/<metric>``)."""
    return evaluate_method(TrainedEditor(editor, model, method), model, tokenizer, requests, run=run,
                           name=f"cases_{method}", chunk=chunk, **score_kwargs)


def live_edits(model, tokenizer, editors: dict[str, MendEditor], records: Sequence[EditRecord],
               max_new_tokens: int = 8, description: int = 0):
    """Greedy continuations before and after one edit per (record, editor), on the edit prompt and a rephrase."""

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
