"""The results page: each claim's verdict from hand-made run folders (reproduced, reverse, not resolved, not
measured), the claims table the intro includes, provenance, and the cost page's table and summary."""
import json

import pandas as pd
import pytest

from instructedit_utils import results
from instructedit_utils.config import ExperimentConfig
from instructedit_utils.runs import RunFolder


@pytest.fixture
def cfg(tmp_path):
    return ExperimentConfig(run_dir=str(tmp_path / "ci" / "08_results"), profile="ci")


def cases(method, values, task="zsre", key="edit/acc"):
    return [{"method": method, "case_id": f"{task}/{i}", "task": task, key: v} for i, v in enumerate(values)]


def write_cases(cfg, notebook, setting, name, rows):
    RunFolder(results.chapter_dir(cfg, notebook) / setting).append_cases(f"cases_{name}", rows)


def write_table(cfg, notebook, name, rows):
    path = results.chapter_dir(cfg, notebook) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path)


def test_nothing_run_means_every_claim_not_measured(cfg):
    found = results.claims(cfg)
    assert len(found) == len(results.CLAIMS)
    assert {c.verdict for c in found} == {results.MISSING}
    assert set(results.provenance(cfg)["model"]) == {"not run"}


@pytest.mark.parametrize("mend, instructedit, verdict", [
    ([0.0] * 20, [1.0] * 20, results.REPRODUCED),
    ([1.0] * 20, [0.0] * 20, results.REVERSED),
    ([0.0, 1.0] * 10, [1.0, 0.0] * 10, results.UNRESOLVED),
])
def test_holdout_claim_from_paired_cases(cfg, mend, instructedit, verdict):
    write_cases(cfg, "03_multitask_and_holdout", "holdout", "mend", cases("mend", mend))
    write_cases(cfg, "03_multitask_and_holdout", "holdout", "instructedit", cases("instructedit", instructedit))
    claim = results.claim_holdout(cfg)
    assert claim.verdict == verdict and f"n={len(mend)}" in claim.evidence
    diff = 100 * (sum(instructedit) - sum(mend)) / len(mend)
    assert f"{diff:+.1f} points" in claim.evidence
    assert results.claim_multitask(cfg).verdict == results.MISSING  # the other setting was not run


@pytest.mark.parametrize("held_out, verdict", [([1.0] * 9 + [0.0], results.REPRODUCED),  # -10, CI holds 0
                                                  ([0.0] * 10, results.REVERSED)])
def test_unseen_claim_fails_only_when_the_held_out_description_loses(cfg, held_out, verdict):
    for cond, values in (("seen", [1.0] * 10), ("held_out", held_out)):
        write_cases(cfg, "04_unseen_instructions", "unseen", f"instructedit_{cond}", cases("instructedit", values))
    claim = results.claim_unseen(cfg)
    assert claim.verdict == verdict
    assert ("below 0 on zsre" in claim.evidence) == (verdict == results.REVERSED)


def transfer_row(train, task, mean, half=0.05):
    return {"train_task": train, "task": task, "metric": "edit/acc", "mean": mean, "ci_low": mean - half,
            "ci_high": mean + half, "n": 40}


def test_transfer_claim_per_editor_and_mixed(cfg):
    rows = [transfer_row("recent", "recent", 0.9), transfer_row("recent", "zsre", 0.5),
            transfer_row("convsent", "convsent", 0.9), transfer_row("convsent", "zsre", 0.4)]
    write_table(cfg, "04_unseen_instructions", "transfer/summary.csv", rows)
    assert results.claim_transfer(cfg).verdict == results.REPRODUCED
    rows[-1] = transfer_row("convsent", "zsre", 0.99, half=0.01)
    write_table(cfg, "04_unseen_instructions", "transfer/summary.csv", rows)
    claim = results.claim_transfer(cfg)
    assert claim.verdict == results.MIXED and "reverse holds" in claim.evidence


def test_separation_claim_compares_the_intervals(cfg):
    def row(group, value):
        return {"group": group, "metric": "silhouette", "scope": "training tasks", "value": value,
                "ci_low": value - 0.01, "ci_high": value + 0.01, "perm_high": 0.0}

    write_table(cfg, "06_gradient_analysis", "separation.csv", [row("instructedit", 0.2), row("mend", 0.1)])
    assert results.claim_separation(cfg).verdict == results.REPRODUCED
    write_table(cfg, "06_gradient_analysis", "separation.csv", [row("instructedit", 0.1), row("mend", 0.105)])
    assert results.claim_separation(cfg).verdict == results.UNRESOLVED


def test_mixture_claims_read_chapter_6s_paired_differences(cfg):
    def diff(seed, d, method=None):
        return {"task": "zsre", "metric": "edit/acc", "diff": d, "ci_low": d - 0.05, "ci_high": d + 0.05, "n": 50,
                "seed": seed, **({"method": method} if method else {})}

    write_table(cfg, "07_task_scaling_and_balance", "scaling_differences.csv",
                [diff(0, 0.15, "instructedit"), diff(0, -0.15, "mend")])
    write_table(cfg, "07_task_scaling_and_balance", "balance_differences.csv", [diff(0, -0.09), diff(1, -0.16)])
    assert results.claim_scaling(cfg).verdict == results.REPRODUCED  # InstructEdit's, not MEND's
    balance = results.claim_balance(cfg)
    assert balance.verdict == results.REVERSED and "seed 1: -16.0" in balance.evidence


def test_claims_table_links_each_claim_to_its_chapter(cfg):
    found = results.claims(cfg)
    text = results.claims_markdown(found, "executed/{}.ipynb", "ci", "tiny")
    assert text.count("\n| ") == len(found) + 1
    assert "[Chapter 3](executed/03_multitask_and_holdout.ipynb)" in text and "profile `ci`" in text
    path = results.publish_claims(cfg, found, "tiny")
    assert path.name == "claims.md" and path.read_text() == text


def test_provenance_reads_params_and_cost(cfg):
    folder = results.chapter_dir(cfg, "01_instruction_construction")
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"model": {"name": "tiny-llama"}, "profile": "ci"}))
    (folder / "cost.json").write_text(json.dumps({"started": "2026-11-29T10:11:12+0000", "commit": "abc1234"}))
    row = results.provenance(cfg).loc["Chapter 1"]
    assert (row["model"], row["profile"], row["executed"], row["commit"]) == \
        ("tiny-llama", "ci", "2026-11-29 10:11", "abc1234")


def record(name, minutes, resumed=None):
    out = {"notebook": name, "wall_s": minutes * 60, "profile": "cpu", "model": "smollm2-135m", "device": "cpu",
           "workers": 2, "threads_per_worker": 1, "cpu": "AMD EPYC", "cores": 2, "started": "2026-11-29T10:00",
           "commit": "abc1234"}
    return out if resumed is None else {**out, "resumed": resumed}


def test_cost_table_and_summary():
    table = results.cost_table([record("01", 2.0, False), record("02", 60.0, False)])
    assert list(table["wall time (min)"]) == [2.0, 60.0] and list(table["processes × threads"]) == ["2 × 1"] * 2
    text = results.cost_summary(table, "cpu")
    assert "**62.0 min**" in text and "longest is 02 (60.0 min)" in text and "from scratch costs here" in text
    mixed = results.cost_summary(results.cost_table([record("01", 2.0, True), record("02", 1.0)]), "cpu")
    assert "1 resumed" in mixed and "For 1 (02)" in mixed and "not necessarily" in mixed
    assert "no notebook" in results.cost_summary(results.cost_table([]), "cpu")
