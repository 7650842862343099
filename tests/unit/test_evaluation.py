import dataclasses
import json
import math
import re

import pytest
import torch

from instructedit_utils.evaluation import harness
from instructedit_utils.evaluation import harness as evaluation
from instructedit_utils.evaluation import scoring
from instructedit_utils.evaluation.requests import build_requests
from instructedit_utils.evaluation.harness import evaluate_unedited
from instructedit_utils.evaluation.summaries import is_fraction, metric_label, summarize, wide_table
from instructedit_utils.evaluation.scoring import score_requests
from instructedit_utils.util.runs import RunFolder, SettingsMismatch


def test_score_requests_keys_and_ranges(tiny_llama, cf_records, convsent_records):
    model, tok = tiny_llama
    reqs = build_requests(cf_records + convsent_records, instructions=True, seed=0)
    cases, raw = score_requests(model, tok, reqs, fluency_max_new_tokens=4)
    assert [c["case_id"] for c in cases] == [r.case_id for r in reqs]
    cf, cs = cases[0], cases[2]
    for key in ("edit/acc", "port/acc", "loc/gold_acc"):
        assert 0.0 <= cf[key] <= 1.0  # shares, not percent
    # Fluency: bits of a weighted mean of bi- and trigram entropies, at most the entropy of all-distinct bigrams
    n_words = len(re.findall(r"\w+|[^\w\s]", cf["generation"]))
    assert 0.0 < cf["fluency/entropy"] <= math.log2(n_words - 1)
    assert "gen/acc" not in cf  # the hand-made CounterFact records have no rephrases
    assert 0.0 <= cs["sentiment/success"] <= 1.0 and "gen/acc" not in cs  # the paper has no ConvSent Generalization
    # ConvSent's Reliability is its sentiment edit success; the unedited model keeps the topic (z_topic = 1)
    assert cs["edit/acc"] == cs["sentiment/es"] == pytest.approx(cs["sentiment/z_sent"])
    assert cs["sentiment/z_topic"] == 1.0 and 0.0 <= cs["edit/token_acc"] <= 1.0
    assert cf["instruction"] == reqs[0].description
    assert (reqs[0].case_id, "loc", 0, 0) in raw
    assert (reqs[2].case_id, "sent", "t", 0) in raw and (reqs[2].case_id, "sent", "o", 0) not in raw
    scored, _ = score_requests(model, tok, reqs, reference=raw)  # against its own scores: the same values
    assert scored[2]["sentiment/es"] == pytest.approx(cs["sentiment/es"]) and scored[2]["loc/acc"] == 1.0


def test_convsent_scores_responses_other_than_the_edits_own_target(convsent_records):
    req = build_requests(convsent_records, instructions=False)[0]  # Moscow, positive; target " I love it."
    targets, opposite = scoring.sentiment_responses_of(req, 4)
    assert req.target == "I love it." and targets == ("Great city.",) and opposite == ("I hate it.", "Too cold.")
    alone = build_requests([dataclasses.replace(convsent_records[0], positive_responses=("I love it.",))],
                           instructions=False)[0]
    with pytest.raises(ValueError, match=r"hand_convsent.json record 0\): no positive response other than"):
        scoring.sentiment_responses_of(alone, 4)


def test_convsent_locality_is_the_next_topic_with_both_sentiments(convsent_records):
    probes = convsent_records[0].locality
    assert [p.prompt for p in probes] == ["What do you think of tea?"] * 4
    assert [p.answers[0] for p in probes] == ["Tea is lovely.", "Tea is bland.", "I like a cup.", "Not my drink."]


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


def _interrupt(run, name, keep):
    """Simulate a run killed after ``keep`` cases: keep those lines and a torn half line after them."""
    path = run.cases_path(name)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]) + '{"case_id": "torn')


def test_evaluate_unedited_resumes(tmp_path, tiny_gpt2, cf_records, convsent_records, monkeypatch):
    model, tok = tiny_gpt2
    reqs = build_requests(cf_records + convsent_records, instructions=False)
    run = RunFolder(tmp_path / "run")
    first = evaluate_unedited(model, tok, reqs, run=run, chunk=1)
    assert len(first) == 4 and all(c["settings"] == first[0]["settings"] for c in first)
    _interrupt(run, "base_cases", 2)
    calls = []
    real = evaluation.score_requests
    monkeypatch.setattr(evaluation, "score_requests", lambda m, t, r, **kw: calls.append(len(r)) or real(m, t, r, **kw))
    allc = evaluate_unedited(model, tok, reqs, run=run, chunk=10)
    assert calls == [2]  # only the two unfinished cases were scored; the torn line was dropped
    assert [c["case_id"] for c in allc] == [r.case_id for r in reqs]
    assert allc == first
    assert len(run.read_cases("base_cases")) == 4
    assert evaluate_unedited(model, tok, reqs, run=run) == allc and calls == [2]


def test_resume_with_other_settings_is_refused_naming_file_and_fields(tmp_path, tiny_gpt2, cf_records):
    model, tok = tiny_gpt2
    reqs = build_requests(cf_records, instructions=False)
    run = RunFolder(tmp_path / "run")
    settings = {"model": {"name": "tiny-gpt2"}, "sample_per_task": 2, "data": {"f.json": "aaaa"}}
    evaluate_unedited(model, tok, reqs, run=run, settings=settings, max_probes=3)
    assert json.loads(run.settings_path("base_cases").read_text())["settings"]["scoring"]["max_probes"] == 3
    # the same settings resume (nothing to do); any changed field is refused, every changed field is named
    assert len(evaluate_unedited(model, tok, reqs, run=run, settings=settings, max_probes=3)) == 2
    changed = {**settings, "sample_per_task": 5, "data": {"f.json": "bbbb"}}
    with pytest.raises(SettingsMismatch) as err:
        evaluate_unedited(model, tok, reqs, run=run, settings=changed, max_probes=2)
    msg = str(err.value)
    assert str(run.cases_path("base_cases")) in msg
    for field in ("sample_per_task: 2 → 5", 'data/f.json: "aaaa" → "bbbb"', "scoring/max_probes: 3 → 2"):
        assert field in msg
    assert "model" not in msg.split("—")[1]  # unchanged fields are not listed
    with pytest.raises(SettingsMismatch, match="requests"):  # other requests (e.g. instructions on) are refused
        evaluate_unedited(model, tok, build_requests(cf_records, instructions=True), run=run, settings=settings,
                          max_probes=3)
    with pytest.raises(SettingsMismatch, match="fluency_max_new_tokens: 0 → 4"):
        evaluate_unedited(model, tok, reqs, run=run, settings=settings, max_probes=3, fluency_max_new_tokens=4)
    # a case file without a settings record (an older version) is refused, not trusted
    run.settings_path("base_cases").unlink()
    with pytest.raises(SettingsMismatch, match="no record of the settings"):
        evaluate_unedited(model, tok, reqs, run=run, settings=settings, max_probes=3)


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
    from instructedit_utils.analysis.plotting import plot_metric_bars

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


@pytest.mark.parametrize("bad, error, says", [
    (dict(profile="huge"), ValueError, "profile must be one of"), (dict(split="nope"), ValueError, "has no split 'nope'"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(sample_per_task=0), ValueError, "sample_per_task must be >= 1"),
    (dict(bogus=1), TypeError, r"Unknown experiment parameter\(s\): \['bogus'\]"),
    (dict(dtype="int8"), ValueError, "dtype must be float32/float16/bfloat16, got 'int8'")])
def test_config_validation(bad, error, says, tmp_path):
    from instructedit_utils import ExperimentConfig

    with pytest.raises(error, match=says):
        ExperimentConfig.from_parameters(run_dir=str(tmp_path), **bad)


def test_base_metrics_are_labelled_and_scaled():
    from instructedit_utils.evaluation.summaries import is_fraction, metric_label, summarize, wide_table

    assert metric_label("base/edit/acc") == "Base Reliability" and is_fraction("base/edit/acc")
    assert not is_fraction("base/fluency/entropy")
    cases = [{"task": "t", "edit/acc": 1.0, "base/edit/acc": 0.5}, {"task": "t", "edit/acc": 1.0, "base/edit/acc": 0.5}]
    tab = wide_table(summarize(cases, n_boot=10))
    assert tab.loc["t", "Base Reliability"] == "50.0 ± 0.0" and tab.loc["t", "Reliability"] == "100.0 ± 0.0"


def test_fluency_scores_the_continuation_only(tiny_llama, cf_records, monkeypatch):
    from instructedit_utils.models.metrics import ngram_entropy

    model, tok = tiny_llama
    req = build_requests(cf_records[:1], instructions=True, seed=0)[0]
    assert req.prompt != req.record.prompt
    for text, empty in (("the cat sat on the mat . the cat", 0.0), ("", 1.0), ("Paris .", 1.0), ("Paris is", 1.0),
                        ("Paris is big", 0.0)):
        monkeypatch.setattr(scoring, "generate", lambda *a, **k: [text])
        case = score_requests(model, tok, [req], fluency_max_new_tokens=4)[0][0]
        assert case["generation"] == text and case["fluency/empty"] == empty
        if empty:
            assert "fluency/entropy" not in case  # an empty continuation has no Fluency (not the prompt's)
        else:
            assert case["fluency/entropy"] == ngram_entropy(text)
    # 3 distinct bigrams (log2 3 bits) and 2 distinct trigrams (1 bit), weighted 2/3 and 4/3
    assert ngram_entropy("a b c d") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)


def test_fluency_and_empty_share_summarised():
    cases = [{"task": "t", "fluency/empty": 1.0}, {"task": "t", "fluency/empty": 0.0, "fluency/entropy": 3.0}]
    s = summarize(cases, n_boot=10).set_index("metric")
    assert s.loc["fluency/empty", "mean"] == 0.5 and s.loc["fluency/entropy", "n"] == 1
    assert is_fraction("fluency/empty") and metric_label("fluency/empty") == "Empty generations"
    # a group whose continuations were all empty has no Fluency row; columns keep the metrics' own order
    two = summarize([{**c, "task": "u"} for c in cases[:1]] + cases, n_boot=10)
    assert list(wide_table(two).columns) == ["Fluency", "Empty generations"]


def test_greedy_success_per_request_and_its_generation_length(tiny_llama, cf_records, convsent_records):
    from instructedit_utils.evaluation.harness import case_settings
    from instructedit_utils.evaluation.scoring import greedy_success

    _, tok = tiny_llama
    reqs = build_requests(cf_records + convsent_records[:1], instructions=False, seed=0)
    asked = {}

    def fake_generate(prompts, owners, n):  # edit prompts continue with their target, rephrases do not
        asked.update(prompts=list(prompts), owners=list(owners), n=n)
        return [f" {reqs[c].target} and more" if p == reqs[c].prompt else " something else"
                for p, c in zip(prompts, owners)]

    out = greedy_success(reqs, tok, max_rephrases=2, max_new_tokens=50, generate_fn=fake_generate)
    n_reph = [min(2, len(r.rephrases)) for r in reqs[:2]]
    assert asked["owners"] == [0] * (1 + n_reph[0]) + [1] * (1 + n_reph[1])  # ConvSent asks for nothing
    longest = max(len(tok(" " + r.target)["input_ids"]) for r in reqs[:2])
    assert asked["n"] == min(50, longest + 2)
    assert [o.get("edit/greedy") for o in out] == [1.0, 1.0, None]
    assert [o.get("gen/greedy") for o in out[:2]] == [0.0 if k else None for k in n_reph] and out[2] == {}
    # off by default, so case files written before the option existed keep their settings
    assert "success_max_new_tokens" not in case_settings(reqs, {"fluency_max_new_tokens": 4})["scoring"]
    assert case_settings(reqs, {"success_max_new_tokens": 8})["scoring"]["success_max_new_tokens"] == 8
    assert "natural_max_new_tokens" not in case_settings(reqs, {})["scoring"]
    assert case_settings(reqs, {"natural_max_new_tokens": 16})["scoring"]["natural_max_new_tokens"] == 16
    assert "natural_rephrases" not in case_settings(reqs, {"natural_max_new_tokens": 16})["scoring"]
    assert case_settings(reqs, {"natural_rephrases": 0})["scoring"]["natural_rephrases"] == 0


def test_case_files_of_convsent_record_its_measure(cf_records, convsent_records):
    with_cs = harness.case_settings(build_requests(cf_records + convsent_records, instructions=False), {})
    without = harness.case_settings(build_requests(cf_records, instructions=False), {})
    assert with_cs["convsent_measure"] == harness.CONVSENT_MEASURE and "convsent_measure" not in without
