"""The results page: each claim's verdict from hand-made run folders (reproduced, reverse, not resolved, not
measured), the claims table the intro includes, provenance, and the cost page's table and summary."""
import json

import pandas as pd
import pytest

from instructedit_utils.publish import results
from instructedit_utils.config.experiment import ExperimentConfig
from instructedit_utils.util.runs import RunFolder


@pytest.fixture
def cfg(tmp_path):
    return ExperimentConfig(run_dir=str(tmp_path / "ci" / "09_results"), profile="ci")


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


def write_done(cfg, editors):
    for name, best in editors.items():
        folder = results.chapter_dir(cfg, "02_editor_training") / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "done.json").write_text(json.dumps({"best_step": best, "step": 500}))


@pytest.mark.parametrize("mend, instructedit, verdict", [
    ([0.0] * 20, [1.0] * 20, results.REPRODUCED),
    ([1.0] * 20, [0.0] * 20, results.REVERSED),
    ([0.0, 1.0] * 10, [1.0, 0.0] * 10, results.UNRESOLVED),
    ([0.0] * 3, [1.0] * 3, f"{results.UNRESOLVED} (n < 20)"),  # three identical differences decide nothing
])
def test_holdout_claim_from_paired_cases(cfg, mend, instructedit, verdict):
    write_cases(cfg, "03_multitask_and_holdout", "holdout", "mend", cases("mend", mend))
    write_cases(cfg, "03_multitask_and_holdout", "holdout", "instructedit", cases("instructedit", instructedit))
    claim = results.claim_holdout(cfg)
    assert claim.verdict == verdict and f"n={len(mend)}" in claim.evidence
    diff = 100 * (sum(instructedit) - sum(mend)) / len(mend)
    assert f"{diff:+.1f} points" in claim.evidence
    assert "GPT2-XL zsre +42.04" in claim.paper and "LLaMA-2 zsre -0.38" in claim.paper
    assert results.claim_multitask(cfg).verdict == results.MISSING  # the other setting was not run


def test_a_claim_resting_on_an_untrained_editor_is_not_measured(cfg):
    write_cases(cfg, "03_multitask_and_holdout", "holdout", "mend", cases("mend", [0.0] * 20))
    write_cases(cfg, "03_multitask_and_holdout", "holdout", "instructedit", cases("instructedit", [1.0] * 20))
    write_done(cfg, {"mend": 0, "instructedit": 750})
    claim = results.claim_holdout(cfg)
    assert claim.verdict == results.UNTRAINED and "best step 0: mend" in claim.evidence


def test_average_claim_weighs_the_four_tasks_equally_with_the_hold_out_task(cfg):
    for setting, task, n, gain in (("multitask", "counterfact", 30, 0.1), ("holdout", "zsre", 20, 0.5)):
        write_cases(cfg, "03_multitask_and_holdout", setting, "mend", cases("mend", [0.2] * n, task))
        write_cases(cfg, "03_multitask_and_holdout", setting, "instructedit",
                    cases("instructedit", [0.2 + gain] * n, task))
    claim = results.claim_average(cfg)
    assert claim.verdict == results.REPRODUCED and "+30.0 points" in claim.evidence  # (10 + 50) / 2, not pooled
    assert "counterfact, zsre" in claim.evidence and "= 14.86 points" in claim.paper and "ZsRE included" in claim.paper


def unseen_row(task, diff, half95, half90, n=40):
    return {"task": task, "metric": "edit/acc", "diff": diff, "ci_low": diff - half95, "ci_high": diff + half95,
            "ci90_low": diff - half90, "ci90_high": diff + half90, "n": n, "a": "seen", "b": "held_out"}


@pytest.mark.parametrize("rows, verdict", [
    ([unseen_row("zsre", 0.01, 0.03, 0.025), unseen_row("recent", -0.01, 0.02, 0.015)], results.EQUIVALENT),
    ([unseen_row("zsre", -0.2, 0.05, 0.04), unseen_row("recent", -0.15, 0.05, 0.04)], results.DIFFERENT),
    ([unseen_row("zsre", 0.01, 0.03, 0.025), unseen_row("recent", -0.02, 0.09, 0.07)], results.UNRESOLVED),
    ([unseen_row("zsre", 0.0, 0.2, 0.15)], results.UNRESOLVED),  # an interval wider than the margin
])
def test_unseen_claim_is_an_equivalence_test(cfg, rows, verdict):
    write_table(cfg, "04_unseen_instructions", "unseen/differences.csv", rows)
    claim = results.claim_unseen(cfg)
    assert claim.verdict == verdict and "margin ±5" in claim.evidence and "five unseen instructions" in claim.paper


def drop(test, train, diff, half=0.05, metric="edit/acc", a=None, b=None):
    return {"test_task": test, "train_task": train, "kind": "drop", "metric": metric, "diff": diff,
            "ci_low": diff - half, "ci_high": diff + half, "n": 40, "a": a or f"mend-{test}", "b": b or f"mend-{train}"}


def test_transfer_claim_on_the_papers_blocks(cfg):
    rows = [drop("counterfact", "recent", -0.2), drop("counterfact", "zsre", -0.3), drop("zsre", "recent", -0.5),
            drop("zsre", "counterfact", -0.4), drop("counterfact", "convsent", 0.3)]  # beyond the paper: ignored
    write_table(cfg, "04_unseen_instructions", "transfer/drops.csv", rows)
    claim = results.claim_transfer(cfg)
    assert claim.verdict == results.REPRODUCED and "convsent" not in claim.evidence
    assert "counterfact block, recent editor -25.50" in claim.paper
    rows[0] = drop("counterfact", "recent", 0.2)
    write_table(cfg, "04_unseen_instructions", "transfer/drops.csv", rows)
    assert results.claim_transfer(cfg).verdict == results.MIXED
    write_done(cfg, {"mend-counterfact": 0, "mend-recent": 250, "mend-zsre": 250})
    claim = results.claim_transfer(cfg)  # the counterfact block rests on an untrained in-task editor
    assert claim.verdict == results.REPRODUCED and "not measured (editor did not train)" in claim.evidence


def sep_row(comparison, diff, half=0.01):
    return {"scope": "training tasks", "metric": "silhouette", "comparison": comparison, "diff": diff,
            "ci_low": diff - half, "ci_high": diff + half, "n": 60}


@pytest.mark.parametrize("trained_gain, text_gain, says", [
    (0.05, 0.0, "training separates the tasks"),
    (0.0, 0.05, "the instruction text separates the tasks"),
    (0.05, 0.05, "already separates the tasks before training, and training separates them further"),
])
def test_separation_claim_and_its_control(cfg, trained_gain, text_gain, says):
    write_table(cfg, "06_gradient_analysis", "separation_differences.csv", [
        sep_row("instructedit − mend", 0.08), sep_row("instructedit − instructedit@0", trained_gain),
        sep_row("instructedit@0 − mend@0", text_gain)])
    claim = results.claim_separation(cfg)
    assert claim.verdict == results.REPRODUCED and says in claim.evidence


def test_mixture_claims_read_chapter_7s_paired_differences(cfg):
    def diff(seed, d, method=None, arm=None, metric="edit/acc", task="zsre"):
        return {"task": task, "metric": metric, "diff": d, "ci_low": d - 0.05, "ci_high": d + 0.05, "n": 50,
                "seed": seed, "a": f"dominated-{seed}", "b": f"{arm or method}-{seed}",
                **({"method": method} if method else {}), **({"arm": arm} if arm else {})}

    write_table(cfg, "07_task_scaling_and_balance", "scaling_differences.csv",
                [diff(0, 0.15, "instructedit"), diff(0, -0.15, "mend")])
    write_table(cfg, "07_task_scaling_and_balance", "balance_differences.csv", [
        diff(0, -0.09, arm="paper-balanced"), diff(1, -0.16, arm="paper-balanced"), diff(0, 0.2, arm="uniform"),
        diff(0, 0.1, arm="paper-balanced", metric="loc/acc"), diff(1, 0.1, arm="paper-balanced", metric="loc/acc")])
    assert results.claim_scaling(cfg).verdict == results.REPRODUCED  # InstructEdit's, not MEND's
    balance = results.claim_balance(cfg)
    assert balance.verdict == results.REVERSED and "seed 1: reverse holds (-16.0 points" in balance.evidence
    assert "Locality: zsre higher with the balanced data" in balance.evidence
    assert "18.23 → 25.55" in balance.paper and "1,427" in balance.paper


def test_claims_table_links_each_claim_to_its_chapter(cfg):
    found = results.claims(cfg)
    text = results.claims_markdown(found, "executed/{}.ipynb", "ci", "tiny")
    assert text.count("\n| ") == len(found) + 1 and "the paper's numbers" in text
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
