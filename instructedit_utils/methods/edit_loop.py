"""The inner loop the optimisation-based editing methods share (FT-L, CaliNet, GRACE): find a few new numbers that
make the model say the target, with the base model frozen.

Each method adds *something* to one block's MLP — a weight delta (FT-L), calibration slots (CaliNet), a codebook
entry (GRACE) — through a removable forward hook, and optimises it with Adam on the teacher-forced NLL of the
edit's target tokens after its prompt. The lower blocks do not change, so the loop runs on the split forward of
:mod:`~instructedit_utils.models.forward`: the residual stream entering the method's block is computed once (and is
reused from the harness's cache when the harness scored the same prompt before), every step replays only the blocks
from there on.

* :func:`layer_module` — a block's submodule by layer and path, with an error naming the method and the parameter;
* :func:`~instructedit_utils.models.forward.edit_batch` (the edit's prompt+target as one batch of the method's runner,
  shared with the hypernetwork editors) and :func:`target_loss`;
* :func:`optimize` — the Adam loop with a projection (e.g. FT-L's L∞ bound), optional early stop and a guard:
  a non-finite loss or parameter is an error naming the request, never a silently kept broken edit;
* :func:`hooked` — a forward hook that is removed on exit, also after an exception;
* :class:`OptimizedMethod` — what the three methods share: a config dataclass (its digest is the fingerprint), one
  block, no instructions.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .registry import EditingMethod, config_digest
from ..models.batches import EditBatch, edit_batch
from ..models.losses import nll
from ..data.instructions import EditRequest
from ..models.loading import arch_spec


def n_blocks(model: nn.Module) -> int:
    return len(model.get_submodule(arch_spec(model).layers_path))


def resolve_layer(model: nn.Module, layer: int | None, method: str, default: Sequence[int] = ()) -> int:
    """``layer`` as a block index (negative counts from the end; ``None``: the lowest of ``default``, else the
    third block from the top); an error naming ``method`` when the model has no such block."""
    n = n_blocks(model)
    if layer is None:
        layer = min(default) if default else max(n - 3, 0)
    index = layer + n if layer < 0 else layer
    if not 0 <= index < n:
        raise ValueError(f"{method}: layer={layer} does not exist; the model has {n} blocks (0..{n - 1})")
    return index


def layer_module(model: nn.Module, layer: int, path: str, method: str, parameter: str, value: str | None = None
                 ) -> tuple[str, nn.Module]:
    """``(full name, module)`` of ``<blocks>.<layer>.<path>``; an error naming ``method`` and ``parameter`` (given
    as ``value``, default ``path``) when the model has no such module."""
    name = f"{arch_spec(model).layers_path}.{layer}.{path}" if path else f"{arch_spec(model).layers_path}.{layer}"
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{method}: {parameter}={value or path!r} names no module of block {layer} ({name} does not "
                         f"exist in {type(model).__name__})") from None


def mlp_input_dim(module: nn.Module) -> int:
    """Width of the residual stream an MLP module reads (its first linear layer's input)."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            return sub.in_features
        if type(sub).__name__ == "Conv1D":
            return sub.weight.shape[0]
    raise ValueError(f"{type(module).__name__} has no linear layer to read its input width from")


def request_batch(runner, tokenizer, request: EditRequest) -> EditBatch:
    """:func:`~instructedit_utils.models.forward.edit_batch` of an edit request."""
    return edit_batch(runner, tokenizer, request.prompt, request.target, request.header)


def target_loss(runner, eb: EditBatch) -> torch.Tensor:
    """Mean NLL of the target tokens (teacher forced) under whatever hooks are active."""
    return nll(runner.upper(eb.batch, eb.rows, eb.positions), eb.targets)


@dataclass
class LoopResult:
    loss_before: float
    loss_after: float
    steps: int


def optimize(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], *, steps: int, lr: float,
             request: EditRequest, method: str, project: Callable[[], None] | None = None,
             stop_loss: float | None = None, plateau: float | None = None) -> LoopResult:
    """Adam on ``params`` for ``steps`` steps of ``loss_fn`` (``project`` after each step). It stops early once the
    loss is below ``stop_loss``, or once the last step lowered it by less than the fraction ``plateau`` of its value
    (a converged loop: FT-L's L∞ bound is reached in its first step). Zero steps or ``lr = 0`` leave ``params``
    untouched. A non-finite loss or parameter raises :class:`FloatingPointError` naming ``method`` and the
    request."""
    def check(value: torch.Tensor, what: str, step: int) -> None:
        if not bool(torch.isfinite(value).all()):
            raise FloatingPointError(f"{method}: non-finite {what} at step {step} of the edit of "
                                     f"{request.case_id!r}; lower the learning rate")

    optimizer = torch.optim.Adam(params, lr=lr) if steps > 0 and lr > 0 else None
    before = after = None
    done = 0
    with torch.enable_grad():
        for step in range(steps if optimizer else 0):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn()
            check(loss, "loss", step)
            previous, after = after, float(loss.detach())
            before = after if before is None else before
            if stop_loss is not None and after < stop_loss:
                break
            if plateau is not None and previous is not None and previous - after < plateau * abs(previous):
                break
            loss.backward()
            optimizer.step()
            if project is not None:
                with torch.no_grad():
                    project()
            for p in params:
                check(p, "parameter", step)
            done += 1
        if optimizer is None or done == steps:
            with torch.no_grad():
                after = float(loss_fn())
            check(torch.tensor(after), "loss", done)
    before = after if before is None else before
    return LoopResult(before, after, done)


@contextlib.contextmanager
def hooked(module: nn.Module, hook: Callable) -> Iterator[None]:
    """``module.register_forward_hook(hook)`` inside the block only (removed on exit, also after an exception)."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class OptimizedMethod(EditingMethod):
    """An editing method that optimises something new for each edit at one block (``config.layer``; ``None``: the
    lowest of ``default_layers``, or the highest with ``top``), reads no instructions and is identified by its
    name and the digest of its config."""

    use_instructions = False

    def __init__(self, model: nn.Module, config, name: str, default_layers: Sequence[int] = (), top: bool = False):
        self.name = name
        self.config = config
        default = (max(default_layers),) if top and default_layers else tuple(default_layers)
        self.layer = resolve_layer(model, config.layer, name, default)
        self.first_edited_block = self.layer

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{config_digest(self.config)}"

    def mlp(self, model: nn.Module) -> nn.Module:
        """The MLP module of this method's block."""
        return layer_module(model, self.layer, arch_spec(model).mlp, self.name, "layer")[1]
