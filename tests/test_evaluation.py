import pytest
import torch

from instructedit_utils import evaluation
from instructedit_utils.evaluation import build_requests, evaluate_unedited, score_requests, summarize, wide_table
from instructedit_utils.runs import RunFolder


def test_score_requests_keys_and_ranges(tiny_llama, cf_records, convsent_records):
    model, tok = tiny_llama
    reqs = build_requests(cf_records + convsent_records, instructions=True, seed=0)
    cases, raw = score_requests(model, tok, reqs, fluency_max_new_tokens=4)
    assert [c["case_id"] for c in cases] == [r.case_id for r in reqs]
    cf, cs = cases[0], cases[2]
    for key in ("edit/acc", "port/acc", "loc/gold_acc", "fluency/entropy"):
        assert 0.0 <= cf[key] <= 100.0
    assert "gen/acc" not in cf  # the hand-made CounterFact records have no rephrases
    assert 0.0 <= cs["sentiment/success"] <= 1.0 and "gen/acc" in cs
    assert cf["instruction"] == reqs[0].description
    assert (reqs[0].case_id, "loc", 0, 0) in raw


def test_locality_against_reference(tiny_llama, cf_records):
    model, tok = tiny_llama
    reqs = build_requests(cf_records, instructions=False)
    _, ref = score_requests(model, tok, reqs)
    same, _ = score_requests(model, tok, reqs, reference=ref)
    assert all(c["loc/acc"] == 1.0 for c in same)
    # a model whose predictions are changed everywhere disagrees with the reference
    changed = type(model)(model.config).eval()
    with torch.no_grad():
        for p in changed.parameters():
            p.zero_()
        changed.lm_head.bias = None
        changed.lm_head.weight[0].fill_(1.0)
    changed.model.norm.weight.data.fill_(1.0)
    other, _ = score_requests(changed, tok, reqs, reference=ref)
    assert any(c["loc/acc"] < 1.0 for c in other)


def test_evaluate_unedited_resumes(tmp_path, tiny_gpt2, cf_records, convsent_records, monkeypatch):
    model, tok = tiny_gpt2
    reqs = build_requests(cf_records + convsent_records, instructions=False)
    run = RunFolder(tmp_path / "run")
    first = evaluate_unedited(model, tok, reqs[:2], run=run, chunk=1)
    assert len(first) == 2
    calls = []
    real = evaluation.score_requests
    monkeypatch.setattr(evaluation, "score_requests", lambda m, t, r, **kw: calls.append(len(r)) or real(m, t, r, **kw))
    # simulate a kill mid-write: a torn last line is ignored
    with open(run.cases_path("base_cases"), "a") as fh:
        fh.write('{"case_id": "torn')
    allc = evaluate_unedited(model, tok, reqs, run=run, chunk=10)
    assert calls == [2]  # only the two unfinished cases were scored
    assert [c["case_id"] for c in allc] == [r.case_id for r in reqs]
    assert len(run.read_cases("base_cases")) == 4
    assert evaluate_unedited(model, tok, reqs, run=run) == allc and calls == [2]


def test_summarize_and_table_on_known_values():
    cases = [{"case_id": str(i), "task": t, "edit/acc": v, "fluency/entropy": 5.0, "sentiment/margin": 0.5}
             for i, (t, v) in enumerate([("a", 1.0), ("a", 0.0), ("b", 0.5), ("b", 0.5)])]
    summary = summarize(cases, n_boot=200)
    got = summary.set_index(["task", "metric"])["mean"].to_dict()
    assert got[("a", "edit/acc")] == 0.5 and got[("b", "edit/acc")] == 0.5 and got[("a", "fluency/entropy")] == 5.0
    row = summary.set_index(["task", "metric"]).loc[("b", "edit/acc")]
    assert row["ci_low"] == row["ci_high"] == 0.5 and row["n"] == 2
    table = wide_table(summary)
    assert table.loc["b", "Reliability"] == "50.0 ± 0.0"
    assert table.loc["a", "Fluency"] == "5.0 ± 0.0"
    assert table.loc["a", "Sentiment margin"] == "0.5 ± 0.0"  # log-prob margin is not a share: not scaled


def test_metric_bars_draw_only_share_metrics():
    import matplotlib

    matplotlib.use("Agg", force=True)
    from instructedit_utils.plotting import plot_metric_bars

    cases = [{"case_id": str(i), "task": t, "edit/acc": 0.5, "gen/acc": 0.25, "fluency/entropy": 5.0,
              "sentiment/margin": 1.0} for i, t in enumerate("aabb")]
    fig = plot_metric_bars(summarize(cases, n_boot=50))
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches)
    assert heights == [25.0, 25.0, 50.0, 50.0]  # 2 tasks x (Reliability, Generalization), in percent


def test_params_written(tmp_path):
    from instructedit_utils import ExperimentConfig

    cfg = ExperimentConfig.from_parameters(run_dir=str(tmp_path), model_name="tiny-llama", sample_per_task=2)
    run = RunFolder(tmp_path)
    run.write_params(cfg.to_dict())
    params = run.read_params()
    assert params["model"]["name"] == "tiny-llama" and params["sample_per_task"] == 2
    assert params["model"]["edit_layers"] == [2, 3] and "torch" in params["_versions"]


@pytest.mark.parametrize("bad", [dict(profile="huge"), dict(split="nope"), dict(batch_size=0),
                                 dict(sample_per_task=0), dict(bogus=1), dict(dtype="int8")])
def test_config_validation(bad, tmp_path):
    from instructedit_utils import ExperimentConfig

    with pytest.raises((ValueError, TypeError)):
        ExperimentConfig.from_parameters(run_dir=str(tmp_path), **bad)


def test_base_metrics_are_labelled_and_scaled():
    from instructedit_utils.evaluation import is_fraction, metric_label, summarize, wide_table

    assert metric_label("base/edit/acc") == "Base Reliability" and is_fraction("base/edit/acc")
    assert not is_fraction("base/fluency/entropy")
    cases = [{"task": "t", "edit/acc": 1.0, "base/edit/acc": 0.5}, {"task": "t", "edit/acc": 1.0, "base/edit/acc": 0.5}]
    tab = wide_table(summarize(cases, n_boot=10))
    assert tab.loc["t", "Base Reliability"] == "50.0 ± 0.0" and tab.loc["t", "Reliability"] == "100.0 ± 0.0"


def test_fluency_ignores_the_instruction_text(tiny_llama, cf_records):
    from instructedit_utils.metrics import ngram_entropy

    model, tok = tiny_llama
    req = build_requests(cf_records[:1], instructions=True, seed=0)[0]
    case = score_requests(model, tok, [req], fluency_max_new_tokens=4)[0][0]
    assert req.prompt != req.record.prompt
    assert case["fluency/entropy"] == ngram_entropy(req.record.prompt + case["generation"])
