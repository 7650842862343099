"""The keys' second moment (models.key_statistics) on a tiny random Llama: batched and padded equals each text alone,
the cache is read back, and statistics of another model or layer are refused."""
import pytest
import torch

from instructedit_utils.models import key_statistics as ks
from instructedit_utils.models.key_statistics import KeyStatistics, collect_moment, key_statistics

TEXTS = ["The capital of France is Paris.", "Water boils at 100 degrees", "Oslo", "A much longer sentence about "
         "the weather in the north of the country, with several clauses."]
MODULE = "model.layers.2.mlp.down_proj"


def test_the_moment_over_padded_batches_equals_each_text_alone(tiny_llama):
    model, tok = tiny_llama
    total, count = collect_moment(model, tok, MODULE, TEXTS, batch_size=3)
    alone = [collect_moment(model, tok, MODULE, [t], batch_size=1) for t in TEXTS]
    assert count == sum(len(tok(t)["input_ids"]) for t in TEXTS) == sum(n for _, n in alone)
    assert torch.allclose(total, sum(m for m, _ in alone), rtol=1e-6, atol=1e-8)
    assert torch.allclose(total, total.T) and torch.linalg.eigvalsh(total).min() > -1e-6 * total.abs().max()
    with pytest.raises(ValueError, match="not a linear layer"):
        collect_moment(model, tok, "model.layers.2.mlp", TEXTS)


def test_statistics_are_cached_and_refused_for_another_model_or_layer(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    first = key_statistics(model, tok, MODULE, TEXTS, "unit-texts", folder=tmp_path)
    assert first.tokens > 0 and first.moment.shape == (model.config.intermediate_size,) * 2
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == 1 and MODULE in files[0].name
    monkeypatch.setattr(ks, "collect_moments", lambda *a, **k: pytest.fail("recomputed instead of read"))
    again = key_statistics(model, tok, MODULE, TEXTS, "unit-texts", folder=tmp_path)
    assert torch.equal(again.moment, first.moment) and again.tokens == first.tokens
    with pytest.raises(ValueError, match="of module .* cannot be reused"):
        KeyStatistics.load(files[0], first.model, "model.layers.1.mlp.down_proj")
    with pytest.raises(ValueError, match="of model .* cannot be reused"):
        KeyStatistics.load(files[0], "0123456789abcdef", MODULE)
    with pytest.raises(ValueError, match="short name"):
        key_statistics(model, tok, MODULE, TEXTS, "bad/source", folder=tmp_path)
    with pytest.raises(ValueError, match="no text"):
        key_statistics(model, tok, MODULE, ["  "], "empty", folder=tmp_path)
