"""ROME, MEMIT and AlphaEdit: the locate-then-edit methods (issue 29; Table 3's columns "beyond the paper").

Each edit reads the fact at the subject's last token, finds the **value** the edited layers must produce there (one
value optimisation, :func:`~instructedit_utils.methods.locate.compute_value`, shared by the three methods through
:class:`ValueCache`) and writes it into MLP output matrices in closed form
(:mod:`~instructedit_utils.methods.closed_form`), weighted by the second moment ``C`` of the matrices' inputs (the
**keys**) over offline text (:mod:`~instructedit_utils.models.key_statistics`):

* ``rome`` (Meng et al., 2022; kmeng01/rome ``rome/rome_main.py``): one block ``L``; the key ``k*`` is the down
  projection's input at the subject's last token averaged over the prefix contexts; the rank-one update makes ``k*``
  map to ``W k* + δ`` (``δ``: the value optimisation's shift, which it added to this MLP's output) and leaves every key
  orthogonal to ``k*`` in ``C``'s metric alone.
* ``memit`` (Meng et al., 2023; kmeng01/memit ``memit/memit_main.py``): blocks ``L-4..L``; from the lowest up, each
  block takes its share ``(z + δ − z_now) / (blocks left)`` of what the top block's output still lacks (``z_now``
  measured after the lower blocks' updates) by least squares: ``Δ = R Kᵀ (λ C + K Kᵀ)⁻¹``.
* ``alphaedit`` (Fang et al., 2025; jianghoucheng/AlphaEdit ``AlphaEdit/AlphaEdit_main.py``): MEMIT's spread with
  the update confined to the null space of ``C`` (eigenvectors whose eigenvalue is below ``nullspace_threshold``): the
  outputs of keys in ``C``'s range do not change. In a sequence its stream keeps the earlier edits' keys ``K_p``,
  which the next updates must preserve as well.

**Layers** (:func:`default_layers`): the rule places ROME's layer, the top of MEMIT's and AlphaEdit's window, at the
depth fraction of the GPT2-XL papers' choice (block 17 of 48): ``round(17/48 · n_blocks)``, the window being the five
blocks ending there (MEMIT's 13-17). SmolLM2 (30 blocks): ROME 11, MEMIT/AlphaEdit 7-11; GPT2-XL: 17 and 13-17, as
published; LLaMA-2-7B (32 blocks): 11 and 7-11 (EasyEdit's LLaMA-2 files use 5 and 4-8, from causal tracing; the rule
is kept on every model so that no model gets a tuned choice).

**Keys' statistics** (:func:`statistics_texts`): the train splits of the training tasks — prompts completed with
their *true* answers, locality prompts with theirs, ConvSent's prompts with their responses — the text of the world
as the unedited model should keep it, never a test record (AlphaEdit would otherwise protect the very keys it must
edit), cut to ``stats_tokens`` tokens and cached beside the model (keyed by model, layer and text).

**Deviations, for cost on two CPU cores** (a value optimisation replays every block above ``L``): one generated
context besides the bare prompt (the reference: five; on four SmolLM2 edits, one context instead of two reached the
same loss, 8.6 s a value instead of 10.9 s), greedy instead of top-k sampled; ROME's value shares MEMIT's
``clamp_norm_factor = 0.75`` (ROME's own GPT2-XL setting is 4) so that one optimisation serves the three methods.
Three settings depend on the keys' dimension ``d`` or scale, which differ between models; they are stated in units
that carry over: MEMIT's ``λ`` in units of ``d`` (GPT2-XL's 20000 for ``d = 6400`` is ``3.125 d``: a typical key has
``kᵀ C⁻¹ k ≈ d``, so ``λ / d`` sets how much of its residual a block takes); AlphaEdit's null space as the weakest
eigenvectors of ``C`` holding ``nullspace_energy`` of its trace (the reference's absolute eigenvalue threshold
``2e-2`` is in GPT2-XL's units; on SmolLM2 no eigenvalue of the early blocks' ``C`` is that small) and its ridge
``L2`` in units of ``tr C``, a typical key's squared norm.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from ..config.options import AlphaEditConfig, LocateEditConfig, MemitConfig, RomeConfig, make_config
from ..data.instructions import EditRequest
from ..data.records import EditRecord
from ..data.tasks import load_task
from ..models.deltas import applied
from ..models.key_statistics import KeyStatistics, key_statistics_many
from ..models.loading import model_fingerprint
from ..util.paths import cache_dir
from .closed_form import least_squares_update, null_space_projector, projected_update, rank_one_update
from .edit_loop import n_blocks
from .locate import (Value, ValueOptions, block_name, capture, compute_value, context_templates, mlp_matrix,
                     subject_position)
from .registry import DeltaStream, EditingMethod, config_digest, register

REFERENCE_LAYER, REFERENCE_BLOCKS = 17, 48  # ROME's GPT2-XL layer, of its 48 blocks
VALUES_DIR = "edit_values"
DOCUMENT_TOKENS = 100  # the statistics' texts are packed into documents of about this many tokens
VALUES_VERSION = "1"  # part of every cached value's key: a change of the optimisation invalidates old values


def default_layers(n: int, window: int = 5) -> tuple[int, ...]:
    """The rule of the module docstring: the ``window`` blocks ending at ``round(17/48 · n)`` (clipped to the
    model)."""
    top = min(n - 1, max(0, round(REFERENCE_LAYER / REFERENCE_BLOCKS * n)))
    return tuple(range(max(0, top - window + 1), top + 1))


def record_texts(record: EditRecord) -> list[str]:
    """The text a record holds of the unedited world: its prompt with its true answer, its locality prompts with
    theirs, ConvSent's prompt with each response (never the edit's new target)."""
    texts = [f"{record.prompt} {a}" for a in record.ground_truth[:1] if a.strip()]
    texts += [f"{p.prompt} {p.answers[0]}" for p in record.locality if p.answers and p.answers[0].strip()]
    texts += [f"{record.prompt} {r}" for r in (*record.positive_responses, *record.negative_responses)]
    return texts


def statistics_texts(tokenizer, tasks: Sequence[str], tokens: int, data_dir=None) -> list[str]:
    """The keys' statistics text (module docstring): the ``tasks``' train records in turn, one record of each task
    after the other, until ``tokens`` tokens are reached, packed into documents of about ``DOCUMENT_TOKENS`` tokens
    (one line a text) so that a document's first token, where these models' MLP inputs take extreme values, weighs
    about as little as in the references' Wikipedia statistics; too little text is an error naming the tasks."""
    per_task = [load_task(task, "train", data_dir) for task in tasks]
    texts, count, document, length = [], 0, [], 0
    for i in range(max(len(r) for r in per_task)):
        for records in per_task:
            for text in record_texts(records[i]) if i < len(records) else ():
                n = len(tokenizer(text)["input_ids"])
                document.append(text)
                length += n
                count += n
                if length >= DOCUMENT_TOKENS or count >= tokens:
                    texts.append("\n".join(document))
                    document, length = [], 0
                if count >= tokens:
                    return texts
    raise ValueError(f"the train splits of {list(tasks)} hold {count} tokens, fewer than stats_tokens={tokens}")


class ValueCache:
    """Values of :func:`~instructedit_utils.methods.locate.compute_value` kept on disk under
    ``<folder>/<model fingerprint>/<digest>.pt`` (digest of the request's prompt, target and subject, the layer, the
    contexts and the options): ROME, MEMIT and AlphaEdit with the same value options compute each value once, also
    in different worker processes (a lock file makes a second process wait for the first). The fingerprint covers
    every weight, so a model that carries earlier edits (a stream) gets values of its own."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or cache_dir() / VALUES_DIR

    def get(self, model: nn.Module, tokenizer, request: EditRequest, layer: int, contexts: Sequence[str],
            options: ValueOptions) -> Value:
        key = json.dumps([VALUES_VERSION, request.prompt, request.target, request.record.subject, layer,
                          list(contexts), dataclasses.asdict(options)])
        path = self.folder / model_fingerprint(model) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                return Value(**torch.load(path, map_location="cpu", weights_only=True))
            value = compute_value(model, tokenizer, request, layer, contexts, options)
            tmp = path.with_suffix(".tmp")
            torch.save(dataclasses.asdict(value), tmp)
            tmp.replace(path)
            return value


class LocateEdit(EditingMethod):
    """What ROME, MEMIT and AlphaEdit share: the layers, contexts, keys' statistics and values (module docstring).
    Subclasses implement :meth:`updates` (the closed form)."""

    use_instructions = False
    single_layer = False

    def __init__(self, model: nn.Module, tokenizer, config: LocateEditConfig, name: str, data_dir=None,
                 values: ValueCache | None = None, texts: Sequence[str] | None = None):
        self.name, self.config = name, config
        layers = config.layers or default_layers(n_blocks(model), config.window)
        self.layers = tuple(sorted(layers))[-1:] if self.single_layer else tuple(sorted(layers))
        blocks = n_blocks(model)
        if not all(0 <= layer < blocks for layer in self.layers):
            raise ValueError(f"{name}: layers={self.layers} must be blocks of the model (0..{blocks - 1})")
        self.first_edited_block = self.layers[0]
        self.contexts = context_templates(model, tokenizer, n_tokens=config.context_tokens)[:config.contexts + 1]
        self.values = values or ValueCache()
        self.options = ValueOptions(config.v_steps, config.v_lr, config.kl_factor, config.v_weight_decay,
                                    config.clamp_norm_factor, config.stop_loss)
        self.matrices = [mlp_matrix(model, layer) for layer in self.layers]
        source = "given" if texts is not None else "train-" + "-".join(config.stats_tasks)
        if texts is None:
            texts = statistics_texts(tokenizer, config.stats_tasks, config.stats_tokens, data_dir)
        self.stats: list[KeyStatistics] = key_statistics_many(model, tokenizer, [m for m, _, _ in self.matrices],
                                                              texts, source)

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{config_digest(self.config)}"

    def value(self, model: nn.Module, tokenizer, request: EditRequest) -> Value:
        return self.values.get(model, tokenizer, request, self.layers[-1], self.contexts, self.options)

    def keys(self, model: nn.Module, tokenizer, request: EditRequest, index: int) -> torch.Tensor:
        """The key ``[in]`` of layer ``self.layers[index]``: its matrix's input at the subject's last token, averaged
        over the contexts (on ``model`` as it is now)."""
        texts = [c.format(request.prompt) for c in self.contexts]
        positions = [subject_position(tokenizer, t, request.record.subject) for t in texts]
        return capture(model, tokenizer, self.matrices[index][0], texts, positions)

    def top_output(self, model: nn.Module, tokenizer, request: EditRequest) -> torch.Tensor:
        """The top edited block's output at the subject's last token of the bare prompt (MEMIT's ``z_now``)."""
        position = subject_position(tokenizer, request.prompt, request.record.subject)
        return capture(model, tokenizer, block_name(model, self.layers[-1]), [request.prompt], [position], output=True)

    def weight(self, model: nn.Module, index: int) -> torch.Tensor:
        """Layer ``index``'s matrix as ``[out, in]`` (GPT-2's Conv1D stores it transposed)."""
        _, param, conv1d = self.matrices[index]
        w = model.get_parameter(param).detach()
        return w.T if conv1d else w

    def as_delta(self, index: int, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        _, param, conv1d = self.matrices[index]
        return {param: delta.T.contiguous() if conv1d else delta}

    def updates(self, model: nn.Module, tokenizer, request: EditRequest, value: Value,
                previous: Sequence[torch.Tensor | None] | None = None, keys: list | None = None
                ) -> dict[str, torch.Tensor]:
        """The edit's deltas for ``value``; ``previous``: AlphaEdit's earlier keys per layer; the keys used are
        appended to ``keys`` when given."""
        raise NotImplementedError

    def weight_deltas(self, model, tokenizer, request) -> dict[str, torch.Tensor]:
        return self.updates(model, tokenizer, request, self.value(model, tokenizer, request))

    @contextlib.contextmanager
    def edited(self, model, tokenizer, request) -> Iterator[nn.Module]:
        with applied(model, self.weight_deltas(model, tokenizer, request)):
            yield model

    def spread(self, model: nn.Module, tokenizer, request: EditRequest, value: Value, solve, keys: list | None = None
               ) -> dict[str, torch.Tensor]:
        """MEMIT's spread (module docstring): ``solve(index, weight, keys [in, 1], residual [out, 1])`` gives each
        block's delta ``[out, in]``, computed with the lower blocks' deltas applied (every delta is taken back on
        return); each block's keys are appended to ``keys`` when given."""
        target = value.z + value.delta
        out: dict[str, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            for i in range(len(self.layers)):
                k = self.keys(model, tokenizer, request, i)[:, None]
                if keys is not None:
                    keys.append(k)
                residual = (target - self.top_output(model, tokenizer, request))[:, None] / (len(self.layers) - i)
                delta = self.as_delta(i, solve(i, self.weight(model, i), k, residual))
                stack.enter_context(applied(model, delta))
                out.update(delta)
        return out


class Rome(LocateEdit):
    """ROME (module docstring)."""

    single_layer = True
    schedule = -1  # its jobs first: MEMIT's and AlphaEdit's (schedule 1) then find their values computed

    def updates(self, model, tokenizer, request, value, previous=None, keys=None):
        k = self.keys(model, tokenizer, request, 0)
        w = self.weight(model, 0)
        cov = self.stats[0].moment if self.config.mom2_adjustment else None
        return self.as_delta(0, rank_one_update(w, k, w.double() @ k.double() + value.delta.double(), cov))


class Memit(LocateEdit):
    """MEMIT (module docstring)."""

    schedule = 1

    def updates(self, model, tokenizer, request, value, previous=None, keys=None):
        def solve(i, w, k, residual):
            return least_squares_update(w, k, w.double() @ k.double() + residual.double(), self.stats[i].moment,
                                        self.config.mom2_update_weight * k.shape[0])
        return self.spread(model, tokenizer, request, value, solve, keys)


class AlphaEdit(LocateEdit):
    """AlphaEdit (module docstring); :meth:`stream` keeps the earlier edits' keys."""

    schedule = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.projectors = [null_space_projector(s.moment, energy=self.config.nullspace_energy) for s in self.stats]
        self.alphas = [self.config.l2 * float(s.moment.trace()) for s in self.stats]

    def null_space(self) -> list[int]:
        """The null space's dimension per layer (the rank of each projector)."""
        return [int(round(float(p.trace()))) for p in self.projectors]

    def updates(self, model, tokenizer, request, value, previous=None, keys=None):
        previous = previous or [None] * len(self.layers)

        def solve(i, w, k, residual):
            return projected_update(w, k, w.double() @ k.double() + residual.double(), self.projectors[i],
                                    previous[i], self.alphas[i])
        return self.spread(model, tokenizer, request, value, solve, keys)

    def stream(self, model, tokenizer) -> "AlphaEditStream":
        return AlphaEditStream(self, model, tokenizer)


class AlphaEditStream(DeltaStream):
    """AlphaEdit in sequence: each edit's keys join ``K_p``, which later updates preserve (AlphaEdit's ``cache_c``)."""

    def start(self) -> None:
        super().start()
        self.previous: list[torch.Tensor | None] = [None] * len(self.method.layers)

    def _add(self, request: EditRequest) -> None:
        method: AlphaEdit = self.method
        keys: list[torch.Tensor] = []
        value = method.value(self.model, self.tokenizer, request)
        self.apply(method.updates(self.model, self.tokenizer, request, value, self.previous, keys))
        self.previous = [k.double() if p is None else torch.cat([p, k.double()], 1)
                         for p, k in zip(self.previous, keys)]


def _register(name: str, cls: type, config: type) -> None:
    """Register ``cls`` as ``name``: its factory takes ``default_layers`` (the hypernetwork editors' blocks, which the
    other baselines default to) and does not use it, these methods have their own rule; ``data_dir``: where the
    statistics' task files are; ``texts``: the statistics' text instead of them (tests, users with text of their own);
    the rest are options of ``config``."""
    def build(model, tokenizer, *, name: str = name, default_layers=(), data_dir=None, texts=None,
              **options) -> EditingMethod:
        return cls(model, tokenizer, make_config(config, options, name), name, data_dir=data_dir, texts=texts)
    register(name, config=config)(build)


_register("rome", Rome, RomeConfig)
_register("memit", Memit, MemitConfig)
_register("alphaedit", AlphaEdit, AlphaEditConfig)
