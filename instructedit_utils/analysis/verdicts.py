"""Every verdict of the book, decided in one place.

A chapter, Table 3's sentences and the results page all turn numbers into words through this module, so that they
cannot disagree. The numbers are **paired differences** (the same records under two conditions, e.g. InstructEdit −
MEND, held-out − seen description) with a percentile-bootstrap interval over records
(:func:`~instructedit_utils.evaluation.paired_difference`). The rules:

* **A directional claim** ("b is above a"): :data:`REPRODUCED` when the 95% interval lies above 0, :data:`REVERSED`
  when it lies below, :data:`UNRESOLVED` when it contains 0 (:func:`direction`).
* **An equivalence claim** ("a and b are about the same", the paper's Fig. 3): two one-sided tests at α = 0.05 with
  the margin :data:`EQUIVALENCE_MARGIN`: :data:`EQUIVALENT` when the 90% interval lies inside ±margin,
  :data:`DIFFERENT` when the 95% interval excludes 0 and the difference is not inside the margin,
  :data:`UNRESOLVED` otherwise — the interval is too wide for either (:func:`equivalence`).
* **Too few records**: below :data:`MIN_N` paired records every claim is *not resolved (n < MIN_N)*.
* **Nothing measured**: :data:`MISSING`; a comparison resting on an editor whose best checkpoint is its untrained
  step 0 is :data:`UNTRAINED` (:func:`trained`, :func:`gate`) — it tests the initial editor, not a trained one.
* **Several parts** (seeds, editors, tasks): :func:`combine` — unanimous parts give their word, parts on both sides
  give :data:`MIXED`, anything else :data:`UNRESOLVED`.

A missing metric is shown as missing (:func:`percent`), never as 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

REPRODUCED, REVERSED, UNRESOLVED = "reproduced", "reverse holds", "not resolved"
MISSING, UNTRAINED, MIXED = "not measured", "not measured (editor did not train)", "mixed"
EQUIVALENT, DIFFERENT = "equivalent", "different"
#: every word a verdict can have
WORDS = (REPRODUCED, REVERSED, UNRESOLVED, MISSING, UNTRAINED, MIXED, EQUIVALENT, DIFFERENT)

MIN_N = 20
"""Fewest paired records a verdict is drawn from. Why: the bootstrap interval of a mean of a few 0/1 differences is
degenerate — two or three identical differences give every resample the same mean, an interval of width 0 that
looks decisive (the ``ci`` profile's 2 records per task did exactly that). With 20 records a single flipped record
moves the mean by 5 points, the :data:`EQUIVALENCE_MARGIN`."""

EQUIVALENCE_MARGIN = 0.05
"""±5 points: the difference below which two conditions count as equivalent (share metrics, in [0, 1]). Why: it is
below the smallest gain the paper reads as an effect of instructions (InstructEdit − MEND on GPT2-XL, Table 3; the
results page computes it from the paper's cells), and Fig. 3 calls seen and unseen instructions *comparable* where
its bars differ by a few points."""

ALPHA = 0.05
"""Two-sided level of every interval (95%); the one-sided tests of :func:`equivalence` use the 90% interval."""

WEAK_GAIN = 0.10
"""A method's Reliability counts as *barely above Base* when its paired gain over the unedited model is resolvably
below 10 points. Why: the paper's FT-L and CaliNet columns gain less than that over Base on every multi-task cell of
Table 3, the hypernetworks gain tens of points, so 10 points separates "does not edit" from "edits"."""

LOCALITY_FLOOR = 0.85
"""A method's Locality counts as *low* when its interval lies below 85%. Why: in the paper's Table 3 the methods it
calls harmful to the model's other knowledge (FT-L) sit below it and the ones it calls stable (CaliNet, GRACE, KE on
most tasks) above it."""


@dataclass(frozen=True)
class Verdict:
    """A word of :data:`WORDS` and the numbers behind it."""

    word: str
    evidence: str = ""

    def __str__(self) -> str:
        return f"{self.word} ({self.evidence})" if self.evidence else self.word

    @property
    def measured(self) -> bool:
        return self.word not in (MISSING, UNTRAINED)


def _value(row: Any, key: str) -> float:
    return float(row[key]) if not isinstance(row, (int, float)) else float(row)


def digits_for(scale: float) -> int:
    """Decimals a difference is shown with: 1 for percentage points (``scale`` 100), 3 for unitless values such as
    silhouettes (``scale`` 1), whose differences are a few hundredths."""
    return 1 if scale >= 100 else 3


def interval_text(row: Mapping[str, Any], scale: float = 100.0, unit: str = " points") -> str:
    """``+7.3 points [+4.0, +11.1], n=150`` from a paired-difference row (``diff``, ``ci_low``, ``ci_high``, ``n``);
    unitless (``scale=1``): ``+0.052 [+0.031, +0.074], n=300``."""
    d = digits_for(scale)
    return (f"{scale * _value(row, 'diff'):+.{d}f}{unit} [{scale * _value(row, 'ci_low'):+.{d}f}, "
            f"{scale * _value(row, 'ci_high'):+.{d}f}], n={int(row['n'])}")


def _usable(row: Mapping[str, Any] | None) -> bool:
    return row is not None and len(row) > 0 and not any(
        row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row.get(k)))
        for k in ("diff", "ci_low", "ci_high", "n"))


def direction(row: Mapping[str, Any] | None, scale: float = 100.0, unit: str = " points",
              min_n: int = MIN_N) -> Verdict:
    """A directional claim from a paired difference (claimed side: above 0). See the module docstring."""
    if not _usable(row):
        return Verdict(MISSING)
    text = interval_text(row, scale, unit)
    if int(row["n"]) < min_n:
        return Verdict(f"{UNRESOLVED} (n < {min_n})", text)
    if row["ci_low"] > 0:
        return Verdict(REPRODUCED, text)
    if row["ci_high"] < 0:
        return Verdict(REVERSED, text)
    return Verdict(UNRESOLVED, text)


def side(row: Mapping[str, Any] | None, above: str = "higher", below: str = "lower", **kwargs) -> str:
    """The same rule in descriptive words: ``above``, ``below``, or the unresolved / missing word."""
    word = direction(row, **kwargs).word
    return above if word == REPRODUCED else below if word == REVERSED else word


def equivalence(row90: Mapping[str, Any] | None, row95: Mapping[str, Any] | None,
                margin: float = EQUIVALENCE_MARGIN, scale: float = 100.0, min_n: int = MIN_N) -> Verdict:
    """Two one-sided tests (TOST): ``row90`` the paired difference with its 90% interval, ``row95`` with its 95%
    interval (same differences). *equivalent* when the 90% interval is inside ±``margin``; *different* when the 95%
    interval excludes 0 and the 90% interval is not inside the margin; otherwise *not resolved* (wider than the
    margin and containing 0)."""
    if not (_usable(row90) and _usable(row95)):
        return Verdict(MISSING)
    d = digits_for(scale)
    text = (f"{interval_text(row95, scale)} (90%: [{scale * row90['ci_low']:+.{d}f}, "
            f"{scale * row90['ci_high']:+.{d}f}]"
            f", margin ±{scale * margin:.0f})")
    if int(row95["n"]) < min_n:
        return Verdict(f"{UNRESOLVED} (n < {min_n})", text)
    if -margin < row90["ci_low"] and row90["ci_high"] < margin:
        return Verdict(EQUIVALENT, text)
    if row95["ci_low"] > 0 or row95["ci_high"] < 0:
        return Verdict(DIFFERENT, text)
    return Verdict(UNRESOLVED, text)


def combine(verdicts: Iterable[Verdict | str]) -> str:
    """One word for a claim made of parts: unanimous parts give their word; parts resolved on both sides, or
    *equivalent* beside *different*, give *mixed*; anything else is *not resolved*. Parts not measured (or resting
    on an untrained editor) are left out; when none is left, the first such word."""
    words = [v.word if isinstance(v, Verdict) else v for v in verdicts]
    kept = [w for w in words if w not in (MISSING, UNTRAINED)]
    if not kept:
        return UNTRAINED if UNTRAINED in words else MISSING
    kept = [UNRESOLVED if w.startswith(UNRESOLVED) else w for w in kept]
    if len(set(kept)) == 1:
        return kept[0]
    if {REPRODUCED, REVERSED} <= set(kept) or {EQUIVALENT, DIFFERENT} <= set(kept) or MIXED in kept:
        return MIXED
    return UNRESOLVED


def trained(done: Mapping[str, Any] | None) -> bool:
    """Whether an editor's training (its ``done.json``) kept a trained checkpoint: its best step is above 0."""
    return bool(done) and int(done.get("best_step") or 0) > 0


def gate(verdict: Verdict, editors: Mapping[str, Mapping[str, Any] | None]) -> Verdict:
    """``verdict``, unless it rests on an editor whose best checkpoint is step 0 (or has no ``done.json``): then
    :data:`UNTRAINED`, naming it."""
    untrained = [name for name, done in editors.items() if not trained(done)]
    if not untrained:
        return verdict
    return Verdict(UNTRAINED, f"best step 0: {', '.join(untrained)}" + (f"; {verdict.evidence}"
                                                                         if verdict.evidence else ""))


def percent(value: float | None, digits: int = 1) -> str:
    """A share in percent, or ``—`` when it was not measured (never 0.0%)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.{digits}f}%"


def count(verdicts: Sequence[Verdict | str]) -> dict[str, int]:
    """How many verdicts have each word (in :data:`WORDS` order, words not used left out)."""
    words = [v.word if isinstance(v, Verdict) else v for v in verdicts]
    return {w: words.count(w) for w in dict.fromkeys(sorted(words, key=lambda w: (
        WORDS.index(w) if w in WORDS else len(WORDS), w)))}


def checkpoint_table(summaries: Mapping[str, Mapping[str, Any] | None]) -> pd.DataFrame:
    """Per editor (its ``done.json`` summary): why training stopped, its steps, the step of the kept checkpoint
    and that checkpoint's validation score, and whether it trained at all (:func:`trained`)."""
    rows = [{"editor": name, "stop": s.get("stop_reason"), "steps": s.get("step"), "best step": s.get("best_step"),
             "validation score": None if s.get("best") is None else round(float(s["best"]), 3),
             "minutes": round(s.get("train_time_s", 0.0) / 60, 1), "trained": trained(s)}
            for name, s in ((n, s or {}) for n, s in summaries.items())]
    return pd.DataFrame(rows).set_index("editor")
