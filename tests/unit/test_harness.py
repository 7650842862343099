"""The evaluation harness: registry, split scoring == plain scoring, resume, instruction switch, aggregation."""
import dataclasses
import json

import pandas as pd
import pytest
import torch

from instructedit_utils.analysis import table1
from instructedit_utils.analysis import unseen
from instructedit_utils.data import instructions
from instructedit_utils.evaluation import harness
from instructedit_utils.evaluation import harness as evaluation
from instructedit_utils.evaluation import scoring
from instructedit_utils.experiments import cli as eval_cli
from instructedit_utils.experiments import settings
from instructedit_utils.experiments import settings as experiments
from instructedit_utils.methods import registry as baselines
from instructedit_utils.training import pool as training
from instructedit_utils.training import plan
from instructedit_utils.config.experiment import ExperimentConfig
from instructedit_utils.config.method import MethodConfig
from instructedit_utils.data.tasks import load_task
from instructedit_utils.methods.mend import MendEditor
from instructedit_utils.evaluation.requests import build_requests
from instructedit_utils.evaluation.harness import evaluate_method
from instructedit_utils.evaluation.summaries import paired_difference, summarize
from instructedit_utils.models.forward import FullForward
from instructedit_utils.models.forward import SplitForward
from instructedit_utils.models.batches import score_split
from instructedit_utils.models.metrics import encode_pair, score_encoded
from instructedit_utils.util.runs import RunFolder, SettingsMismatch
from helpers import tiny_editor


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def tiny(request):
    return request.getfixturevalue(request.param)


def test_registry_builds_methods_and_rejects_unknown(tiny_llama):
    model, tok = tiny_llama
    assert {"base", "mend"} <= set(baselines.REGISTRY)
    with pytest.raises(KeyError, match="No editing method 'nope'"):
        baselines.build("nope", model, tok)
    with pytest.raises(ValueError, match="registered already"):
        baselines.register("base")(lambda *a, **k: None)
    with pytest.raises(ValueError, match="exactly one"):
        baselines.build("mend", model, tok)
    method = baselines.build("mend", model, tok, editor=tiny_editor(model), name="ie")
    assert method.name == "ie" and method.use_instructions and method.first_edited_block == 2


def test_edited_context_restores_weights_and_base_is_a_no_op(tiny_llama, cf_records):
    model, tok = tiny_llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    req = build_requests(cf_records, instructions=True)[0]
    method = baselines.build("mend", model, tok, editor=tiny_editor(model))
    with method.edited(model, tok, req) as edited:
        changed = [k for k, v in edited.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(".mlp." in k for k in changed)
    with baselines.build("base", model, tok).edited(model, tok, req):
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_score_split_equals_plain_scoring(tiny):
    model, tok = tiny
    header = "Task: CounterFact\nDescription: change the fact\nInput:"
    pairs = [(header + " The capital of France is", "Paris"), (header + " Rome is in", "Italy"),
             ("hello there", "friend"), ("hello", "there friend")]
    encoded = [encode_pair(tok, p, t) for p, t in pairs]
    plain = score_encoded(model, encoded, tok.pad_token_id, batch_size=3)
    runner = SplitForward(model, 2)
    with runner.reusing_states():
        split = score_split(runner, encoded, tok.pad_token_id, batch_size=3, headers=[tok(header)["input_ids"]])
        assert runner._states  # states kept inside the block ...
        # ... and served again for prefixes of kept sequences (the edit's own inputs)
        kept = runner.lower([encoded[0].inputs], tok(header)["input_ids"])
        assert kept[0].shape[0] == len(encoded[0].inputs)
    assert runner._states is None  # ... and dropped afterwards
    # the runner of architectures that cannot be split (Gemma-3): plain forward passes, same scores
    full = score_split(FullForward(model), encoded, tok.pad_token_id, batch_size=3,
                       headers=[tok(header)["input_ids"]])
    for a, b, c in zip(plain, split, full):
        assert a.targets == b.targets == c.targets and a.predictions == b.predictions == c.predictions
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert a.logprobs == pytest.approx(c.logprobs, abs=1e-4)


def test_bfloat16_lower_blocks_change_only_the_lower_pass(tiny):
    """A model whose lower blocks run in bfloat16 (``set_lower_dtype``): the split forward's states stay float32 and
    close to the float32 ones without being equal (bfloat16 was used), scores stay close, no weight changes, and the
    float32 model it was copied from keeps its precision."""
    import copy

    from instructedit_utils.models.loading import lower_dtype_of, set_lower_dtype

    model, tok = tiny
    half = copy.deepcopy(model)
    set_lower_dtype(half, "bfloat16")
    assert lower_dtype_of(model) == "float32" and lower_dtype_of(half) == "bfloat16"
    weights = {k: v.clone() for k, v in half.state_dict().items()}
    header = tok("Task: CounterFact\nDescription: change the fact\nInput:")["input_ids"]
    pairs = [("Task: CounterFact\nDescription: change the fact\nInput: The capital of France is", "Paris"),
             ("hello there", "friend")]
    encoded = [encode_pair(tok, p, t) for p, t in pairs]
    seqs = [e.inputs for e in encoded]
    full, low = SplitForward(model, 2).lower(seqs, header, 1), SplitForward(half, 2).lower(seqs, header, 1)
    assert all(h.dtype == torch.float32 for h in low)
    assert not all(torch.equal(a, b) for a, b in zip(full, low))
    assert max(float((a - b).norm() / a.norm()) for a, b in zip(full, low)) < 2e-2
    plain = score_split(SplitForward(model, 2), encoded, tok.pad_token_id, headers=[header])
    bf16 = score_split(SplitForward(half, 2), encoded, tok.pad_token_id, headers=[header])
    for a, b in zip(plain, bf16):
        assert a.logprobs == pytest.approx(b.logprobs, abs=0.05)
    assert all(torch.equal(v, weights[k]) for k, v in half.state_dict().items())


def test_lower_dtype_is_validated_recorded_and_trained_with(tmp_path, tiny_llama):
    from instructedit_utils.config.experiment import ModelConfig
    from instructedit_utils.models.loading import load_model
    from instructedit_utils.training.trainer import train_editor

    with pytest.raises(ValueError, match=r"lower_dtype must be one of \('float32', 'bfloat16'\), got 'float16'"):
        load_model("tiny-llama", lower_dtype="float16")
    with pytest.raises(ValueError, match=r"ModelConfig.lower_dtype must be one of"):
        ModelConfig(lower_dtype="half")
    cfg = ExperimentConfig.from_parameters(run_dir=str(tmp_path), lower_dtype="bfloat16", steps=10)
    assert cfg.method.lower_dtype == "bfloat16"  # the editors train with the experiment's precision
    assert cfg.case_settings(["counterfact"], instructions=False)["model"]["lower_dtype"] == "bfloat16"
    model, tok = tiny_llama  # loaded in float32
    with pytest.raises(ValueError, match=r"instructedit: the model's lower blocks run in float32 but the config trains "
                                         r"with lower_dtype='bfloat16'"):
        train_editor(model, tok, cfg.method, tmp_path / "editor")
    assert not (tmp_path / "editor").exists()


def test_split_harness_equals_plain_harness(tiny, cf_records, convsent_records):
    model, tok = tiny
    reqs = build_requests(cf_records + convsent_records, instructions=True, seed=0)
    method = baselines.build("mend", model, tok, editor=tiny_editor(model))
    kw = dict(max_rephrases=2, max_probes=2, sentiment_responses=2)
    split = evaluate_method(method, model, tok, reqs, split=True, **kw)
    plain = evaluate_method(method, model, tok, reqs, split=False, **kw)
    assert [c["case_id"] for c in split] == [r.case_id for r in reqs]
    for a, b in zip(split, plain):
        assert a.keys() == b.keys()
        for k, v in a.items():
            assert v == pytest.approx(b[k], abs=1e-4) if isinstance(v, float) else v == b[k], k
    assert all(c["method"] == "tiny" and c["editor"] == method.fingerprint for c in split)
    assert all("base/edit/acc" in c for c in split)
    # the edits do change what the model predicts, so the comparison above is not between two unedited models
    assert any(c["edit/acc"] != c["base/edit/acc"] or c["loc/acc"] < 1.0 for c in split)


def test_unedited_scores_are_shared_between_methods_and_base_is_scored_once(tiny_llama, cf_records,
                                                                           convsent_records, tmp_path, monkeypatch):
    """Methods on the same requests reuse one unedited pass per chunk (kept in the run folder); the cases equal
    those computed without sharing; another model's weights never reuse them; the unedited model is not scored a
    second time as its own edit, and its cases equal what that second pass gives."""

    model, tok = tiny_llama
    reqs = build_requests(cf_records + convsent_records, instructions=False, seed=0)
    kw = dict(max_rephrases=2, max_probes=2, sentiment_responses=2, fluency_max_new_tokens=3)
    base, mend = baselines.build("base", model, tok), baselines.build("mend", model, tok, editor=tiny_editor(model,
                                                                                                   False))
    alone = {m.name: evaluate_method(m, model, tok, reqs, shared=False, **kw) for m in (base, mend)}
    calls = []
    real = evaluation.score_requests

    def counting(model_, tok_, requests, **kwargs):
        calls.append("edited" if kwargs.get("reference") is not None else "unedited")
        return real(model_, tok_, requests, **kwargs)

    monkeypatch.setattr(evaluation, "score_requests", counting)
    run = RunFolder(tmp_path)
    shared = {m.name: evaluate_method(m, model, tok, reqs, run=run, chunk=2, **kw) for m in (base, mend)}
    n_chunks = (len(reqs) + 1) // 2
    assert calls == ["unedited"] * n_chunks + ["edited"] * len(reqs)  # base: no edited pass; MEND: no unedited
    assert len(list((tmp_path / "unedited").glob("*.json"))) == n_chunks
    for name in alone:
        for a, b in zip(alone[name], shared[name]):
            b = {k: v for k, v in b.items() if k != "settings"}
            assert a.keys() == b.keys(), name
            for k, v in a.items():
                assert v == pytest.approx(b[k], abs=1e-5) if isinstance(v, float) else v == b[k], (name, k)
    assert all(c["loc/acc"] == 1.0 for c in shared["base"])
    # the unedited model as its own edit (the pass base no longer runs) gives the same cases
    for req, case in zip(reqs, shared["base"]):
        cases, reference = real(model, tok, [req], **kw)
        again = real(model, tok, [req], reference=reference, **kw)[0][0]
        assert again["loc/acc"] == 1.0 and again["edit/acc"] == pytest.approx(case["edit/acc"], abs=1e-6)
        assert again["generation"] == case["generation"]
    calls.clear()
    saved = model.lm_head.weight.detach().clone()
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # another model: its unedited scores are computed afresh
    try:
        evaluate_method(base, model, tok, reqs, run=RunFolder(tmp_path / "other"), chunk=2, **kw)
        other = harness.UneditedScores(tmp_path / "unedited", model, kw)
        assert not other.path(reqs[:2]).is_file()
    finally:
        with torch.no_grad():
            model.lm_head.weight.copy_(saved)
    assert calls.count("unedited") == n_chunks
    assert harness.UneditedScores(tmp_path / "unedited", model, kw).path(reqs[:2]).is_file()


def test_edited_models_generate_in_one_batch_as_one_by_one(tiny, cf_records, convsent_records):
    """applied_per_row equals applied row by row (logits), and the harness's batched Fluency generations of a
    chunk's edited models equal generating under each edit alone, for MEND and FT-L (Linear and Conv1D)."""
    from instructedit_utils.models.deltas import applied, applied_per_row
    from instructedit_utils.models.metrics import generate

    model, tok = tiny
    reqs = build_requests(cf_records + convsent_records, instructions=False, seed=0)
    mend = baselines.build("mend", model, tok, editor=tiny_editor(model, False))
    deltas = [mend.weight_deltas(model, tok, r) for r in reqs[:3]]
    ids = torch.tensor([tok(r.prompt)["input_ids"][:4] for r in reqs[:3]])
    with torch.no_grad():
        alone = []
        for row, d in zip(ids, deltas):
            with applied(model, d):
                alone.append(model(input_ids=row[None]).logits[0])
        with applied_per_row(model, deltas):
            together = model(input_ids=ids).logits
            with pytest.raises(ValueError, match="a batch of 1 rows for 3 sets"):
                model(input_ids=ids[:1])
        plain = model(input_ids=ids).logits
    assert torch.allclose(torch.stack(alone), together, atol=1e-5)
    assert not torch.allclose(plain, together, atol=1e-3)  # the deltas matter, and the hooks are gone
    kw = dict(max_rephrases=1, max_probes=1, sentiment_responses=1, fluency_max_new_tokens=6, batch_size=4,
              success_max_new_tokens=5, natural_max_new_tokens=7)
    for method in (mend, baselines.build("ft-l", model, tok, default_layers=(2, 3), lr=0.05, steps=3,
                                         norm_constraint=None)):
        batched = evaluate_method(method, model, tok, reqs, batch_generation=True, **kw)
        single = evaluate_method(method, model, tok, reqs, batch_generation=False, **kw)
        assert [c["generation"] for c in batched] == [c["generation"] for c in single], method.name
        unedited = generate(model, tok, [r.prompt for r in reqs], 6)
        assert [c["generation"] for c in batched] != unedited, method.name  # edited models generated them
        for a, b in zip(batched, single):
            assert a.keys() == b.keys()
            assert a["fluency/empty"] == b["fluency/empty"] and a.get("fluency/entropy") == b.get("fluency/entropy")
            assert a.get("edit/greedy") == b.get("edit/greedy") and a.get("gen/greedy") == b.get("gen/greedy")
            natural = ("edit/natural_em", "edit/natural_contains", "gen/natural_em", "gen/natural_contains")
            assert {k: a.get(k) for k in natural} == {k: b.get(k) for k in natural}
            assert ("edit/natural_em" in a) == (a["task"] != "convsent")
            assert ("edit/greedy" in a) == (a["task"] != "convsent")  # ConvSent's targets are sentiments


def test_harness_resumes_without_redoing_cases_and_refuses_another_editor(tiny_llama, cf_records, tmp_path,
                                                                          monkeypatch):
    model, tok = tiny_llama
    reqs = build_requests(cf_records, instructions=True, seed=0)
    method = baselines.build("mend", model, tok, editor=tiny_editor(model))
    run = RunFolder(tmp_path)
    first = evaluate_method(method, model, tok, reqs, run=run, chunk=1)
    path = run.cases_path("cases_tiny")  # killed after the first case
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    edits = []
    real = method.edited

    def counting(model_, tok_, request):
        edits.append(request.case_id)
        return real(model_, tok_, request)

    monkeypatch.setattr(method, "edited", counting)
    cases = evaluate_method(method, model, tok, reqs, run=run, chunk=1)
    assert edits == [reqs[1].case_id]  # the finished case was not redone
    assert [c["case_id"] for c in cases] == [r.case_id for r in reqs]
    assert cases == first  # resumed cases equal an uninterrupted run's
    assert len(run.read_cases("cases_tiny")) == len(reqs)
    other = baselines.build("mend", model, tok, editor=tiny_editor(model, edit_lr=1.0))
    with pytest.raises(ValueError, match="cases of another editor"):
        evaluate_method(other, model, tok, reqs, run=run)


def test_instruction_switch_follows_the_method(tiny_llama, cf_records, tmp_path, monkeypatch):
    model, tok = tiny_llama
    monkeypatch.setattr(experiments, "task_requests",
                        lambda tasks, split, n, **kw: build_requests(cf_records, instructions=kw["instructions"],
                                                                     description=kw["description"], seed=0))
    cfg = ExperimentConfig(run_dir=str(tmp_path), tasks=("counterfact",), sample_per_task=2, fluency_max_new_tokens=0)
    methods = {"on": baselines.build("mend", model, tok, editor=tiny_editor(model, True), name="on"),
               "off": baselines.build("mend", model, tok, editor=tiny_editor(model, False), name="off")}
    cases, summary = settings.multitask(cfg, model, tok, methods)
    on = [c for c in cases if c["method"] == "on"]
    off = [c for c in cases if c["method"] == "off"]
    assert all(c["instruction"] and c["description_index"] is not None for c in on)
    assert all(c["instruction"] is None for c in off)
    assert (tmp_path / "multitask" / "summary.csv").is_file()
    assert set(summary["method"]) == {"on", "off"}
    # each record draws one of the pool's held-out descriptions (never a seen one); a method without instructions
    # cannot take part
    cases, _ = settings.unseen(cfg, model, tok, methods["on"])
    held = [c for c in cases if c["condition"] == "held_out"]
    assert held and all(9 <= c["description_index"] < 14 for c in held)
    with pytest.raises(ValueError, match="without instructions"):
        settings.unseen(cfg, model, tok, methods["off"])


def test_a_metric_no_case_has_pairs_nothing():
    """ConvSent's cases carry no Generalization: pairing it gives an empty table, not a KeyError (the gpu profile's
    chapter 4 failed on it; the smoke run found it)."""
    cases = [{"case_id": "1", "task": "convsent", "method": m, "edit/acc": v} for m, v in (("a", 0.5), ("b", 1.0))]
    assert paired_difference(cases, "gen/acc", "method", "a", "b").empty
    assert paired_difference(cases, "edit/acc", "method", "a", "b").iloc[0]["diff"] == 0.5


def test_summaries_and_paired_differences_on_known_values():
    cases = [{"case_id": str(i), "task": "t", "method": m, "edit/acc": v}
             for i, (a, b) in enumerate([(0.0, 1.0), (0.5, 1.0), (1.0, 1.0), (0.5, 0.5)])
             for m, v in (("mend", a), ("ie", b))]
    s = summarize(cases, by=("method", "task"), metrics=["edit/acc"])
    means = s.set_index("method")["mean"]
    assert means["mend"] == pytest.approx(0.5) and means["ie"] == pytest.approx(0.875)
    assert (s["ci_low"] <= s["mean"]).all() and (s["mean"] <= s["ci_high"]).all()
    d = paired_difference(cases, "edit/acc", "method", "mend", "ie").iloc[0]
    assert d["diff"] == pytest.approx(0.375) and d["n"] == 4
    assert d["ci_low"] >= 0.0  # every paired difference is >= 0, so is every bootstrap mean


def test_transfer_matrix_and_relative_decay():
    summary = pd.DataFrame([
        {"train_task": a, "task": b, "metric": "edit/acc", "mean": v, "ci_low": v, "ci_high": v, "n": 1}
        for a, b, v in [("cf", "cf", 0.8), ("cf", "recent", 0.4), ("recent", "cf", 0.3), ("recent", "recent", 0.6)]])
    m = settings.transfer_matrix(summary)
    assert m.loc["cf", "recent"] == 0.4 and m.loc["recent", "cf"] == 0.3
    r = settings.transfer_matrix(summary, relative=True)
    assert r.loc["cf", "cf"] == 1.0 and r.loc["cf", "recent"] == pytest.approx(0.5)
    assert r.loc["recent", "cf"] == pytest.approx(0.5)


def test_external_descriptions_file(tmp_path):
    js = tmp_path / "d.json"
    js.write_text(json.dumps({"zsre": ["Answer the question with the new fact."]}))
    got = instructions.read_descriptions(js, ("counterfact", "zsre"))
    assert got == {"counterfact": [], "zsre": ["Answer the question with the new fact."]}
    txt = tmp_path / "d.txt"
    txt.write_text("First wording\n\nSecond wording\n")
    assert instructions.read_descriptions(txt, ("zsre",)) == {"zsre": ["First wording", "Second wording"]}
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        instructions.read_descriptions(tmp_path / "missing.txt", ("zsre",))


@pytest.mark.parametrize("name,text,message", [
    ("d.json", json.dumps({"_about": "notes", "zsre": ["x"]}), r"d\.json: key '_about' is not a task evaluated here"),
    ("d.json", json.dumps({"zsre": "one wording"}), r"d\.json: 'zsre' must be a non-empty list"),
    ("d.json", json.dumps({"zsre": ["ok", " "]}), r"d\.json: zsre\[1\]: a description must be a non-empty string"),
    ("d.json", json.dumps({"zsre": ["Say [LABEL] things"]}), r"d\.json: zsre\[0\]: \['\[LABEL\]'\] cannot be filled"),
    ("d.json", json.dumps({"convsent": ["Talk about [TOPIC] in a [LABEL] way"], "zsre": [3]}),
     r"d\.json: zsre\[0\]: a description must be"),
    ("d.json", '{"zsre": ["a",]}', r"d\.json: invalid JSON at line 1 column"),
    ("d.json", json.dumps(["a"]), r"d\.json: expected a JSON object"),
    ("d.txt", "fine\nabout [TOPIC]\n", r"d\.txt line 2 \(used for every task\): \['\[TOPIC\]'\] cannot be filled"),
    ("d.txt", "\n \n", r"d\.txt: no descriptions"),
])
def test_descriptions_file_errors_name_the_key_or_entry(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        instructions.read_descriptions(path, ("convsent", "zsre"))
    with pytest.raises(ValueError, match=message):  # the config checks the file when it is built
        ExperimentConfig(run_dir=str(tmp_path / "run"), tasks=("convsent",), descriptions_file=str(path))


def test_holdout_tasks_are_drawn_from_their_whole_file_by_default(tmp_path, monkeypatch, tiny_llama, cf_records):
    model, tok = tiny_llama
    cfg = ExperimentConfig(run_dir=str(tmp_path), tasks=("counterfact", "recent"), sample_per_task=2)
    assert cfg.splits(("counterfact", "zsre")) == {"counterfact": "test", "zsre": "all"}
    assert ExperimentConfig(run_dir=str(tmp_path), holdout_split="test").split_of("zsre") == "test"
    with pytest.raises(ValueError, match="Hold-out task 'zsre' has no split 'nope'"):
        ExperimentConfig(run_dir=str(tmp_path), holdout_split="nope")
    asked = []

    def fake_requests(tasks, split, n, **kw):
        asked.append(dict(split))
        return build_requests(cf_records, instructions=kw["instructions"], seed=0)

    monkeypatch.setattr(experiments, "task_requests", fake_requests)
    monkeypatch.setattr(ExperimentConfig, "case_settings", lambda self, tasks, **kw: {"splits": self.splits(tasks)})
    settings.holdout(cfg, model, tok, {"base": baselines.build("base", model, tok)})
    settings.multitask(cfg, model, tok, {"base": baselines.build("base", model, tok)})
    assert asked == [{"zsre": "all"}, {"counterfact": "test", "recent": "test"}]


def test_transfer_drops_are_paired_against_the_in_task_editor():
    """Table 1 as the paper's: per test task, the in-task editor's value and every other editor's paired change."""
    cases = []
    for i in range(4):
        for method, train, value in (("mend-counterfact", "counterfact", 0.8), ("mend-recent", "recent", 0.5),
                                     ("mend-zsre", "zsre", 0.6 if i % 2 else 0.4)):
            cases.append({"case_id": f"cf{i}", "task": "counterfact", "method": method, "train_task": train,
                          "edit/acc": value})
    cases.append({"case_id": "z0", "task": "zsre", "method": "mend-zsre", "train_task": "zsre", "edit/acc": 0.9})
    drops = table1.transfer_drops(cases, ["counterfact", "zsre"], metrics=("edit/acc",)).set_index(
        ["test_task", "train_task"])
    assert drops.loc[("counterfact", "counterfact"), "kind"] == "in-task"
    assert drops.loc[("counterfact", "counterfact"), "diff"] == pytest.approx(0.8)
    recent = drops.loc[("counterfact", "recent")]
    assert recent["kind"] == "drop" and recent["diff"] == pytest.approx(-0.3) and recent["n"] == 4
    assert (recent["a"], recent["b"]) == ("mend-counterfact", "mend-recent")
    assert drops.loc[("counterfact", "zsre"), "diff"] == pytest.approx(-0.3)
    assert list(drops.loc["zsre"].index) == ["zsre"]  # no other editor was tested on ZsRE: its in-task value only


def test_unseen_differences_carry_both_intervals_for_the_equivalence_test():
    cases = [{"case_id": str(i), "task": "zsre", "condition": cond, "edit/acc": v}
             for i in range(40) for cond, v in (("seen", 0.5 + 0.01 * (i % 5)), ("held_out", 0.5 + 0.01 * (i % 7)))]
    d = unseen.unseen_differences(cases, metrics=("edit/acc",)).iloc[0]
    assert d["ci_low"] <= d["ci90_low"] <= d["diff"] <= d["ci90_high"] <= d["ci_high"]
    verdict = unseen.unseen_verdicts(pd.DataFrame([d]))
    assert list(verdict["verdict"]) == ["equivalent"] and "margin ±5" in verdict["evidence"].iloc[0]
    assert d["ci_low"] > 0  # a resolved difference of about one point: equivalent within ±5, different within ±0.1
    assert unseen.unseen_verdicts(pd.DataFrame([d]), margin=0.001)["verdict"].iloc[0] == "different"


def test_single_task_editors_of_any_task_with_a_train_split(tmp_path):
    cfg = ExperimentConfig.from_parameters(run_dir=str(tmp_path), rank=8, single_tasks=["counterfact", "zsre"],
                                           transfer_tasks=["counterfact", "zsre"])
    assert set(cfg.single_task_configs(False)) == {"mend-counterfact", "mend-zsre"}
    assert cfg.single_task_configs(False)["mend-zsre"].tasks == ("zsre",)
    assert settings.transfer_config(cfg).split_of("zsre") == "test"  # its editor trained on ZsRE's train split
    with pytest.raises(KeyError, match="Unknown task .nope."):
        ExperimentConfig.from_parameters(run_dir=str(tmp_path), transfer_tasks=["nope"])
