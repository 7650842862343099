"""The matrices an editor edits (:class:`EditTarget`, :func:`edit_targets`: the MLP matrices of the edited blocks,
per architecture) and one edit's gradient factors on a matrix (:class:`Factors`: layer inputs ``u`` and output
gradients ``δ``, whose products sum to the matrix's gradient)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .loading import arch_spec, edit_parameter_names


@dataclass(frozen=True)
class EditTarget:
    """One edited matrix: its parameter name, input/output sizes and whether it is a transposed ``Conv1D``."""

    name: str
    in_dim: int
    out_dim: int
    conv1d: bool = False

    @property
    def module_name(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def shape_key(self) -> str:
        return f"{self.in_dim}x{self.out_dim}"

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.in_dim, self.out_dim) if self.conv1d else (self.out_dim, self.in_dim)


def edit_targets(model: nn.Module, layers: Sequence[int] | None = None) -> list[EditTarget]:
    """The :class:`EditTarget` of every MLP matrix of ``layers`` (see :func:`~instructedit_utils.models.edit_parameter_names`)."""
    conv1d = arch_spec(model).conv1d
    params = dict(model.named_parameters())
    out = []
    for name in edit_parameter_names(model, layers):
        rows, cols = params[name].shape
        in_dim, out_dim = (rows, cols) if conv1d else (cols, rows)
        out.append(EditTarget(name, in_dim, out_dim, conv1d))
    return out


@dataclass
class Factors:
    """Per-token gradient factors of one edited matrix: layer inputs ``u`` [T, in] and output gradients ``delta``
    [T, out], for the kept rows (non-padding, not position 0 when skipped, non-zero gradient); ``rows`` [T] says which
    sequence of the batch each token came from (edits of several sequences at once)."""

    u: torch.Tensor
    delta: torch.Tensor
    rows: torch.Tensor | None = None

    def gradient(self) -> torch.Tensor:
        """``Σ_t δ_t u_tᵀ`` in ``nn.Linear`` layout ``[out, in]``."""
        return self.delta.T @ self.u
