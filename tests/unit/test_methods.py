"""Table 3's other methods (FT-L, CaliNet, GRACE, KE) on tiny Llama and GPT-2 models: edits raise the target's
probability, leaving `edited` restores every parameter bit-exactly and removes every hook, zero steps are no-ops, bad
input fails at `build` naming the method and the parameter, non-finite optimisation names the request."""
import dataclasses

import pytest
import torch

from instructedit_utils.analysis import table3
from instructedit_utils.experiments import settings as experiments
from instructedit_utils.methods import registry as baselines
from instructedit_utils.training import step as training
from instructedit_utils.config.method import MethodConfig
from instructedit_utils.methods.mend import MendEditor, make_editor
from instructedit_utils.evaluation.requests import build_requests
from instructedit_utils.methods.grace import Codebook
from instructedit_utils.methods.ke import KnowledgeEditor
from instructedit_utils.models.metrics import encode_pair, score_encoded

from test_training import _records, _train

STRONG = {"ft-l": dict(steps=15, lr=5e-2, norm_constraint=None), "calinet": dict(steps=15, lr=5e-2),
          "grace": dict(steps=15, lr=1.0, stop_loss=None)}
ZERO = {"ft-l": dict(steps=0), "calinet": dict(steps=0), "grace": dict(steps=0)}


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def tiny(request):
    return request.getfixturevalue(request.param)


def _logprob(model, tok, prompt, target) -> float:
    with torch.no_grad():
        return sum(score_encoded(model, [encode_pair(tok, prompt, target)], tok.pad_token_id)[0].logprobs)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _request(cf_records, i=0):
    return build_requests(cf_records, instructions=False)[i]


@pytest.mark.parametrize("kind", ["ft-l", "calinet", "grace"])
def test_edit_raises_target_probability_and_restores_bit_exactly(tiny, cf_records, kind):
    model, tok = tiny
    model.requires_grad_(False)
    req = _request(cf_records)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hooks(model)
    method = baselines.build(kind, model, tok, default_layers=(2, 3), **STRONG[kind])
    p0 = _logprob(model, tok, req.prompt, req.target)
    with method.edited(model, tok, req) as edited:
        p1 = _logprob(edited, tok, req.prompt, req.target)
        assert _hooks(model) == hooks + (0 if kind == "ft-l" else 1)
    assert p1 > p0 + 0.2, (p0, p1)
    assert _hooks(model) == hooks
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert abs(_logprob(model, tok, req.prompt, req.target) - p0) < 1e-9


@pytest.mark.parametrize("kind", ["ft-l", "calinet", "grace"])
@pytest.mark.parametrize("zero", ["steps", "lr"])
def test_zero_steps_or_zero_lr_is_a_no_op(tiny_llama, cf_records, kind, zero):
    model, tok = tiny_llama
    req = _request(cf_records, 1)
    options = ZERO[kind] if zero == "steps" else {**STRONG[kind], "lr": 0.0}
    method = baselines.build(kind, model, tok, default_layers=(2, 3), **options)
    ids = torch.tensor([encode_pair(tok, req.prompt, req.target).input_ids])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with method.edited(model, tok, req) as edited:
            after = edited(input_ids=ids).logits
    if kind == "grace":  # a no-op value is the original activation: equal up to float rounding of the swap
        assert torch.allclose(plain, after, atol=1e-5)
    else:
        assert torch.equal(plain, after)


def test_ftl_respects_its_norm_constraint(tiny_llama, cf_records):
    model, tok = tiny_llama
    method = baselines.build("ft-l", model, tok, default_layers=(2, 3), steps=5, lr=1e-2, norm_constraint=1e-3)
    delta = method.delta(model, tok, _request(cf_records))
    assert float(delta.abs().max()) == pytest.approx(1e-3)
    assert method.param_name.endswith("layers.2.mlp.down_proj.weight")


def test_optimize_stops_on_a_plateau_after_the_hand_computed_step(cf_records):
    """Losses 8, 4, 4 - 1/512, …: with ``plateau = 1e-3`` the third value improves on the second by 0.00195 < 0.004, so
    the loop stops there after two updates (the last loss is that of the parameters it returns); without it every
    step runs."""
    from instructedit_utils.methods.edit_loop import optimize

    values = [8.0, 4.0, 3.998046875, 3.5, 3.0, 2.5]
    req = _request(cf_records)

    def run(plateau):
        p = torch.zeros(2, requires_grad=True)
        calls = iter(values)
        result = optimize(lambda: p.sum() * 0 + next(calls), [p], steps=5, lr=0.1, request=req, method="t",
                          plateau=plateau)
        return result, p
    stopped, p_stopped = run(1e-3)
    assert (stopped.steps, stopped.loss_before, stopped.loss_after) == (2, 8.0, 3.998046875)
    full, _ = run(None)
    assert (full.steps, full.loss_after) == (5, 2.5)
    assert torch.equal(p_stopped, torch.zeros(2))  # a zero gradient: Adam moves nothing, whatever the stop


def test_ftl_plateau_is_validated_and_its_stop_matches_running_that_many_steps(tiny_llama, cf_records):
    model, tok = tiny_llama
    with pytest.raises(ValueError, match=r"ft-l: FTLConfig.plateau must be in \(0, 1\) or None"):
        baselines.build("ft-l", model, tok, plateau=0)
    req = _request(cf_records)
    from instructedit_utils.methods import ft

    done = []
    original = ft.optimize

    def counted(*args, **kwargs):
        done.append(original(*args, **kwargs).steps)
        return done[-1]
    ft.optimize = counted
    try:
        plateaued = baselines.build("ft-l", model, tok, default_layers=(2, 3), plateau=0.05).delta(model, tok, req)
    finally:
        ft.optimize = original
    assert 0 < done[0] < 25
    reference = baselines.build("ft-l", model, tok, default_layers=(2, 3), steps=done[0], plateau=None)
    assert torch.equal(plateaued, reference.delta(model, tok, req))


def test_bad_input_fails_at_build_naming_method_and_parameter(tiny_llama, tiny_gpt2, cf_records):
    model, tok = tiny_llama
    with pytest.raises(ValueError, match=r"ft-l: layer=40 does not exist; the model has 4 blocks"):
        baselines.build("ft-l", model, tok, layer=40)
    with pytest.raises(ValueError, match=r"ft-l: matrix='mlp.nope.weight' names no module"):
        baselines.build("ft-l", model, tok, matrix="mlp.nope.weight")
    with pytest.raises(ValueError, match=r"grace: layer=-9 does not exist"):
        baselines.build("grace", model, tok, layer=-9)
    with pytest.raises(ValueError, match=r"calinet: unknown option\(s\) \['rank'\]"):
        baselines.build("calinet", model, tok, rank=3)
    with pytest.raises(ValueError, match=r"grace: GraceConfig.eps_init must be > 0"):
        baselines.build("grace", model, tok, eps_init=0)
    gmodel, gtok = tiny_gpt2
    method = baselines.build("ft-l", gmodel, gtok, default_layers=(2, 3))
    assert method.param_name == "transformer.h.2.mlp.c_proj.weight"


@pytest.mark.parametrize("kind", ["ft-l", "calinet", "grace"])
def test_nonfinite_optimisation_is_an_error_naming_the_request(tiny_llama, cf_records, kind):
    model, tok = tiny_llama
    req = _request(cf_records)
    method = baselines.build(kind, model, tok, default_layers=(2, 3), **{**STRONG[kind], "lr": float("inf")})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match=rf"{kind}: non-finite .* of the edit of {req.case_id!r}"):
        with method.edited(model, tok, req):
            pass
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_grace_sequence_keeps_earlier_edits_and_leaves_far_inputs_alone(tiny_llama, cf_records):
    model, tok = tiny_llama
    reqs = build_requests(cf_records, instructions=False)
    method = baselines.build("grace", model, tok, default_layers=(2, 3), eps_init=0.05, **STRONG["grace"])
    far = "Completely unrelated words about cooking pasta at home"
    far_ids = torch.tensor([tok(far)["input_ids"]])
    with torch.no_grad():
        far_before = model(input_ids=far_ids).logits
    p0 = [_logprob(model, tok, r.prompt, r.target) for r in reqs]
    with method.sequence(model, tok, reqs) as codebook:
        assert len(codebook) == len(reqs)
        p1 = [_logprob(model, tok, r.prompt, r.target) for r in reqs]  # the first edit still holds after the last
        with torch.no_grad():
            assert torch.equal(model(input_ids=far_ids).logits, far_before)
    assert all(b > a + 0.5 for a, b in zip(p0, p1)), (p0, p1)


def test_grace_codebook_expands_same_label_and_splits_conflicts():
    book = Codebook()
    assert book.add(torch.zeros(2), torch.ones(2), "A", eps_init=1.0) == 0
    assert book.add(torch.tensor([1.5, 0.0]), torch.ones(2), "A", eps_init=1.0) is None  # same label: expand
    assert book.radii == [1.5]
    assert book.add(torch.tensor([0.0, 2.0]), torch.ones(2), "B", eps_init=1.0) == 1  # overlap, other label: split
    assert book.radii == [1.0, 1.0]
    assert book.add(torch.tensor([9.0, 9.0]), torch.ones(2), "C", eps_init=1.0) == 2  # far: new entry
    x = torch.tensor([[0.1, 0.0], [5.0, 5.0]])
    out = book.replace(x, torch.full((2, 2), 7.0))
    assert out.tolist() == [[1.0, 1.0], [7.0, 7.0]]


# ---- KE ------------------------------------------------------------------------------------------------------------


def _ke_config(**over):
    base = dict(name="ke", method="ke", tasks=("counterfact", "convsent"), rank=8, steps=6, val_every=3,
                normalize=False, norm_warmup=0, log_every=1, patience=0, lr=1e-2, lr_lr=1e-3, edit_lr=1e-2,
                use_instructions=False, ke_hidden=16)
    return MethodConfig(**{**base, **over})


def test_ke_untrained_is_a_gradient_step_and_edits_raise_the_target(tiny, cf_records):
    model, tok = tiny
    req = _request(cf_records)
    ke = make_editor(model, _ke_config(edit_lr=0.5), (2, 3)).eval()
    assert isinstance(ke, KnowledgeEditor)
    ref = MendEditor.for_model(model, MethodConfig(rank=8, normalize=False, norm_warmup=0, edit_lr=0.25), (2, 3))
    ours = ke.edit(model, tok, req.prompt, req.target)
    plain = ref.eval().edit(model, tok, req.prompt, req.target)  # identity MEND: -α∇W
    for name in plain.deltas:
        assert torch.allclose(ours.deltas[name], plain.deltas[name], atol=1e-7, rtol=1e-5)
    method = baselines.build("ke", model, tok, editor=ke)
    p0 = _logprob(model, tok, req.prompt, req.target)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with method.edited(model, tok, req) as edited:
        assert _logprob(edited, tok, req.prompt, req.target) > p0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_ke_zero_step_size_is_a_no_op(tiny_llama, cf_records):
    model, tok = tiny_llama
    ke = make_editor(model, _ke_config(), (2, 3)).eval()
    with torch.no_grad():
        for p in ke.step_size_parameters():
            p.zero_()
    result = ke.edit(model, tok, *(_request(cf_records).prompt, _request(cf_records).target))
    assert all(float(d.abs().max()) == 0 for d in result.deltas.values())


def test_ke_training_step_lowers_its_loss_on_a_fixed_batch(tiny_llama):
    import random

    model, tok = tiny_llama
    model.requires_grad_(False)
    cfg = _ke_config(lr=1e-2)
    torch.manual_seed(0)
    ke = make_editor(model, cfg, (2, 3)).train()
    records = _records()["counterfact"]
    examples = [training.make_example(r, tok, random.Random(i), cfg)
                for i, r in enumerate(build_requests(records, instructions=False))]
    opt = torch.optim.Adam([{"params": ke.network_parameters(), "lr": cfg.lr},
                            {"params": ke.step_size_parameters(), "lr": cfg.lr_lr}])

    def total() -> torch.Tensor:
        return sum(training.edit_step(ke, model, ex, cfg, tok.pad_token_id)[0] for ex in examples)

    lagrange = float(ke.lagrange)
    first = float(total().detach())
    for _ in range(5):
        opt.zero_grad()
        loss = total()
        loss.backward()
        opt.step()
    ke.lagrange.fill_(lagrange)  # compare at the same multiplier
    assert float(total().detach()) < first


def test_ke_resume_after_kill_gives_the_same_editor_and_multiplier(tiny_llama, tmp_path):
    model, tok = tiny_llama
    cfg = _ke_config()
    straight = _train(model, tok, cfg, tmp_path / "a")
    _train(model, tok, cfg, tmp_path / "b", stop_after=4)
    resumed = _train(model, tok, cfg, tmp_path / "b")
    assert isinstance(straight.editor, KnowledgeEditor) and isinstance(resumed.editor, KnowledgeEditor)
    a, b = straight.editor.state_dict(), resumed.editor.state_dict()
    assert a.keys() == b.keys() and "lagrange" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    last = [MendEditor.load(d / "last", model) for d in (tmp_path / "a", tmp_path / "b")]
    assert torch.equal(last[0].lagrange, last[1].lagrange)
    assert float(last[0].lagrange) != cfg.c_loc  # the multiplier moved during training
    loaded = baselines.build("ke", model, tok, editor_dir=tmp_path / "a")
    assert isinstance(loaded.editor, KnowledgeEditor) and loaded.fingerprint.startswith("ke:")


def test_ke_config_is_validated_and_built_by_the_experiment(tiny_llama):
    from instructedit_utils.config.experiment import ExperimentConfig

    with pytest.raises(ValueError, match="kl_margin"):
        _ke_config(kl_margin=-1.0)
    cfg = ExperimentConfig.from_parameters(run_dir="runs/x", rank=8, c_loc=2.0)
    ke = cfg.editor_configs()["ke"]
    assert (ke.method, ke.use_instructions, ke.normalize, ke.edit_lr) == ("ke", False, False, cfg.method.ke_edit_lr)
    assert dataclasses.replace(ke, method="mend", name="mend", use_instructions=False, normalize=True,
                               edit_lr=cfg.method.edit_lr) == cfg.editor_configs()["mend"]


def test_suffix_replay_gives_the_logits_of_the_whole_sequence(tiny, cf_records):
    from instructedit_utils.methods.edit_loop import request_batch

    model, tok = tiny
    method = baselines.build("grace", model, tok, default_layers=(2, 3))
    runner = method.runner(model)
    eb = request_batch(runner, tok, _request(cf_records))
    seq, lower, p = eb.batch.input_ids[0].tolist(), eb.batch.hidden[0], eb.key_position
    with torch.no_grad():
        whole = runner.upper(eb.batch, eb.rows, eb.positions)
        kv = runner.prefix_states(seq, lower, p)
        suffix = runner.suffix_logits(seq, lower, p, kv, eb.positions)
        again = runner.suffix_logits(seq, lower, p, kv, eb.positions)  # the prefix states are not consumed
    assert torch.allclose(whole, suffix, atol=1e-4) and torch.equal(suffix, again)


# ---- the experiment and Table 3 ------------------------------------------------------------------------------------


def test_method_options_are_validated_before_anything_loads():
    from instructedit_utils.config.experiment import ExperimentConfig

    with pytest.raises(ValueError, match=r"grace: unknown option\(s\) \['radius'\]"):
        ExperimentConfig(run_dir="runs/x", method_options={"grace": {"radius": 1.0}})
    with pytest.raises(ValueError, match=r"method_options: 'mend' takes no options"):
        ExperimentConfig(run_dir="runs/x", method_options={"mend": {"rank": 3}})
    with pytest.raises(ValueError, match=r"ft-l: FTLConfig.steps must be >= 0"):
        ExperimentConfig(run_dir="runs/x", method_options={"ft-l": {"steps": -1}})


def test_load_methods_builds_registry_methods_with_options(tiny_llama, tmp_path):
    from instructedit_utils.config.experiment import ExperimentConfig, ModelConfig

    model, tok = tiny_llama
    cfg = ExperimentConfig(run_dir=str(tmp_path / "03"), model=ModelConfig(name="tiny-llama"),
                           methods=("base", "ft-l", "grace", "calinet"), method_options={"grace": {"eps_init": 2.0}})
    methods = experiments.load_methods(cfg, model, tok)
    assert list(methods) == ["base", "ft-l", "grace", "calinet"]
    assert methods["ft-l"].layer == 2 and methods["calinet"].layer == 3  # tiny-llama edits blocks 2-3
    assert methods["grace"].config.eps_init == 2.0
    other = experiments.load_methods(ExperimentConfig(run_dir=str(tmp_path / "03"), methods=("grace",),
                                                      model=ModelConfig(name="tiny-llama")), model, tok)
    assert other["grace"].fingerprint != methods["grace"].fingerprint  # other options, other cases


def _case(method, task, case_id, **metrics):
    return {"method": method, "task": task, "case_id": case_id, **metrics}


def test_table3_helpers_on_hand_made_cases():

    cases = []
    for i in range(24):
        wobble = 0.02 * (i % 3)  # not all cases alike: intervals of width > 0
        cases.append(_case("instructedit", "cf", f"c{i}", **{"edit/acc": 0.95 + wobble, "gen/acc": 0.94 + wobble,
                                                            "loc/acc": 0.96 + wobble, "base/edit/acc": 0.0,
                                                            "base/gen/acc": 0.0}))
        cases.append(_case("grace", "cf", f"c{i}", **{"edit/acc": 0.95 + wobble, "gen/acc": wobble, "loc/acc": 0.97,
                                                     "base/edit/acc": 0.0, "base/gen/acc": 0.0}))
        cases.append(_case("ft-l", "cf", f"c{i}", **{"edit/acc": 0.05 + wobble, "gen/acc": 0.05, "loc/acc": 0.5 + wobble,
                                                    "base/edit/acc": 0.0, "base/gen/acc": 0.0}))
        cases.append(_case("mend", "cf", f"c{i}", **{"edit/acc": 0.9 + wobble, "loc/acc": 0.95}))  # no gen/acc
    paired = table3.paired_against(cases, "instructedit", ("gen/acc",))
    assert paired.loc[("cf", "Generalization", "grace"), "diff"] == pytest.approx(94.0, abs=0.1)
    assert list(paired.index.get_level_values("method")) == ["ft-l", "grace"]  # the paper's order
    lines = table3.method_verdicts(cases, [], done={"mend": {"best_step": 0}, "instructedit": {"best_step": 500}})
    ft, mend, grace, ie = lines
    assert ft.startswith("**FT-L**: Reliability 7.0% (gain over Base +7.0 points [")
    assert "Reliability barely above Base" in ft and "Locality below 85%" in ft
    assert "Generalization gains less than Reliability" in grace and grace.startswith("**GRACE**")
    assert "hold-out Reliability —" in grace  # not measured: shown as missing, never as 0.0%
    assert mend == "**MEND**: not measured (editor did not train) — its best checkpoint is its untrained step 0, " \
                   "so these numbers describe the initial editor."
    assert "No resolvable weak side" in ie
    assert table3.ordered(["instructedit", "x", "base", "grace"]) == ["base", "grace", "instructedit", "x"]


def test_paper_comparison_shows_every_measured_cell_beside_both_models():
    from instructedit_utils.evaluation.summaries import summarize

    holdout = summarize([_case("mend", "zsre", f"z{i}", **{"edit/acc": 0.5}) for i in range(3)],
                        by=("method", "task"), n_boot=10)
    multitask = summarize([_case("instructedit", "convsent", "c", **{"fluency/entropy": 6.0, "edit/acc": 0.6})],
                          by=("method", "task"), n_boot=10)
    comparison = table3.paper_comparison({"holdout": holdout, "multitask": multitask}).set_index(["task", "method",
                                                                                                 "metric"])
    mend = comparison.loc[("zsre", "MEND", "Reliability")]
    assert mend["paper GPT2-XL"] == 40.79 and mend["paper LLaMA-2"] == 76.95 and mend["ours"] == 50.0
    fluency = comparison.loc[("convsent", "InstructEdit", "Fluency")]
    assert fluency["paper GPT2-XL"] == 617.65 and fluency["ours"] == 600.0  # the paper's scale: bits × 100
    assert fluency["paper LLaMA-2"] == "—"  # the paper has no LLaMA-2 ConvSent row
    assert len(comparison) == 3  # only cells we measure


def test_paper_claims_are_computed_from_paired_cases():

    def cases(method, rel, gen=0.0):
        return [_case(method, "cf", f"c{i}", **{"edit/acc": rel + 0.01 * (i % 3), "gen/acc": gen + 0.01 * (i % 2),
                                               "base/edit/acc": 0.0, "base/gen/acc": 0.0}) for i in range(24)]
    mt = cases("instructedit", 0.9) + cases("grace", 0.95) + cases("ft-l", 0.1) + cases("ke", 0.5)
    ho = cases("instructedit", 0.8) + cases("grace", 0.2) + cases("ft-l", 0.8) + cases("ke", 0.3)
    ft, ke, grace = table3.paper_claims(mt, ho, done={"ke": {"best_step": 0}, "instructedit": {"best_step": 250}})
    assert ft.startswith("**FT-L**") and "hold-out Reliability: not resolved" in ft
    assert "multi-task Reliability: reproduced (+80.0 points" in ft
    assert "hold-out Reliability: reproduced (+60.0 points" in grace and "multi-task Reliability: reverse holds" in grace
    assert "Generalization equivalent to Base's (the paper: GRACE falls short in Generalization): equivalent" in grace
    assert "hold-out Reliability: not measured (editor did not train) (best step 0: ke" in ke
    few = table3.paper_claims(cases("instructedit", 0.9)[:3] + cases("ft-l", 0.1)[:3], [])
    assert "multi-task Reliability: not resolved (n < 20)" in few[0]


def test_task_average_difference_weighs_tasks_equally():

    cases = [_case(m, t, f"{t}{i}", **{"edit/acc": v}) for t, n, gain in (("a", 30, 0.1), ("b", 10, 0.5))
             for i in range(n) for m, v in (("mend", 0.2), ("instructedit", 0.2 + gain))]
    d = table3.task_average_difference(cases, "mend", "instructedit")
    assert d["diff"] == pytest.approx(0.3) and d["per_task"] == pytest.approx({"a": 0.1, "b": 0.5})
    assert d["ci_low"] == pytest.approx(0.3) and d["n"] == 40  # no spread within a task: a point interval


def test_success_gaps_pair_teacher_forced_and_greedy_success_on_the_same_cases():

    cases = [{"setting": "multitask", "method": m, "case_id": str(i), "edit/acc": a, "edit/greedy": g,
              "gen/acc": 0.5, "gen/greedy": 0.5}
             for m, rows in (("instructedit", [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.0, 0.0)]),
                             ("mend", [(1.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.5, 1.0)]))
             for i, (a, g) in enumerate(rows)]
    cases.append({"setting": "multitask", "method": "mend", "case_id": "cs", "edit/acc": 1.0})  # ConvSent: no greedy
    gaps = table3.success_gaps(cases)
    rel = gaps[gaps["metric"] == "Reliability"].set_index("method")
    assert list(rel.index) == ["mend", "instructedit"]  # the paper's column order
    assert rel.loc["instructedit", "gap"] == 1.0 and rel.loc["instructedit", "ci_low"] == 1.0
    assert rel.loc["mend", "gap"] == pytest.approx(-0.125) and rel.loc["mend", "n"] == 4
    text = table3.gap_sentences(gaps)  # four records decide nothing, however wide the gap
    assert text[0] == ("**multitask, Reliability**: teacher forcing reports more success than greedy decoding for 0 "
                       "of 2 methods (none); the difference is not resolved for MEND, InstructEdit.")
    many = table3.success_gaps([{**c, "case_id": f"{c['case_id']}-{k}"} for c in cases for k in range(6)])
    text = table3.gap_sentences(many)
    assert text[0].startswith("**multitask, Reliability**: teacher forcing reports more success than greedy decoding "
                              "for 1 of 2 methods (InstructEdit), most for InstructEdit (+100.0 points [+100.0, "
                              "+100.0]); the difference is not resolved for none; greedy decoding reports more for "
                              "MEND.")  # with 24 records MEND's -12.5 points are resolved too
    assert "for 0 of 2 methods (none); the difference is not resolved for MEND, InstructEdit." in text[1]


def test_method_descriptions_carry_each_methods_own_options(tiny_llama):

    model, tok = tiny_llama
    methods = {"ft-l": baselines.build("ft-l", model, tok, default_layers=(2, 3), steps=7, norm_constraint=2e-3),
               "grace": baselines.build("grace", model, tok, default_layers=(2, 3), eps_init=0.75),
               "calinet": baselines.build("calinet", model, tok, default_layers=(2, 3), slots=5)}
    text = table3.method_descriptions(methods)
    assert text.count("\n* ") == 2 and text.startswith("* **FT-L**")  # the paper's order: FT-L, CaliNet, GRACE
    assert "block 2 gets a change Δ found by at most 7 Adam steps" in text and "|Δ| ≤ 0.002" in text
    assert "less than 0.1 %" in text  # the plateau stop, stated as a deviation
    plain = table3.method_descriptions({"ft-l": baselines.build("ft-l", model, tok, default_layers=(2, 3), steps=7,
                                                                plateau=None, norm_constraint=None)})
    assert "found by 7 Adam steps" in plain and "unconstrained" in plain and "Deviation" not in plain
    assert "5 key/value memory slots" in text and "block 3" in text and "deferral radius (0.75)" in text


def test_methods_table_shows_the_kept_checkpoint_and_flags_step_0(tiny_llama):

    model, tok = tiny_llama
    torch.manual_seed(0)
    cfg = MethodConfig(name="mend", rank=8, normalize=False, norm_warmup=0, use_instructions=False)
    methods = {"base": baselines.build("base", model, tok),
               "mend": baselines.build("mend", model, tok, editor=MendEditor.for_model(model, cfg, (2, 3)), name="mend"),
               "instructedit": baselines.build("mend", model, tok, name="instructedit",
                                               editor=MendEditor.for_model(model, cfg, (2, 3)))}
    done = {"mend": {"best_step": 0, "step": 500, "best": 0.41}, "instructedit": {"best_step": 250, "step": 500,
                                                                                 "best": 0.6}}
    table = table3.methods_table(methods, done)["settings"]
    assert table["mend"] == "mend, best step 0 of 500 (validation score 0.410); did not train"
    assert table["instructedit"] == "mend, best step 250 of 500 (validation score 0.600)"
    assert table["base"] == "—"
