"""Chapter 8's numbers from hand-made stream rows: final cases, paired lengths, forgetting, where a method breaks,
method differences and the configuration's checks."""
import pytest

from instructedit_utils.analysis import sequential as seq
from instructedit_utils.analysis import verdicts
from instructedit_utils.config import ExperimentConfig, SequenceConfig


def _rows(method, values_by_length, immediate=None, setting="training", n=20):
    """Stream rows: for each length T, every record i < n (or n for the longest) measured once its stream ended with
    ``values_by_length[T](i)``; the longest stream's immediate rows from ``immediate(i)``."""
    longest = max(values_by_length)
    rows = []
    for t, value in values_by_length.items():
        count = 3 * n if t == longest else n
        for i in range(count):
            base = {"setting": setting, "seed": 0, "method": method, "stream/length": t, "case_id": f"r{i}"}
            rows.append({**base, "when": "retention", "after": t, "position": i % t + 1, "edit/acc": value(i)})
            if t == longest:
                rows.append({**base, "when": "edit", "after": i + 1, "position": i + 1,
                             "edit/acc": (immediate or value)(i)})
    return rows


def test_final_cases_keep_each_record_once_per_length_and_pairing_keeps_the_common_records():
    rows = _rows("mend", {1: lambda i: 1.0, 60: lambda i: 0.0})
    rows.append({"setting": "training", "seed": 0, "method": "mend", "stream/length": 60, "case_id": "r0",
                 "when": "retention", "after": 10, "position": 1, "edit/acc": 0.5})  # a checkpoint, not the end
    final = seq.final_cases(rows)
    assert len(final) == 20 + 60
    paired = seq.final_cases(rows, paired=True)
    assert len(paired) == 40 and {r["case_id"] for r in paired} == {f"r{i}" for i in range(20)}
    summary = seq.length_summary(rows, metrics=("edit/acc",), paired=True)
    means = summary.set_index("stream/length")["mean"].to_dict()
    assert means == {1: 1.0, 60: 0.0} and set(summary["n"]) == {20}


def test_a_method_that_loses_its_edits_breaks_and_forgets_and_one_that_keeps_them_does_not():
    losing = _rows("ft-l", {1: lambda i: 1.0, 10: lambda i: 1.0 if i % 2 else 0.0, 60: lambda i: 0.0},
                   immediate=lambda i: 1.0)
    keeping = _rows("grace", {1: lambda i: 1.0, 10: lambda i: 1.0, 60: lambda i: 1.0})
    breaks = seq.breaking_points(losing + keeping).set_index("method")
    assert breaks.loc["ft-l", "where"] == "drops by T = 10"  # 1 − 0.5 = 0.5 on 20 paired records
    assert breaks.loc["grace", "where"] == "holds up to T = 60"  # equal values: equivalent at every length
    tiny = _rows("ke", {1: lambda i: 0.5, 10: lambda i: 0.49, 60: lambda i: 0.5})  # resolved, but within the margin
    assert seq.breaking_points(tiny).iloc[0]["where"] == "holds up to T = 60"
    noisy = _rows("mend", {1: lambda i: float(i % 2), 10: lambda i: float(i % 3 == 0), 60: lambda i: 0.5})
    assert seq.breaking_points(noisy).iloc[0]["where"] == f"{verdicts.UNRESOLVED} up to T = 60"
    rising = _rows("calinet", {1: lambda i: 0.0, 10: lambda i: 1.0, 60: lambda i: 1.0})
    assert seq.breaking_points(rising).iloc[0]["where"] == "holds up to T = 60"
    forget = seq.forgetting(losing + keeping).set_index("method")
    assert forget.loc["ft-l", "diff"] == pytest.approx(1.0) and forget.loc["ft-l", "n"] == 60
    assert forget.loc["ft-l", "verdict"].startswith(verdicts.REPRODUCED)
    assert forget.loc["grace", "diff"] == 0 and forget.loc["grace", "verdict"].startswith(verdicts.UNRESOLVED)


def test_a_broken_stream_is_where_the_method_breaks():
    rows = _rows("mend", {1: lambda i: 1.0, 60: lambda i: 1.0})
    rows.append({"setting": "training", "seed": 0, "method": "mend", "stream/length": 60, "stream/index": 0,
                 "when": "broken", "after": 3, "case_id": "r2", "error": "non-finite weight change"})
    breaks = seq.breaking_points(rows)
    assert breaks.iloc[0]["where"] == "broke at edit 3" and "non-finite" in breaks.iloc[0]["evidence"]
    assert seq.broken_streams(rows)[["after", "case_id"]].values.tolist() == [[3, "r2"]]


def test_method_differences_pair_the_same_records_and_carry_the_verdict():
    rows = _rows("mend", {1: lambda i: 0.0, 60: lambda i: 0.0}) + \
        _rows("instructedit", {1: lambda i: 1.0, 60: lambda i: 0.0 if i < 30 else 1.0})
    gaps = seq.method_differences(rows, metrics=("edit/acc",)).set_index("stream/length")
    assert gaps.loc[1, "diff"] == 1.0 and gaps.loc[1, "verdict"].startswith(verdicts.REPRODUCED)
    assert gaps.loc[60, "diff"] == pytest.approx(0.5) and gaps.loc[60, "n"] == 60
    lines = seq.summary_lines(rows)
    assert lines[0].startswith("**instructedit above mend**") and "T = 1: reproduced" in lines[0]


def test_probe_table_and_batch_summary():
    probes = [{"setting": "training", "method": "mend", "when": "probe", "after": a, "probe/ppl": p}
              for a, p in ((0, 10.0), (5, 12.0))]
    table = seq.probe_table(probes)
    assert table.loc[("training", "mend")].tolist() == [10.0, 12.0]
    batches = [{"method": "mend", "batch/size": k, "case_id": f"r{i}", "edit/acc": float(k == 1)}
               for k in (1, 4) for i in range(4)]
    summary = seq.batch_summary(batches, metrics=("edit/acc",)).set_index("batch/size")["mean"].to_dict()
    assert summary == {1: 1.0, 4: 0.0}


def test_sequence_config_is_validated_and_built_from_notebook_parameters():
    cfg = ExperimentConfig.from_parameters(run_dir="x", stream_lengths=[1, 10, 100], paired_records=20,
                                           batch_sizes=[1, 4], natural_max_new_tokens=8)
    assert cfg.sequence.records == 100 and cfg.sequence.covered(10) == 20 and cfg.sequence.covered(100) == 100
    assert cfg.score_kwargs()["natural_max_new_tokens"] == 8
    for bad, match in (({"stream_lengths": (3, 10)}, r"stream_lengths \[3\] do not divide"),
                       ({"stream_lengths": (1, 10), "paired_records": 15}, "paired_records"),
                       ({"stream_lengths": (10,), "batch_sizes": (1, 16)}, "a batch of 16"),
                       ({"stream_settings": ("train",)}, "stream_settings"),
                       ({"stream_seeds": (0, 0)}, "stream_seeds")):
        with pytest.raises(ValueError, match=match):
            SequenceConfig(**bad)
    with pytest.raises(ValueError, match="natural_max_new_tokens"):
        ExperimentConfig(run_dir="x", natural_max_new_tokens=-1)
