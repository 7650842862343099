"""One training edit of the MEND-family trainer: the example it is made of (:class:`TrainExample`, drawn by
:class:`TaskSampler` and :func:`make_example`), its losses (edit NLL on a rephrase, ConvSent's likelihood/unlikelihood,
locality KL) computed in one batch through the split forward (:func:`edit_step`), and the editor a run starts from
(:func:`initial_editor`: the seeded editor with the warm-up statistics of :func:`warm_up_normalization`)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..config.method import MethodConfig
from ..data.instructions import EditRequest, load_pool, make_edit_request
from ..data.records import EditRecord
from ..data.tasks import load_task
from ..methods.mend import MendEditor, make_editor
from ..models.losses import nll
from ..models.metrics import Encoded, encode_pair

@dataclass
class TrainExample:
    """Encoded sequences of one training edit."""

    case_id: str
    task: str
    header: tuple[int, ...]  # token ids of the instruction header (empty without instructions)
    edit: Encoded  # edit prompt + target (the inner, editing loss)
    likely: list[Encoded]  # sequences whose target tokens should become likely after the edit
    unlikely: list[Encoded]  # ConvSent: opposite-sentiment responses that should become unlikely
    loc: list[Encoded]  # locality sequences (KL on all their tokens)


def make_example(request: EditRequest, tokenizer, rng: random.Random, config: MethodConfig) -> TrainExample:
    """Turn an edit request into a :class:`TrainExample` (random rephrase, responses and locality probes)."""
    rec = request.record
    outer_prompt = rng.choice(request.rephrases) if request.rephrases else request.prompt
    if rec.task == "convsent":
        k = config.sentiment_responses
        likely = [_cut(encode_pair(tokenizer, outer_prompt, r), config.max_target_tokens)
                  for r in rng.sample(rec.target_responses, min(k, len(rec.target_responses)))]
        unlikely = [_cut(encode_pair(tokenizer, outer_prompt, r), config.max_target_tokens)
                    for r in rng.sample(rec.opposite_responses, min(k, len(rec.opposite_responses)))]
    else:
        likely = [encode_pair(tokenizer, outer_prompt, request.target)]
        unlikely = []
    if not request.locality:
        raise ValueError(f"{rec.record_id}: no locality probe to train on")
    probes = rng.sample(request.locality, min(config.loc_probes, len(request.locality)))
    loc = [encode_pair(tokenizer, p.prompt, p.answers[0]) for p in probes]
    header = tuple(tokenizer(request.header)["input_ids"]) if request.header else ()
    return TrainExample(request.case_id, rec.task, header, encode_pair(tokenizer, request.prompt, request.target),
                        likely, unlikely, loc)


def _cut(enc: Encoded, max_target_tokens: int) -> Encoded:
    """Keep only the first ``max_target_tokens`` target tokens (long ConvSent responses)."""
    keep = enc.target_positions[:max_target_tokens]
    return Encoded(enc.input_ids[:keep[-1] + 1], keep)


class TaskSampler:
    """Draws (task, record) pairs: task by weight, records of a task in a fresh seeded permutation per epoch.

    Its state (per-task epoch and position) is saved with the training state.
    """

    def __init__(self, records: dict[str, list[EditRecord]], weights: dict[str, float], seed: int):
        self.records = records
        self.tasks = [t for t in records if weights.get(t, 0) > 0]
        self.weights = [weights[t] for t in self.tasks]
        self.seed = seed
        self.cursor = {t: [0, 0] for t in records}  # task -> [epoch, position]

    def _order(self, task: str, epoch: int) -> list[int]:
        order = list(range(len(self.records[task])))
        random.Random(f"{self.seed}/{task}/{epoch}").shuffle(order)
        return order

    def draw(self, rng: random.Random) -> EditRecord:
        task = rng.choices(self.tasks, weights=self.weights)[0]
        epoch, pos = self.cursor[task]
        record = self.records[task][self._order(task, epoch)[pos]]
        pos += 1
        if pos == len(self.records[task]):
            epoch, pos = epoch + 1, 0
        self.cursor[task] = [epoch, pos]
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": {t: list(c) for t, c in self.cursor.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = {t: list(c) for t, c in state["cursor"].items()}


def draw_records(config: MethodConfig, sampler: TaskSampler, step: int, count: int
                 ) -> list[tuple[random.Random, EditRecord]]:
    """The records of the ``count`` edits of ``step`` (all processes' together, in order), each with its seeded
    generator: every process draws them all, so the samplers' cursors stay the same in every process. Edit ``j`` of a
    step is seeded with ``(seed, step, j)`` whatever the number of processes (the trailing ``/0`` is the former process
    index, kept so that one process draws what every earlier run drew)."""
    draws = []
    for j in range(count):
        rng = random.Random(f"{config.seed}/{step}/{j}/0")
        draws.append((rng, sampler.draw(rng)))  # in order: each draw advances the sampler
    return draws


def example_of(config: MethodConfig, tokenizer, pool, rng: random.Random, record: EditRecord) -> TrainExample:
    """The training example of a drawn record: its instruction (from ``rng``, continued from the draw) and tokens."""
    request = make_edit_request(record, instructions=config.use_instructions, rng=rng, pool=pool)
    return make_example(request, tokenizer, rng, config)


def first_examples(config: MethodConfig, tokenizer, records: dict[str, list[EditRecord]], pool, steps: int
                   ) -> list[TrainExample]:
    """The examples a fresh run of ``config`` draws in its first ``steps`` steps (one process), in order."""
    sampler = TaskSampler(records, config.weights(), config.seed)
    return [example_of(config, tokenizer, pool, rng, record) for step in range(1, steps + 1)
            for rng, record in draw_records(config, sampler, step, config.grad_accumulation)]


def example_tokens(example: TrainExample) -> int:
    """Tokens of one training example's sequences (its instruction header counted once): what a step's cost grows
    with."""
    seqs = [example.edit, *example.likely, *example.unlikely, *example.loc]
    return len(example.header) + sum(len(s.input_ids) for s in seqs)


def _targets(seqs: Sequence[Encoded], first_row: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions) of the target tokens of ``seqs`` placed at batch rows ``first_row…``."""
    rows = [first_row + i for i, s in enumerate(seqs) for _ in s.target_positions]
    pos = [p for s in seqs for p in s.target_positions]
    return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(pos, dtype=torch.long, device=device)


def _labels(seqs: Sequence[Encoded], device) -> torch.Tensor:
    """Target token ids of ``seqs`` in the order of :func:`_targets`."""
    return torch.tensor([t for s in seqs for t in s.targets], dtype=torch.long, device=device)


def _all_positions(seqs: Sequence[Encoded], first_row: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [first_row + i for i, s in enumerate(seqs) for _ in s.input_ids]
    pos = [p for s in seqs for p in range(len(s.input_ids))]
    return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(pos, dtype=torch.long, device=device)


def unlikelihood(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean ``-log(1 - p(target))`` (pushes the target tokens down)."""
    p = logits.float().log_softmax(-1).gather(-1, targets[:, None])[:, 0].exp()
    return -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()


def kl_pre_post(pre_logits: torch.Tensor, post_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``KL(softmax(pre) ‖ softmax(post))``; logits are ``[N, V]``."""
    pre = pre_logits.float().log_softmax(-1)
    post = post_logits.float().log_softmax(-1)
    return (pre.exp() * (pre - post)).sum(-1).mean()


def _cosine(a, b) -> float:
    """Cosine between the matrices ``a.delta.T @ a.u`` and ``b.delta.T @ b.u`` without forming them."""
    dot = ((a.delta @ b.delta.T) * (a.u @ b.u.T)).sum()
    na = ((a.delta @ a.delta.T) * (a.u @ a.u.T)).sum().clamp_min(0).sqrt()
    nb = ((b.delta @ b.delta.T) * (b.u @ b.u.T)).sum().clamp_min(0).sqrt()
    return float(dot / (na * nb).clamp_min(1e-30))


def edit_step(editor: MendEditor, model, example: TrainExample, config: MethodConfig, pad_id: int, store=None
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one training edit (differentiable w.r.t. the editor) and its metrics.

    The lower blocks run once per sequence, each sequence alone (instruction header cached), or not at all where
    ``store`` (:class:`~instructedit_utils.models.states.LowerStates`) holds its states; then all sequences of the
    example go into one batch through the upper blocks, twice — unedited (edit loss → factors; pre-edit locality
    logits) and edited (low-rank hooks).
    """
    runner = editor.runner(model)
    n_l, n_u, n_c = len(example.likely), len(example.unlikely), len(example.loc)
    instructed = [example.edit] + example.likely + example.unlikely
    # edit/likely/unlikely sequences need no input after their last target's predecessor; locality needs all tokens
    inputs = [s.inputs for s in instructed] + [s.input_ids for s in example.loc]
    lowers = runner.lower_each(inputs, [example.header] * len(instructed) + [()] * n_c, store)
    # unedited pass: edit sequence + locality; edited pass: rephrase/responses + locality
    inner = runner.batch([inputs[0]] + inputs[-n_c:], [lowers[0]] + lowers[-n_c:], pad_id)
    outer = runner.batch(inputs[1:], lowers[1:], pad_id)
    dev = inner.attention_mask.device
    er, ep = _targets([example.edit], 0, dev)
    cr, cp = _all_positions(example.loc, 1, dev)
    factors, pre_loss, pre_loc = editor.inner_pass(model, runner, inner, er, ep, cr, cp,
                                                   targets=_labels([example.edit], dev))
    transformed = editor.transform_all(factors, editor.edit_context(model, example.edit.input_ids))
    lr_, lp = _targets(example.likely, 0, dev)
    ur, up = _targets(example.unlikely, n_l, dev)
    cr, cp = _all_positions(example.loc, n_l + n_u, dev)
    with editor.low_rank_edit(model, transformed):
        post = runner.upper(outer, torch.cat([lr_, ur, cr]), torch.cat([lp - 1, up - 1, cp]))
    nl, nu = len(lr_), len(ur)
    post_l, post_u, post_loc = post[:nl], post[nl:nl + nu], post[nl + nu:]
    likely_ids = _labels(example.likely, dev)
    l_edit = nll(post_l, likely_ids)
    if nu:
        l_edit = l_edit + unlikelihood(post_u, _labels(example.unlikely, dev))
    l_loc = kl_pre_post(pre_loc, post_loc)
    loss = editor.objective(l_edit, l_loc)

    with torch.no_grad():
        acc = (post_l.argmax(-1) == likely_ids).float().mean()
        loc_acc = (pre_loc.argmax(-1) == post_loc.argmax(-1)).float().mean()
        cos = [_cosine(transformed[n], factors[n]) for n in factors]
    metrics = {"loss/edit": l_edit.item(), "loss/loc": l_loc.item(), "loss/total": loss.item(),
               "loss/pre_edit": pre_loss.item(), "edit/acc": acc.item(), "loc/acc": loc_acc.item(),
               "grad/cos": float(np.mean(cos)), "edit/rows": float(np.mean([len(f.u) for f in factors.values()]))}
    return loss, metrics


@torch.no_grad()
def warm_up_normalization(editor: MendEditor, model, tokenizer, records: dict[str, list[EditRecord]],
                          config: MethodConfig) -> None:
    """Fill the running statistics from ``norm_warmup`` training edits (drawn without touching the sampler)."""
    tasks = [t for t, w in config.weights().items() if w > 0]
    pool = load_pool(config.instructions_file)
    for i in range(config.norm_warmup):
        rng = random.Random(f"{config.seed}/warmup/{i}")
        task = tasks[i % len(tasks)]
        record = rng.choice(records[task])
        request = make_edit_request(record, instructions=config.use_instructions, rng=rng, pool=pool)
        factors, _ = editor.raw_factors(model, tokenizer, request.prompt, request.target, header=request.header)
        editor.observe(factors)


def initial_editor(model, tokenizer, config: MethodConfig, *, edit_layers: Sequence[int] | None = None,
                   data_dir=None, train_records: dict[str, list[EditRecord]] | None = None) -> MendEditor:
    """The editor a training run of ``config`` starts from, its step 0: the seeded initialisation (MEND's network
    is the identity) and, with normalisation, the statistics of the warm-up edits. The trainer builds its editor
    with this function; chapter 6 measures it as the untrained control of Finding 1. A fresh editor only (a
    fine-tuning run starts from ``init_editor``)."""
    if config.init_editor:
        raise ValueError(f"{config.name} starts from init_editor {config.init_editor}, not from a fresh editor")
    device = next(model.parameters()).device
    torch.manual_seed(config.seed)
    editor = make_editor(model, config, edit_layers).to(device)
    if config.normalize:
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        model.requires_grad_(False)
        try:
            records = train_records or {t: load_task(t, "train", data_dir) for t in config.tasks}
            warm_up_normalization(editor, model, tokenizer, records, config)
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
    return editor
