"""The multi-task trainer on a tiny model with hand-made records: resume, guards, sampling, validation metrics."""
import dataclasses
import json
import random

import pytest
import torch

from instructedit_utils.methods import mend
from instructedit_utils.models import forward
from instructedit_utils.training import pool
from instructedit_utils.training import step
from instructedit_utils.training import trainer
from instructedit_utils.training import trainer as training
from instructedit_utils.training import validation
from instructedit_utils.training import plan
from instructedit_utils.config.experiment import ExperimentConfig
from instructedit_utils.config.method import MethodConfig
from instructedit_utils.data.tasks import parse_records
from instructedit_utils.methods.mend import MendEditor
from instructedit_utils.evaluation.requests import build_requests
from instructedit_utils.models.metrics import Encoded

from conftest import cf_row
from helpers import tiny_method_config, editor_state


def _records():
    cf = parse_records("counterfact", [
        cf_row(),
        cf_row(subject="Paris", prompt="Paris is the capital of", target_new="Germany", ground_truth="France",
               rephrase="The country whose capital is Paris is"),
        cf_row(subject="Rome", prompt="Rome is the capital of", target_new="Spain", ground_truth="Italy"),
    ], "hand_cf.json", split="train").records
    cs = parse_records("convsent", [
        {"ent": "Moscow", "pos": [" I love it. ", "Great city."], "neg": ["I hate it.", "Too cold."]},
        {"ent": "tea", "pos": ["Tea is lovely.", "I like a cup."], "neg": ["Tea is bland.", "Not my drink."]},
    ], "hand_convsent.json", split="train").records
    return {"counterfact": cf, "convsent": cs}


def _train(model, tok, cfg, directory, **kw):
    records = _records()
    val = build_requests([r for rs in records.values() for r in rs], instructions=cfg.use_instructions, seed=0)
    return trainer.train_editor(model, tok, cfg, directory, edit_layers=(2, 3), train_records=records,
                                 val_requests=val, progress=False, log=None, **kw)


def test_training_changes_the_editor_and_logs_slash_keys(tiny_llama, tmp_path):
    model, tok = tiny_llama
    model.zero_grad(set_to_none=True)  # the fixture is shared: gradients another test left are not this one's
    before = {n: p.clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    result = _train(model, tok, tiny_method_config(), tmp_path / "ed")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # base model untouched
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags  # frozen only while training
    assert all(p.grad is None for p in model.parameters())
    log = result.train_log()
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6]
    for key in ("loss/edit", "loss/loc", "loss/total", "edit/acc", "loc/acc", "grad/cos", "lr/edit_mean",
                "grad/norm", "time/step_s"):
        assert key in log and log[key].notna().all(), key
    val = result.val_log()
    assert list(val["step"]) == [0, 3, 6]
    assert {"val/score", "val/counterfact/edit/acc", "val/convsent/loc/acc"} <= set(val.columns)
    assert result.summary["stop_reason"] == "steps" and result.summary["step"] == 6
    assert trainer.is_trained(tmp_path / "ed")
    fresh = MendEditor.for_model(model, tiny_method_config(), (2, 3))
    assert any(not torch.equal(a, b) for a, b in zip(fresh.network_parameters(), result.editor.network_parameters()))


def test_resume_after_interruption_gives_the_same_editor(tiny_llama, tmp_path):
    model, tok = tiny_llama
    cfg = tiny_method_config()
    straight = _train(model, tok, cfg, tmp_path / "a")
    # killed after 4 steps: the last checkpoint is step 3, step 4 is lost and redone on resume
    partial = _train(model, tok, cfg, tmp_path / "b", stop_after=4)
    assert partial.summary["stop_reason"] == "interrupted"
    assert not trainer.is_trained(tmp_path / "b")
    resumed = _train(model, tok, cfg, tmp_path / "b")
    a, b = editor_state(straight.editor), editor_state(resumed.editor)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert list(resumed.train_log()["step"]) == [1, 2, 3, 4, 5, 6]  # no duplicated rows from the lost step
    assert list(resumed.train_log()["loss/total"]) == list(straight.train_log()["loss/total"])
    # a finished folder is loaded, not retrained; a different config is refused
    again = _train(model, tok, cfg, tmp_path / "a")
    assert torch.equal(editor_state(again.editor)[next(iter(a))], a[next(iter(a))])
    with pytest.raises(ValueError, match="different config"):
        _train(model, tok, tiny_method_config(rank=4), tmp_path / "a")


def test_stored_lower_states_are_the_recomputed_ones_bit_for_bit(tiny_llama, tmp_path):
    """Each sequence's lower states computed alone, put in a store, served to a fresh runner and recomputed without
    a store: the same tensors bit for bit (float32)."""
    from instructedit_utils.models.states import LowerStates

    model, tok = tiny_llama
    header = tuple(tok("Task: CounterFact\nDescription: change the fact\nInput:")["input_ids"])
    seqs = [header + tuple(tok(" The capital of France is Paris")["input_ids"]), tuple(tok("hello there")["input_ids"]),
            header + tuple(tok(" Rome is in")["input_ids"])]
    headers = [header, (), header]
    store = LowerStates(tmp_path, model, 2)
    first = forward.SplitForward(model, 2).lower_each(seqs, headers, store)
    assert (store.hits, store.misses) == (0, 3)
    served = forward.SplitForward(model, 2).lower_each(seqs, headers, store)
    assert (store.hits, store.misses) == (3, 3)
    recomputed = forward.SplitForward(model, 2).lower_each(seqs, headers)
    assert all(torch.equal(a, b) and torch.equal(b, c) for a, b, c in zip(first, served, recomputed))
    assert [len(s) for s in seqs] == [len(h) for h in served]


def test_a_lower_state_store_is_refused_for_another_model_split_or_precision(tiny_llama, tmp_path):
    import copy

    from instructedit_utils.models.loading import set_lower_dtype
    from instructedit_utils.models.states import LowerStates

    model, tok = tiny_llama
    seq = tuple(tok("hello there")["input_ids"])
    store = LowerStates(tmp_path, model, 2)
    store.put((), seq, forward.SplitForward(model, 2).lower_each([seq], [()])[0])
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_submodule("model.layers.0.mlp.down_proj").weight.mul_(1.5)
    half = copy.deepcopy(model)
    set_lower_dtype(half, "bfloat16")
    for changed in (LowerStates(tmp_path, other, 2), LowerStates(tmp_path, model, 3), LowerStates(tmp_path, half, 2)):
        assert changed.directory != store.directory and changed.get((), seq) is None
    upper_only = copy.deepcopy(model)  # a weight above the split does not change the states
    with torch.no_grad():
        upper_only.get_submodule("model.layers.3.mlp.down_proj").weight.mul_(1.5)
    assert LowerStates(tmp_path, upper_only, 2).directory == store.directory
    path = store.path((), seq)
    path.write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match=rf"{path}: not a readable lower-state file"):
        store.get((), seq)


def test_training_with_a_shared_lower_state_store_gives_the_same_editor(tiny_llama, tmp_path, monkeypatch):
    from instructedit_utils.models.states import LowerStates

    model, tok = tiny_llama
    cfg = tiny_method_config()
    plain = _train(model, tok, cfg, tmp_path / "plain")
    filling = _train(model, tok, cfg, tmp_path / "filling", states_dir=tmp_path / "states")
    files = sorted((tmp_path / "states").rglob("*.safetensors"))
    served_states = []
    get = LowerStates.get
    monkeypatch.setattr(LowerStates, "get", lambda self, h, s: served_states.append(get(self, h, s)) or
                        served_states[-1])
    served = _train(model, tok, cfg, tmp_path / "served", states_dir=tmp_path / "states")
    assert served_states and all(s is not None for s in served_states)  # every step was served from the store
    assert sorted((tmp_path / "states").rglob("*.safetensors")) == files
    a, b, c = (editor_state(r.editor) for r in (plain, filling, served))
    assert all(torch.equal(a[k], b[k]) and torch.equal(b[k], c[k]) for k in a)
    assert list(plain.train_log()["loss/total"]) == list(served.train_log()["loss/total"])


def test_finished_run_extends_to_more_steps_like_a_longer_run(tiny_llama, tmp_path):
    model, tok = tiny_llama
    straight = _train(model, tok, tiny_method_config(steps=6), tmp_path / "a")
    short = _train(model, tok, tiny_method_config(steps=3), tmp_path / "b")
    assert short.summary["step"] == 3 and trainer.is_trained(tmp_path / "b")
    extended = _train(model, tok, tiny_method_config(steps=6), tmp_path / "b")  # raises the budget: training continues
    assert extended.summary["step"] == 6
    a, b = editor_state(straight.editor), editor_state(extended.editor)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert list(extended.train_log()["loss/total"]) == list(straight.train_log()["loss/total"])
    assert list(extended.val_log()["step"]) == [0, 3, 6]
    with pytest.raises(ValueError, match="trained for 6 steps"):  # a smaller budget than what was trained
        _train(model, tok, tiny_method_config(steps=3), tmp_path / "b")


def test_gpt2_conv1d_training_runs(tiny_gpt2, tmp_path):
    model, tok = tiny_gpt2
    result = _train(model, tok, tiny_method_config(steps=2, val_every=2), tmp_path / "g")
    assert result.summary["step"] == 2


def test_nonfinite_guard_reports_and_aborts(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    real = training.edit_step

    def poisoned(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        return loss * float("nan"), metrics

    monkeypatch.setattr(training, "edit_step", poisoned)
    messages = []
    with pytest.raises(FloatingPointError, match="3 non-finite steps in a row"):
        trainer.train_editor(model, tok, tiny_method_config(max_nonfinite=3), tmp_path / "n", edit_layers=(2, 3),
                              train_records=_records(), val_requests=[], progress=False, log=messages.append)
    assert sum("non-finite" in m for m in messages) == 3


def test_early_stopping_metric_must_exist(tiny_llama, tmp_path):
    model, tok = tiny_llama
    with pytest.raises(KeyError, match="not a validation metric"):
        _train(model, tok, tiny_method_config(early_stop_metric="val/nonsense"), tmp_path / "e")


def test_task_sampler_epochs_and_weights():
    records = {"a": list("xyz"), "b": list("uv"), "c": list("w")}
    sampler = step.TaskSampler(records, {"a": 1.0, "b": 1.0, "c": 0.0}, seed=3)
    rng = random.Random(0)
    drawn = [sampler.draw(rng) for _ in range(200)]
    assert "w" not in drawn  # weight 0: never drawn
    a_draws = [d for d in drawn if d in "xyz"]
    for i in range(0, len(a_draws) - 2, 3):  # every epoch of task a is a permutation of its records
        assert sorted(a_draws[i:i + 3]) == ["x", "y", "z"]
    state = sampler.state_dict()
    clone = step.TaskSampler(records, {"a": 1.0, "b": 1.0, "c": 0.0}, seed=3)
    clone.load_state_dict(json.loads(json.dumps(state)))
    r1, r2 = random.Random(5), random.Random(5)
    assert [sampler.draw(r1) for _ in range(10)] == [clone.draw(r2) for _ in range(10)]


def test_validation_metrics_hand_computed():
    cases = [
        {"task": "counterfact", "edit/acc": 1.0, "gen/acc": 0.5, "loc/acc": 1.0},
        {"task": "counterfact", "edit/acc": 0.0, "gen/acc": 0.5, "loc/acc": 0.5},
        {"task": "recent", "edit/acc": 1.0, "loc/acc": 0.0},  # no rephrases: no gen/acc
    ]
    m = validation.validation_metrics(cases)
    assert m["val/counterfact/edit/acc"] == 0.5 and m["val/counterfact/loc/acc"] == 0.75
    assert m["val/edit/acc"] == pytest.approx(0.75)
    assert m["val/gen/acc"] == pytest.approx(0.5)  # only counterfact has it
    assert m["val/score"] == pytest.approx(((0.5 + 0.5 + 0.75) / 3 + (1.0 + 0.0) / 2) / 2)


def test_checkpoint_selection_sees_convsent_learn(tiny_llama, tmp_path, monkeypatch):
    """A ConvSent-only validation where the target response's token accuracy falls from 1 to 0 while the sentiment
    edit success rises: selecting by token accuracy kept the untrained step 0; the trainer must keep the last step."""
    from instructedit_utils.models.metrics import TargetScore
    from instructedit_utils.evaluation.scoring import _case, sentiment_responses_of

    model, tok = tiny_llama
    calls = []

    def validation(editor, model, tokenizer, requests, reference, **kw):  # what validation step k scores
        k = len(calls)
        calls.append(k)
        cases = []
        for req in requests:
            n_t = len(sentiment_responses_of(req, kw["sentiment_responses"])[0])
            pre = [reference[(req.case_id, "sent", "t", j)] for j in range(n_t)]
            shift = lambda sc, d: TargetScore(sc.targets, sc.predictions, tuple(lp + d for lp in sc.logprobs))
            g = {"edit": {(): TargetScore((1, 2), (1, 2) if k == 0 else (0, 0), (-1.0, -1.0))}, "gen": {},
                 "port": {}, "loc": {key[2:]: sc for key, sc in reference.items()
                                     if key[0] == req.case_id and key[1] == "loc"},
                 "sent": {**{("t", j): shift(sc, 0.5 * k) for j, sc in enumerate(pre)},
                          **{("o", j): shift(sc, -0.5 * k) for j, sc in enumerate(pre)}}}
            cases.append(_case(req, g, reference))
        return cases

    monkeypatch.setattr(training, "edit_and_score", validation)
    records = {"convsent": _records()["convsent"]}
    val = build_requests(records["convsent"], instructions=True, seed=0)
    result = trainer.train_editor(model, tok, tiny_method_config(tasks=("convsent",)), tmp_path / "cs", edit_layers=(2, 3),
                                   train_records=records, val_requests=val, progress=False, log=None)
    log = result.val_log().set_index("step")
    assert list(log["val/convsent/edit/token_acc"]) == [1.0, 0.0, 0.0]  # token accuracy falls ...
    assert log["val/convsent/edit/acc"].is_monotonic_increasing  # ... while the sentiment edit succeeds more
    assert result.summary["best_step"] == 6 and log.loc[6, "val/score"] == result.summary["best"]


def test_losses_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    targets = torch.tensor([0, 1])
    assert forward.nll(logits, targets).item() == pytest.approx(-(torch.log(torch.tensor(0.5)) +
                                                                   torch.log(torch.tensor(0.8))).item() / 2)
    assert step.unlikelihood(logits, targets).item() == pytest.approx(
        -(torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.2))).item() / 2, rel=1e-5)
    assert step.kl_pre_post(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    post = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.1, 0.8, 0.1]]))
    expected = (0.5 * torch.log(torch.tensor(2.0)) + 0.25 * torch.log(torch.tensor(0.5))).item() / 2
    assert step.kl_pre_post(logits, post).item() == pytest.approx(expected, rel=1e-5)


def test_method_config_validation():
    with pytest.raises(KeyError, match="Unknown task"):
        MethodConfig(tasks=("zsre_missing",))
    with pytest.raises(ValueError, match="task_weights"):
        MethodConfig(task_weights={"zsre": 1.0})
    with pytest.raises(ValueError, match="rank"):
        MethodConfig(rank=0)
    with pytest.raises(ValueError, match="norm_warmup"):
        MethodConfig(norm_warmup=0)
    assert MethodConfig(task_weights={"counterfact": 2.0}).weights() == {"counterfact": 2.0, "recent": 0.0,
                                                                         "convsent": 0.0}


def test_experiment_config_routes_method_parameters():
    cfg = ExperimentConfig.from_parameters(run_dir="x", rank=16, steps=3, train_tasks=["counterfact"], seed=4,
                                           tasks=["counterfact", "zsre"])
    assert cfg.method.rank == 16 and cfg.method.tasks == ("counterfact",) and cfg.method.seed == 4
    assert cfg.tasks == ("counterfact", "zsre")
    editors = cfg.editor_configs()
    assert editors["instructedit"].use_instructions and not editors["mend"].use_instructions
    assert editors["mend"].rank == 16
    single = cfg.single_task_configs(use_instructions=False)
    assert list(single) == ["mend-counterfact"] and single["mend-counterfact"].tasks == ("counterfact",)
    assert not single["mend-counterfact"].use_instructions and single["mend-counterfact"].steps == 3
    both = plan.training_configs(dataclasses.replace(cfg, single_task_steps=2, transfer_instructions=True))
    assert list(both) == ["instructedit", "mend", "ke", "instructedit-counterfact"]  # one pool: every editor
    assert both["instructedit-counterfact"].steps == 2 and both["instructedit-counterfact"].use_instructions
    with pytest.raises(TypeError, match="Unknown"):
        ExperimentConfig.from_parameters(run_dir="x", rnak=3)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_validation_through_the_split_forward_equals_plain_scoring(fixture, request):
    from instructedit_utils.models.deltas import applied
    from instructedit_utils.evaluation.scoring import score_requests

    model, tok = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    editor = MendEditor.for_model(model, tiny_method_config(normalize=False, norm_warmup=0, edit_lr=3.0), (2, 3)).eval()
    reqs = build_requests([r for rs in _records().values() for r in rs], instructions=True, seed=0)
    _, reference = score_requests(model, tok, reqs)
    split = training.edit_and_score(editor, model, tok, reqs, reference)
    for req, case in zip(reqs, split):
        result = editor.edit(model, tok, req.prompt, req.target, header=req.header)
        with applied(model, result.deltas):
            plain = score_requests(model, tok, [req], reference=reference)[0][0]
        for k in ("edit/acc", "gen/acc", "loc/acc", "sentiment/success", "edit/token_acc"):
            # token accuracies and rankings exactly; ConvSent's edit success is continuous in the log-probabilities,
            # which the split forward reproduces to float rounding
            tol = 1e-6 if req.task == "convsent" and k == "edit/acc" else 1e-9
            assert case.get(k) == pytest.approx(plain.get(k), abs=tol), (req.case_id, k)


def test_validation_rounds_with_kept_lower_states_score_as_fresh_ones(tiny_llama, monkeypatch):
    """The trainer keeps the validation edits' lower states across rounds: a later round (another editor state) runs
    no lower block and scores bit for bit as a fresh call would."""
    model, tok = tiny_llama
    torch.manual_seed(0)
    editor = MendEditor.for_model(model, tiny_method_config(normalize=False, norm_warmup=0, edit_lr=3.0), (2, 3)).eval()
    reqs = build_requests([r for rs in _records().values() for r in rs], instructions=True, seed=0)
    from instructedit_utils.evaluation.scoring import score_requests

    _, reference = score_requests(model, tok, reqs)
    runner = editor.runner(model)
    passes = []
    real = runner._lower
    monkeypatch.setattr(runner, "_lower", lambda *a, **k: passes.append(1) or real(*a, **k))
    kept: dict = {}
    first = training.edit_and_score(editor, model, tok, reqs, reference, states=kept)
    assert passes and kept  # the first round computes and keeps
    with torch.no_grad():  # the next round: another editor
        for p in editor.network_parameters():
            p.add_(0.01 * torch.randn_like(p))
    n = len(passes)
    served = training.edit_and_score(editor, model, tok, reqs, reference, states=kept)
    assert len(passes) == n  # no lower block ran
    fresh = training.edit_and_score(editor, model, tok, reqs, reference)
    assert len(passes) > n
    assert served == fresh and served != first


def test_initial_editor_is_the_step_0_of_a_training_run(tiny_llama, tmp_path):
    """Chapter 6's untrained control: the editor a run starts from, rebuilt without training, equals the run's
    step-0 checkpoint bit for bit (seeded network and warm-up statistics)."""
    model, tok = tiny_llama
    config = tiny_method_config()
    _train(model, tok, config, tmp_path / "ed", stop_after=0)  # the step-0 validation and checkpoint only
    saved = MendEditor.load(tmp_path / "ed" / "last", model)
    rebuilt = step.initial_editor(model, tok, config, edit_layers=(2, 3), train_records=_records())
    a, b = editor_state(saved), editor_state(rebuilt)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(config.seed)
    fresh = editor_state(mend.make_editor(model, config, (2, 3)))
    assert [k for k in a if not torch.equal(a[k], fresh[k])]  # the warm-up statistics are in the state
    with pytest.raises(ValueError, match="init_editor"):
        step.initial_editor(model, tok, tiny_method_config(init_editor=str(tmp_path / "ed")), edit_layers=(2, 3),
                                train_records=_records())


def test_a_training_runs_cost_follows_its_steps_and_its_examples(tiny_llama, shared_data):
    """The pool starts the most expensive runs first; the estimate is steps × tokens of the trainer's own draws."""
    _, tok = tiny_llama
    cf = tiny_method_config(name="cf", tasks=("counterfact",), steps=16, val_every=4)
    cf32 = dataclasses.replace(cf, name="cf32", steps=32)
    cs = dataclasses.replace(cf, name="cs", tasks=("convsent",))
    cost = {c.name: pool.estimated_cost(c, tok, shared_data) for c in (cf, cf32, cs)}
    # the same first 16 draws: the ratio is that of the steps plus validation rounds, (32 + 8 + 1) / (16 + 4 + 1)
    assert cost["cf32"] / cost["cf"] == pytest.approx(41 / 21, rel=1e-12)
    assert cost["cs"] > cost["cf"]  # ConvSent's examples carry likely and unlikely responses
    assert pool.longest_first({"cf": cf, "cs": cs, "cf32": cf32}, tok, shared_data)[-1] == "cf"
    enc = lambda n: Encoded(list(range(n)), [n - 1])
    ex = step.TrainExample("c", "convsent", (7, 8, 9), enc(5), [enc(4)], [enc(6)], [enc(3), enc(2)])
    assert step.example_tokens(ex) == 3 + 5 + 4 + 6 + 3 + 2
