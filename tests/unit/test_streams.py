"""Sequential editing: edit streams of every kind of method (weight deltas, GRACE's codebook, CaliNet's slots) and
the stream evaluation of the harness, on tiny random models and hand-made records."""
import math

import pytest
import torch

from helpers import tiny_editor
from instructedit_utils.evaluation import streams as streams_module
from instructedit_utils.evaluation.harness import evaluate_method
from instructedit_utils.evaluation.requests import build_requests
from instructedit_utils.evaluation.streams import checkpoints, evaluate_batches, evaluate_stream, evaluate_streams
from instructedit_utils.methods import registry
from instructedit_utils.methods.registry import EditingMethod, StreamBroken
from instructedit_utils.models.deltas import applied
from instructedit_utils.models.metrics import encode_pair, perplexity
from instructedit_utils.util.runs import RunFolder, SettingsMismatch
from conftest import cf_row
from instructedit_utils.data.tasks import parse_records

FTL = dict(default_layers=(2, 3), lr=0.05, steps=3, norm_constraint=None)


def _records():
    rows = [cf_row(), cf_row(subject="Paris", prompt="Paris is the capital of", target_new="Germany",
                             ground_truth="France", rephrase="The country whose capital is Paris is"),
            cf_row(subject="Rome", prompt="Rome is the capital of", target_new="Spain", ground_truth="Italy"),
            cf_row(subject="Oslo", prompt="Oslo lies in", target_new="Chile", ground_truth="Norway")]
    return parse_records("counterfact", rows, "stream.json").records


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _logprob(model, tok, prompt, target) -> float:
    enc = encode_pair(tok, prompt, target)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0].log_softmax(-1)
    return sum(float(logits[p - 1, t]) for p, t in zip(enc.target_positions, enc.targets))


@pytest.mark.parametrize("kind", ["ft-l", "mend"])
def test_a_stream_of_deltas_equals_the_deltas_applied_one_by_one_on_the_model_each_left(tiny_llama, kind):
    model, tok = tiny_llama
    reqs = build_requests(_records()[:3], instructions=False)
    method = (registry.build("ft-l", model, tok, **FTL) if kind == "ft-l"
              else registry.build("mend", model, tok, editor=tiny_editor(model, False)))
    before = _state(model)
    with method.stream(model, tok) as stream:
        for r in reqs:
            stream.add(r)
        assert stream.steps == 3
        streamed = _state(model)
    assert _same(model, before)  # restored bit for bit
    # independently: each edit computed on the model the previous ones left, applied by hand
    with applied(model, method.weight_deltas(model, tok, reqs[0])):
        with applied(model, method.weight_deltas(model, tok, reqs[1])):
            with applied(model, method.weight_deltas(model, tok, reqs[2])):
                by_hand = _state(model)
    assert all(torch.equal(streamed[k], by_hand[k]) for k in by_hand)
    assert not _same(model, streamed)  # the edits changed something
    # the second edit depends on the first: computed on the unedited model it differs
    on_base = method.weight_deltas(model, tok, reqs[1])
    with applied(model, method.weight_deltas(model, tok, reqs[0])):
        on_first = method.weight_deltas(model, tok, reqs[1])
    assert any(not torch.equal(on_base[k], on_first[k]) for k in on_base)
    assert _same(model, before)


def test_grace_codebook_and_calinet_slots_accumulate_and_restore_exactly(tiny_llama):
    model, tok = tiny_llama
    reqs = build_requests(_records(), instructions=False)
    before, hooks = _state(model), _hooks(model)
    ids = torch.tensor([tok(reqs[0].prompt)["input_ids"]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    p0 = _logprob(model, tok, reqs[0].prompt, reqs[0].target)
    grace = registry.build("grace", model, tok, default_layers=(2, 3), eps_init=0.05, steps=15, lr=1.0, stop_loss=None)
    calinet = registry.build("calinet", model, tok, default_layers=(2, 3), steps=15, lr=5e-2, slots=4)
    for method, size in ((grace, lambda s: len(s.codebook)), (calinet, lambda s: len(s.slots))):
        with method.stream(model, tok) as stream:
            for t, r in enumerate(reqs, 1):
                stream.add(r)
                assert size(stream) == t, method.name  # one entry / one set of slots per edit
                assert _hooks(model) == hooks + 1, method.name  # one adaptor, however many edits
            # the first edit still holds after the last
            assert _logprob(model, tok, reqs[0].prompt, reqs[0].target) > p0 + 0.2, method.name
            if method is calinet:
                assert stream.merged().keys.shape[0] == 4 * len(reqs)
                keys = [s.keys for s in stream.slots]
                assert not torch.equal(keys[0], keys[1])  # each edit's slots have keys of their own
        assert _hooks(model) == hooks and _same(model, before), method.name
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, plain), method.name


class _NaNAt(EditingMethod):
    """Weight deltas that are small and finite, except the ``bad``-th edit's, which holds a NaN."""

    name = "nan-at"

    def __init__(self, model, bad: int):
        self.param = next(n for n, p in model.named_parameters() if n.endswith("mlp.down_proj.weight"))
        self.shape = dict(model.named_parameters())[self.param].shape
        self.bad, self.calls = bad, 0
        self.first_edited_block = None

    def weight_deltas(self, model, tokenizer, request):
        self.calls += 1
        delta = torch.full(self.shape, 1e-3)
        if self.calls == self.bad:
            delta[0, 0] = float("nan")
        return {self.param: delta}


def test_a_nan_in_the_third_edit_is_reported_at_step_3(tiny_llama):
    model, tok = tiny_llama
    reqs = build_requests(_records(), instructions=False)
    before = _state(model)
    rows = evaluate_stream(_NaNAt(model, 3), model, tok, reqs, points=(1, 2), max_rephrases=1, max_probes=1)
    assert _same(model, before)
    broken = rows[-1]
    assert broken["when"] == "broken" and broken["after"] == 3 and broken["case_id"] == reqs[2].case_id
    assert "non-finite weight change" in broken["error"]
    assert [r["after"] for r in rows if r["when"] == "edit"] == [1, 2]  # nothing after the break is scored
    assert {r["after"] for r in rows if r["when"] == "retention"} == {1, 2}
    with pytest.raises(StreamBroken, match="broke at edit 3"):
        with _NaNAt(model, 3).stream(model, tok) as stream:
            for r in reqs:
                stream.add(r)
    assert _same(model, before)
    # an optimisation that diverges breaks the stream at its first edit
    ftl = registry.build("ft-l", model, tok, **{**FTL, "lr": float("inf")})
    rows = evaluate_stream(ftl, model, tok, reqs, max_rephrases=1, max_probes=1)
    assert rows[-1]["when"] == "broken" and rows[-1]["after"] == 1 and "ft-l: non-finite" in rows[-1]["error"]
    assert _same(model, before)


def test_retention_after_one_edit_equals_the_single_edit_result(tiny_llama):
    model, tok = tiny_llama
    req = build_requests(_records()[1:2], instructions=False)
    kw = dict(max_rephrases=1, max_probes=1, success_max_new_tokens=4, natural_max_new_tokens=6, batch_size=4)
    method = registry.build("ft-l", model, tok, **FTL)
    single = evaluate_method(method, model, tok, req, batch_generation=False, **kw)[0]
    rows = evaluate_stream(method, model, tok, req, **kw)
    retained = [r for r in rows if r["when"] == "retention"]
    assert len(retained) == 1 and retained[0]["after"] == 1
    metrics = [k for k in single if "/" in k]
    assert {"edit/acc", "gen/acc", "loc/acc", "edit/natural_em", "gen/natural_contains", "base/edit/acc"} <= set(metrics)
    assert {k: retained[0][k] for k in metrics} == {k: single[k] for k in metrics}
    edit_row = next(r for r in rows if r["when"] == "edit")
    assert edit_row["edit/acc"] == single["edit/acc"] and "edit/natural_em" not in edit_row  # teacher forced only
    assert "gen/acc" not in edit_row and "loc/acc" not in edit_row  # Reliability only: the rest at the checkpoints
    only_edit = evaluate_stream(method, model, tok, req, **kw, natural_rephrases=0)
    final = [r for r in only_edit if r["when"] == "retention"][0]
    assert final["edit/natural_em"] == single["edit/natural_em"] and "gen/natural_em" not in final
    assert "gen/natural_em" in single


def test_a_delta_streams_deltas_are_what_it_left_on_the_model(tiny_llama):
    model, tok = tiny_llama
    reqs = build_requests(_records()[:3], instructions=False)
    method = registry.build("ft-l", model, tok, **FTL)
    before = _state(model)
    with method.stream(model, tok) as stream:
        for r in reqs:
            stream.add(r)
        total, after = stream.deltas(), _state(model)
    assert total and all(torch.allclose(before[k] + total[k], after[k], atol=1e-6) for k in total)
    assert any(total[k].abs().max() > 1e-4 for k in total)
    grace = registry.build("grace", model, tok, default_layers=(2, 3), eps_init=0.05, steps=2, lr=1.0, stop_loss=None)
    with grace.stream(model, tok) as stream:
        stream.add(reqs[0])
        assert stream.deltas() is None  # a codebook is no weight change


def _fields(rows, prefixes=("edit/", "gen/", "loc/", "base/")):
    return [{k: v for k, v in r.items() if k.startswith(prefixes)} for r in rows if r["when"] == "retention"]


def test_streams_of_deltas_generate_together_what_each_stream_generates_alone(tiny_llama, monkeypatch):

    model, tok = tiny_llama
    reqs = build_requests(_records(), instructions=False)
    kw = dict(max_rephrases=1, max_probes=1, natural_max_new_tokens=5, batch_size=4)
    method = registry.build("ft-l", model, tok, **FTL)
    alone = [evaluate_stream(method, model, tok, reqs[i:i + 2], points=(), **kw) for i in (0, 2)]
    calls = []
    real = streams_module.generate_edited_fields
    monkeypatch.setattr(streams_module, "generate_edited_fields", lambda *a: calls.append(len(a[2])) or real(*a))
    together = evaluate_streams(method, model, tok, [reqs[0:2], reqs[2:4]], names=["a", "b"], points=(), **kw)
    assert calls == [4]  # both streams' ends in one generation
    for one, joint in zip(alone, together):
        a, b = _fields(one), _fields(joint)
        assert [x.keys() for x in a] == [x.keys() for x in b] and "edit/natural_em" in a[0]
        for x, y in zip(a, b):
            assert {k: v for k, v in x.items() if "natural" not in k} == pytest.approx(
                {k: v for k, v in y.items() if "natural" not in k}, abs=1e-5)
            assert {k: v for k, v in x.items() if "natural" in k} == {k: v for k, v in y.items() if "natural" in k}
    with pytest.raises(ValueError, match="2 streams but 1 names"):
        evaluate_streams(method, model, tok, [reqs[0:2], reqs[2:4]], names=["a"])


def test_batch_groups_generate_together_what_each_group_generates_alone(tiny_llama):
    model, tok = tiny_llama
    reqs = build_requests(_records(), instructions=False)
    method = registry.build("mend", model, tok, editor=tiny_editor(model, False))
    kw = dict(max_rephrases=1, max_probes=1, natural_max_new_tokens=5)
    alone = evaluate_batches(method, model, tok, reqs, (1, 2), batch_size=1, **kw)  # a chunk per group
    together = evaluate_batches(method, model, tok, reqs, (1, 2), batch_size=4, **kw)  # every group in one chunk
    assert len(alone) == len(together) == 8
    for x, y in zip(alone, together):
        assert (x["case_id"], x["batch/size"], x["batch/index"]) == (y["case_id"], y["batch/size"], y["batch/index"])
        assert x["edit/acc"] == pytest.approx(y["edit/acc"], abs=1e-6)
        assert {k: v for k, v in x.items() if "natural" in k} == {k: v for k, v in y.items() if "natural" in k}
    assert "edit/natural_em" in together[0]


def test_a_finished_stream_is_read_back_and_other_settings_are_refused(tiny_llama, tmp_path):
    model, tok = tiny_llama
    reqs = build_requests(_records()[:3], instructions=False)
    method = registry.build("ft-l", model, tok, **FTL)
    calls = []
    real = method.weight_deltas
    method.weight_deltas = lambda *a: calls.append(1) or real(*a)
    run = RunFolder(tmp_path)
    probes = (["The sky is"], [" blue"])
    first = evaluate_stream(method, model, tok, reqs, run=run, points=(1, 2), probes=probes, max_rephrases=1)
    assert len(calls) == 3
    assert [r["after"] for r in first if r["when"] == "probe"] == [0, 1, 2, 3]
    assert first[0]["probe/ppl"] == pytest.approx(perplexity(model, tok, *probes))  # the unedited model
    again = evaluate_stream(method, model, tok, reqs, run=run, points=(1, 2), probes=probes, max_rephrases=1)
    assert len(calls) == 3  # read back, not edited again
    assert [{k: v for k, v in r.items() if k != "settings"} for r in again] == first
    with pytest.raises(SettingsMismatch, match="stream_ft-l"):
        evaluate_stream(method, model, tok, reqs, run=run, points=(1, 2), probes=probes, max_rephrases=2)


def test_checkpoints_are_the_logarithmic_points_up_to_the_length():
    assert checkpoints(100) == (1, 2, 5, 10, 20, 50, 100)
    assert checkpoints(7) == (1, 2, 5, 7)
    assert checkpoints(1) == (1,)
    with pytest.raises(ValueError, match="at least one edit"):
        checkpoints(0)


def test_perplexity_matches_a_reference_computed_from_the_logits(tiny_gpt2):
    model, tok = tiny_gpt2
    prompts, texts = ["The capital of France is", "Water boils at"], [" Paris, a city", " 100 degrees"]
    total, count = 0.0, 0
    for p, c in zip(prompts, texts):
        ids = tok(p + c)["input_ids"]
        start = len(tok(p)["input_ids"])
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
        total -= sum(float(logp[i - 1, ids[i]]) for i in range(start, len(ids)))
        count += len(ids) - start
    assert perplexity(model, tok, prompts, texts) == pytest.approx(math.exp(total / count), rel=1e-4)
    with pytest.raises(ValueError, match="prompts but"):
        perplexity(model, tok, prompts, texts[:1])


# ---- batch editing ---------------------------------------------------------------------------------------------------


def _plain_editor(model, **over):
    from instructedit_utils.config.method import MethodConfig
    from instructedit_utils.methods.mend import MendEditor

    cfg = MethodConfig(**{"rank": 8, "normalize": False, "skip_first_token": False, "norm_warmup": 0,
                          "edit_lr": 1e-3, "use_instructions": False, **over})
    return MendEditor.for_model(model, cfg, (2, 3))


def test_a_batch_edit_of_one_fact_is_the_single_edit(tiny_llama):
    model, tok = tiny_llama
    editor = tiny_editor(model, False)
    reqs = build_requests(_records(), instructions=False)
    one = editor.edit_many(model, tok, [reqs[0].prompt], [reqs[0].target]).deltas
    alone = editor.edit(model, tok, reqs[0].prompt, reqs[0].target).deltas
    assert one.keys() == alone.keys()
    assert all(torch.allclose(one[k], alone[k], rtol=1e-5, atol=1e-8) for k in one)
    four = editor.edit_many(model, tok, [r.prompt for r in reqs], [r.target for r in reqs]).deltas
    assert not all(torch.allclose(four[k], one[k]) for k in one)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_an_untrained_batch_edit_is_a_gradient_step_on_the_mean_loss_of_all_facts(fixture, request):
    """Identity networks, no normalisation: -ΔW/α is the gradient of the mean NLL over every target token of every
    fact, computed here with full forward passes of each fact alone."""
    model, tok = request.getfixturevalue(fixture)
    editor = _plain_editor(model)
    reqs = build_requests(_records()[:3], instructions=False)
    result = editor.edit_many(model, tok, [r.prompt for r in reqs], [r.target for r in reqs])
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)  # the fixture is shared: gradients another test left are not this one's
    try:
        for t in editor.targets:
            params[t.name].requires_grad_(True)
        total, count = 0.0, 0
        for r in reqs:
            enc = encode_pair(tok, r.prompt, r.target)
            logp = model(input_ids=torch.tensor([enc.input_ids])).logits[0].log_softmax(-1)
            for p, t in zip(enc.target_positions, enc.targets):
                total = total - logp[p - 1, t]
                count += 1
        (total / count).backward()
        assert result.loss == pytest.approx(float(total.detach() / count), rel=1e-5)
        for t in editor.targets:
            torch.testing.assert_close(-result.deltas[t.name] / 1e-3, params[t.name].grad, rtol=1e-4, atol=1e-7)
    finally:
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None


def test_ke_and_the_optimisers_say_they_have_no_batch_edit(tiny_llama):
    from instructedit_utils.methods.ke import KnowledgeEditor
    from test_methods import _ke_config

    model, tok = tiny_llama
    reqs = build_requests(_records()[:2], instructions=False)
    torch.manual_seed(0)
    ke = registry.build("ke", model, tok, editor=KnowledgeEditor.for_model(model, _ke_config(), (2, 3)))
    with pytest.raises(NotImplementedError, match="KE conditions its update on one edit"):
        ke.batch_deltas(model, tok, reqs)
    assert ke.batch_deltas(model, tok, reqs[:1]).keys() == ke.weight_deltas(model, tok, reqs[0]).keys()
    with pytest.raises(NotImplementedError, match="ft-l has no batch edit"):
        registry.build("ft-l", model, tok, **FTL).batch_deltas(model, tok, reqs)


def test_batches_of_one_are_the_single_edit_harness_and_resume_by_group(tiny_llama, tmp_path):

    model, tok = tiny_llama
    reqs = build_requests(_records(), instructions=False)
    method = registry.build("mend", model, tok, editor=tiny_editor(model, False))
    kw = dict(max_rephrases=1, max_probes=1, natural_max_new_tokens=5, batch_size=4)
    single = evaluate_method(method, model, tok, reqs, batch_generation=False, **kw)
    before = _state(model)
    run = RunFolder(tmp_path)
    rows = evaluate_batches(method, model, tok, reqs, (1, 2, 4), run=run, **kw)
    assert _same(model, before)
    assert [(r["batch/size"], r["batch/index"]) for r in rows] == \
        [(1, i) for i in range(4)] + [(2, 0), (2, 0), (2, 1), (2, 1), (4, 0), (4, 0), (4, 0), (4, 0)]
    metrics = [k for k in single[0] if "/" in k]
    for a, b in zip(rows[:4], single):
        assert {k: a[k] for k in metrics} == pytest.approx({k: b[k] for k in metrics}, abs=1e-6)
    assert any(a["edit/acc"] != b["edit/acc"] for a, b in zip(rows[8:], rows[:4])) or \
        any(a["loc/acc"] != b["loc/acc"] for a, b in zip(rows[8:], rows[:4]))  # one edit for four facts differs
    path = run.cases_path("batches_tiny_k2")  # killed after its first group
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    calls = []
    real = method.batch_deltas
    method.batch_deltas = lambda m, t, group: calls.append(len(group)) or real(m, t, group)
    again = evaluate_batches(method, model, tok, reqs, (1, 2, 4), run=run, **kw)
    assert calls == [2]  # only the missing group
    strip = lambda rs: [{k: v for k, v in r.items() if k != "settings"} for r in rs]
    assert strip(again) == strip(rows)
    with pytest.raises(ValueError, match=r"batch sizes \[3\] do not divide the 4 requests"):
        evaluate_batches(method, model, tok, reqs, (1, 3), **kw)
