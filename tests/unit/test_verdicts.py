"""The one verdict module: every rule on hand-made differences."""
import pandas as pd
import pytest

from instructedit_utils.analysis import verdicts as v
from instructedit_utils.evaluation.summaries import paired_difference


def row(diff, lo, hi, n=50):
    return {"diff": diff, "ci_low": lo, "ci_high": hi, "n": n}


@pytest.mark.parametrize("r, word", [
    (row(0.07, 0.04, 0.11), v.REPRODUCED),  # positive
    (row(-0.09, -0.14, -0.04), v.REVERSED),  # negative
    (row(0.02, -0.03, 0.07), v.UNRESOLVED),  # too wide: contains 0
    (row(1.0, 1.0, 1.0, n=3), f"{v.UNRESOLVED} (n < {v.MIN_N})"),  # too few records, however narrow
    (None, v.MISSING),
    (row(float("nan"), float("nan"), float("nan"), n=0), v.MISSING),
])
def test_direction(r, word):
    got = v.direction(r)
    assert got.word == word
    if r is not None and word != v.MISSING:
        assert got.evidence == f"{100 * r['diff']:+.1f} points [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}], n={r['n']}"


def test_degenerate_bootstrap_of_few_identical_differences_is_not_a_verdict():
    cases = [{"case_id": str(i), "task": "t", "m": m, "edit/acc": x} for i in range(3) for m, x in (("a", 0.0),
                                                                                                    ("b", 1.0))]
    d = paired_difference(cases, "edit/acc", "m", "a", "b").iloc[0]
    assert d["ci_low"] == d["ci_high"] == 1.0  # the interval looks decisive ...
    assert v.direction(d).word.startswith(v.UNRESOLVED)  # ... but three records decide nothing


@pytest.mark.parametrize("r90, r95, word", [
    (row(0.01, -0.02, 0.04), row(0.01, -0.03, 0.05), v.EQUIVALENT),  # inside the margin
    (row(-0.012, -0.02, -0.004), row(-0.012, -0.022, -0.002), v.EQUIVALENT),  # resolved but tiny: still equivalent
    (row(-0.12, -0.16, -0.08), row(-0.12, -0.17, -0.07), v.DIFFERENT),  # outside
    (row(0.03, -0.04, 0.10), row(0.03, -0.05, 0.11), v.UNRESOLVED),  # too wide
    (row(0.03, -0.04, 0.10, n=5), row(0.03, -0.05, 0.11, n=5), f"{v.UNRESOLVED} (n < {v.MIN_N})"),
    (None, row(0.0, 0.0, 0.0), v.MISSING),
])
def test_equivalence(r90, r95, word):
    assert v.equivalence(r90, r95).word == word


def test_equivalence_margin_is_strict_and_configurable():
    edge = row(0.0, -0.05, 0.05)
    assert v.equivalence(edge, edge).word == v.UNRESOLVED  # touching the margin is not inside it
    assert v.equivalence(edge, edge, margin=0.06).word == v.EQUIVALENT


@pytest.mark.parametrize("words, word", [
    ([v.REPRODUCED, v.REPRODUCED], v.REPRODUCED),
    ([v.REPRODUCED, v.REVERSED], v.MIXED),
    ([v.REPRODUCED, v.UNRESOLVED], v.UNRESOLVED),
    ([v.REPRODUCED, f"{v.UNRESOLVED} (n < 20)"], v.UNRESOLVED),
    ([v.EQUIVALENT, v.DIFFERENT], v.MIXED),
    ([v.REPRODUCED, v.MISSING], v.REPRODUCED),
    ([v.MISSING, v.UNTRAINED], v.UNTRAINED),
    ([], v.MISSING),
])
def test_combine(words, word):
    assert v.combine(words) == word


def test_untrained_editors_gate_a_verdict():
    good = v.Verdict(v.REPRODUCED, "+7.3 points")
    assert v.gate(good, {"mend": {"best_step": 750}, "instructedit": {"best_step": 500}}) == good
    gated = v.gate(good, {"mend-convsent": {"best_step": 0}, "mend": {"best_step": 750}})
    assert gated.word == v.UNTRAINED and "mend-convsent" in gated.evidence and "mend," not in gated.evidence
    assert v.gate(good, {"gone": None}).word == v.UNTRAINED
    assert not v.trained({"best_step": 0}) and v.trained({"best_step": 250})


def test_missing_metrics_are_shown_as_missing_never_as_zero():
    assert v.percent(None) == v.percent(float("nan")) == "—"
    assert v.percent(0.0) == "0.0%" and v.percent(0.8125) == "81.2%"


def test_count_orders_words():
    assert v.count([v.REVERSED, v.REPRODUCED, v.REPRODUCED, "not resolved (n < 20)"]) == {
        v.REPRODUCED: 2, v.REVERSED: 1, "not resolved (n < 20)": 1}


def test_unitless_differences_keep_their_hundredths():
    """A silhouette difference of +0.052 must not read +0.1 [+0.0, +0.1]: unitless values get three decimals."""
    row = {"diff": 0.052, "ci_low": 0.031, "ci_high": 0.074, "n": 300}
    assert v.interval_text(row, scale=1.0, unit="") == "+0.052 [+0.031, +0.074], n=300"
    assert v.interval_text(row) == "+5.2 points [+3.1, +7.4], n=300"
    low = {"diff": 0.004, "ci_low": 0.001, "ci_high": 0.007, "n": 300}
    assert v.direction(low, scale=1.0, unit="").evidence == "+0.004 [+0.001, +0.007], n=300"
