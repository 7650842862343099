"""The *filter* step of the instruction search: why a candidate description is rejected before any scoring.

:func:`check_candidate` applies, in order: length bounds (words), slots (the task's records must fill every
``[SLOT]``, and ConvSent's descriptions need both of theirs), duplicates of a text seen before (normalised), near
duplicates of the pool's descriptions and the held-out one (:func:`similarity`), and copies of a test record's text
or of a training record the prompt showed (:class:`LeakIndex`). Every rejection has its reason, whose kind
:func:`rejection_kind` names.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from ..data.records import EditRecord
from ..data.instructions import TASK_SLOTS

_WORD = re.compile(r"\[[a-z]+\]|[a-z0-9]+")
_SLOT = re.compile(r"\[[A-Za-z_]+\]")


def words(text: str) -> list[str]:
    """Lower-case words (slots such as ``[label]`` kept as one word), punctuation dropped."""
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    return " ".join(words(text))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' word-bigram sets (0: nothing shared, 1: the same bigrams)."""
    def grams(text: str) -> set[tuple[str, ...]]:
        w = words(text)
        return {tuple(w[i:i + 2]) for i in range(max(1, len(w) - 1))}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y) if x | y else 1.0


class LeakIndex:
    """The text of test records, to catch a description that copies one: any run of ``n`` words of a record's prompt,
    rephrases or target, and its subject or target when they have two words or more. Runs shared by ``common`` or
    more records (templates such as *What do you think of*) are not a record's own text and are ignored."""

    def __init__(self, records: Sequence[EditRecord], n: int = 4, common: int = 10):
        self.n = n
        owners: dict[tuple[str, ...], set[str]] = {}
        for rec in records:
            for text in (rec.prompt, rec.target_new, *rec.rephrases):
                w = words(text)
                for i in range(len(w) - n + 1):
                    owners.setdefault(tuple(w[i:i + n]), set()).add(rec.record_id)
            for phrase in (rec.subject, rec.target_new):
                w = tuple(words(phrase or ""))
                if len(w) >= 2:
                    owners.setdefault(w, set()).add(rec.record_id)
        self.owners = {k: min(v) for k, v in owners.items() if len(v) < common}
        self.lengths = sorted({len(k) for k in self.owners})

    def find(self, text: str) -> tuple[str, str] | None:
        """(record id, shared words) of the first test record the text copies from, or None."""
        w = words(text)
        for size in self.lengths:
            for i in range(len(w) - size + 1):
                key = tuple(w[i:i + size])
                if key in self.owners:
                    return self.owners[key], " ".join(key)
        return None


def check_candidate(text: str, task: str, *, known: Mapping[str, str], near: Mapping[str, str],
                    leaks: LeakIndex | None, min_words: int, max_words: int, max_similarity: float,
                    examples: LeakIndex | None = None) -> str | None:
    """Why a candidate is rejected, or None. ``known``: normalised texts seen so far (any status) → where from;
    ``near``: the scored and held-out texts → where from (near-duplicates of them are rejected); ``leaks``: the test
    records; ``examples``: the training records the prompt showed (a description names no particular record)."""
    n = len(words(text))
    if n < min_words or n > max_words:
        return f"length: {n} words (allowed {min_words}-{max_words})"
    slots = set(_SLOT.findall(text))
    allowed = TASK_SLOTS.get(task, frozenset())
    unknown = sorted(s for s in slots if s not in allowed)
    if unknown:
        return f"slot {', '.join(unknown)} cannot be filled from {task} records"
    missing = sorted(s for s in allowed if s not in slots)
    if missing:
        return f"missing slot {', '.join(missing)}"
    key = normalise(text)
    if key in known:
        return f"duplicate of {known[key]}"
    for other, where in near.items():
        sim = similarity(text, other)
        if sim > max_similarity:
            return f"near-duplicate ({sim:.2f}) of {where}"
    leak = leaks.find(text) if leaks is not None else None
    if leak:
        return f"copies test record {leak[0]} ({leak[1]!r})"
    copied = examples.find(text) if examples is not None else None
    if copied:
        return f"copies prompt example {copied[0]} ({copied[1]!r})"
    return None


#: the kinds of rejection reason (reason prefix → kind), in the order the filters apply them
REJECTIONS = {"length": "length", "slot": "unfillable slot", "missing slot": "missing slot", "duplicate": "duplicate",
              "near-duplicate": "near-duplicate", "copies test record": "copies a test record",
              "copies prompt example": "copies a prompt example"}


def rejection_kind(reason: str) -> str:
    """The kind of a rejection reason (the longest prefix of :data:`REJECTIONS` it starts with)."""
    prefix = max((p for p in REJECTIONS if reason.startswith(p)), key=len, default=None)
    return REJECTIONS[prefix] if prefix else "other"
