"""Instruction construction as a loop (paper Fig. 2): generate, filter, score with a trial editor, keep the best.

The paper built its task descriptions with GPT-4 proposing descriptions, a *trial editor* scoring them and the
scores going back to the generator until the metrics stopped improving. Here, for the tasks of
:attr:`~instructedit_utils.config.SearchConfig.search_tasks`:

* **round 0** scores the seen descriptions of the pool searched from (the package's hand-written one, or
  ``instructions_file``);
* **each later round**, per task: a generator (:mod:`instructedit_utils.search.generators`) proposes descriptions from a
  prompt holding the task, example training records, its slots and the descriptions scored so far; **filters**
  (:mod:`instructedit_utils.search.filters`) reject some, each with its reason; the **trial editor** (the
  trained InstructEdit editor of chapter 2) edits a fixed validation sample with each remaining candidate as its
  description, and the
  candidate's **score** is a declared weighting of Reliability, Generalization and Locality (its mean over the
  records with a 95% bootstrap CI);
* the **pool** of a task is its ``pool_size`` best-scored descriptions so far (hand-written ones included), its
  hand-written held-out descriptions kept (held out, as before: never generated against, never searched);
* the search **stops** when the pool's mean (or best) score, averaged over tasks, has not improved by ``min_delta``
  for ``search_patience`` rounds, or after ``max_rounds`` rounds.

Everything lands in ``<run>/search/``: ``round_NN.generated.json`` (prompts, replies, candidates and rejections,
written before scoring), ``round_NN.json`` (scores, pool, statistic, stop), the candidates' case files, and at the
end ``history.csv``, ``rounds.csv`` and ``pool.json`` — the chosen pool in the package's resource format, which the
trainer (``instructions_file``) and ``--descriptions`` accept. An interrupted search continues from the last finished
round (a generated but unscored round is scored from its file, not generated again).

:func:`compare_pools` then evaluates the editor with the optimised and the hand-written pool on the same test records
(optionally also an editor fine-tuned on the optimised pool, ``finetune_steps``), with paired differences.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..analysis import verdicts
from ..config.experiment import ExperimentConfig
from ..config.method import MethodConfig
from ..data.records import EditRecord
from ..data.tasks import load_task, sample
from ..evaluation.summaries import paired_difference
from .generators import build_messages, parse_candidates, EndpointGenerator, Generator, LocalGenerator
from .filters import REJECTIONS, LeakIndex, check_candidate, normalise, rejection_kind
from ..data.instructions import InstructionPool
from ..models.metrics import bootstrap_ci
from ..util.runs import RunFolder, SettingsMismatch, settings_diff
from ..experiments import settings as experiments
from ..experiments.settings import editors_dir, load_methods
from ..methods.registry import build
from ..methods.mend import MendEditor
from ..training.trainer import train_editor

SETTING = "search"  # the run folder's sub-folder of the search
COMPARE = "compare"  # ... and of the comparison on test records
SCORE = "search/score"  # the per-case score a candidate is ranked by
HAND, OPTIMISED, FINETUNED = "hand_written", "optimised", "optimised_finetuned"
CONDITION_LABELS = {HAND: "hand-written pool", OPTIMISED: "optimised pool",
                    FINETUNED: "optimised pool, fine-tuned editor"}
NOTEBOOK = "05_instruction_search"


@dataclass
class Candidate:
    """One description proposed for one task in one round, and what became of it."""

    task: str
    round: int
    index: int
    text: str
    source: str  # "hand-written" or the generator's label
    status: str = "pending"  # then "rejected" (with its reason) or "scored"
    reason: str | None = None
    score: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0

    @property
    def condition(self) -> str:
        """The name of its case file's condition."""
        return f"r{self.round:02d}_{self.task}_{self.index:02d}"


# --------------------------------------------------------------------------------------------------------------------
# Scoring with the trial editor
# --------------------------------------------------------------------------------------------------------------------


def case_score(case: Mapping[str, Any], weights: Mapping[str, float]) -> float | None:
    """The weighted mean of the case's metrics named in ``weights`` (those it has; None when it has none)."""
    have = {m: w for m, w in weights.items() if case.get(m) is not None}
    total = sum(have.values())
    return sum(w * case[m] for m, w in have.items()) / total if total > 0 else None


def scoring_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The trial editor's fixed validation sample: ``val_records`` records of each searched task's val split."""
    search = cfg.search
    return dataclasses.replace(cfg, tasks=search.search_tasks, holdout_tasks=(), split="val",
                               sample_per_task=search.val_records, fluency_max_new_tokens=0, methods=cfg.methods[:1],
                               instructions_file=None, descriptions_file=None)


def score_candidates(cfg: ExperimentConfig, method, model, tokenizer, candidates: Sequence[Candidate]) -> None:
    """Score each candidate (its fields filled in): the trial editor ``method`` edits the validation sample with the
    candidate as description; workers as ``cfg.workers`` (case files per candidate, so a kill loses little)."""
    val = scoring_config(cfg)
    jobs = [experiments.Job(val, method.name, (c.task,), c.condition, c.text) for c in candidates]
    experiments.evaluate_in_workers(SETTING, jobs, {method.name: method})
    weights = cfg.search.weights()
    for c in candidates:
        cases = experiments.evaluate_setting(val, SETTING, {method.name: method}, model, tokenizer, (c.task,),
                                             condition=c.condition, description=c.text)
        values = [case_score(case, weights) for case in cases]
        c.score, c.ci_low, c.ci_high = bootstrap_ci([v for v in values if v is not None], seed=cfg.seed)
        c.n, c.status = sum(v is not None for v in values), "scored"


def choose_pool(candidates: Sequence[Candidate], tasks: Sequence[str], size: int) -> dict[str, list[Candidate]]:
    """Per task, the ``size`` best-scored candidates (ties: the earlier one)."""
    out = {}
    for task in tasks:
        scored = [c for c in candidates if c.task == task and c.status == "scored" and c.score == c.score]
        out[task] = sorted(scored, key=lambda c: (-c.score, c.round, c.index))[:size]
    return out


def pool_statistics(pool: Mapping[str, Sequence[Candidate]]) -> dict[str, dict[str, float]]:
    """Per task: the pool's mean score and its best description's score."""
    return {t: {"mean": sum(c.score for c in cs) / len(cs), "best": cs[0].score} for t, cs in pool.items() if cs}


def stop_reason(statistics: Sequence[float], max_rounds: int, patience: int, min_delta: float) -> str | None:
    """Why the search stops after the last of ``statistics`` (one per round, round 0 first), or None."""
    best, stale = statistics[0], 0
    for value in statistics[1:]:
        if value > best + min_delta:
            best, stale = value, 0
        else:
            stale += 1
    if len(statistics) > 1 and stale >= patience:
        return f"no improvement above {min_delta:g} for {stale} round(s)"
    if len(statistics) - 1 >= max_rounds:
        return f"round limit ({max_rounds})"
    return None


# --------------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """The rounds of a finished search, every candidate, and the chosen pool (also in ``pool_path``)."""

    rounds: list[dict[str, Any]]
    candidates: list[Candidate]
    pool: InstructionPool
    pool_path: Path
    stop: str
    tasks: tuple[str, ...] = field(default=())

    def history(self) -> pd.DataFrame:
        """Every candidate of every round; ``chosen``: a scored candidate in the final pool (a rejected repeat of a
        chosen text is not)."""
        chosen = {(t, d) for t in self.tasks for d in self.pool.seen(t)}
        return pd.DataFrame([{**dataclasses.asdict(c), "chosen": c.status == "scored" and (c.task, c.text) in chosen}
                             for c in self.candidates])

    def round_table(self) -> pd.DataFrame:
        """Per round and task: candidates proposed, rejected and scored, and the pool's mean and best score."""
        rows = []
        for rec in self.rounds:
            for task in self.tasks:
                cs = [c for c in self.candidates if c.round == rec["round"] and c.task == task]
                stats = rec["pool_statistics"].get(task, {})
                rows.append({"round": rec["round"], "task": task, "proposed": len(cs),
                             "rejected": sum(c.status == "rejected" for c in cs),
                             "scored": sum(c.status == "scored" for c in cs),
                             "pool mean": stats.get("mean"), "pool best": stats.get("best"),
                             "statistic": rec["statistic"]})
        return pd.DataFrame(rows)

    def unresolved(self) -> tuple[int, int]:
        """(chosen descriptions whose 95% CI overlaps the CI of their task's best hand-written description, chosen
        descriptions): how many the validation sample cannot tell apart from the hand-written best."""
        hist = self.history()
        chosen = hist[hist["chosen"]]
        overlap = 0
        for task, part in chosen.groupby("task"):
            hand = hist[(hist["task"] == task) & (hist["round"] == 0) & (hist["status"] == "scored")]
            best = hand.loc[hand["score"].idxmax()]
            overlap += int(((part["ci_low"] <= best["ci_high"]) & (part["ci_high"] >= best["ci_low"])).sum())
        return overlap, len(chosen)

    def rejections(self) -> pd.DataFrame:
        """Rejected candidates per task and kind of reason (see :data:`REJECTIONS`)."""
        hist = self.history()
        rej = hist[hist["status"] == "rejected"]
        if rej.empty:
            return pd.DataFrame(index=pd.Index([], name="task"))
        return pd.crosstab(rej["task"], rej["reason"].map(rejection_kind)).reindex(
            columns=[k for k in dict.fromkeys(REJECTIONS.values()) if k in set(rej["reason"].map(rejection_kind))])

    def chosen(self) -> pd.DataFrame:
        """The final pool's seen descriptions with where they came from and their score (%, 95% CI)."""
        hist = self.history()
        rows = hist[hist["chosen"]].sort_values(["task", "score"], ascending=[True, False])
        return pd.DataFrame({"task": rows["task"], "round": rows["round"], "source": rows["source"],
                             "score (%)": [f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" for m, lo, hi in
                                           zip(rows["score"], rows["ci_low"], rows["ci_high"])],
                             "description": rows["text"]}).set_index(["task", "round"])


def make_generator(cfg: ExperimentConfig, model, tokenizer) -> Generator:
    """The generator :attr:`SearchConfig.generator` names: the local chat model (``generator_model``, default the
    experiment's model, which ``model``/``tokenizer`` are) or the OpenAI-compatible endpoint."""
    search = cfg.search
    if search.generator == "endpoint":
        return EndpointGenerator.from_config(search)
    name = search.generator_model or cfg.model.name
    if name != cfg.model.name:
        model, tokenizer = dataclasses.replace(cfg.model, name=name).load()
    return LocalGenerator(model, tokenizer, label=f"{name} (local)", max_new_tokens=search.gen_max_new_tokens,
                          temperature=search.temperature, top_p=search.top_p)


def generation_seed(seed: int, round_: int, task_index: int) -> int:
    """The generator's seed for one task (its index among the searched tasks) in one round."""
    return seed * 100_000 + round_ * 100 + task_index


class _Search:
    """The state of one search: its folder, the pool searched from, the filters' inputs and the candidates."""

    def __init__(self, cfg: ExperimentConfig, generator: Generator | None, method, model, tokenizer, log):
        self.cfg, self.search, self.generator, self.method = cfg, cfg.search, generator, method
        self.model, self.tokenizer, self.log = model, tokenizer, log
        self.folder = RunFolder(Path(cfg.run_dir) / SETTING)
        self.base = cfg.pool()
        for task in self.search.search_tasks:
            self.base._task(task)  # every searched task must have descriptions
        self.candidates: list[Candidate] = []
        self.rounds: list[dict[str, Any]] = []
        self._leaks: LeakIndex | None = None

    def check_settings(self) -> None:
        """A search folder holds one search: other settings are an error naming every difference."""
        settings = {"search": dataclasses.asdict(self.search), "model": self.cfg.model.name, "seed": self.cfg.seed,
                    "editor": self.method.fingerprint, "base_pool": self.base.to_dict()}
        path = self.folder.path / "search_settings.json"
        if path.is_file():
            diff = settings_diff(self.folder.read_json("search_settings"), settings)
            if diff:
                raise SettingsMismatch(f"{path} holds a search with other settings: {'; '.join(diff)}; delete "
                                       f"{self.folder.path} or use another run folder")
        self.folder.write_json("search_settings", settings)

    @property
    def leaks(self) -> LeakIndex:
        if self._leaks is None:
            self._leaks = LeakIndex([r for t in self.search.search_tasks
                                     for r in load_task(t, "test", self.cfg.data_dir)], self.search.leak_ngram)
        return self._leaks

    def hand_written(self) -> list[Candidate]:
        return [Candidate(t, 0, i, text, "hand-written") for t in self.search.search_tasks
                for i, text in enumerate(self.base.seen(t))]

    def _seen_so_far(self, task: str) -> tuple[dict[str, str], dict[str, str]]:
        known = {normalise(text): "a held-out description" for text in self.base.held_out(task)}
        near = {text: "a held-out description" for text in self.base.held_out(task)}
        for c in self.candidates:
            if c.task == task:
                where = "hand-written description" if c.round == 0 else f"a round-{c.round} candidate"
                known.setdefault(normalise(c.text), where)
                if c.status == "scored":
                    near.setdefault(c.text, where)
        return known, near

    def prompt(self, task: str, round_: int) -> tuple[list[dict[str, str]], list[EditRecord]]:
        """The chat prompt of one task in one round, and the training records it shows."""
        search = self.search
        scored = sorted((c for c in self.candidates if c.task == task and c.status == "scored"), key=lambda c: -c.score)
        shown = scored[:search.feedback] + scored[max(search.feedback, len(scored) - search.feedback):]
        examples = sample(load_task(task, "train", self.cfg.data_dir), search.example_records, self.cfg.seed + round_)
        return build_messages(task, self.base.names[task], examples, [(c.text, c.score) for c in shown],
                              n_new=3), examples

    def filter(self, task: str, round_: int, replies: Sequence[str], examples: Sequence[EditRecord]
               ) -> list[Candidate]:
        """The candidates of one task's replies, each checked by :func:`check_candidate` against everything seen
        so far (this round's candidates included)."""
        search = self.search
        known, near = self._seen_so_far(task)
        shown = LeakIndex(examples, search.leak_ngram, common=len(examples) + 1)
        out: list[Candidate] = []
        for text in (t for reply in replies for t in parse_candidates(reply)):
            c = Candidate(task, round_, len(out), text, self.generator.label)
            c.reason = check_candidate(text, task, known=known, near=near, leaks=self.leaks, examples=shown,
                                       min_words=search.min_words, max_words=search.max_words,
                                       max_similarity=search.max_similarity)
            c.status = "rejected" if c.reason else "pending"
            known.setdefault(normalise(text), f"a round-{round_} candidate")
            if not c.reason:
                near[text] = f"a round-{round_} candidate"
            out.append(c)
        return out

    def generate(self, round_: int) -> dict[str, Any]:
        """Prompts, replies and the filtered candidates of one round, for every task."""
        if self.generator is None:
            raise ValueError("The search needs a generator for round 1 and later")
        out: dict[str, Any] = {"prompts": {}, "replies": {}, "candidates": []}
        for t_index, task in enumerate(self.search.search_tasks):
            messages, examples = self.prompt(task, round_)
            replies = self.generator.generate(messages, self.search.samples_per_round,
                                              generation_seed(self.cfg.seed, round_, t_index))
            out["candidates"] += self.filter(task, round_, replies, examples)
            out["prompts"][task], out["replies"][task] = messages, replies
        return out

    def run_round(self, round_: int) -> dict[str, Any]:
        """One round, resumed from its files where they exist."""
        done = self.folder.path / f"round_{round_:02d}.json"
        if done.is_file():
            return self.folder.read_json(done.stem)
        generated = self.folder.path / f"round_{round_:02d}.generated.json"
        if round_ == 0:
            rec = {"prompts": {}, "replies": {}, "candidates": self.hand_written()}
        elif generated.is_file():
            rec = self.folder.read_json(generated.stem)
            rec["candidates"] = [Candidate(**c) for c in rec["candidates"]]
        else:
            rec = self.generate(round_)
            self.folder.write_json(generated.stem, {**rec, "candidates": [dataclasses.asdict(c)
                                                                         for c in rec["candidates"]]})
        new = rec["candidates"]
        pending = [c for c in new if c.status == "pending"]
        self.log(f"[search] round {round_}: {len(new)} candidates, {len(new) - len(pending)} rejected, scoring "
                 f"{len(pending)}")
        score_candidates(self.cfg, self.method, self.model, self.tokenizer, pending)
        pool = choose_pool(self.candidates + new, self.search.search_tasks, self.search.pool_size)
        stats = pool_statistics(pool)
        statistic = sum(s[self.search.stop_on] for s in stats.values()) / max(1, len(stats))
        previous = [r["statistic"] for r in self.rounds]
        stop = stop_reason(previous + [statistic], self.search.max_rounds, self.search.search_patience,
                           self.search.min_delta)
        out = {"round": round_, "generator": "hand-written" if round_ == 0 else self.generator.label,
               "prompts": rec["prompts"], "replies": rec["replies"],
               "candidates": [dataclasses.asdict(c) for c in new],
               "pool": {t: [c.text for c in cs] for t, cs in pool.items()}, "pool_statistics": stats,
               "statistic": statistic, "stop": stop}
        self.folder.write_json(done.stem, out)
        return out

    def chosen_pool(self, last: dict[str, Any]) -> InstructionPool:
        pool = self.base
        for task, texts in last["pool"].items():
            pool = pool.replace_seen(task, texts)
        return pool


def run_search(cfg: ExperimentConfig, model, tokenizer, generator: Generator | None = None, method=None,
               log: Callable[[str], None] | None = print) -> SearchResult:
    """Run (or resume, or read back a finished) search; see the module docstring. ``method``: the trial editor
    (default: the trained editor ``cfg.methods[0]`` of chapter 2); ``generator``: default :func:`make_generator`."""
    if cfg.search is None:
        raise ValueError("This experiment has no search config (no search parameters were given)")
    method = method or load_methods(cfg, model, tokenizer, cfg.methods[:1])[cfg.methods[0]]
    if not method.use_instructions:
        raise ValueError(f"The trial editor {method.name} was trained without instructions; descriptions do not "
                         "reach it")
    state = _Search(cfg, generator, method, model, tokenizer, log or (lambda msg: None))
    state.check_settings()
    round_ = 0
    while True:
        if round_ > 0 and state.generator is None:
            state.generator = make_generator(cfg, model, tokenizer)
        rec = state.run_round(round_)
        state.candidates += [Candidate(**c) for c in rec["candidates"]]
        state.rounds.append(rec)
        if rec["stop"]:
            break
        round_ += 1
    pool = state.chosen_pool(state.rounds[-1])
    path = pool.write(Path(cfg.run_dir) / "pool.json", comment=(
        f"Chosen by the instruction search (instructedit_utils.search.loop) after {len(state.rounds) - 1} "
        f"generation round(s): {state.rounds[-1]['stop']}. Each task's held_out descriptions are never trained on."))
    result = SearchResult(state.rounds, state.candidates, pool, path, state.rounds[-1]["stop"],
                          cfg.search.search_tasks)
    state.folder.write_table("history", result.history())
    state.folder.write_table("rounds", result.round_table())
    return result


# --------------------------------------------------------------------------------------------------------------------
# Fine-tuning on the chosen pool, and the comparison on test records
# --------------------------------------------------------------------------------------------------------------------


def finetune(cfg: ExperimentConfig, model, tokenizer, result: SearchResult, log=print):
    """With ``finetune_steps`` > 0: the trial editor trained that many more steps on the chosen pool (its own
    hyperparameters otherwise), into ``<run>/editors/<name>-searched``; else None."""
    steps = cfg.search.finetune_steps
    if not steps:
        return None
    trial = editors_dir(cfg) / cfg.methods[0]
    saved: MethodConfig = MendEditor.load(trial).config
    config = dataclasses.replace(saved, name=f"{saved.name}-searched", steps=steps, val_every=min(saved.val_every,
                                 steps), keep_best_at=(), instructions_file=str(result.pool_path),
                                 init_editor=str(trial))
    trained = train_editor(model, tokenizer, config, Path(cfg.run_dir) / "editors" / config.name,
                           edit_layers=cfg.model.edit_layers, data_dir=cfg.data_dir, progress=False, log=log)
    return build("mend", model, tokenizer, editor=trained.editor, name=config.name)


def compare_pools(cfg: ExperimentConfig, model, tokenizer, result: SearchResult, method=None, finetuned=None
                  ) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """The editor with the hand-written and with the optimised pool (and the fine-tuned editor with the optimised
    pool) on the same ``sample_per_task`` test records of each searched task, a seeded seen description per record.
    Returns (cases with :data:`SCORE`, paired differences of every condition minus the hand-written pool, per task
    and over all tasks)."""
    name = cfg.methods[0]
    method = method or experiments.load_methods(cfg, model, tokenizer, [name])[name]
    base = dataclasses.replace(cfg, tasks=cfg.search.search_tasks, holdout_tasks=(), methods=(name,),
                               descriptions_file=None)
    runs = [(HAND, base, name, method), (OPTIMISED, dataclasses.replace(base, instructions_file=str(result.pool_path)),
                                         name, method)]
    if finetuned is not None:
        ft_cfg = dataclasses.replace(base, instructions_file=str(result.pool_path), methods=(finetuned.name,),
                                     editors_dir=str(Path(cfg.run_dir) / "editors"))
        runs.append((FINETUNED, ft_cfg, finetuned.name, finetuned))
    methods = {n: m for _, _, n, m in runs}
    experiments.evaluate_in_workers(COMPARE, [experiments.Job(c, n, c.tasks, cond) for cond, c, n, _ in runs],
                                    methods)
    cases = []
    for cond, c, n, m in runs:
        cases += experiments.evaluate_setting(c, COMPARE, {n: m}, model, tokenizer, c.tasks, condition=cond)
    weights = cfg.search.weights()
    cases = [{**case, SCORE: case_score(case, weights), "scope": "all tasks"} for case in cases]
    rows = []
    for cond, *_ in runs[1:]:
        for metric in (SCORE, "edit/acc", "gen/acc", "loc/acc"):
            for by in (("task",), ("scope",)):
                d = paired_difference(cases, metric, "condition", HAND, cond, by=by, seed=cfg.seed)
                rows.append(d.rename(columns={by[0]: "task"}))
    diffs = pd.concat([r for r in rows if len(r)], ignore_index=True)
    RunFolder(Path(cfg.run_dir) / COMPARE).write_table("differences", diffs)
    return cases, diffs


def verdict(diffs: pd.DataFrame, condition: str = OPTIMISED) -> tuple[str, pd.Series]:
    """Whether ``condition`` beat the hand-written pool, by :func:`~instructedit_utils.analysis.verdicts.side` of the paired
    score difference over all tasks: "helped", "hurt", or not resolved (the interval contains 0, or too few
    records)."""
    row = diffs[(diffs["b"] == condition) & (diffs["metric"] == SCORE) & (diffs["task"] == "all tasks")].iloc[0]
    return verdicts.side(row, above="helped", below="hurt"), row


def summary_markdown(cfg: ExperimentConfig, result: SearchResult, diffs: pd.DataFrame, finetuned: bool = False,
                     where: str = "") -> str:
    """The chapter's summary, every verdict computed from the numbers: the rounds and the stopping reason, the
    candidates and rejections, how many chosen descriptions the validation sample cannot separate from the best
    hand-written one, and the test-record comparison (``finetuned``: also the fine-tuned editor's)."""
    hist = result.history()
    stats = [r["statistic"] for r in result.rounds]
    generated = hist[hist["round"] > 0]
    overlap, chosen = result.unresolved()
    word, row = verdict(diffs)
    lines = [
        f"* The search ran {len(result.rounds) - 1} generation round(s) after scoring the hand-written pool and "
        f"stopped on *{result.stop}*. The pools' mean score went from {100 * stats[0]:.1f}% to {100 * stats[-1]:.1f}% "
        "on the validation records.",
        f"* The generator ({result.rounds[-1]['generator']}) proposed {len(generated)} candidates. The filters "
        f"rejected {int((generated['status'] == 'rejected').sum())} of them, and "
        f"{int(generated['chosen'].sum())} of the scored ones entered the final pool of {chosen} descriptions.",
        f"* {overlap} of the {chosen} chosen descriptions have a 95% interval that overlaps the interval of their "
        f"task's best hand-written description. With {cfg.search.val_records} validation records per task, the "
        "score cannot tell those apart, so the choice among them rests on differences within the noise.",
        f"* On {int(row['n'])} test records, the optimised pool minus the hand-written pool gives a search-score "
        f"difference of {100 * row['diff']:+.1f} points [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]: "
        f"**{word}**.",
    ]
    if finetuned:
        ft_word, ft_row = verdict(diffs, FINETUNED)
        lines.append(f"* With the editor fine-tuned on the optimised pool for {cfg.search.finetune_steps} steps: "
                     f"{100 * ft_row['diff']:+.1f} points [{100 * ft_row['ci_low']:+.1f}, "
                     f"{100 * ft_row['ci_high']:+.1f}], **{ft_word}**.")
    if where:
        lines.append(f"* The history (`search/round_NN.json`, `search/history.csv`), the chosen pool (`pool.json`) "
                     f"and the comparison (`compare/`) are in `{where}`.")
    return "\n".join(lines)
