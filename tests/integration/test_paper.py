"""The paper's numbers held in resources/paper.json occur in the paper's text, row by row, and the sums the book
quotes from them are the paper's."""
import re
from pathlib import Path

import pytest

from instructedit_utils.data import paper
from instructedit_utils.util.paths import PROJECT_ROOT

from conftest import require_shared

PAPER = PROJECT_ROOT.parent / "shared" / "paper" / paper.raw()["source"]["file"]
LABELS = {"edit/acc": "Reliability", "gen/acc": "Generalization", "loc/acc": "Locality", "port/acc": "Portability",
          "fluency/entropy": "Fluency"}


@pytest.fixture(scope="module")
def lines():
    if not PAPER.is_file():
        require_shared("the paper's text", f"no {PAPER}")
    return PAPER.read_text(encoding="utf-8").splitlines()


def _cells(line: str) -> list[str]:
    """The numbers of one table line as printed, without the extraction's underline tags and arrows."""
    cells = re.sub(r"</?u>|→", " ", line).split()
    return [c for c in cells if re.fullmatch(r"-?\d[\d,]*(\.\d+)?", c)]


def test_every_table3_row_is_a_line_of_the_paper(lines):
    rows = paper.raw()["table3"]["rows"]
    methods = paper.raw()["table3"]["methods"]
    assert len(rows) == 27 and len(paper.table3()) == 27 * 7  # 7 methods × the rows of both models
    for r in rows:
        assert list(r["values"]) == methods
        printed = [r["values"][m] for m in methods]
        hits = [line for line in lines if LABELS[r["metric"]] in line and _cells(line) == printed]
        assert len(hits) >= 1, (r["task"], r["model"], r["metric"], printed)


def test_every_table1_row_is_a_line_of_the_paper(lines):
    rows = paper.raw()["table1"]["rows"]
    assert len(rows) == 6 and {r["test_task"] for r in rows} == {"counterfact", "zsre"}
    for r in rows:
        printed = list(r["values"].values())
        assert any(_cells(line) == printed for line in lines), printed
        assert (r["kind"] == "in-task") == (r["train_task"] == r["test_task"])


def test_numbers_quoted_from_the_text_occur_in_it(lines):
    text = "\n".join(lines)
    for entry in paper.raw()["text"]:
        assert entry["printed"] in text, entry["key"]
    assert paper.balanced_sizes() == {"recent": 570, "counterfact": 1455, "convsent": 1427}


def test_the_abstracts_average_gain_includes_the_hold_out_task():
    gain = paper.reliability_gain("GPT2-XL")
    assert list(gain.index) == ["counterfact", "recent", "convsent", "zsre"]
    assert gain.round(2).tolist() == [6.55, 0.08, 10.76, 42.04]
    assert round(gain.mean(), 2) == paper.quoted("abstract_reliability_gain")  # 14.86: all four tasks
    assert round(gain.drop("zsre").mean(), 2) != paper.quoted("abstract_reliability_gain")  # not the training tasks
    assert round(gain["zsre"], 2) == paper.quoted("ood_reliability_gain")


def test_shares_and_fluency_scale():
    t = paper.table3()
    cell = t[(t["task"] == "convsent") & (t["metric"] == "fluency/entropy") & (t["method"] == "base")].iloc[0]
    assert cell["value"] == 613.13 and cell["share"] == pytest.approx(6.1313)
    assert paper.table1().query("kind == 'drop'")["value"].lt(0).all()
