"""Task data: one typed record schema for the four InstructEdit tasks, loaders and deterministic splits.

Sources (see ``shared/data/PROVENANCE.md``) and how each split is made (fixed seed :data:`SPLIT_SEED`):

============  ===================================================  ===========================================
task          file(s)                                              splits
============  ===================================================  ===========================================
counterfact   KnowEdit ``train_cf.json`` (1,428);                  train 1,328 / val 100 from the train file;
              derived ``test_cf`` JSONL with 10 paraphrases (885)  test = the 885-record file
recent        KnowEdit ``recent_train.json`` (570; no test file)   train 420 / val 50 / test 100 of the train file
convsent      KnowEdit ConvSent ``blender_val`` (799), ``_test``   train 699 / val 100 from val; test = test (800)
zsre          ``zsre_mend_eval_portability_gpt4.json`` (1,037)     all 1,037 (hold-out); single-task editor only:
                                                                   train 737 / val 100 / test 200
============  ===================================================  ===========================================

Split members are drawn from one seeded permutation of each file and kept in file order. ZsRE is never part of a
multi-task training mixture.

Declared fallbacks and clean-ups (counted in :attr:`Split.report`, never silent):

* KnowEdit answers come as a string, a list of strings or a list of alias lists; all are flattened to a tuple of
  acceptable answers (the first one is the primary answer). Locality/portability items whose answers are all empty
  are dropped and counted (``dropped_items``).
* CounterFact test paraphrases are LLM output: numbering ("3. ") is stripped, and empty lines, notes in brackets
  and lines with ``[``/``]`` placeholders are dropped (``dropped_rephrases``).
* WikiData Recent / CounterFact records with no locality prompt at all borrow the Relation_Specificity prompts of the next record
  in file order that has some (kind ``Borrowed_Relation_Specificity``; ``borrowed_locality``).
* ConvSent records hold a topic and positive/negative responses. We make the edit request "What do you think of
  {topic}?" whose target sentiment alternates with the record's index in its file (even: positive, odd: negative),
  the target being the first response of that sentiment; two fixed question templates serve as rephrases; the
  locality probe asks about the next record's topic. :func:`convsent_both_sentiments` gives both directions.

Malformed records (missing fields, empty targets, wrong types) raise :class:`RecordError` naming file and index.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .paths import data_dir

SPLIT_SEED = 20240201
TASKS = ("counterfact", "recent", "convsent", "zsre")
TRAIN_TASKS = ("counterfact", "recent", "convsent")
SENTIMENTS = ("positive", "negative")


class RecordError(ValueError):
    """A malformed record; the message names the file and the record index."""


@dataclass(frozen=True)
class Probe:
    """A prompt and its acceptable answers (first = primary), e.g. one locality or portability question."""

    prompt: str
    answers: tuple[str, ...]
    kind: str = ""


@dataclass(frozen=True)
class EditRecord:
    """One edit of any task. ConvSent records also carry topic, target sentiment and responses."""

    task: str
    split: str
    source: str  # file name (relative to the data folder)
    index: int  # index of the record in that file
    subject: str
    prompt: str
    target_new: str
    ground_truth: tuple[str, ...] = ()
    rephrases: tuple[str, ...] = ()
    locality: tuple[Probe, ...] = ()
    portability: tuple[Probe, ...] = ()
    topic: str | None = None
    target_sentiment: str | None = None
    positive_responses: tuple[str, ...] = ()
    negative_responses: tuple[str, ...] = ()

    @property
    def record_id(self) -> str:
        suffix = f"/{self.target_sentiment}" if self.target_sentiment else ""
        return f"{self.task}/{Path(self.source).stem}/{self.index}{suffix}"

    @property
    def target_responses(self) -> tuple[str, ...]:
        return self.positive_responses if self.target_sentiment == "positive" else self.negative_responses

    @property
    def opposite_responses(self) -> tuple[str, ...]:
        return self.negative_responses if self.target_sentiment == "positive" else self.positive_responses


# --------------------------------------------------------------------------------------------------------------------
# Field parsing helpers
# --------------------------------------------------------------------------------------------------------------------


class _Ctx:
    """Where a record came from, for error messages, plus the clean-up counters."""

    def __init__(self, source: str, index: int, counters: Counter):
        self.source, self.index, self.counters = source, index, counters

    def error(self, msg: str) -> RecordError:
        return RecordError(f"{self.source} record {self.index}: {msg}")

    def text(self, raw: dict, key: str, *, required: bool = True) -> str:
        if key not in raw:
            if required:
                raise self.error(f"missing field {key!r}")
            return ""
        value = raw[key]
        if not isinstance(value, str):
            raise self.error(f"field {key!r} must be a string, got {type(value).__name__}")
        if required and not value.strip():
            raise self.error(f"field {key!r} is empty")
        return value.strip()

    def answers(self, value: Any, where: str) -> tuple[str, ...]:
        """Flatten a string / list of strings / list of alias lists into a tuple of non-empty answers."""
        out: list[str] = []

        def walk(v: Any) -> None:
            if isinstance(v, str):
                if v.strip():
                    out.append(v.strip())
            elif isinstance(v, list):
                for item in v:
                    walk(item)
            else:
                raise self.error(f"{where}: answers must be strings or lists, got {type(v).__name__}")

        walk(value)
        return tuple(dict.fromkeys(out))

    def probes(self, raw: dict, key: str) -> tuple[Probe, ...]:
        """Parse a KnowEdit ``locality``/``portability`` dict ``{kind: [{prompt, ground_truth}, ...]}``."""
        section = raw.get(key)
        if section is None:
            return ()
        if not isinstance(section, dict):
            raise self.error(f"field {key!r} must be a dict, got {type(section).__name__}")
        probes = []
        for kind, items in section.items():
            if not isinstance(items, list):
                raise self.error(f"{key}.{kind} must be a list, got {type(items).__name__}")
            for j, item in enumerate(items):
                where = f"{key}.{kind}[{j}]"
                if not isinstance(item, dict) or "prompt" not in item or "ground_truth" not in item:
                    raise self.error(f"{where} needs 'prompt' and 'ground_truth'")
                if not isinstance(item["prompt"], str) or not item["prompt"].strip():
                    raise self.error(f"{where}.prompt must be a non-empty string")
                answers = self.answers(item["ground_truth"], where)
                if not answers:
                    self.counters["dropped_items"] += 1
                    continue
                probes.append(Probe(item["prompt"].strip(), answers, kind))
        return tuple(probes)


_NUMBERING = re.compile(r"^\s*\d+\s*[.)]\s*")


def clean_paraphrases(lines: Sequence[str], ctx: _Ctx) -> tuple[str, ...]:
    """Strip numbering from LLM paraphrases; drop empty lines, bracketed notes and ``[``/``]`` placeholders."""
    if not isinstance(lines, list) or not all(isinstance(s, str) for s in lines):
        raise ctx.error("field 'generate_prompt' must be a list of strings")
    kept = []
    for line in lines:
        text = _NUMBERING.sub("", line).strip()
        if not text or text.startswith("(") or "[" in text or "]" in text:
            ctx.counters["dropped_rephrases"] += 1
            continue
        kept.append(text)
    return tuple(dict.fromkeys(kept))


# --------------------------------------------------------------------------------------------------------------------
# Per-task parsers: raw dict -> EditRecord fields
# --------------------------------------------------------------------------------------------------------------------


def _parse_knowedit(raw: dict, ctx: _Ctx) -> dict:
    """WikiData CounterFact / Recent (KnowEdit layout)."""
    fields = dict(
        subject=ctx.text(raw, "subject"),
        prompt=ctx.text(raw, "prompt"),
        target_new=ctx.text(raw, "target_new"),
        ground_truth=ctx.answers(raw.get("ground_truth") or [], "ground_truth"),
        locality=ctx.probes(raw, "locality"),
        portability=ctx.probes(raw, "portability"),
    )
    if "rephrase" in raw:
        fields["rephrases"] = ctx.answers(raw["rephrase"], "rephrase")
    if "generate_prompt" in raw:
        fields["rephrases"] = clean_paraphrases(raw["generate_prompt"], ctx)
    return fields


def _parse_zsre(raw: dict, ctx: _Ctx) -> dict:
    """ZsRE (MEND eval file with GPT-4 one-hop portability questions)."""
    port = raw.get("portability")
    if not isinstance(port, dict):
        raise ctx.error("field 'portability' must be a dict")
    portability = ()
    if port.get("New Question"):
        answers = ctx.answers(port.get("New Answer", ""), "portability.New Answer")
        if answers:
            portability = (Probe(str(port["New Question"]).strip(), answers, "One_Hop"),)
        else:
            ctx.counters["dropped_items"] += 1
    return dict(
        subject=ctx.text(raw, "subject"),
        prompt=ctx.text(raw, "src"),
        target_new=ctx.text(raw, "alt"),
        ground_truth=ctx.answers(raw.get("answers", []), "answers"),
        rephrases=(ctx.text(raw, "rephrase"),),
        locality=(Probe(ctx.text(raw, "loc"), (ctx.text(raw, "loc_ans"),), "NQ"),),
        portability=portability,
    )


CONVSENT_PROMPT = "What do you think of {topic}?"
CONVSENT_REPHRASES = ("What is your opinion of {topic}?", "How do you feel about {topic}?")


def _parse_convsent(raw: dict, ctx: _Ctx) -> dict:
    topic = ctx.text(raw, "ent")
    responses = {}
    for key in ("pos", "neg"):
        value = raw.get(key)
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ctx.error(f"field {key!r} must be a list of strings")
        responses[key] = tuple(s.strip() for s in value if s.strip())
        if not responses[key]:
            raise ctx.error(f"field {key!r} has no non-empty response")
    sentiment = SENTIMENTS[ctx.index % 2]
    return dict(
        subject=topic,
        topic=topic,
        prompt=CONVSENT_PROMPT.format(topic=topic),
        rephrases=tuple(t.format(topic=topic) for t in CONVSENT_REPHRASES),
        positive_responses=responses["pos"],
        negative_responses=responses["neg"],
        target_sentiment=sentiment,
        target_new=(responses["pos"] if sentiment == "positive" else responses["neg"])[0],
    )


# --------------------------------------------------------------------------------------------------------------------
# Task specifications (data)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSpec:
    """Members of a split: positions ``[start:stop]`` of a seeded permutation of file ``role``."""

    role: str
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    display: str
    files: dict[str, str]
    splits: dict[str, SplitSpec]
    parser: Callable[[dict, _Ctx], dict]
    notes: str = ""


TASK_SPECS: dict[str, TaskSpec] = {
    "counterfact": TaskSpec(
        "counterfact", "CounterFact",
        {"train": "wiki_counterfact/benchmark_wiki_counterfact_train_cf.json",
         "test": "wiki_counterfact/DERIVED_wiki_counterfact_test_cf-generate-10.jsonl"},
        {"train": SplitSpec("train", 100), "val": SplitSpec("train", 0, 100), "test": SplitSpec("test")},
        _parse_knowedit,
        "test = derived test_cf with LLM paraphrases as rephrases",
    ),
    "recent": TaskSpec(
        "recent", "Recent",
        {"train": "wiki_recent/recent_train.json"},
        {"train": SplitSpec("train", 150), "val": SplitSpec("train", 100, 150), "test": SplitSpec("train", 0, 100)},
        _parse_knowedit,
        "no test file here: train/val/test are drawn from recent_train.json",
    ),
    "convsent": TaskSpec(
        "convsent", "ConvSent",
        {"val": "convsent/benchmark_Convsent_blender_val.json", "test": "convsent/benchmark_Convsent_blender_test.json"},
        {"train": SplitSpec("val", 100), "val": SplitSpec("val", 0, 100), "test": SplitSpec("test")},
        _parse_convsent,
        "blender_train is not available: train/val are drawn from blender_val",
    ),
    "zsre": TaskSpec(
        "zsre", "ZsRE",
        {"eval": "zsre/zsre_mend_eval_portability_gpt4.json"},
        {"all": SplitSpec("eval"), "test": SplitSpec("eval", 0, 200), "val": SplitSpec("eval", 200, 300),
         "train": SplitSpec("eval", 300)},
        _parse_zsre,
        "hold-out task: never in multi-task training; train/val only for the single-task ZsRE editor",
    ),
}


def task_spec(task: str) -> TaskSpec:
    try:
        return TASK_SPECS[task]
    except KeyError:
        raise KeyError(f"Unknown task {task!r}; known: {list(TASK_SPECS)}") from None


@functools.lru_cache(maxsize=16)
def _read_raw(path: str) -> tuple:
    """Parse a JSON array or JSON Lines file into a tuple of dicts (cached)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Task file {p} not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise RecordError(f"{p.name} line {lineno + 1}: invalid JSON ({exc})") from None
    else:
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise RecordError(f"{p.name}: expected a JSON array of records, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RecordError(f"{p.name} record {i}: expected an object, got {type(row).__name__}")
    return tuple(rows)


def split_indices(n: int, spec: SplitSpec, seed: int = SPLIT_SEED) -> list[int]:
    """File indices of a split: a slice of one seeded permutation of ``range(n)``, returned in file order."""
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    return sorted(perm[spec.start:spec.stop])


@dataclass
class Split:
    """Records of one task split with a report of what the loader cleaned up."""

    task: str
    name: str
    records: list[EditRecord]
    report: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]


def parse_records(task: str, rows: Sequence[dict], source: str, split: str = "file",
                  indices: Iterable[int] | None = None) -> Split:
    """Parse raw KnowEdit-style rows of ``task`` into records (public so tests can feed hand-made rows)."""
    spec = task_spec(task)
    per_record: dict[int, Counter] = defaultdict(Counter)
    parsed: dict[int, EditRecord] = {}
    wanted = list(range(len(rows))) if indices is None else list(indices)
    # Locality fallbacks borrow from neighbouring records, so the whole file is parsed (and validated).
    for i, raw in enumerate(rows):
        ctx = _Ctx(source, i, per_record[i])
        parsed[i] = EditRecord(task=task, split=split, source=source, index=i, **spec.parser(raw, ctx))
    if task in ("recent", "counterfact"):
        _borrow_locality(parsed, per_record)
    if task == "convsent":
        _convsent_locality(parsed)
    records = [parsed[i] for i in wanted]
    report = {"records": len(records)}
    for key in ("dropped_items", "dropped_rephrases", "borrowed_locality"):
        report[key] = sum(per_record[i][key] for i in wanted)
    return Split(task, split, records, report)


def _borrow_locality(parsed: dict[int, EditRecord], per_record: dict[int, Counter]) -> None:
    n = len(parsed)
    for i in range(n):
        if parsed[i].locality:
            continue
        for step in range(1, n):
            donor = parsed[(i + step) % n]
            probes = tuple(Probe(p.prompt, p.answers, "Borrowed_Relation_Specificity")
                           for p in donor.locality if p.kind == "Relation_Specificity")
            if probes:
                parsed[i] = dataclasses.replace(parsed[i], locality=probes)
                per_record[i]["borrowed_locality"] += 1
                break
        else:
            raise RecordError(f"{parsed[i].source} record {i}: no locality prompt and no record to borrow one from")


def _convsent_locality(parsed: dict[int, EditRecord]) -> None:
    n = len(parsed)
    for i in range(n):
        other = parsed[(i + 1) % n]
        probe = Probe(CONVSENT_PROMPT.format(topic=other.topic), (other.positive_responses[0],), "Other_Topic")
        parsed[i] = dataclasses.replace(parsed[i], locality=(probe,))


def load_split(task: str, split: str, data: str | Path | None = None) -> Split:
    """Load one split of one task from the data folder (see :func:`instructedit_utils.paths.data_dir`)."""
    spec = task_spec(task)
    if split not in spec.splits:
        raise KeyError(f"Task {task!r} has no split {split!r}; known: {list(spec.splits)}")
    sspec = spec.splits[split]
    rel = spec.files[sspec.role]
    rows = _read_raw(str(data_dir(data) / rel))
    return parse_records(task, rows, rel, split, split_indices(len(rows), sspec))


def load_task(task: str, split: str, data: str | Path | None = None) -> list[EditRecord]:
    """Records of ``task``/``split`` (see :func:`load_split` for the report of clean-ups)."""
    return load_split(task, split, data).records


# --------------------------------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------------------------------


def with_sentiment(record: EditRecord, sentiment: str) -> EditRecord:
    """A ConvSent record re-targeted to ``sentiment`` (``positive``/``negative``)."""
    if record.task != "convsent":
        raise ValueError(f"{record.record_id} is not a ConvSent record")
    if sentiment not in SENTIMENTS:
        raise ValueError(f"sentiment must be one of {SENTIMENTS}, got {sentiment!r}")
    responses = record.positive_responses if sentiment == "positive" else record.negative_responses
    return dataclasses.replace(record, target_sentiment=sentiment, target_new=responses[0])


def convsent_both_sentiments(records: Iterable[EditRecord]) -> list[EditRecord]:
    """Two records per ConvSent topic, one for each target sentiment."""
    return [with_sentiment(r, s) for r in records for s in SENTIMENTS]


def sample(records: Sequence[EditRecord], n: int | None, seed: int = 0) -> list[EditRecord]:
    """A deterministic sample of ``n`` records kept in their original order (all when ``n`` is None or larger)."""
    if n is None or n >= len(records):
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


def balanced_subset(records: Sequence[EditRecord], n: int, key: Callable[[EditRecord], Any] = lambda r: r.task,
                    seed: int = 0) -> list[EditRecord]:
    """``n`` records with groups (by ``key``) as equal as the data allows, drawn deterministically.

    Groups are shuffled with ``seed`` and taken round-robin, so a small group is used up and the rest is filled from
    the others. E.g. the paper balances ConvSent to 1,427 entries: ``balanced_subset(
    convsent_both_sentiments(train), 1427, key=lambda r: r.target_sentiment)``.
    """
    if n > len(records):
        raise ValueError(f"Asked for {n} records but only {len(records)} are available")
    rng = random.Random(seed)
    groups: dict[Any, list[EditRecord]] = defaultdict(list)
    for r in records:
        groups[key(r)].append(r)
    queues = []
    for k in sorted(groups, key=str):
        members = list(groups[k])
        rng.shuffle(members)
        queues.append(members)
    out: list[EditRecord] = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out


def overview_table(data: str | Path | None = None) -> "pd.DataFrame":
    """One row per task split: record count, clean-up counters and how the split was made."""
    import pandas as pd

    rows = []
    for task, spec in TASK_SPECS.items():
        for split in spec.splits:
            sp = load_split(task, split, data)
            rows.append({"task": task, "split": split, **sp.report,
                         "file": spec.files[spec.splits[split].role], "notes": spec.notes})
    return pd.DataFrame(rows)
