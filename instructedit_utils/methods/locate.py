"""The steps the locate-then-edit methods share (ROME, MEMIT, AlphaEdit; :mod:`~instructedit_utils.methods.rome`):
where the fact is read, the **keys** an edited MLP output matrix sees there and the **value** it must produce.

* :func:`context_templates` — ROME's prefix contexts: ``"{}"`` and a short greedy continuation of each of
  ``"The"``, ``"Therefore"``, ``"Because"``, ``"I"``, ``"You"`` (AlphaEdit's seeds, 10 tokens; the reference code
  samples them with top-k 5, here they are greedy so that a run is reproducible) followed by ``". {}"``.
* :func:`subject_position` — the token the fact is read at: the subject's last token (ROME's ``subject_last``), or the
  prompt's last token when the prompt does not contain the subject (ROME's ``last``; e.g. an edit written by hand).
* :func:`capture` — a module's inputs (the **keys** of a ``down_proj``/``c_proj``) or a block's output (the residual
  stream, MEMIT's ``z``) at given token positions, averaged over several texts (the contexts).
* :func:`compute_value` — the value optimisation (ROME ``compute_v.py``, MEMIT ``compute_z.py``): a shift ``δ`` of the
  residual stream after block ``L`` at the subject's last token, in every context at once, trained with Adam on the
  target's NLL after each context + prompt, plus ``kl_factor`` × the KL divergence of the next-token distribution
  after ``"{subject} is a"`` from the unedited one (the *essence* term) and ``weight_decay`` × ``‖δ‖² / ‖z‖²``;
  after every step ``‖δ‖ ≤ clamp_norm_factor · ‖z‖`` (``z``: the residual at the subject in the bare prompt). It stops
  once the loss is below ``stop_loss`` (the reference's ``5e-2``). Adding ``δ`` to the block's output or to its MLP's
  output changes the same residual stream, so ROME's value (MLP output + ``δ``) and MEMIT's target (``z + δ``) come
  from one optimisation.

The lower blocks (``0..L``) do not depend on ``δ``: they run once (:class:`~instructedit_utils.models.forward.
SplitForward` at block ``L + 1``) and every step replays the blocks above ``L``, with logits only where the loss reads
them. Architectures without a split forward (Gemma-3) are refused with an error saying so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..data.instructions import EditRequest
from ..models.forward import SplitForward, StopForward, forward_until_stop, supports_split
from ..models.loading import arch_spec
from ..models.metrics import _pad_batch, encode_pair

CONTEXT_SEEDS = ("The", "Therefore", "Because", "I", "You")
KL_TEMPLATE = "{} is a"


@torch.no_grad()
def context_templates(model: nn.Module, tokenizer, seeds: Sequence[str] = CONTEXT_SEEDS, n_tokens: int = 10
                      ) -> tuple[str, ...]:
    """``("{}", "<greedy continuation of seed 1>. {}", …)`` (see the module docstring); braces the model writes are
    dropped so that every template has exactly one slot."""
    device = next(model.parameters()).device
    out = ["{}"]
    for seed in seeds:
        ids = tokenizer(seed, return_tensors="pt")["input_ids"].to(device)
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(generated[0], skip_special_tokens=True)
        text = re.sub(r"\s+", " ", text.replace("{", "").replace("}", "")).strip()
        out.append(f"{text}. {{}}")
    return tuple(out)


def subject_position(tokenizer, text: str, subject: str | None) -> int:
    """Index of the subject's last token in ``tokenizer(text)`` (its last occurrence), else of the text's last token;
    the text is tokenized as :func:`~instructedit_utils.models.metrics.encode_pair` tokenizes a prompt."""
    ids = tokenizer(text)["input_ids"]
    at = text.rfind(subject) if subject and subject.strip() else -1
    if at < 0:
        return len(ids) - 1
    end = at + len(subject)
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    inside = [i for i, (start, stop) in enumerate(offsets) if stop > start and start < end]
    return inside[-1] if inside else len(ids) - 1


@torch.no_grad()
def capture(model: nn.Module, tokenizer, module_name: str, texts: Sequence[str], positions: Sequence[int],
            output: bool = False) -> torch.Tensor:
    """The mean over ``texts`` of ``module_name``'s input (``output=False``: a linear layer's keys) or output (a block's
    residual stream) at ``positions[i]`` of text ``i``, in float32, ``[width]``. One batched forward pass without
    gradients; the pass stops at the module."""
    module = model.get_submodule(module_name)
    seqs = [tokenizer(t)["input_ids"] for t in texts]
    device = next(model.parameters()).device
    ids, mask = _pad_batch(seqs, tokenizer.pad_token_id, device=device)

    def hook(_module, inputs, out):
        value = out if output else inputs[0]
        raise StopForward((value[0] if isinstance(value, tuple) else value).float())

    handle = module.register_forward_hook(hook)
    try:
        stopped = forward_until_stop(model, input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    if stopped is None:
        raise RuntimeError(f"{module_name} was never called in the forward pass")
    rows = torch.arange(len(seqs), device=device)
    return stopped.payload[rows, torch.tensor(list(positions), device=device)].mean(0)


@dataclass(frozen=True)
class ValueOptions:
    """The value optimisation's options (MEMIT/AlphaEdit's GPT2-XL settings by default, see the methods' config)."""

    steps: int = 20
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    stop_loss: float = 5e-2


@dataclass
class Value:
    """The result of :func:`compute_value`: the shift ``delta`` of block ``layer``'s output at the subject's last
    token, the residual ``z`` there in the bare prompt, the loss before and after, the steps taken."""

    delta: torch.Tensor
    z: torch.Tensor
    loss_before: float
    loss_after: float
    steps: int


@dataclass
class _Rows:
    seqs: list[tuple[int, ...]]
    at: list[int]  # the subject's last token per row
    target_rows: torch.Tensor
    target_positions: torch.Tensor  # predictors of the target tokens
    targets: torch.Tensor
    weights: torch.Tensor  # 1 / (target tokens of the row): each context weighs the same
    kl_row: int | None


def _rows(tokenizer, request: EditRequest, contexts: Sequence[str], subject: str | None) -> _Rows:
    seqs, at, rows, positions, targets, weights = [], [], [], [], [], []
    for i, template in enumerate(contexts):
        prompt = template.format(request.prompt)
        enc = encode_pair(tokenizer, prompt, request.target)
        seqs.append(enc.inputs)
        at.append(subject_position(tokenizer, prompt, subject))
        rows += [i] * len(enc.targets)
        positions += [p - 1 for p in enc.target_positions]
        targets += list(enc.targets)
        weights += [1.0 / len(enc.targets)] * len(enc.targets)
    kl_row = None
    if subject and subject.strip():
        kl_text = KL_TEMPLATE.format(subject)
        ids = tuple(tokenizer(kl_text)["input_ids"])
        kl_row = len(seqs)
        seqs.append(ids)
        at.append(subject_position(tokenizer, kl_text, subject))
    return _Rows(seqs, at, torch.tensor(rows), torch.tensor(positions), torch.tensor(targets),
                 torch.tensor(weights) / len(contexts), kl_row)


def compute_value(model: nn.Module, tokenizer, request: EditRequest, layer: int, contexts: Sequence[str],
                  options: ValueOptions = ValueOptions(), subject: str | None = None) -> Value:
    """The value optimisation of the module docstring for ``request`` at block ``layer`` (``subject``: where the fact
    is read; None: the request's record's subject)."""
    if not supports_split(model):
        raise ValueError(f"{type(model).__name__}: the value optimisation replays the blocks above the edited one, "
                         "which this architecture's blocks do not allow (no split forward)")
    subject = request.record.subject if subject is None else subject
    runner = SplitForward(model, layer + 1)
    r = _rows(tokenizer, request, contexts, subject)
    with torch.no_grad():
        lowers = runner.lower_rows(r.seqs, [()] * len(r.seqs))
        batch = runner.batch(r.seqs, lowers, tokenizer.pad_token_id)
    device = runner.device
    at = (torch.arange(len(r.seqs), device=device), torch.tensor(r.at, device=device))
    onehot = torch.zeros(batch.hidden.shape[:2], device=device, dtype=batch.hidden.dtype)
    onehot[at] = 1
    z = batch.hidden[0, r.at[0]].detach().float()
    delta = torch.zeros_like(z, requires_grad=True)
    rows, positions = r.target_rows.to(device), r.target_positions.to(device)
    targets, weights = r.targets.to(device), r.weights.to(device)

    def outputs(shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = batch.hidden + onehot[..., None] * shift.to(batch.hidden.dtype)
        h = runner._replay(hidden, batch.block_args, batch.block_kwargs)
        logp = torch.log_softmax(runner.head(h[rows, positions]).float(), -1)
        kl = (torch.log_softmax(runner.head(h[r.kl_row, r.at[r.kl_row]][None]).float(), -1)
              if r.kl_row is not None else None)
        return logp, kl

    with torch.no_grad():
        kl_init = outputs(delta.detach())[1]

    def loss_fn() -> torch.Tensor:
        logp, kl_logp = outputs(delta)
        loss = -(logp.gather(-1, targets[:, None])[:, 0] * weights).sum()
        if kl_init is not None:
            loss = loss + options.kl_factor * torch.nn.functional.kl_div(kl_init, kl_logp, log_target=True,
                                                                         reduction="batchmean")
        return loss + options.weight_decay * delta.norm() ** 2 / z.norm() ** 2

    return _optimise_delta(loss_fn, delta, z, options, request)


def _optimise_delta(loss_fn, delta: torch.Tensor, z: torch.Tensor, options: ValueOptions, request: EditRequest
                    ) -> Value:
    optimizer = torch.optim.Adam([delta], lr=options.lr) if options.steps > 0 and options.lr > 0 else None
    max_norm = options.clamp_norm_factor * float(z.norm())
    first = last = None
    steps = 0
    with torch.enable_grad():
        for _ in range(options.steps if optimizer else 0):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn()
            value = float(loss.detach())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"value optimisation: non-finite loss at step {steps} of the edit of "
                                         f"{request.case_id!r}")
            first = value if first is None else first
            last = value
            if value < options.stop_loss:
                break
            loss.backward()
            optimizer.step()
            steps += 1
            with torch.no_grad():
                norm = float(delta.norm())
                if norm > max_norm:
                    delta.mul_(max_norm / norm)
        if optimizer is None or steps == options.steps:
            with torch.no_grad():
                last = float(loss_fn())
    first = last if first is None else first
    return Value(delta.detach(), z, first, last, steps)


def mlp_matrix(model: nn.Module, layer: int) -> tuple[str, str, bool]:
    """``(module name, parameter name, conv1d)`` of block ``layer``'s MLP output matrix (``down_proj``, GPT-2's
    ``c_proj``, GPT-J's ``fc_out``): the matrix these methods edit."""
    spec = arch_spec(model)
    path = spec.mlp_weights[-1]
    module = f"{spec.layers_path}.{layer}.{path.rsplit('.', 1)[0]}"
    return module, f"{spec.layers_path}.{layer}.{path}", spec.conv1d


def block_name(model: nn.Module, layer: int) -> str:
    return f"{arch_spec(model).layers_path}.{layer}"
