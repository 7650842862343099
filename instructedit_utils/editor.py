"""The MEND editor (Mitchell et al., 2022) as InstructEdit uses it: a hypernetwork that turns the gradient of one edit
into a weight update.

For an edited weight matrix :math:`W` (``nn.Linear``: ``[out, in]``) the gradient of the edit loss is a sum of rank-one
terms, one per token :math:`t`: :math:`\\nabla_W L = \\sum_t \\delta_t u_t^\\top`, with :math:`u_t` the layer's input and
:math:`\\delta_t = \\partial L / \\partial y_t` the gradient at its output. MEND never forms that matrix; it

1. captures :math:`u_t` and :math:`\\delta_t` with hooks (:meth:`MendEditor.capture`, removable handles),
2. normalises :math:`[u_t; \\delta_t]` with running statistics per edited matrix (:class:`RunningNorm`; updated only in
   training, saved with the editor),
3. maps it through a residual low-rank MLP initialised to the identity (:class:`GradientNet`, one per weight shape,
   shared by the layers of that shape, with a per-layer scale/shift of the hidden units),
4. forms the **pseudo-gradient** :math:`\\tilde G = \\sum_t \\tilde\\delta_t \\tilde u_t^\\top` and takes a descent step with a
   learned step size per matrix: :math:`W' = W - \\alpha_\\ell \\tilde G`. **Sign convention:** ``alpha`` is a step size of
   gradient *descent* on the edit loss, so a positive ``alpha`` with the identity network lowers the edit loss.

GPT-2's ``Conv1D`` stores :math:`W^\\top` (``[in, out]``); the update is transposed accordingly.

Edits are functional: :meth:`MendEditor.edit` returns an :class:`EditResult` holding the weight deltas (and, on
request, the gradient factors); :func:`applied` adds them inside a context manager and restores the original
tensors bit-exactly on exit; :meth:`MendEditor.low_rank_edit` runs the model as if edited without forming the
deltas (used in training, where the update must stay differentiable).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from .config import MethodConfig
from .metrics import _pad_batch
from .models import arch_spec, edit_parameter_names
from .runs import _atomic_write_text

EDITOR_WEIGHTS = "editor.safetensors"
EDITOR_META = "editor.json"


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------


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


@dataclass
class EditResult:
    """What one edit produced: weight deltas per parameter name, the edit loss before editing and, on request, the raw
    factors (``raw``) and the editor's transformed factors (``transformed``) whose product is the pseudo-gradient."""

    deltas: dict[str, torch.Tensor]
    loss: float
    raw: dict[str, Factors] = field(default_factory=dict)
    transformed: dict[str, Factors] = field(default_factory=dict)


class FullForward:
    """The runner interface of :class:`~instructedit_utils.forward.SplitForward` with plain full forward passes
    (architectures whose blocks cannot be replayed separately)."""

    def __init__(self, model: nn.Module):
        self.model = model

    @contextlib.contextmanager
    def reusing_states(self):
        yield self

    def lower(self, seqs: Sequence[Sequence[int]], header: Sequence[int] = (), header_rows: int | None = None
              ) -> list[None]:
        return [None] * len(seqs)

    def lower_rows(self, seqs: Sequence[Sequence[int]], headers: Sequence[Sequence[int]],
                   batch_size: int | None = None) -> list[None]:
        return [None] * len(seqs)

    def batch(self, seqs: Sequence[Sequence[int]], lowers, pad_id: int):
        from .forward import UpperBatch

        ids, mask = _pad_batch(seqs, pad_id, device=next(self.model.parameters()).device)
        return UpperBatch(ids, mask, None, (), {})

    def upper(self, batch, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[rows, positions]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def upper_prefixed(self, seqs, lowers, headers, pad_id: int, rows: torch.Tensor, positions: torch.Tensor,
                       logits: bool = True) -> torch.Tensor:
        if not logits:
            raise ValueError("FullForward gives logits only")
        return self.upper(self.batch(seqs, lowers, pad_id), rows, positions)


# --------------------------------------------------------------------------------------------------------------------
# The editor
# --------------------------------------------------------------------------------------------------------------------


def _key(name: str) -> str:
    return name.replace(".", "__")


class MendEditor(nn.Module):
    """MEND gradient transform for a fixed set of edited matrices (see the module docstring)."""

    def __init__(self, targets: Sequence[EditTarget], config: MethodConfig):
        super().__init__()
        if not targets:
            raise ValueError("MendEditor needs at least one edited matrix")
        self.config = config
        self.targets = list(targets)
        groups: dict[str, list[EditTarget]] = {}
        for t in self.targets:
            groups.setdefault(t.shape_key, []).append(t)
        self.mode = {t.name: groups[t.shape_key].index(t) for t in self.targets}
        self.nets = self.networks(groups)
        self.norms = nn.ModuleDict({_key(t.name): RunningNorm(t.in_dim + t.out_dim) for t in self.targets})
        self.edit_lrs = nn.ParameterDict({_key(t.name): nn.Parameter(torch.tensor(float(config.edit_lr)))
                                          for t in self.targets})
        self._runners: dict[int, Any] = {}

    def networks(self, groups: Mapping[str, Sequence[EditTarget]]) -> nn.ModuleDict:
        """The gradient networks: one :class:`GradientNet` per weight shape (subclasses bring their own)."""
        return nn.ModuleDict({key: GradientNet(ts[0].in_dim + ts[0].out_dim, self.config.rank, self.config.n_blocks,
                                               len(ts)) for key, ts in groups.items()})

    @classmethod
    def for_model(cls, model: nn.Module, config: MethodConfig, layers: Sequence[int] | None = None) -> "MendEditor":
        return cls(edit_targets(model, layers), config)

    # ---- what differs between editor kinds (KE overrides these, see instructedit_utils.ke) ----------------------
    def edit_context(self, model: nn.Module, input_ids: Sequence[int]) -> Any:
        """What the transform is conditioned on besides the gradient (MEND: nothing)."""
        return None

    def objective(self, l_edit: torch.Tensor, l_loc: torch.Tensor) -> torch.Tensor:
        """The training loss from the edit loss and the locality KL: ``c_edit·L_edit + c_loc·KL``."""
        return self.config.c_edit * l_edit + self.config.c_loc * l_loc

    # ---- parameter groups -----------------------------------------------------------------------------------------
    def network_parameters(self) -> list[nn.Parameter]:
        return list(self.nets.parameters())

    def step_size_parameters(self) -> list[nn.Parameter]:
        return list(self.edit_lrs.parameters())

    def step_size(self, name: str) -> torch.Tensor:
        return self.edit_lrs[_key(name)]

    @contextlib.contextmanager
    def _hooks(self, model: nn.Module, make_hook) -> Iterator[None]:
        """Forward hooks ``make_hook(name)`` on every edited module, removed on exit (also after an exception)."""
        handles = []
        try:
            for t in self.targets:
                handles.append(model.get_submodule(t.module_name).register_forward_hook(make_hook(t.name)))
            yield
        finally:
            for h in handles:
                h.remove()

    # ---- capturing u and δ ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def capture(self, model: nn.Module) -> Iterator[dict[str, list]]:
        """Record each edited module's input and output during the forward passes run inside the block.

        Yields ``{name: [input, output]}``. The first edited module's output is made a leaf that requires grad, so a
        backward pass starts there and never touches the frozen lower layers; ``torch.autograd.grad(loss, outputs)``
        then gives δ. Hooks are removed on exit, also after an exception.
        """
        store: dict[str, list] = {}

        def make_hook(name: str):
            def hook(module, inputs, output):
                if name in store:
                    raise RuntimeError(f"{name} ran twice inside one capture; capture one forward pass at a time")
                if not output.requires_grad:
                    output = output.detach().requires_grad_(True)
                store[name] = [inputs[0].detach(), output]
                return output
            return hook

        with self._hooks(model, make_hook):
            yield store

    def blocks(self, model: nn.Module) -> tuple[int, ...]:
        """Indices of the transformer blocks of ``model`` with an edited matrix, in order."""
        layers_path = arch_spec(model).layers_path
        return tuple(sorted({int(t.name[len(layers_path) + 1:].split(".")[0]) for t in self.targets}))

    def first_block(self, model: nn.Module) -> int:
        """Index of the lowest transformer block of ``model`` with an edited matrix."""
        return self.blocks(model)[0]

    def runner(self, model: nn.Module):
        """The forward runner for ``model``: a :class:`~instructedit_utils.forward.SplitForward` starting at the lowest
        edited block where the architecture allows it (cached, with its header cache), else :class:`FullForward`."""
        cached = self._runners.get(id(model))
        if cached is not None and cached.model is model:
            return cached
        from .forward import SplitForward, supports_split

        start = self.first_block(model)
        runner = SplitForward(model, start) if supports_split(model) else FullForward(model)
        self._runners[id(model)] = runner
        return runner

    def inner_pass(self, model: nn.Module, runner, batch, edit_rows: torch.Tensor, edit_pos: torch.Tensor,
                   extra_rows: torch.Tensor | None = None, extra_pos: torch.Tensor | None = None, *,
                   targets: torch.Tensor | None = None, per_row: bool = False
                   ) -> tuple[dict[str, Factors], torch.Tensor, torch.Tensor | None]:
        """Edit loss and the per-token factors of its gradient on the unedited model.

        The loss is the mean NLL of the tokens at (``edit_rows``, ``edit_pos``) (positions of the *target tokens*);
        their ids are ``targets``, by default read from ``batch.input_ids`` (pass them when the batch holds only
        :attr:`~instructedit_utils.metrics.Encoded.inputs`, i.e. the last target token was dropped). With
        ``per_row`` the rows are independent edits: the loss is the sum over rows of each row's mean NLL, so each
        row's factors are those of its edit made alone (sequences of a batch never attend to each other).
        Logits at (``extra_rows``, ``extra_pos``) are returned too (detached; e.g. pre-edit locality logits).
        Rows kept for the factors: attention-mask positions, minus position 0 when ``skip_first_token``, minus rows
        whose δ is exactly zero (other sequences of the batch, tokens after the last supervised one).
        """
        rows = edit_rows if extra_rows is None else torch.cat([edit_rows, extra_rows])
        pos = edit_pos - 1 if extra_pos is None else torch.cat([edit_pos - 1, extra_pos])
        n = len(edit_rows)
        fused = extra_rows is None and not per_row and hasattr(runner, "head_nll")
        with torch.enable_grad(), self.capture(model) as store:
            if targets is None:
                targets = batch.input_ids[edit_rows, edit_pos]
            logits = None if fused else runner.upper(batch, rows, pos)
            if fused:  # the LM head's weight read once for loss and gradient (forward.fused_head_nll)
                loss = runner.head_nll(runner.upper_hidden(batch, rows, pos), targets)
            elif per_row:
                counts = torch.bincount(edit_rows, minlength=len(batch.input_ids)).clamp_min(1)
                token_nll = -logits[:n].float().log_softmax(-1).gather(-1, targets[:, None])[:, 0]
                loss = (token_nll / counts[edit_rows]).sum()
            else:
                loss = nll(logits[:n], targets)
            outputs = [store[t.name][1] for t in self.targets]
            deltas = torch.autograd.grad(loss, outputs)
        keep = batch.attention_mask.bool().clone()
        if self.config.skip_first_token:
            keep[:, 0] = False
        result = {}
        for t, delta in zip(self.targets, deltas):
            u = store[t.name][0]
            kept = keep & (delta.detach().abs().sum(-1) > 0)
            result[t.name] = Factors(u[kept].float(), delta.detach()[kept].float(), kept.nonzero()[:, 0])
        extra = logits[n:].detach() if extra_rows is not None else None
        return result, loss.detach(), extra

    # ---- the transform --------------------------------------------------------------------------------------------
    def observe(self, factors: Mapping[str, Factors]) -> None:
        """Add the rows of ``[u; δ]`` to each matrix's running normalisation statistics."""
        for name, f in factors.items():
            self.norms[_key(name)].update(torch.cat([f.u, f.delta], -1))

    def _normalized(self, name: str, factors: Factors) -> torch.Tensor:
        x = torch.cat([factors.u, factors.delta], -1)
        if self.config.normalize:
            norm = self.norms[_key(name)]
            if self.training:
                norm.update(x)
            x = norm.normalize(x)
        return x

    def transform_all(self, factors: Mapping[str, Factors], context: Any = None) -> dict[str, Factors]:
        """Normalise each matrix's ``[u; δ]`` (updating the statistics in training mode) and map it through the
        network of its shape; the rows of all layers sharing a network go through it in one batch (per-row layer
        scale/shift), which is what makes the rank-1920 network cheap on CPU."""
        out: dict[str, Factors] = {}
        for key, net in self.nets.items():
            group = [t for t in self.targets if t.shape_key == key]
            xs = [self._normalized(t.name, factors[t.name]) for t in group]
            modes = torch.cat([torch.full((len(x),), self.mode[t.name], dtype=torch.long, device=x.device)
                               for t, x in zip(group, xs)])
            y = net(torch.cat(xs), modes)
            start = 0
            for t, x in zip(group, xs):
                part = y[start:start + len(x)]
                start += len(x)
                out[t.name] = Factors(part[:, :t.in_dim], part[:, t.in_dim:], factors[t.name].rows)
        return out

    def deltas(self, transformed: Mapping[str, Factors]) -> dict[str, torch.Tensor]:
        """Weight deltas ``-α·G̃`` (in each parameter's own layout) from transformed factors."""
        out = {}
        for t in self.targets:
            f = transformed[t.name]
            scaled = f.delta * -self.step_size(t.name)  # the step size on the [T, out] factor, not the [out, in] product
            out[t.name] = f.u.T @ scaled if t.conv1d else scaled.T @ f.u
        return out

    @contextlib.contextmanager
    def low_rank_edit(self, model: nn.Module, transformed: Mapping[str, Factors]) -> Iterator[nn.Module]:
        """Run ``model`` as if ``deltas(transformed)`` were added, without forming them: each edited module's output
        gets ``-α·(x ũᵀ) δ̃`` (the same for ``Linear`` and ``Conv1D``), differentiable in the editor. Hooks are
        removed on exit."""
        def make_hook(name: str):
            f = transformed[name]
            alpha = self.step_size(name)

            def hook(module, inputs, output):
                x = inputs[0]
                return output - alpha * ((x.to(f.u.dtype) @ f.u.T) @ f.delta).to(output.dtype)
            return hook

        with self._hooks(model, make_hook):
            yield model

    def raw_factors(self, model: nn.Module, tokenizer, prompt: str, target: str, *, header: str | None = None
                    ) -> tuple[dict[str, Factors], torch.Tensor]:
        """Factors ``u``/δ of the edit loss of ``target`` after ``prompt`` on the unedited model, and that loss."""
        factors, loss, _ = self._edit_factors(model, tokenizer, prompt, target, header)
        return factors, loss

    def _edit_factors(self, model: nn.Module, tokenizer, prompt: str, target: str, header: str | None):
        from .forward import edit_batch

        runner = self.runner(model)
        eb = edit_batch(runner, tokenizer, prompt, target, header)
        factors, loss, _ = self.inner_pass(model, runner, eb.batch, eb.rows, eb.positions + 1, targets=eb.targets)
        return factors, loss, eb

    def edit(self, model: nn.Module, tokenizer, prompt: str, target: str, *, header: str | None = None,
             return_factors: bool = False) -> EditResult:
        """One edit: the weight deltas that make ``model`` say ``target`` after ``prompt`` (base weights untouched).

        ``header`` is the instruction header the prompt starts with (cached across edits; only a speed-up).
        """
        factors, loss, eb = self._edit_factors(model, tokenizer, prompt, target, header)
        with torch.no_grad():
            context = self.edit_context(model, eb.input_ids)
            transformed = self.transform_all(factors, context)
            deltas = self.deltas(transformed)
        return EditResult({k: v.detach() for k, v in deltas.items()}, float(loss),
                          raw=dict(factors) if return_factors else {},
                          transformed={k: Factors(v.u.detach(), v.delta.detach()) for k, v in transformed.items()}
                          if return_factors else {})

    # ---- persistence ----------------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"format": "instructedit-mend/1", "config": self.config.to_dict(),
                "targets": [dataclasses.asdict(t) for t in self.targets]}

    def save(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``editor.safetensors`` (weights, normalisation statistics, step sizes) and ``editor.json`` (config,
        edited matrices, ``extra``) atomically into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as fh:
            tmp = fh.name
        save_file(state, tmp)
        os.replace(tmp, directory / EDITOR_WEIGHTS)
        meta = {**self.metadata(), **(extra or {})}
        _atomic_json(directory / EDITOR_META, meta)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, model: nn.Module | None = None, device=None) -> "MendEditor":
        """Rebuild a saved editor; with ``model`` given, check that its edited matrices exist with the same shapes."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path = directory / EDITOR_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"No trained editor in {directory} (missing {EDITOR_META})")
        meta = json.loads(meta_path.read_text())
        targets = [EditTarget(**t) for t in meta["targets"]]
        config = MethodConfig.from_dict(meta["config"])
        editor = editor_class(config)(targets, config, **meta.get("init", {}))
        if model is not None:
            params = dict(model.named_parameters())
            for t in targets:
                if t.name not in params or tuple(params[t.name].shape) != t.weight_shape:
                    raise ValueError(f"{directory}: edited matrix {t.name} {t.weight_shape} does not match the model")
        editor.load_state_dict(load_file(directory / EDITOR_WEIGHTS))
        editor.eval()
        return editor.to(device) if device is not None else editor


def editor_class(config: MethodConfig) -> type[MendEditor]:
    """The editor class of ``config.method``: :class:`MendEditor` (``mend``) or
    :class:`~instructedit_utils.ke.KnowledgeEditor` (``ke``)."""
    if config.method == "ke":
        from .ke import KnowledgeEditor

        return KnowledgeEditor
    return MendEditor


def make_editor(model: nn.Module, config: MethodConfig, layers: Sequence[int] | None = None) -> MendEditor:
    """A fresh (untrained) editor of ``config.method`` for ``model``'s edited matrices in ``layers``."""
    return editor_class(config).for_model(model, config, layers)


def _atomic_json(path: Path, payload: Any) -> None:
    _atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True))


# --------------------------------------------------------------------------------------------------------------------
# Losses and applying edits
# --------------------------------------------------------------------------------------------------------------------


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``targets`` [N] under ``logits`` [N, V]."""
    return -logits.float().log_softmax(-1).gather(-1, targets[:, None]).mean()


@contextlib.contextmanager
def applied(model: nn.Module, deltas: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Add ``deltas`` to the model's weights inside the block; the original tensors are copied back bit-exactly on
    exit (also after an exception)."""
    params = dict(model.named_parameters())
    missing = [n for n in deltas if n not in params]
    if missing:
        raise KeyError(f"Deltas for unknown parameters: {missing}")
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for n, d in deltas.items():
                saved[n] = params[n].detach().clone()
                params[n].add_(d.to(params[n].dtype))
        yield model
    finally:
        with torch.no_grad():
            for n, original in saved.items():
                params[n].copy_(original)


@contextlib.contextmanager
def applied_per_row(model: nn.Module, deltas: Sequence[Mapping[str, torch.Tensor]]) -> Iterator[nn.Module]:
    """Run a batch of ``len(deltas)`` rows as if row ``i`` ran on the model with ``deltas[i]`` added to its weights
    (:func:`applied` for one row), so many edited models generate in one batch: each edited module's output gets
    ``x_i Δ_iᵀ`` (``Linear``; ``x_i Δ_i`` for GPT-2's ``Conv1D``) through forward hooks removed on exit. Weights are
    never touched; every batch run inside must have ``len(deltas)`` rows. Equal to :func:`applied` row by row up to
    float rounding. Every mapping must name the same parameters (a missing one in a row counts as zero)."""
    if not deltas:
        yield model
        return
    params = dict(model.named_parameters())
    names = list(dict.fromkeys(n for d in deltas for n in d))
    missing = [n for n in names if n not in params or not n.endswith(".weight")]
    if missing:
        raise KeyError(f"Deltas for unknown weight matrices: {missing}")
    conv1d = arch_spec(model).conv1d
    handles = []

    def make_hook(name: str):
        weight = params[name]
        stacked = torch.stack([d[name].to(weight.dtype) if name in d else torch.zeros_like(weight) for d in deltas])
        if not conv1d:
            stacked = stacked.transpose(1, 2)  # [rows, in, out]

        def hook(module, inputs, output):
            x = inputs[0]
            if x.shape[0] != len(stacked):
                raise ValueError(f"applied_per_row: a batch of {x.shape[0]} rows for {len(stacked)} sets of deltas")
            return output + torch.bmm(x, stacked).to(output.dtype)
        return hook

    try:
        for name in names:
            handles.append(model.get_submodule(name[: -len(".weight")]).register_forward_hook(make_hook(name)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
