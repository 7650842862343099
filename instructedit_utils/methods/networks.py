"""MEND's building blocks: running normalisation statistics of the gradient factors (:class:`RunningNorm`) and the
residual low-rank network initialised to the identity that transforms them (:class:`LowRankBlock`,
:class:`GradientNet`). :class:`~instructedit_utils.methods.mend.MendEditor` assembles them."""
from __future__ import annotations

import torch
from torch import nn


class RunningNorm(nn.Module):
    """Running mean/std (Welford, float64) of feature vectors; frozen outside training.

    Normalising with statistics that were never filled would divide by zero; :meth:`normalize` raises instead.
    """

    def __init__(self, dim: int, eps: float = 1e-10):
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n_a = self.count.clone()
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        self.m2 += m2_b + delta ** 2 * (n_a * n_b / n)
        self.count.fill_(float(n))

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / (self.count - 1).clamp_min(1)).sqrt().clamp_min(self.eps)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.count < 2:
            raise RuntimeError("Editor normalisation statistics were never filled (count < 2): train the editor "
                               "first, or load a trained checkpoint")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class LowRankBlock(nn.Module):
    """``x + A·relu((B·x)·scale_ℓ + shift_ℓ)`` with ``A = 0`` at init (identity); ``ℓ`` = layer (mode) index."""

    def __init__(self, dim: int, rank: int, n_modes: int):
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.mode_scale = nn.Parameter(torch.ones(n_modes, rank))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, rank))

    def forward(self, x: torch.Tensor, mode) -> torch.Tensor:
        """``mode``: one layer index for all rows, or a ``[N]`` tensor of per-row layer indices."""
        hidden = self.down(x) * self.mode_scale[mode] + self.mode_shift[mode]
        return x + self.up(torch.relu(hidden))


class GradientNet(nn.Module):
    """``n_blocks`` residual low-rank blocks over the concatenated ``[u; δ]``."""

    def __init__(self, dim: int, rank: int, n_blocks: int, n_modes: int):
        super().__init__()
        self.blocks = nn.ModuleList(LowRankBlock(dim, rank, n_modes) for _ in range(n_blocks))

    def forward(self, x: torch.Tensor, mode) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mode)
        return x
