import json

import pytest

from instructedit_utils.data.records import RecordError
from instructedit_utils.data.tasks import (SplitSpec, TASK_SPECS, balanced_subset, convsent_both_sentiments,
                                           load_split, load_task, parse_records, sample, split_indices, with_sentiment)
from instructedit_utils.util.paths import DATA_ENV, DataNotFoundError, data_dir
from conftest import cf_row


EXPECTED = {
    ("counterfact", "train"): 1328, ("counterfact", "val"): 100, ("counterfact", "test"): 885,
    ("recent", "train"): 420, ("recent", "val"): 50, ("recent", "test"): 100,
    ("convsent", "train"): 699, ("convsent", "val"): 100, ("convsent", "test"): 800,
    ("zsre", "all"): 1037, ("zsre", "train"): 737, ("zsre", "val"): 100, ("zsre", "test"): 200,
}


@pytest.mark.parametrize("task,split", sorted(EXPECTED))
def test_real_split_counts(shared_data, task, split):
    assert len(load_task(task, split)) == EXPECTED[(task, split)]


def test_real_splits_disjoint_and_every_record_usable(shared_data):
    for task, spec in TASK_SPECS.items():
        by_split = {s: load_task(task, s) for s in spec.splits if s != "all"}
        seen = {}
        for split, recs in by_split.items():
            for r in recs:
                key = (r.source, r.index)
                assert key not in seen, f"{key} in both {seen[key]} and {split}"
                seen[key] = split
                assert r.prompt and r.target_new
                assert r.locality, f"{r.record_id} has no locality probe"
    # ZsRE hold-out covers the whole file
    assert {r.index for r in load_task("zsre", "all")} == set(range(1037))


def test_real_file_totals(shared_data):
    # Recent: the 570 records of its train file; CounterFact train file 1,428
    assert sum(len(load_task("recent", s)) for s in ("train", "val", "test")) == 570
    assert sum(len(load_task("counterfact", s)) for s in ("train", "val")) == 1428
    # 155 Recent records lack any locality prompt: they borrow one, and say so
    assert sum(load_split("recent", s).report["borrowed_locality"] for s in ("train", "val", "test")) == 155
