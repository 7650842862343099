"""The MEND editor on tiny random models: exactness invariants, Linear and Conv1D, persistence."""
import pytest
import torch

from instructedit_utils.config.method import MethodConfig
from instructedit_utils.models.targets import EditTarget, Factors, edit_targets
from instructedit_utils.methods.mend import MendEditor
from instructedit_utils.methods.networks import RunningNorm
from instructedit_utils.models.deltas import applied
from instructedit_utils.models.losses import nll
from instructedit_utils.models.forward import SplitForward, length_batches, supports_split
from instructedit_utils.models.metrics import _pad_batch, encode_pair

PROMPT, TARGET = "The capital of France is", "Berlin"


def _plain_config(**over):
    return MethodConfig(**{"rank": 8, "normalize": False, "skip_first_token": False, "norm_warmup": 0, **over})


def _fill_norms(editor, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for t in editor.targets:
        editor.norms[t.name.replace(".", "__")].update(torch.randn(50, t.in_dim + t.out_dim, generator=gen))


def _perturb(editor, seed=0):
    """Make the networks non-identity so that tests see their effect."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in editor.network_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return editor


def _edit_loss(model, tok):
    enc = encode_pair(tok, PROMPT, TARGET)
    ids = torch.tensor([enc.input_ids])
    pos = torch.tensor(enc.target_positions)
    return nll(model(input_ids=ids).logits[0, pos - 1], ids[0, pos]), ids, pos


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def tiny(request):
    return request.getfixturevalue(request.param)


def test_edit_targets_shapes(tiny_llama, tiny_gpt2):
    llama = edit_targets(tiny_llama[0], (2, 3))
    assert [t.name for t in llama] == [f"model.layers.{i}.mlp.{m}_proj.weight" for i in (2, 3) for m in ("up", "down")]
    assert llama[0].weight_shape == (64, 32) and not llama[0].conv1d  # Linear: [out, in]
    gpt2 = edit_targets(tiny_gpt2[0], (2, 3))
    assert gpt2[0].conv1d and (gpt2[0].in_dim, gpt2[0].out_dim) == (32, 128)
    assert gpt2[0].weight_shape == (32, 128)  # Conv1D stores [in, out]


def test_pseudo_gradient_equals_true_gradient(tiny):
    """Identity network, no normalisation, all rows: -ΔW/α is exactly ∇_W L (Linear and transposed Conv1D)."""
    model, tok = tiny
    editor = MendEditor.for_model(model, _plain_config(edit_lr=1e-3), (2, 3))
    result = editor.edit(model, tok, PROMPT, TARGET)
    params = dict(model.named_parameters())
    try:
        for t in editor.targets:
            params[t.name].requires_grad_(True)
        loss, _, _ = _edit_loss(model, tok)
        loss.backward()
        assert result.loss == pytest.approx(loss.item(), rel=1e-5)
        for t in editor.targets:
            grad = params[t.name].grad
            pseudo = -result.deltas[t.name] / 1e-3
            assert pseudo.shape == grad.shape
            torch.testing.assert_close(pseudo, grad, rtol=1e-4, atol=1e-7)
    finally:
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None


def test_edit_lowers_the_edit_loss(tiny):
    """Sign convention: W' = W - α·G̃ with α > 0 is a descent step."""
    model, tok = tiny
    editor = MendEditor.for_model(model, _plain_config(edit_lr=0.5), (2, 3))
    before, _, _ = _edit_loss(model, tok)
    result = editor.edit(model, tok, PROMPT, TARGET)
    with applied(model, result.deltas):
        after, _, _ = _edit_loss(model, tok)
    assert after.item() < before.item()


def test_restore_is_bit_exact(tiny):
    model, tok = tiny
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    editor = _perturb(MendEditor.for_model(model, _plain_config(edit_lr=0.5), (2, 3)))
    result = editor.edit(model, tok, PROMPT, TARGET)
    with applied(model, result.deltas):
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, original[n])]
        assert sorted(changed) == sorted(result.deltas)
    for n, p in model.named_parameters():
        assert torch.equal(p, original[n]), n
    with pytest.raises(RuntimeError, match="boom"):
        with applied(model, result.deltas):
            raise RuntimeError("boom")
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())


def test_zero_step_size_is_a_no_op(tiny):
    model, tok = tiny
    editor = _perturb(MendEditor.for_model(model, _plain_config(edit_lr=0.0), (2, 3)))
    _, ids, _ = _edit_loss(model, tok)
    base = model(input_ids=ids).logits
    result = editor.edit(model, tok, PROMPT, TARGET, return_factors=True)
    assert all(not d.any() for d in result.deltas.values())
    with applied(model, result.deltas):
        assert torch.equal(model(input_ids=ids).logits, base)
    with editor.low_rank_edit(model, result.transformed):
        assert torch.equal(model(input_ids=ids).logits, base)


def test_low_rank_edit_matches_materialised_deltas(tiny):
    model, tok = tiny
    editor = _perturb(MendEditor.for_model(model, _plain_config(edit_lr=0.3), (2, 3)))
    result = editor.edit(model, tok, PROMPT, TARGET, return_factors=True)
    _, ids, _ = _edit_loss(model, tok)
    with applied(model, result.deltas):
        dense = model(input_ids=ids).logits
    with editor.low_rank_edit(model, result.transformed):
        low_rank = model(input_ids=ids).logits
    torch.testing.assert_close(low_rank, dense, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(dense, model(input_ids=ids).logits)  # the edit did something


def test_return_factors(tiny_llama):
    model, tok = tiny_llama
    cfg = _plain_config(skip_first_token=True)
    editor = MendEditor.for_model(model, cfg, (2, 3))
    result = editor.edit(model, tok, PROMPT, TARGET, return_factors=True)
    n_tokens = len(encode_pair(tok, PROMPT, TARGET).input_ids)
    for t in editor.targets:
        raw = result.raw[t.name]
        assert raw.u.shape[1] == t.in_dim and raw.delta.shape[1] == t.out_dim
        assert 1 <= len(raw.u) <= n_tokens - 1  # position 0 dropped
        assert (raw.delta.abs().sum(-1) > 0).all()  # zero-gradient rows filtered
        # identity network without normalisation: transformed == raw
        torch.testing.assert_close(result.transformed[t.name].u, raw.u)
    # the top edited layer only sees gradient at positions that predict target tokens
    top = editor.targets[-1].name
    assert len(result.raw[top].u) == len(encode_pair(tok, PROMPT, TARGET).target_positions)


def _assert_upper_matches_full(model, tok, split, seqs, lowers):
    """Upper blocks replayed on the lower states give the full forward pass's logits at every position."""
    batch = split.batch(seqs, lowers, tok.pad_token_id)
    rows = torch.tensor([i for i, s in enumerate(seqs) for _ in s])
    pos = torch.tensor([j for s in seqs for j in range(len(s))])
    ids, mask = _pad_batch(seqs, tok.pad_token_id)
    full = model(input_ids=ids, attention_mask=mask).logits[rows, pos]
    torch.testing.assert_close(split.upper(batch, rows, pos), full, rtol=1e-4, atol=1e-5)


def test_split_forward_matches_full_forward(tiny):
    model, tok = tiny
    assert supports_split(model)
    split = SplitForward(model, 2)
    header_text = "Task: CounterFact\nDescription: change the fact\nInput:"
    texts = [header_text + " The capital of France is Paris", header_text + " Rome is in", "hello there"]
    seqs = [tok(t)["input_ids"] for t in texts]
    header = tok(header_text)["input_ids"]
    lowers = split.lower(seqs, header, header_rows=2)
    again = split.lower(seqs, header, header_rows=2)  # second call uses the cached header
    for a, b in zip(lowers, again):
        torch.testing.assert_close(a, b)
    _assert_upper_matches_full(model, tok, split, seqs, lowers)


def test_split_forward_rows_with_different_headers_match_full_forward(tiny):
    """One batched lower pass over rows with different instruction headers (of different lengths) and none."""
    model, tok = tiny
    split = SplitForward(model, 2)
    header_texts = ["Task: CounterFact\nDescription: change the fact\nInput:", "Task: ZsRE\nInput:",
                    "Task: Recent\nDescription: a much longer description of what is to be done\nInput:"]
    texts = [header_texts[0] + " The capital of France is Paris", header_texts[1] + " Rome is in Italy",
             "hello there", header_texts[2] + " x", header_texts[0] + " Berlin"]
    row_headers = [header_texts[0], header_texts[1], None, header_texts[2], header_texts[0]]
    seqs = [tok(t)["input_ids"] for t in texts]
    headers = [tok(h)["input_ids"] if h else () for h in row_headers]
    lowers = split.lower_rows(seqs, headers)
    assert len(split.headers) == 3  # computed in one batch, kept per header
    for i, (s, h) in enumerate(zip(seqs, headers)):  # each row alone, its header computed alone
        alone = SplitForward(model, 2).lower([s], h)[0]
        torch.testing.assert_close(lowers[i], alone, rtol=1e-4, atol=1e-5)
    _assert_upper_matches_full(model, tok, split, seqs, lowers)
    # scoring replays each header through the upper blocks once; the rows only their own tokens
    after = [(i, j) for i, (s, h) in enumerate(zip(seqs, headers)) for j in range(len(h), len(s))]
    rows_a, pos_a = torch.tensor([i for i, _ in after]), torch.tensor([j for _, j in after])
    ids, mask = _pad_batch(seqs, tok.pad_token_id)
    full_a = model(input_ids=ids, attention_mask=mask).logits[rows_a, pos_a]
    torch.testing.assert_close(split.upper_prefixed(seqs, lowers, headers, tok.pad_token_id, rows_a, pos_a),
                               full_a, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="2 sequences but 1 headers"):
        split.lower_rows(seqs[:2], headers[:1])


def test_length_batches_minimise_padding_plus_overhead():
    # sorted 10, 10, 2, 2: two batches cost 2·10 + 2·2 + 2·overhead, one batch 4·10 + overhead, four 24 + 4·overhead
    assert length_batches([2, 10, 2, 10], max_rows=4, overhead=1) == [[1, 3], [0, 2]]
    assert length_batches([2, 10, 2, 10], max_rows=4, overhead=100) == [[1, 3, 0, 2]]
    assert all(len(b) <= 3 for b in length_batches(list(range(20)), max_rows=3, overhead=1000))
    assert sorted(i for b in length_batches([5, 1, 3, 3, 9], max_rows=2) for i in b) == [0, 1, 2, 3, 4]
    assert length_batches([], max_rows=4) == []
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        length_batches([1], max_rows=0)


def test_running_norm_matches_hand_computed():
    norm = RunningNorm(2)
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0], [7.0, 14.0]])
    norm.update(x[:1])
    norm.update(x[1:3])
    norm.update(x[3:])
    torch.testing.assert_close(norm.mean, torch.tensor([4.0, 11.0], dtype=torch.float64))
    # sample std: dim 0 -> sqrt(20/3); dim 1 -> sqrt(12/3) = 2
    torch.testing.assert_close(norm.std, torch.tensor([(20 / 3) ** 0.5, 2.0], dtype=torch.float64))
    torch.testing.assert_close(norm.normalize(torch.tensor([[4.0, 13.0]])),
                               torch.tensor([[0.0, 1.0]]))
    with pytest.raises(RuntimeError, match="never filled"):
        RunningNorm(2).normalize(x)


def test_running_norm_merge_of_processes_is_one_process_seeing_every_row():
    """What several trainer processes do after a step: each updated the same start with its own rows; merged, the
    statistics are those of one process updated with all the rows in process order (hand-computed values as above)."""
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0], [7.0, 14.0]])
    start, first, second = RunningNorm(2), RunningNorm(2), RunningNorm(2)
    for norm in (start, first, second):
        norm.update(x[:1])
    first.update(x[1:3])
    second.update(x[3:])
    merged = RunningNorm(2)
    merged.merge(start.state(), torch.stack([first.state(), second.state()]))
    assert merged.count.item() == 4
    torch.testing.assert_close(merged.mean, torch.tensor([4.0, 11.0], dtype=torch.float64))
    torch.testing.assert_close(merged.std, torch.tensor([(20 / 3) ** 0.5, 2.0], dtype=torch.float64))
    alone = RunningNorm(2)  # a process without rows this step changes nothing
    alone.merge(start.state(), torch.stack([start.state(), first.state()]))
    torch.testing.assert_close(alone.state(), first.state())


def test_unfilled_normalisation_is_an_error(tiny_llama):
    model, tok = tiny_llama
    editor = MendEditor.for_model(model, MethodConfig(rank=8), (2, 3)).eval()
    with pytest.raises(RuntimeError, match="never filled"):
        editor.edit(model, tok, PROMPT, TARGET)


def test_network_is_identity_at_init_and_per_layer_modes(tiny_llama):
    model, _ = tiny_llama
    editor = MendEditor.for_model(model, MethodConfig(rank=8, n_blocks=2), (2, 3))
    assert set(editor.nets) == {"32x64", "64x32"}  # one network per weight shape, shared by layers 2 and 3
    assert editor.mode["model.layers.2.mlp.up_proj.weight"] == 0 and editor.mode["model.layers.3.mlp.up_proj.weight"] == 1
    net = editor.nets["32x64"]
    x = torch.randn(5, 96)
    torch.testing.assert_close(net(x, 1), x)
    assert len(net.blocks) == 2 and net.blocks[0].down.out_features == 8


def test_save_load_gives_identical_edits(tiny, tmp_path):
    model, tok = tiny
    editor = _perturb(MendEditor.for_model(model, MethodConfig(rank=8, edit_lr=0.01), (2, 3)))
    _fill_norms(editor)
    editor.eval()
    first = editor.edit(model, tok, PROMPT, TARGET)
    editor.save(tmp_path / "ed", {"step": 7})
    loaded = MendEditor.load(tmp_path / "ed", model)
    assert loaded.config == editor.config and not loaded.training
    second = loaded.edit(model, tok, PROMPT, TARGET)
    for name in first.deltas:
        assert torch.equal(first.deltas[name], second.deltas[name])
    size = (tmp_path / "ed" / "editor.safetensors").stat().st_size
    n_values = sum(v.numel() for v in editor.state_dict().values())
    assert size < n_values * 8 + 100_000  # weights + stats only: no optimizer state


def test_load_checks_the_model(tiny_llama, tiny_gpt2, tmp_path):
    editor = MendEditor.for_model(tiny_llama[0], MethodConfig(rank=4), (2, 3))
    editor.save(tmp_path / "ed")
    with pytest.raises(ValueError, match="does not match the model"):
        MendEditor.load(tmp_path / "ed", tiny_gpt2[0])
    with pytest.raises(FileNotFoundError, match="No trained editor"):
        MendEditor.load(tmp_path / "missing")


def test_factors_gradient_layout():
    f = Factors(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0, 5.0]]))
    assert torch.equal(f.gradient(), torch.tensor([[3.0, 6.0], [4.0, 8.0], [5.0, 10.0]]))
    assert EditTarget("a.b.weight", 2, 3, conv1d=True).weight_shape == (2, 3)


def test_bfloat16_model_edits_with_fp32_editor():
    from instructedit_utils.models.loading import load_model

    model, tok = load_model("tiny-llama", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    editor = MendEditor.for_model(model, _plain_config(edit_lr=0.5), (2, 3))
    result = editor.edit(model, tok, PROMPT, TARGET, return_factors=True)
    assert all(d.dtype == torch.float32 and torch.isfinite(d).all() for d in result.deltas.values())
    original = {n: p.clone() for n, p in model.named_parameters()}
    with applied(model, result.deltas):
        pass
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    _, ids, _ = _edit_loss(model, tok)
    with editor.low_rank_edit(model, result.transformed):
        assert model(input_ids=ids).logits.dtype == torch.bfloat16


def test_split_forward_header_cache_is_bounded(tiny_llama):
    model, tok = tiny_llama
    split = SplitForward(model, 2, max_headers=2)
    for word in ("alpha", "beta", "gamma"):
        header = tok(f"Task: {word} task\nInput:")["input_ids"]
        split.lower([tok(f"Task: {word} task\nInput: something")["input_ids"]], header)
    assert len(split.headers) == 2


def test_fused_head_nll_equals_the_plain_loss_and_gradient():
    """One read of the LM head for loss and gradient (online softmax over vocabulary blocks of any size) gives the
    plain log-softmax NLL and its gradient w.r.t. the hidden states; a trainable head is refused."""
    from instructedit_utils.models.losses import fused_head_nll

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 16, generator=gen, dtype=torch.float64) * 3
    targets = torch.tensor([3, 999, 0, 512])
    h = torch.randn(4, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    plain = -(h @ weight.T).log_softmax(-1).gather(-1, targets[:, None]).mean()
    (expected,) = torch.autograd.grad(plain, h)
    for block in (1, 7, 256, 4096):
        loss = fused_head_nll(h, weight, targets, block=block)
        (grad,) = torch.autograd.grad(2.0 * loss, h)
        torch.testing.assert_close(loss, plain, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, 2.0 * expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="no gradient for the LM head"):
        fused_head_nll(h, weight.clone().requires_grad_(True), targets)


def test_head_nll_falls_back_to_the_plain_loss_for_a_trainable_head(tiny_llama):
    model, _ = tiny_llama
    runner = SplitForward(model, 2)
    h = torch.randn(3, model.config.hidden_size)
    targets = torch.tensor([1, 5, 7])
    plain = nll(runner.head(h), targets)
    trainable = model.lm_head.weight.requires_grad
    try:
        model.lm_head.weight.requires_grad_(True)
        torch.testing.assert_close(runner.head_nll(h, targets), plain)  # no error: the plain loss, with its gradient
        model.lm_head.weight.requires_grad_(False)
        torch.testing.assert_close(runner.head_nll(h, targets), plain, rtol=1e-5, atol=1e-6)  # the fused loss
    finally:
        model.lm_head.weight.requires_grad_(trainable)


def test_edit_with_the_fused_head_equals_the_plain_head(tiny, monkeypatch):
    """An edit's deltas and loss with the fused LM-head loss equal those of the plain logits (frozen model)."""
    model, tok = tiny
    model.requires_grad_(False)
    editor = _perturb(MendEditor.for_model(model, _plain_config(edit_lr=1e-2), (2, 3)))
    calls = []
    real = SplitForward.head_nll
    monkeypatch.setattr(SplitForward, "head_nll", lambda self, h, t: calls.append(1) or real(self, h, t))
    fused = editor.edit(model, tok, PROMPT, TARGET)
    assert calls  # the fused path ran
    monkeypatch.setattr(SplitForward, "head_nll",
                        lambda self, h, t: -self.head(h).float().log_softmax(-1).gather(-1, t[:, None]).mean())
    plain = editor.edit(model, tok, PROMPT, TARGET)
    assert fused.loss == pytest.approx(plain.loss, rel=1e-5)
    for name, delta in plain.deltas.items():
        torch.testing.assert_close(fused.deltas[name], delta, rtol=1e-4, atol=1e-7)
