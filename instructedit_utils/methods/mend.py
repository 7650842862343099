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
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..config.method import MethodConfig
from ..models.forward import FullForward, SplitForward, supports_split
from ..models.batches import edit_batch, edits_batch
from ..models.losses import nll
from ..models.deltas import applied
from ..models.loading import arch_spec
from ..models.targets import EditTarget, Factors, edit_targets
from ..util.runs import atomic_write_json
from .networks import GradientNet, RunningNorm
from .registry import EditingMethod, register

EDITOR_WEIGHTS = "editor.safetensors"
EDITOR_META = "editor.json"


@dataclass
class EditResult:
    """What one edit produced: weight deltas per parameter name, the edit loss before editing and, on request, the raw
    factors (``raw``) and the editor's transformed factors (``transformed``) whose product is the pseudo-gradient."""

    deltas: dict[str, torch.Tensor]
    loss: float
    raw: dict[str, Factors] = field(default_factory=dict)
    transformed: dict[str, Factors] = field(default_factory=dict)


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

    # ---- what differs between editor kinds (KE overrides these, see instructedit_utils.methods.ke) -------------------

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
        """The forward runner for ``model``: a :class:`~instructedit_utils.models.forward.SplitForward` starting at the lowest
        edited block where the architecture allows it (cached, with its header cache), else :class:`FullForward`."""
        cached = self._runners.get(id(model))
        if cached is not None and cached.model is model:
            return cached

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
        :attr:`~instructedit_utils.models.metrics.Encoded.inputs`, i.e. the last target token was dropped). With
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

    def edit_many(self, model: nn.Module, tokenizer, prompts: Sequence[str], targets: Sequence[str], *,
                  headers: Sequence[str | None] | None = None) -> EditResult:
        """Batch editing, MEND's protocol (Mitchell et al. 2022, Sec. 5.3): the facts as one batch, the edit loss the
        mean NLL over every target token of every fact, every token's factors through the networks, one weight
        delta for all of them (base weights untouched)."""
        runner = self.runner(model)
        eb = edits_batch(runner, tokenizer, prompts, targets, headers)
        factors, loss, _ = self.inner_pass(model, runner, eb.batch, eb.rows, eb.positions + 1, targets=eb.targets)
        with torch.no_grad():
            transformed = self.transform_all(factors, self.batch_context(model, eb))
            deltas = self.deltas(transformed)
        return EditResult({k: v.detach() for k, v in deltas.items()}, float(loss))

    def batch_context(self, model: nn.Module, eb) -> Any:
        """The transform's condition for a batch edit (MEND: none; an editor conditioned on one edit refuses)."""
        return self.edit_context(model, eb.input_ids) if len(eb.batch.input_ids) == 1 else None

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
        atomic_write_json(directory / EDITOR_META, meta)
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


#: editor class of each ``MethodConfig.method``: MEND's here; KE's registers itself (:mod:`.ke`), and the
#: ``methods`` package face imports every built-in editor
EDITOR_CLASSES: dict[str, type[MendEditor]] = {"mend": MendEditor}


def register_editor(method: str):
    """Class decorator: the editor class of ``method`` (a subclass of :class:`MendEditor`)."""
    def wrap(cls: type[MendEditor]) -> type[MendEditor]:
        if method in EDITOR_CLASSES:
            raise ValueError(f"Editor method {method!r} registered already")
        EDITOR_CLASSES[method] = cls
        return cls
    return wrap


def editor_class(config: MethodConfig) -> type[MendEditor]:
    """The editor class of ``config.method`` (:data:`EDITOR_CLASSES`: :class:`MendEditor` for ``mend``,
    :class:`~instructedit_utils.methods.ke.KnowledgeEditor` for ``ke``)."""
    try:
        return EDITOR_CLASSES[config.method]
    except KeyError:
        raise KeyError(f"No editor class for method {config.method!r} (registered: {sorted(EDITOR_CLASSES)}); "
                       "import instructedit_utils.methods, which loads every built-in editor") from None


def make_editor(model: nn.Module, config: MethodConfig, layers: Sequence[int] | None = None) -> MendEditor:
    """A fresh (untrained) editor of ``config.method`` for ``model``'s edited matrices in ``layers``."""
    return editor_class(config).for_model(model, config, layers)



# --------------------------------------------------------------------------------------------------------------------
# The trained editor as an editing method of the registry
# --------------------------------------------------------------------------------------------------------------------


class TrainedEditor(EditingMethod):
    """A trained :class:`~instructedit_utils.methods.mend.MendEditor` (InstructEdit or MEND) as an editing method."""

    def __init__(self, editor: MendEditor, model: nn.Module, name: str | None = None):
        self.editor = editor.eval()
        self.name = name or editor.config.name
        self.use_instructions = editor.config.use_instructions
        self.first_edited_block = editor.first_block(model)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for key, value in sorted(self.editor.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return f"{self.name}:{digest.hexdigest()[:16]}"

    def runner(self, model: nn.Module):
        return self.editor.runner(model)

    def weight_deltas(self, model, tokenizer, request) -> dict[str, Any]:
        return self.editor.edit(model, tokenizer, request.prompt, request.target, header=request.header).deltas

    def batch_deltas(self, model, tokenizer, requests) -> dict[str, Any]:
        return self.editor.edit_many(model, tokenizer, [r.prompt for r in requests], [r.target for r in requests],
                                     headers=[r.header for r in requests]).deltas

    @contextlib.contextmanager
    def edited(self, model, tokenizer, request) -> Iterator[nn.Module]:
        with applied(model, self.weight_deltas(model, tokenizer, request)):
            yield model


@register("mend")
def build_trained_editor(model, tokenizer, *, editor_dir=None, editor: MendEditor | None = None, name: str | None = None
                ) -> EditingMethod:
    """A trained editor, given as ``editor`` or loaded from ``editor_dir`` (checked against ``model``)."""
    if (editor is None) == (editor_dir is None):
        raise ValueError("mend: give exactly one of editor= or editor_dir=")
    if editor is None:
        editor = MendEditor.load(editor_dir, model, device=next(model.parameters()).device)
    return TrainedEditor(editor, model, name)
