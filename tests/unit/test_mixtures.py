"""Chapter 7's training mixtures: sampler proportions, mixture configs, which folder holds each editor, budget
snapshots of a longer run, gradient-norm summaries and verdicts."""
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from instructedit_utils.analysis import findings
from instructedit_utils.methods import mend
from instructedit_utils.training import plan as plans
from instructedit_utils.training import step
from instructedit_utils.training import trainer
from instructedit_utils.config.studies import PAPER_TRAIN_SIZES, MixtureConfig
from instructedit_utils.config.experiment import ExperimentConfig
from instructedit_utils.config.method import MethodConfig
from instructedit_utils.evaluation.requests import build_requests
from instructedit_utils.evaluation.gradients import Sketch, editing_areas
from instructedit_utils.util.runs import RunFolder

from test_gradients import _editor, _records as _cf_records
from helpers import editor_state as _state, tiny_method_config as _config
from test_training import _train


def test_sampler_draws_tasks_in_the_configured_proportions():
    records = {t: [(t, i) for i in range(n)] for t, n in (("recent", 5), ("counterfact", 7), ("convsent", 3))}
    weights = dict(PAPER_TRAIN_SIZES)
    sampler = step.TaskSampler(records, weights, seed=0)
    rng = random.Random(1)
    n = 40000
    counts = {t: 0 for t in records}
    for _ in range(n):
        counts[sampler.draw(rng)[0]] += 1
    total = sum(weights.values())
    for task, w in weights.items():
        assert counts[task] / n == pytest.approx(w / total, abs=0.01), task


def test_mixture_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="dominant_weights must be >= 0"):
        MixtureConfig(dominant_weights={"recent": -1.0, "counterfact": 2.0})
    with pytest.raises(ValueError, match="not all zero"):
        MixtureConfig(dominant_weights={"recent": 0.0, "counterfact": 0.0})
    with pytest.raises(ValueError, match="distinct seeds"):
        MixtureConfig(balance_seeds=(1, 1))
    with pytest.raises(ValueError, match=r"names task\(s\) \['zsre'\]"):
        ExperimentConfig.from_parameters(run_dir="x", dominant_weights={"zsre": 1.0, "recent": 1.0})
    with pytest.raises(ValueError, match=r"scaling_order names task\(s\) \['zsre'\]"):
        ExperimentConfig.from_parameters(run_dir="x", scaling_order=["recent", "zsre"])
    with pytest.raises(ValueError, match="keep_best_at: 300 is not a validation step"):
        MethodConfig(steps=1000, val_every=250, keep_best_at=(300,))


def _cfg(tmp_path, **over):
    params = dict(run_dir=str(tmp_path / "02_editor_training"), rank=8, steps=1000, val_every=250,
                  single_task_steps=500, mixture_steps=500, balance_seeds=[0, 1])
    return ExperimentConfig.from_parameters(**{**params, **over})


def test_plan_reuses_equal_editors_keeps_budgets_and_trains_the_rest(tmp_path):
    cfg = _cfg(tmp_path)
    plan = plans.plan(cfg)
    where = {(e.experiment, e.label): e.folder for e in plan.editors}
    assert where[("scaling", "mend-recent")] == "mend-recent"  # Table 1's single-task editor, same config
    assert where[("scaling", "instructedit-recent+counterfact+convsent")] == "instructedit@500"
    assert where[("scaling", "mend-recent+counterfact+convsent")] == "mend@500"
    assert where[("balance", "instructedit-recent+counterfact+convsent")] == "instructedit@500"
    assert where[("balance", "instructedit-recent+counterfact+convsent-seed1")] == \
        "instructedit-recent+counterfact+convsent-seed1"
    train = plan.train
    assert train["instructedit"].keep_best_at == (500,) and train["mend"].keep_best_at == (500,)
    assert train["ke"].keep_best_at == ()
    new = set(train) - set(cfg.editor_configs()) - set(cfg.single_task_configs(False))
    assert new == {"instructedit-recent", "instructedit-recent+counterfact", "mend-recent+counterfact",
                   "instructedit-convsent-dominated", "instructedit-recent+counterfact+convsent-seed1",
                   "instructedit-convsent-dominated-seed1", "instructedit-paper-balanced",
                   "instructedit-paper-balanced-seed1"}
    dom = train["instructedit-convsent-dominated-seed1"]
    assert dom.seed == 1 and dom.steps == 500 and dom.task_weights == {t: float(PAPER_TRAIN_SIZES[t])
                                                                        for t in dom.tasks}
    bal = train["instructedit-paper-balanced"]
    assert bal.task_weights == {"counterfact": 1455.0, "recent": 570.0, "convsent": 1427.0}  # Fig. 4d's set
    assert train["instructedit-recent+counterfact"].tasks == ("counterfact", "recent")  # chapter 2's task order
    assert plans.training_configs(cfg) == train
    shares = dict(next(e for e in plan.editors if e.mixture == plans.DOMINATED).weights)
    assert shares["convsent"] == pytest.approx(14390 / (570 + 1455 + 14390))


def test_uniform_seeds_choose_the_uniform_arms_own_seeds(tmp_path):
    plan = plans.plan(_cfg(tmp_path, uniform_seeds=[0]))
    arms = sorted((e.mixture, e.seed) for e in plan.editors if e.experiment == plans.BALANCE)
    assert arms == [(plans.DOMINATED, 0), (plans.DOMINATED, 1), (plans.BALANCED, 0), (plans.BALANCED, 1),
                    (plans.UNIFORM, 0)]
    assert "instructedit-recent+counterfact+convsent-seed1" not in plan.train
    with pytest.raises(ValueError, match="balanced_weights names task"):
        _cfg(tmp_path, balanced_weights={"zsre": 1.0})


def test_plan_trains_a_budget_that_is_not_a_validation_step_and_reuses_an_equal_budget(tmp_path):
    odd = plans.plan(_cfg(tmp_path, mixture_steps=300))
    assert {e.folder for e in odd.editors if e.n_tasks == 3 and e.seed == 0 and e.mixture == plans.UNIFORM} == {
        "instructedit-recent+counterfact+convsent", "mend-recent+counterfact+convsent"}
    assert odd.train["instructedit"].keep_best_at == ()
    same = plans.plan(_cfg(tmp_path, mixture_steps=None, single_task_steps=None))
    assert {e.folder for e in same.editors if e.n_tasks == 3 and e.seed == 0 and e.mixture == plans.UNIFORM} == {
        "instructedit", "mend"}
    assert {e.folder for e in same.editors if e.n_tasks == 1} == {"instructedit-recent", "mend-recent"}


def test_mixture_config_round_trips_through_params_json(tmp_path):
    cfg = _cfg(tmp_path, dominant_weights={"recent": 1, "counterfact": 2, "convsent": 30}, scaling_seeds=[0, 2])
    RunFolder(cfg.run_dir).write_params(cfg.to_dict())
    raw = json.loads((tmp_path / "02_editor_training" / "params.json").read_text())
    back = ExperimentConfig(**{k: v for k, v in raw.items() if not k.startswith("_")})
    assert back.to_dict() == cfg.to_dict() and back.mixtures == cfg.mixtures
    reader = ExperimentConfig(run_dir=str(tmp_path / "07_task_scaling_and_balance"))
    assert plans.trained_plan(reader).editors == plans.plan(cfg).editors


def test_trained_plan_needs_chapter_2_with_mixtures(tmp_path):
    reader = ExperimentConfig(run_dir=str(tmp_path / "06"))
    with pytest.raises(FileNotFoundError, match="02_editor_training"):
        plans.trained_plan(reader)
    plain = ExperimentConfig.from_parameters(run_dir=str(tmp_path / "02_editor_training"), rank=8)
    RunFolder(plain.run_dir).write_params(plain.to_dict())
    with pytest.raises(ValueError, match="without mixture editors"):
        plans.trained_plan(reader)


def test_kept_budget_is_the_editor_a_run_with_that_budget_gives(tiny_llama, tmp_path):
    model, tok = tiny_llama
    short = _train(model, tok, _config(steps=3), tmp_path / "short")
    long = _train(model, tok, _config(steps=6, keep_best_at=(3,)), tmp_path / "tiny")
    kept = tmp_path / "tiny@3"
    assert trainer.is_trained(kept) and long.summary["step"] == 6
    done = json.loads((kept / trainer.DONE_FILE).read_text())
    assert done["stop_reason"] == "budget" and done["best_step"] == short.summary["best_step"]
    assert done["best"] == pytest.approx(short.summary["best"])
    loaded = mend.MendEditor.load(kept, model)
    assert loaded.config.steps == 3 and loaded.config.name == "tiny@3" and loaded.config.keep_best_at == ()
    a, b = _state(short.editor), _state(loaded)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_norm_summary_hand_computed():
    norms = pd.DataFrame({"group": ["g"] * 4 + ["h"], "task": ["a", "a", "a", "b", "a"],
                          "norm": [1.0, 2.0, 3.0, 5.0, 4.0]})
    s = findings.norm_summary(norms).set_index(["group", "task"])
    row = s.loc[("g", "a")]
    assert row["count"] == 3 and row["mean"] == 2.0 and row["median"] == 2.0 and row["max"] == 3.0
    assert row["q90"] == pytest.approx(2.8)  # linear interpolation between 2 and 3
    assert row["cv"] == pytest.approx(np.sqrt(2 / 3) / 2)
    assert s.loc[("g", "b"), "cv"] == 0.0 and s.loc[("h", "a"), "count"] == 1


def test_norm_summary_of_a_tiny_models_editing_areas_equals_explicit_gradients(tiny_llama):
    """The per-task summary of the collected norms equals the one computed from each edit's explicitly formed
    transformed gradient over all edited matrices."""
    model, tok = tiny_llama
    editor = _editor(model)
    reqs = build_requests(_cf_records(6), instructions=True, seed=0)
    areas = editing_areas(editor, model, tok, reqs, Sketch(editor.targets, 32, seed=1), batch_edits=4)
    explicit = []
    for r in reqs:
        result = editor.edit(model, tok, r.prompt, r.target, header=r.header)
        total = sum(float(torch.linalg.norm(result.deltas[t.name] / editor.step_size(t.name).detach())) ** 2
                    for t in editor.targets)
        explicit.append(total ** 0.5)
    tasks = ["x", "y"] * 3
    collected = np.sqrt(sum(np.asarray(areas.norms[t.name]) ** 2 for t in editor.targets))
    got = findings.norm_summary(pd.DataFrame({"group": "e", "task": tasks, "norm": collected}))
    want = findings.norm_summary(pd.DataFrame({"group": "e", "task": tasks, "norm": explicit}))
    pd.testing.assert_frame_equal(got, want, rtol=1e-3)
    for task in ("x", "y"):
        vals = [v for v, t in zip(explicit, tasks) if t == task]
        row = got[got["task"] == task].iloc[0]
        assert row["mean"] == pytest.approx(np.mean(vals), rel=1e-3)
        assert row["max"] == pytest.approx(max(vals), rel=1e-3)


def test_verdicts_from_paired_differences():
    def diffs(*cis):
        return pd.DataFrame([{"task": "zsre", "metric": "edit/acc", "method": "instructedit", "seed": s,
                              "diff": (lo + hi) / 2, "ci_low": lo, "ci_high": hi, "n": 50, "a": f"few{s}",
                              "b": f"most{s}"} for s, (lo, hi) in enumerate(cis)])
    assert findings.verdict(diffs((0.01, 0.2), (0.05, 0.1)), "zsre")["verdict"] == "reproduced"
    assert findings.verdict(diffs((-0.2, -0.01)), "zsre")["verdict"] == "reverse holds"
    mixed = findings.verdict(diffs((0.01, 0.2), (-0.1, 0.05)), "zsre")
    assert mixed["verdict"] == "not resolved" and mixed["seed_spread"] == pytest.approx(0.105 - (-0.025))
    assert findings.verdict(diffs((0.01, 0.2), (-0.2, -0.1)), "zsre")["verdict"] == "mixed"
    assert findings.verdict(diffs((0.01, 0.2)), "recent")["verdict"] == "not measured"
    gated = findings.verdict(diffs((0.01, 0.2), (0.05, 0.1)), "zsre", done={"few0": {"best_step": 0},
                                                                          "most0": {"best_step": 250},
                                                                          "few1": {"best_step": 250},
                                                                          "most1": {"best_step": 500}})
    assert gated["verdict"] == "reproduced" and "seed 0: not measured (editor did not train)" in gated["text"]


def test_best_steps_flag_editors_that_did_not_train(tmp_path):
    plan = plans.plan(_cfg(tmp_path))
    done = {e.folder: {"best_step": 0 if e.mixture == plans.DOMINATED else 250, "step": 500, "best": 0.5}
            for e in plan.editors}
    table = findings.best_steps(plan, done)
    assert not table.loc["instructedit-convsent-dominated", "trained"]
    assert table.loc["instructedit-paper-balanced", "best step"] == 250
