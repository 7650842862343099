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

    def state(self) -> torch.Tensor:
        """``[count, mean…, m2…]`` as one float64 vector (what :meth:`merge` takes)."""
        return torch.cat([self.count.reshape(1), self.mean, self.m2]).clone()

    @torch.no_grad()
    def merge(self, start: torch.Tensor, ends: torch.Tensor) -> None:
        """Become ``start`` updated with the rows that took it to each of ``ends`` (``[P, 1 + 2·dim]`` states, as
        :meth:`state` gives), in order: the statistics one process gathers from all the rows (Chan et al.'s parallel
        merge of each end's rows, recovered exactly from ``start`` and that end)."""
        dim = self.mean.shape[0]
        c0, mu0, m20 = start[0], start[1:1 + dim], start[1 + dim:]
        count, mean, m2 = c0.clone(), mu0.clone(), m20.clone()
        for end in ends:
            c1, mu1, m21 = end[0], end[1:1 + dim], end[1 + dim:]
            n_b = c1 - c0
            if n_b <= 0:
                continue
            mean_b = (mu1 * c1 - mu0 * c0) / n_b
            m2_b = m21 - m20 - (mean_b - mu0) ** 2 * (c0 * n_b / c1)
            n = count + n_b
            delta = mean_b - mean
            mean = mean + delta * (n_b / n)
            m2 = m2 + m2_b + delta ** 2 * (count * n_b / n)
            count = n
        self.count.copy_(count)
        self.mean.copy_(mean)
        self.m2.copy_(m2)

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
