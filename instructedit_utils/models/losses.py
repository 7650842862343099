"""The losses an edit is scored and trained with, on logits or on hidden states: the mean negative log-likelihood
(:func:`nll`) and the same through the LM head in blocks without materialising every logit
(:func:`fused_head_nll`, one read of the head's weight for loss and gradient)."""
from __future__ import annotations

import torch


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``targets`` [N] under ``logits`` [N, V]."""
    return -logits.float().log_softmax(-1).gather(-1, targets[:, None]).mean()


class _HeadNLL(torch.autograd.Function):
    """Mean NLL of the rows' targets under ``h @ weightᵀ``, its gradient w.r.t. ``h`` computed in the same pass.

    A few edit positions against a 49k-token vocabulary make the LM head memory-bound: the logits (forward) and the
    gradient ``(softmax − onehot) @ weight`` (backward) each read the whole weight. Here each block of vocabulary
    rows is read once for both, with a running max/sum (online softmax): ``∂/∂h = Σ_v p_v w_v − w_target``."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, block: int) -> torch.Tensor:
        dtype = torch.promote_types(h.dtype, torch.float32)  # half-precision models: the loss in float32
        h32 = h.to(dtype)
        n = h32.shape[0]
        m = h32.new_full((n,), float("-inf"))
        total = h32.new_zeros(n)
        expected = torch.zeros_like(h32)  # Σ_v exp(z_v − m) w_v
        for start in range(0, weight.shape[0], block):
            w = weight[start:start + block].to(dtype)
            z = h32 @ w.T
            new_m = torch.maximum(m, z.max(-1).values)
            scale = torch.exp(m - new_m)
            e = torch.exp(z - new_m[:, None])
            total = total * scale + e.sum(-1)
            expected = expected * scale[:, None] + e @ w
            m = new_m
        w_t = weight[targets].to(dtype)
        loss = (m + total.log() - (h32 * w_t).sum(-1)).mean()
        ctx.save_for_backward(((expected / total[:, None] - w_t) / n).to(h.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (grad_h,) = ctx.saved_tensors
        return grad * grad_h, None, None, None


def fused_head_nll(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """``nll(h @ weightᵀ, targets)`` (mean over rows) differentiable in ``h`` only (the LM head is frozen), reading
    ``weight`` once for the loss and its gradient (:class:`_HeadNLL`); equal to the plain computation up to float
    rounding."""
    if weight.requires_grad and torch.is_grad_enabled():
        raise ValueError("fused_head_nll gives no gradient for the LM head's weight; freeze it or use the plain loss")
    return _HeadNLL.apply(h, weight, targets, block)
