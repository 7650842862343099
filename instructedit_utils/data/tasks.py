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
              (or KnowEdit's ``ZsRE-test-all.json``, see below)    train 737 / val 100 / test 200
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
  locality probes ask about the next record's topic, each with one of its responses, the sentiments taken in turn
  (SERAC's and EasyEdit's out-of-scope sequences). :func:`convsent_both_sentiments` gives both directions.

ZsRE comes in two layouts, detected per file from its first record (every record must then have that layout):
MEND's (``src``/``alt``/``answers``/``rephrase``/``loc``/``loc_ans`` and one GPT-4 portability question, the file the
InstructEdit paper evaluates on) and KnowEdit's (``prompt``/``target_new``/``ground_truth``/``rephrase_prompt`` with
``locality``/``portability`` dicts of probe lists, e.g. ``ZsRE-test-all.json``). All probes of a record are kept;
scoring caps them (``max_probes``). The ZsRE file is the first of :data:`TASK_SPECS`' candidates found in ``zsre/``.

Malformed records (missing fields, empty targets, wrong types) raise :class:`RecordError` naming file and index;
a file that is not valid JSON (or JSON Lines) raises it naming the file and the line.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..util.paths import data_dir
from .records import (CONVSENT_PROMPT, KNOWEDIT, SENTIMENTS, EditRecord, Layout, Probe, RecordError, _Ctx,
                      _parse_convsent, _parse_zsre, _parse_zsre_knowedit, read_rows)
import pandas as pd

SPLIT_SEED = 20240201
TASKS = ("counterfact", "recent", "convsent", "zsre")
TRAIN_TASKS = ("counterfact", "recent", "convsent")


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
    files: dict[str, str | tuple[str, ...]]  # role -> file, or candidate files (the first one found is used)
    splits: dict[str, SplitSpec]
    layouts: tuple[Layout, ...]
    notes: str = ""

    def candidates(self, role: str) -> tuple[str, ...]:
        files = self.files[role]
        return (files,) if isinstance(files, str) else files


TASK_SPECS: dict[str, TaskSpec] = {
    "counterfact": TaskSpec(
        "counterfact", "CounterFact",
        {"train": "wiki_counterfact/benchmark_wiki_counterfact_train_cf.json",
         "test": "wiki_counterfact/DERIVED_wiki_counterfact_test_cf-generate-10.jsonl"},
        {"train": SplitSpec("train", 100), "val": SplitSpec("train", 0, 100), "test": SplitSpec("test")},
        (KNOWEDIT,),
        "test = derived test_cf with LLM paraphrases as rephrases",
    ),
    "recent": TaskSpec(
        "recent", "Recent",
        {"train": "wiki_recent/recent_train.json"},
        {"train": SplitSpec("train", 150), "val": SplitSpec("train", 100, 150), "test": SplitSpec("train", 0, 100)},
        (KNOWEDIT,),
        "no test file here: train/val/test are drawn from recent_train.json",
    ),
    "convsent": TaskSpec(
        "convsent", "ConvSent",
        {"val": "convsent/benchmark_Convsent_blender_val.json", "test": "convsent/benchmark_Convsent_blender_test.json"},
        {"train": SplitSpec("val", 100), "val": SplitSpec("val", 0, 100), "test": SplitSpec("test")},
        (Layout("convsent", frozenset({"ent", "pos", "neg"}), _parse_convsent),),
        "blender_train is not available: train/val are drawn from blender_val",
    ),
    "zsre": TaskSpec(
        "zsre", "ZsRE",
        {"eval": ("zsre/zsre_mend_eval_portability_gpt4.json", "zsre/ZsRE-test-all.json",
                  "zsre/benchmark_ZsRE_ZsRE-test-all.json")},
        {"all": SplitSpec("eval"), "test": SplitSpec("eval", 0, 200), "val": SplitSpec("eval", 200, 300),
         "train": SplitSpec("eval", 300)},
        (Layout("mend", frozenset({"src", "alt", "loc"}), _parse_zsre),
         Layout("knowedit", frozenset({"prompt", "target_new", "rephrase_prompt"}), _parse_zsre_knowedit)),
        "hold-out task: never in multi-task training; train/val only for the single-task ZsRE editor",
    ),
}


def task_spec(task: str) -> TaskSpec:
    try:
        return TASK_SPECS[task]
    except KeyError:
        raise KeyError(f"Unknown task {task!r}; known: {list(TASK_SPECS)}") from None


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


def detect_layout(task: str, rows: Sequence[dict], source: str) -> Layout:
    """The layout of a task file, from its first record (its parser then checks every record)."""
    spec = task_spec(task)
    if not rows:
        raise RecordError(f"{source}: no records")
    for layout in spec.layouts:
        if layout.keys <= set(rows[0]):
            return layout
    known = "; ".join(f"{lay.name}: {sorted(lay.keys)}" for lay in spec.layouts)
    raise RecordError(f"{source} record 0: fields {sorted(rows[0])} match no {task} layout ({known})")


def parse_records(task: str, rows: Sequence[dict], source: str, split: str = "file",
                  indices: Iterable[int] | None = None) -> Split:
    """Parse raw KnowEdit-style rows of ``task`` into records (public so tests can feed hand-made rows)."""
    layout = detect_layout(task, rows, source)
    per_record: dict[int, Counter] = defaultdict(Counter)
    parsed: dict[int, EditRecord] = {}
    wanted = list(range(len(rows))) if indices is None else list(indices)
    # Locality fallbacks borrow from neighbouring records, so the whole file is parsed (and validated).
    for i, raw in enumerate(rows):
        ctx = _Ctx(source, i, per_record[i])
        parsed[i] = EditRecord(task=task, split=split, source=source, index=i, **layout.parser(raw, ctx))
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
    """ConvSent's out-of-scope sequences, as SERAC and EasyEdit build them: the question about the next record's
    topic with each of that topic's responses, both sentiments taken in turn (positive, negative, positive, …)."""
    n = len(parsed)
    for i in range(n):
        other = parsed[(i + 1) % n]
        question = CONVSENT_PROMPT.format(topic=other.topic)
        pos, neg = other.positive_responses, other.negative_responses
        turns = [r for pair in zip(pos, neg) for r in pair] + list(pos[len(neg):]) + list(neg[len(pos):])
        parsed[i] = dataclasses.replace(parsed[i], locality=tuple(Probe(question, (r,), "Other_Topic")
                                                                  for r in turns))


def load_split(task: str, split: str, data: str | Path | None = None) -> Split:
    """Load one split of one task from the data folder (see :func:`instructedit_utils.util.paths.data_dir`)."""
    spec = task_spec(task)
    if split not in spec.splits:
        raise KeyError(f"Task {task!r} has no split {split!r}; known: {list(spec.splits)}")
    sspec = spec.splits[split]
    rel = task_file(task, sspec.role, data)
    rows = read_rows(str(data_dir(data) / rel))
    return parse_records(task, rows, rel, split, split_indices(len(rows), sspec))


def task_file(task: str, role: str, data: str | Path | None = None) -> str:
    """The file (relative to the data folder) holding ``role`` of ``task``: the first of its candidates found."""
    spec = task_spec(task)
    root = data_dir(data)
    candidates = spec.candidates(role)
    for rel in candidates:
        if (root / rel).is_file():
            return rel
    raise FileNotFoundError(f"No {task} file in {root}: looked for {', '.join(candidates)}")


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes, cached while its size and modification time stay."""
    st = Path(path).stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)


def data_fingerprint(splits: dict[str, str], data: str | Path | None = None) -> dict[str, str]:
    """``{file: digest}`` of the files the given ``{task: split}`` read (what a case's data depends on)."""
    out = {}
    for task, split in splits.items():
        rel = task_file(task, task_spec(task).splits[split].role, data)
        out[rel] = file_digest(data_dir(data) / rel)
    return dict(sorted(out.items()))


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
    rows = []
    for task, spec in TASK_SPECS.items():
        for split in spec.splits:
            sp = load_split(task, split, data)
            rows.append({"task": task, "split": split, **sp.report,
                         "file": task_file(task, spec.splits[split].role, data), "notes": spec.notes})
    return pd.DataFrame(rows)
