"""The paper's own numbers, read from ``resources/paper.json`` — never typed into code or prose.

The file holds every cell of the paper's Table 1 (transfer) and Table 3 (seven methods, GPT2-XL and LLaMA-2), the
numbers its text quotes (the abstract's average gain, Finding 3's hold-out Reliability before and after balancing,
Fig. 4d's balanced ConvSent size) and, apart, the dataset sizes its mixtures rest on but its text does not print.
``tests/integration/test_paper.py`` checks each one against the paper's text in ``../shared/paper/``.

Values are percentages as printed; :func:`table3` and :func:`table1` also give them as shares (``share``, in
[0, 1], the book's unit). The paper's Fluency is the n-gram entropy × 100 (:data:`FLUENCY_SCALE`).
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import pandas as pd

FLUENCY_SCALE = 100.0  # the paper prints Fluency (n-gram entropy in bits) times 100
MODELS = ("GPT2-XL", "LLaMA-2")


@functools.lru_cache(maxsize=1)
def raw() -> dict[str, Any]:
    """The resource file as stored."""
    return json.loads(resources.files("instructedit_utils.resources").joinpath("paper.json").read_text())


def as_number(printed: str) -> float:
    """A number as the paper prints it (``"1,427"``, ``"-25.50"``) as a float."""
    return float(printed.replace(",", ""))


def _share(metric: str, value: float) -> float:
    return value / FLUENCY_SCALE if metric == "fluency/entropy" else value / 100.0


def table3() -> pd.DataFrame:
    """Every Table 3 cell: ``setting``, ``task``, ``model``, ``metric``, ``method``, ``printed``, ``value`` (as
    printed, percent) and ``share`` (the book's unit: a share in [0, 1]; Fluency in bits)."""
    rows = [{**{k: r[k] for k in ("setting", "task", "model", "metric")}, "method": m, "printed": v,
             "value": as_number(v), "share": _share(r["metric"], as_number(v))}
            for r in raw()["table3"]["rows"] for m, v in r["values"].items()]
    return pd.DataFrame(rows)


def table1() -> pd.DataFrame:
    """Every Table 1 cell: ``test_task``, ``train_task``, ``kind`` (``in-task``: the single-task editor of the test
    task, its value; ``drop``: an editor trained on ``train_task``, its change against the in-task value, in points),
    ``metric``, ``printed``, ``value``, ``share``."""
    rows = [{"test_task": r["test_task"], "train_task": r["train_task"], "kind": r["kind"], "metric": m,
             "printed": v, "value": as_number(v), "share": as_number(v) / 100.0}
            for r in raw()["table1"]["rows"] for m, v in r["values"].items()]
    return pd.DataFrame(rows)


def quoted(key: str) -> float:
    """A number the paper's text quotes (``resources/paper.json``, ``text``), by key."""
    for entry in raw()["text"]:
        if entry["key"] == key:
            return as_number(entry["printed"]) if entry["printed"][0].isdigit() else entry["printed"]
    raise KeyError(f"The paper resource has no quoted number {key!r}")


def train_sizes() -> dict[str, int]:
    """KnowEdit's training-set sizes (Recent, CounterFact, ConvSent) — not printed in the paper; see the file."""
    return dict(raw()["not_in_the_paper"]["train_sizes"])


def balanced_sizes() -> dict[str, int]:
    """The paper's balanced training set (Fig. 4d): Recent and CounterFact whole, ConvSent cut to 1,427 records."""
    sizes = train_sizes()
    return {**sizes, "convsent": int(quoted("convsent_balanced_size"))}


def reliability_gain(model: str = "GPT2-XL", tasks: tuple[str, ...] | None = None) -> pd.Series:
    """InstructEdit − MEND Reliability per task of Table 3 (points) for ``model``: the abstract's average gain is
    their mean over all four tasks, the hold-out ZsRE included."""
    t = table3()
    rel = t[(t["model"] == model) & (t["metric"] == "edit/acc") & t["method"].isin(["mend", "instructedit"])]
    wide = rel.pivot(index="task", columns="method", values="value")
    gain = (wide["instructedit"] - wide["mend"]).reindex(list(dict.fromkeys(rel["task"])))
    return gain if tasks is None else gain.reindex(list(tasks))
