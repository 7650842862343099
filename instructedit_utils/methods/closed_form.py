"""The closed-form weight updates of the locate-then-edit methods (issue 29), on one linear map ``W`` (an MLP's
output matrix, ``[out, in]`` as ``torch.nn.Linear`` stores it) that sends keys ``k`` (its inputs) to values
``W k``. Only the linear algebra lives here; finding the keys and the values (the subject's last token, the value
optimisation) is the methods' own step.

* :func:`rank_one_update` — ROME (Meng et al., 2022, *Locating and Editing Factual Associations in GPT*, Sec. 3.1;
  kmeng01/rome ``rome/rome_main.py`` with ``compute_u.py``/``compute_v.py``): the smallest change, in the
  metric of the keys' second moment ``C = E[k kᵀ]``, that makes the edit's key map exactly to its value:
  ``Δ = (v* − W k*) uᵀ / (uᵀ k*)`` with ``u = C⁻¹ k*``. A key ``k`` with ``uᵀ k = 0`` keeps its value.
* :func:`least_squares_update` — MEMIT (Meng et al., 2023, *Mass-Editing Memory in a Transformer*, Sec. 4):
  many keys ``K`` ``[in, n]`` at once, ``Δ = R Kᵀ (λ C + K Kᵀ)⁻¹`` with the residual ``R = V − W K``: the minimiser of
  ``‖(W + Δ) K − V‖² + λ tr(Δ C Δᵀ)``. MEMIT spreads ``R`` over several layers; that is the method's step.
* :func:`null_space_projector` and :func:`projected_update` — AlphaEdit (Fang et al., 2025, *AlphaEdit: Null-Space
  Constrained Knowledge Editing for Language Models*, Sec. 3; jianghoucheng/AlphaEdit ``AlphaEdit/AlphaEdit_main.py``,
  which solves the same system with ``L2`` as ``α`` and the running ``K_p K_pᵀ``): the update is confined to the
  null space of the preserved keys' second moment (eigenvectors whose eigenvalue is below a threshold), so that every
  preserved key keeps its value: ``Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹`` (``K_p``: keys of earlier edits in a
  sequence).

Every function computes in float64 and returns a delta of ``W``'s dtype and device, to be applied with
:func:`~instructedit_utils.models.deltas.applied` (bit-exact restore).
"""
from __future__ import annotations

import torch


def _matrix(name: str, value: torch.Tensor, dims: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != dims:
        raise ValueError(f"{name} must be a {dims}-d tensor, got {getattr(value, 'shape', type(value).__name__)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} holds non-finite values")
    return value.double()


def _second_moment(cov: torch.Tensor | None, size: int) -> torch.Tensor:
    if cov is None:
        return torch.eye(size, dtype=torch.float64)
    c = _matrix("cov", cov, 2)
    if c.shape != (size, size):
        raise ValueError(f"cov must be [{size}, {size}] (the keys' size), got {list(c.shape)}")
    return c


def rank_one_update(weight: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    cov: torch.Tensor | None = None) -> torch.Tensor:
    """ROME's rank-one ``Δ`` (see the module docstring) with ``(W + Δ) key = value``; ``cov`` the keys' second moment
    ``[in, in]`` (None: the identity, the plain minimum-norm rank-one change)."""
    w = _matrix("weight", weight, 2)
    k, v = _matrix("key", key, 1), _matrix("value", value, 1)
    if k.shape[0] != w.shape[1] or v.shape[0] != w.shape[0]:
        raise ValueError(f"weight {list(w.shape)} maps keys of size {w.shape[1]} to values of size {w.shape[0]}; "
                         f"got a key of {k.shape[0]} and a value of {v.shape[0]}")
    u = torch.linalg.solve(_second_moment(cov, k.shape[0]), k)
    scale = torch.dot(u, k)
    if not scale > 0:
        raise ValueError(f"the key has no positive norm in the covariance metric (kᵀ C⁻¹ k = {float(scale):.3g})")
    return (torch.outer(v - w @ k, u) / scale).to(weight.dtype).to(weight.device)


def least_squares_update(weight: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                         cov: torch.Tensor | None = None, cov_weight: float = 1.0) -> torch.Tensor:
    """MEMIT's ``Δ`` for keys ``[in, n]`` and values ``[out, n]`` (see the module docstring), ``cov_weight`` = ``λ``
    (MEMIT's ``mom2_update_weight``) weighing the preserved keys' second moment ``cov`` (None: the identity)."""
    w = _matrix("weight", weight, 2)
    k, v = _matrix("keys", keys, 2), _matrix("values", values, 2)
    if k.shape[0] != w.shape[1] or v.shape[0] != w.shape[0] or k.shape[1] != v.shape[1]:
        raise ValueError(f"weight {list(w.shape)} needs keys [{w.shape[1]}, n] and values [{w.shape[0]}, n]; got "
                         f"{list(k.shape)} and {list(v.shape)}")
    if not cov_weight > 0:
        raise ValueError(f"cov_weight must be > 0 (without it λC + KKᵀ is singular whenever there are fewer keys than "
                         f"dimensions), got {cov_weight}")
    system = cov_weight * _second_moment(cov, k.shape[0]) + k @ k.T
    delta = torch.linalg.solve(system, k @ (v - w @ k).T).T  # R Kᵀ (λC + KKᵀ)⁻¹, the system being symmetric
    return delta.to(weight.dtype).to(weight.device)


def null_space_projector(cov: torch.Tensor, threshold: float = 1e-2, energy: float | None = None) -> torch.Tensor:
    """AlphaEdit's ``P = Û Ûᵀ``: ``Û`` the eigenvectors of the preserved keys' second moment ``cov`` whose eigenvalue
    is below ``threshold`` (AlphaEdit's ``nullspace_threshold``), in float64. With ``energy`` (in (0, 1)) instead: the
    weakest eigenvectors whose eigenvalues together hold at most that share of the trace (at least the weakest one),
    so that ``‖Δ K₀‖² ≤ ‖Δ‖² · energy · tr(K₀ K₀ᵀ)`` whatever the keys' scale. An empty null space is an error: no
    update could then leave every preserved key alone."""
    c = _matrix("cov", cov, 2)
    if c.shape[0] != c.shape[1]:
        raise ValueError(f"cov must be square, got {list(c.shape)}")
    if energy is not None and not 0 < energy < 1:
        raise ValueError(f"energy must be in (0, 1), got {energy}")
    eigenvalues, vectors = torch.linalg.eigh((c + c.T) / 2)  # ascending
    if energy is not None:
        weakest = max(1, int((torch.cumsum(eigenvalues, 0) <= energy * eigenvalues.sum()).sum()))
        kept = vectors[:, :weakest]
    else:
        kept = vectors[:, eigenvalues < threshold]
    if kept.shape[1] == 0:
        raise ValueError(f"no eigenvalue of cov is below {threshold} (smallest {float(eigenvalues[0]):.3g}): the null "
                         "space is empty; raise the threshold or use more keys of fewer dimensions")
    return kept @ kept.T


def projected_update(weight: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, projector: torch.Tensor,
                     previous_keys: torch.Tensor | None = None, alpha: float = 1.0) -> torch.Tensor:
    """AlphaEdit's ``Δ`` for keys ``[in, n]`` and values ``[out, n]`` confined to ``projector``'s range (see the module
    docstring): every key ``k0`` with ``P k0 = 0`` keeps ``W k0``. ``previous_keys`` ``[in, m]``: the keys of the
    edits already made in a sequence; ``alpha`` the ridge term (AlphaEdit's ``L2``), which must be positive."""
    w = _matrix("weight", weight, 2)
    k, v = _matrix("keys", keys, 2), _matrix("values", values, 2)
    p = _matrix("projector", projector, 2)
    if k.shape[0] != w.shape[1] or v.shape[0] != w.shape[0] or k.shape[1] != v.shape[1] or \
            p.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"weight {list(w.shape)} needs keys [{w.shape[1]}, n], values [{w.shape[0]}, n] and a "
                         f"projector [{w.shape[1]}, {w.shape[1]}]; got {list(k.shape)}, {list(v.shape)}, "
                         f"{list(p.shape)}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    # Δᵀ = (P M + α I)⁻¹ P K Rᵀ with M = K Kᵀ + K_p K_pᵀ: every column of Δᵀ lies in P's range, so Δ k0 = 0 wherever
    # P k0 = 0. P M is formed as (P K) Kᵀ + (P K_p) K_pᵀ: a few keys, never a d × d × d product
    pk = p @ k
    system = pk @ k.T + alpha * torch.eye(p.shape[0], dtype=torch.float64)
    if previous_keys is not None:
        kp = _matrix("previous_keys", previous_keys, 2)
        system = system + (p @ kp) @ kp.T
    delta = torch.linalg.solve(system, pk @ (v - w @ k).T).T
    return delta.to(weight.dtype).to(weight.device)
