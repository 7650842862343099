"""ROME, MEMIT and AlphaEdit (methods.rome, methods.locate) on a tiny random Llama and GPT-2: each update's defining
property checked directly on the edited matrices, the value optimisation, the shared value cache, bit-exact restore,
AlphaEdit's stream."""
from types import SimpleNamespace

import pytest
import torch

from instructedit_utils.config.experiment import ExperimentConfig
from instructedit_utils.config.studies import SequenceConfig
from instructedit_utils.experiments import deploy
from instructedit_utils.experiments.settings import _requests

from instructedit_utils.evaluation.requests import build_requests
from instructedit_utils.methods import build
from instructedit_utils.methods import locate, rome
from instructedit_utils.methods.rome import ValueCache, default_layers
from instructedit_utils.util.paths import CACHE_ENV

WORDS = ("river", "stone", "music", "garden", "winter", "candle", "market", "silver", "forest", "window", "harbor",
         "engine", "letter", "planet", "violin", "desert", "castle", "mirror", "thunder", "lantern")
TEXTS = [f"The {a} near the {b} was {c} and the {d} sang." for a, b, c, d in
         zip(WORDS, WORDS[3:] + WORDS[:3], WORDS[7:] + WORDS[:7], WORDS[11:] + WORDS[:11])] * 3


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def requests(records):
    return build_requests(records, instructions=False)


def make(kind, model, tok, **options):
    options = {"contexts": 1, "context_tokens": 3, "v_steps": 4, "stats_tokens": 10, **options}
    return build(kind, model, tok, texts=TEXTS, **options)


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_the_layer_rule_gives_the_published_gpt2_xl_layers_and_scales_with_depth():
    assert default_layers(48) == (13, 14, 15, 16, 17)  # MEMIT's / AlphaEdit's GPT2-XL window, ROME's layer 17
    assert default_layers(30) == (7, 8, 9, 10, 11) and default_layers(32) == (7, 8, 9, 10, 11)
    assert default_layers(4) == (0, 1) and default_layers(2, window=1) == (1,)


def test_subject_position_is_the_subject_s_last_token_else_the_last_token(tiny_llama):
    _, tok = tiny_llama
    text = "Paris is the capital of"
    ids = tok(text)["input_ids"]
    at = locate.subject_position(tok, text, "Paris")
    assert tok.decode(ids[at:at + 1]).endswith("s") and tok.decode(ids[:at + 1]).strip().endswith("Paris")
    assert locate.subject_position(tok, text, "Berlin") == len(ids) - 1
    assert locate.subject_position(tok, text, "") == len(ids) - 1


def test_the_value_optimisation_lowers_the_loss_stays_in_its_norm_ball_and_zero_steps_do_nothing(tiny_llama,
                                                                                                 cf_records):
    model, tok = tiny_llama
    request = requests(cf_records)[0]
    contexts = ("{}", "A b. {}")
    options = locate.ValueOptions(steps=8, lr=0.01, weight_decay=0.0, clamp_norm_factor=0.5, stop_loss=1e-9)
    value = locate.compute_value(model, tok, request, 1, contexts, options)
    assert value.loss_after < value.loss_before - 1e-3 and value.steps == 8
    assert 0.25 * float(value.z.norm()) < float(value.delta.norm()) <= 0.5 * float(value.z.norm()) * (1 + 1e-5)
    zero = locate.compute_value(model, tok, request, 1, contexts, locate.ValueOptions(steps=0))
    assert zero.steps == 0 and torch.equal(zero.delta, torch.zeros_like(zero.delta))
    assert zero.loss_before == zero.loss_after == pytest.approx(value.loss_before, rel=1e-5)
    # z is the residual after block 1 at the subject's last token of the bare prompt, computed independently
    position = locate.subject_position(tok, request.prompt, request.record.subject)
    assert torch.allclose(value.z, locate.capture(model, tok, "model.layers.1", [request.prompt], [position],
                                                  output=True), atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_rome_maps_the_key_exactly_to_its_value_and_leaves_c_orthogonal_keys_alone(fixture, request, cf_records,
                                                                                    cache):
    model, tok = request.getfixturevalue(fixture)
    method = make("rome", model, tok)
    edit = requests(cf_records)[0]
    k = method.keys(model, tok, edit, 0).double()
    w = method.weight(model, 0).double()
    value = method.value(model, tok, edit)
    deltas = method.weight_deltas(model, tok, edit)
    (name, delta), = deltas.items()
    d = (delta.T if method.matrices[0][2] else delta).double()
    assert name == method.matrices[0][1] and d.shape == w.shape
    assert torch.allclose((w + d) @ k, w @ k + value.delta.double(), atol=1e-4 * float(value.delta.norm()) + 1e-6)
    cov = method.stats[0].moment.double()
    other = torch.randn(k.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = torch.linalg.solve(cov, k)
    orthogonal = other - (u @ other) / (u @ k) * k  # uᵀ x = 0: orthogonal to k in C⁻¹'s metric
    assert torch.allclose(d @ orthogonal, torch.zeros_like(w[:, 0]), atol=1e-8 * float(d.norm() * other.norm()))


def test_memit_without_its_covariance_weight_brings_the_top_block_to_the_target(tiny_llama, cf_records, cache):
    model, tok = tiny_llama
    method = make("memit", model, tok, layers=(1, 2), mom2_update_weight=1e-8, contexts=0)  # the key: the prompt's
    edit = requests(cf_records)[0]
    value = method.value(model, tok, edit)
    before = weights(model)
    with method.edited(model, tok, edit):
        reached = method.top_output(model, tok, edit)
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"}
    assert torch.allclose(reached, value.z + value.delta, atol=1e-3 * float(value.delta.norm()))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # restored bit for bit


def test_alphaedit_leaves_the_preserved_keys_outputs_unchanged(tiny_llama, cf_records, cache):
    model, tok = tiny_llama
    method = make("alphaedit", model, tok, layers=(1, 2), nullspace_energy=0.2)
    edit = requests(cf_records)[0]
    deltas = method.weight_deltas(model, tok, edit)
    assert all(0 < n < 64 for n in method.null_space())
    for i, (_, param, _) in enumerate(method.matrices):
        eigenvalues, vectors = torch.linalg.eigh(method.stats[i].moment.double())
        preserved = vectors[:, (method.projectors[i] @ vectors).norm(dim=0) < 1e-6]  # C's range outside P
        assert preserved.shape[1] == 64 - method.null_space()[i]
        delta = deltas[param].double()
        assert float((delta @ preserved).abs().max()) < 1e-6 * float(delta.abs().max())  # float32 deltas
        assert float(delta.abs().max()) > 0


def test_alphaedit_in_sequence_keeps_the_earlier_keys_and_restores_bit_exactly(tiny_llama, cf_records, cache):
    model, tok = tiny_llama
    method = make("alphaedit", model, tok, layers=(1, 2), nullspace_energy=0.2, l2=1e-9)
    first, second = requests(cf_records)[:2]
    before = weights(model)
    with method.stream(model, tok) as stream:
        stream.add(first)
        keys = [k.clone() for k in stream.previous]
        sum_after_first = {n: d.clone() for n, d in stream.deltas().items()}
        stream.add(second)
        assert [k.shape[1] for k in stream.previous] == [2, 2]
        for i, (_, param, _) in enumerate(method.matrices):
            second_delta = (stream.deltas()[param] - sum_after_first[param]).double()
            moved = (second_delta @ (method.projectors[i] @ keys[i])).norm()  # what reaches the first key's
            assert float(moved) < 1e-3 * float(second_delta.norm() * keys[i].norm())  # null-space part: ~nothing
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_rome_memit_and_alphaedit_share_one_value_per_edit_and_a_new_model_gets_its_own(tiny_llama, cf_records,
                                                                                         cache, monkeypatch):
    model, tok = tiny_llama
    methods = [make(kind, model, tok, layers=(1,)) for kind in ("rome", "memit", "alphaedit")]
    edit = requests(cf_records)[0]
    calls = []
    real = locate.compute_value
    monkeypatch.setattr(rome, "compute_value", lambda *a, **k: calls.append(1) or real(*a, **k))
    values = [m.value(model, tok, edit) for m in methods]
    assert len(calls) == 1 and all(torch.equal(v.delta, values[0].delta) for v in values)
    with methods[0].edited(model, tok, edit):
        methods[1].value(model, tok, edit)  # the edited model: another fingerprint, another value
    assert len(calls) == 2
    assert len(list((cache / rome.VALUES_DIR).rglob("*.pt"))) == 2


def test_options_are_validated_with_names(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(ValueError, match=r"rome: unknown option\(s\) \['radius'\]"):
        build("rome", model, tok, texts=TEXTS, radius=1)
    with pytest.raises(ValueError, match="AlphaEditConfig.nullspace_energy must be in"):
        build("alphaedit", model, tok, texts=TEXTS, nullspace_energy=1.5)
    with pytest.raises(ValueError, match=r"memit: layers=\(1, 9\) must be blocks"):
        build("memit", model, tok, texts=TEXTS, layers=(1, 9))


def test_method_samples_take_the_first_records_of_each_task_s_sample(shared_data, tmp_path):
    cfg = ExperimentConfig(run_dir=str(tmp_path), tasks=("counterfact", "recent"), sample_per_task=4,
                           method_samples={"rome": 2})
    every = _requests(cfg, SimpleNamespace(name="mend", use_instructions=False), cfg.tasks, None)[1]
    few = _requests(cfg, SimpleNamespace(name="rome", use_instructions=False), cfg.tasks, None)[1]
    assert [r.case_id for r in few] == [r.case_id for r in every if r.task == "counterfact"][:2] + \
        [r.case_id for r in every if r.task == "recent"][:2]
    with pytest.raises(ValueError, match="method_samples: 'rome' needs at least one record"):
        ExperimentConfig(run_dir=str(tmp_path), method_samples={"rome": 0})


def test_method_records_stop_a_method_s_streams_at_one_of_the_lengths():
    seq = SequenceConfig(stream_lengths=(1, 10, 100), paired_records=20, method_records={"alphaedit": 10})
    assert seq.lengths_of("alphaedit") == (1, 10) and seq.lengths_of("mend") == (1, 10, 100)
    assert seq.covered(1, "alphaedit") == seq.covered(10, "alphaedit") == 10
    assert seq.covered(1, "mend") == 20 and seq.covered(100, "mend") == 100
    with pytest.raises(ValueError, match="stops at 3 records, which must be one of the stream lengths"):
        SequenceConfig(stream_lengths=(1, 10, 100), method_records={"alphaedit": 3})


def test_instructedit_edit_applies_alphaedit_through_its_stream_and_restores(tiny_llama, tmp_path, cache):
    model, tok = tiny_llama
    method = make("alphaedit", model, tok, layers=(1, 2), nullspace_energy=0.2)
    path = tmp_path / "edits.jsonl"
    path.write_text('{"prompt": "The capital of France is", "target": "Rome"}\n'
                    '{"prompt": "The author of Hamlet is", "target": "Dickens"}\n')
    specs = deploy.read_edits(path)
    requests = [deploy.edit_request(s, False, "edits.jsonl") for s in specs]
    before = weights(model)
    with deploy.edits_applied(method, model, tok, specs, requests) as rows:
        inside = weights(model)
    assert len(rows) == 2 and all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with method.stream(model, tok) as stream:  # the second edit keeps the first one's keys, as in AlphaEdit's stream
        for request in requests:
            stream.add(request)
        expected = weights(model)
    changed = {n for n in before if not torch.equal(inside[n], before[n])}
    assert changed == {"model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"}
    assert all(torch.equal(inside[n], expected[n]) for n in before)
