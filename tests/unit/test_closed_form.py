"""The closed-form updates of ROME, MEMIT and AlphaEdit (methods.closed_form) on hand-built matrices: each property
checked directly (the edited key's new value, a key the update must not move, the stationarity of MEMIT's objective
computed by autograd, AlphaEdit's preserved keys) rather than against the formulas themselves."""
import pytest
import torch

from instructedit_utils.methods.closed_form import (least_squares_update, null_space_projector, projected_update,
                                                    rank_one_update)
from instructedit_utils.models.deltas import applied


def _random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _covariance(size=6, n=40, seed=1):
    keys = _random(size, n, seed=seed)
    return keys @ keys.T / n


def test_rank_one_maps_the_key_to_its_value_and_leaves_covariance_orthogonal_keys_alone():
    w, k, v = _random(4, 6), _random(6, seed=2), _random(4, seed=3)
    cov = _covariance()
    delta = rank_one_update(w, k, v, cov)
    assert torch.linalg.matrix_rank(delta) == 1
    assert torch.allclose((w + delta) @ k, v, atol=1e-10)
    # a key orthogonal to k in the metric of C⁻¹ (kᵀ C⁻¹ k' = 0) keeps its value
    other = _random(6, seed=4)
    u = torch.linalg.solve(cov, k)
    other = other - (u @ other) / (u @ k) * k
    assert abs(float(u @ other)) < 1e-10 and other.norm() > 0.1
    assert torch.allclose((w + delta) @ other, w @ other, atol=1e-10)
    # without a covariance: the minimum-norm change, (v − Wk) kᵀ / kᵀk
    plain = rank_one_update(w, k, v)
    assert torch.allclose(plain, torch.outer(v - w @ k, k) / (k @ k), atol=1e-12)
    # a key that already maps to its value needs no change
    assert torch.allclose(rank_one_update(w, k, w @ k, cov), torch.zeros_like(w), atol=1e-12)


def test_rank_one_applied_to_a_linear_layer_restores_bit_for_bit():
    layer = torch.nn.Linear(6, 4, bias=False)
    model = torch.nn.Sequential(layer)
    before = layer.weight.detach().clone()
    k, v = torch.randn(6), torch.randn(4)
    delta = rank_one_update(layer.weight.detach(), k, v, _covariance().float())
    assert delta.dtype == torch.float32
    with applied(model, {"0.weight": delta}):
        assert torch.allclose(layer(k), v, atol=1e-4)
    assert torch.equal(layer.weight, before)


def test_memit_update_is_the_stationary_point_of_its_objective():
    w, keys, values = _random(4, 6), _random(6, 3, seed=5), _random(4, 3, seed=6)
    cov, lam = _covariance(), 0.7
    delta = least_squares_update(w, keys, values, cov, cov_weight=lam).requires_grad_(True)
    objective = (((w + delta) @ keys - values) ** 2).sum() + lam * torch.trace(delta @ cov @ delta.T)
    (grad,) = torch.autograd.grad(objective, delta)
    assert grad.abs().max() < 1e-9
    # with little weight on the preserved keys and fewer keys than dimensions every key nearly maps to its value
    close = least_squares_update(w, keys, values, cov, cov_weight=1e-6)
    assert ((w + close) @ keys - values).abs().max() < 1e-4 * (w @ keys - values).abs().max()
    # one key, identity covariance: (v − Wk) kᵀ / (λ + kᵀk) by Sherman–Morrison, ROME's change as λ → 0
    k, v = keys[:, 0], values[:, 0]
    one = least_squares_update(w, k[:, None], v[:, None], cov_weight=0.5)
    assert torch.allclose(one, torch.outer(v - w @ k, k) / (0.5 + k @ k), atol=1e-12)


def test_alphaedit_leaves_every_preserved_key_unchanged_and_still_edits():
    basis = torch.linalg.qr(_random(8, 8, seed=7)).Q
    preserved = basis[:, :5] @ _random(5, 30, seed=8)  # keys spanning 5 of 8 dimensions
    projector = null_space_projector(preserved @ preserved.T / 30, threshold=1e-8)
    assert torch.allclose(projector, projector @ projector, atol=1e-10)  # a projector
    assert int(round(float(torch.trace(projector)))) == 3  # onto the 3 dimensions no preserved key uses
    w = _random(4, 8, seed=9)
    keys, values = _random(8, 2, seed=10), _random(4, 2, seed=11)
    delta = projected_update(w, keys, values, projector, alpha=1e-6)

    def moved(d):  # how far the preserved keys' values move, relative to the update's and the keys' size
        return float((d @ preserved).norm() / (d.norm() * preserved.norm()))

    assert moved(delta) < 1e-8
    # the edited keys move to their values as far as the 3 free dimensions allow
    before = ((w @ keys - values) ** 2).sum()
    after = (((w + delta) @ keys - values) ** 2).sum()
    assert after < 1e-6 * before
    # earlier edits of a sequence change the solution, not the guarantee
    later = projected_update(w, keys, values, projector, previous_keys=_random(8, 2, seed=12), alpha=1.0)
    assert not torch.allclose(later, delta) and moved(later) < 1e-8
    # without the projection (the identity as projector) the preserved keys do move
    assert moved(projected_update(w, keys, values, torch.eye(8, dtype=torch.float64), alpha=1e-6)) > 1e-3


def test_bad_input_is_refused_with_what_is_wrong():
    w = _random(4, 6)
    with pytest.raises(ValueError, match="keys of size 6"):
        rank_one_update(w, _random(5), _random(4))
    with pytest.raises(ValueError, match="non-finite"):
        rank_one_update(w, torch.full((6,), float("nan")), _random(4))
    with pytest.raises(ValueError, match=r"cov must be \[6, 6\]"):
        rank_one_update(w, _random(6), _random(4), _covariance(size=5))
    with pytest.raises(ValueError, match="cov_weight must be > 0"):
        least_squares_update(w, _random(6, 2), _random(4, 2), cov_weight=0)
    with pytest.raises(ValueError, match="null space is empty"):
        null_space_projector(torch.eye(6), threshold=0.5)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        projected_update(w, _random(6, 2), _random(4, 2), torch.eye(6), alpha=0)


def test_a_null_space_by_energy_keeps_the_weakest_directions_holding_that_share_of_the_trace():
    cov = torch.diag(torch.tensor([1.0, 2.0, 3.0, 100.0], dtype=torch.float64))  # trace 106
    for energy, dims in ((0.05, 2), (0.001, 1), (0.99, 3)):  # 1 + 2 ≤ 5.3; at least one; 1 + 2 + 3 ≤ 104.9
        projector = null_space_projector(cov, energy=energy)
        assert round(float(projector.trace())) == dims
        assert torch.allclose(projector, torch.diag(torch.tensor([1.0] * dims + [0.0] * (4 - dims),
                                                                 dtype=torch.float64)), atol=1e-12)
    with pytest.raises(ValueError, match="energy must be in"):
        null_space_projector(cov, energy=1.0)
