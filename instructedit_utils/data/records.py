"""Task records: the schema every task is read into, the file layouts and their per-record parsers, and reading
task files (JSON arrays or JSON Lines) with errors that name the file, line and record.

How each task's files map onto this schema, and which clean-ups the parsers make, is documented in
:mod:`instructedit_utils.data`, which holds the task specifications and the splits.
"""
from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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
    """ZsRE in MEND's layout (``zsre_mend_eval*.json``; here with GPT-4 one-hop portability questions)."""
    port = raw.get("portability")
    if port is not None and not isinstance(port, dict):
        raise ctx.error("field 'portability' must be a dict")
    portability = ()
    if port and port.get("New Question"):
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


def _parse_zsre_knowedit(raw: dict, ctx: _Ctx) -> dict:
    """ZsRE in KnowEdit's layout (``ZsRE-test-all.json``): the KnowEdit fields plus ``rephrase_prompt``; every
    locality and portability probe is kept."""
    if "rephrase_prompt" not in raw:
        raise ctx.error("missing field 'rephrase_prompt'")
    return {**_parse_knowedit(raw, ctx), "rephrases": ctx.answers(raw["rephrase_prompt"], "rephrase_prompt")}


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
# Layouts and files
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """One file layout of a task: the fields that identify it and the per-record parser."""

    name: str
    keys: frozenset[str]
    parser: Callable[[dict, _Ctx], dict]


KNOWEDIT = Layout("knowedit", frozenset({"prompt", "target_new"}), _parse_knowedit)


def read_rows(path: str) -> tuple:
    """Parse a JSON array or JSON Lines file into a tuple of dicts (cached while the file is unchanged). Errors
    name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Task file {p} not found")
    st = p.stat()
    return _parse_file(str(p), st.st_size, st.st_mtime_ns)


def iter_json_lines(path: str | os.PathLike, text: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number from 1, value) of each non-blank line of a JSON-lines file.

    An invalid line raises `RecordError` naming the file, the line and the record's index among the values."""
    path = Path(path)
    if text is None:
        text = path.read_text(encoding="utf-8")
    count = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path} line {lineno} (record {count}): invalid JSON ({exc.msg} at "
                              f"column {exc.colno})") from None
        count += 1
        yield lineno, value


@functools.lru_cache(maxsize=16)
def _parse_file(path: str, size: int, mtime_ns: int) -> tuple:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{p}: not UTF-8 text ({exc})") from None
    if p.suffix == ".jsonl":
        rows = [row for _, row in iter_json_lines(p, text)]
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{p}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(rows, list):
            raise RecordError(f"{p}: expected a JSON array of records, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RecordError(f"{p} record {i}: expected an object, got {type(row).__name__}")
    return tuple(rows)
