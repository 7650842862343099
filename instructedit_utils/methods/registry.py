"""Editing methods behind one signature, and the registry the evaluation harness finds them in.

Every method turns one :class:`~instructedit_utils.data.instructions.EditRequest` into an edited model, functionally::

    method = methods.build("mend", model, tokenizer, editor_dir="runs/cpu/02_editor_training/instructedit")
    with method.edited(model, tokenizer, request) as edited:   # base weights restored bit-exactly on exit
        ...

Many edits on one model: ``method.stream(model, tokenizer)`` keeps edits in sequence (:class:`EditStream`: weight
deltas stacked for every method that returns them, GRACE's codebook and CaliNet's slots by their own streams) and
``method.batch_deltas(model, tokenizer, requests)`` makes one edit of several facts (the trained hypernetwork
editors; the others say they cannot).

A method says whether its requests carry the instruction (``use_instructions``), the lowest transformer block whose
weights an edit may change (``first_edited_block``; the harness then replays only the blocks from there on, see
:func:`~instructedit_utils.models.forward.score_split`; ``None`` = unknown, full forward passes) and a ``fingerprint``
of its trained state (a resumed evaluation refuses results of a different editor).

This module imports none of the methods: each registers itself when its module is imported, and the ``methods``
package face imports every built-in one. Registered there: ``base`` (the unedited model, the Base column of
Table 3, here), ``mend`` (a trained MEND-family editor, :mod:`~instructedit_utils.methods.mend`: InstructEdit when it
was trained with instructions, multi-task or single-task MEND without), ``ke`` (a trained KE editor,
:mod:`~instructedit_utils.methods.ke`) and the optimisation-based baselines ``ft-l``
(:mod:`~instructedit_utils.methods.ft`), ``calinet`` (:mod:`~instructedit_utils.methods.calinet`) and ``grace``
(:mod:`~instructedit_utils.methods.grace`), and beyond the paper ``rome``, ``memit`` and ``alphaedit``
(:mod:`~instructedit_utils.methods.rome`), built from options of their config dataclass
(:mod:`~instructedit_utils.config.options`). New methods join with :func:`register`::

    @register("my-method", config=MyConfig)
    def _build(model, tokenizer, **options) -> EditingMethod: ...
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..config.options import OPTIONS
from ..data.instructions import EditRequest
from ..models.deltas import applied, nonfinite
from ..models.forward import FullForward, SplitForward, supports_split
from ..models.loading import arch_spec

Factory = Callable[..., "EditingMethod"]
REGISTRY: dict[str, Factory] = {}
#: methods built from options alone (no trained state): their options' dataclass (the config layer's table, which a
#: method registered with ``config=`` joins)
CONFIGS = OPTIONS


def register(name: str, config: type | None = None) -> Callable[[Factory], Factory]:
    """Decorator: make ``factory(model, tokenizer, **options) -> EditingMethod`` available as ``name``; ``config``
    is the dataclass its options fill (methods that need no training: the experiments build them from options)."""
    def wrap(factory: Factory) -> Factory:
        if name in REGISTRY:
            raise ValueError(f"Editing method {name!r} is registered already")
        if config is not None:
            if CONFIGS.get(name, config) is not config:
                raise ValueError(f"Editing method {name!r} has options {CONFIGS[name].__name__} already")
            CONFIGS[name] = config
        REGISTRY[name] = factory
        return factory
    return wrap


def build(kind: str, model: nn.Module, tokenizer, **options) -> "EditingMethod":
    """The registered method ``kind`` for ``model`` (``options`` are the factory's, e.g. ``editor_dir``)."""
    try:
        factory = REGISTRY[kind]
    except KeyError:
        raise KeyError(f"No editing method {kind!r}; registered: {sorted(REGISTRY)}") from None
    return factory(model, tokenizer, **options)


def config_digest(config) -> str:
    """A short digest of a config dataclass (part of a method's fingerprint: other hyperparameters, other cases)."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:12]


class EditingMethod:
    """The one signature of an editing method (see the module docstring)."""

    name: str = "method"
    use_instructions: bool = False
    first_edited_block: int | None = None
    schedule: int = 0  # order of jobs run side by side (lower first): a method whose work others reuse goes first

    @property
    def fingerprint(self) -> str:
        return self.name

    def edited(self, model: nn.Module, tokenizer, request: EditRequest) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def weight_deltas(self, model: nn.Module, tokenizer, request: EditRequest) -> dict[str, Any] | None:
        """The edit as weight deltas (``{parameter name: delta}``, what :meth:`edited` adds with
        :func:`~instructedit_utils.models.deltas.applied`), or None for a method whose edit is not only a change of
        weights (added modules, codebooks). The harness uses them to generate for many edits in one batch."""
        return None

    def batch_deltas(self, model: nn.Module, tokenizer, requests) -> dict[str, Any]:
        """Batch editing: one weight change for all ``requests`` at once (the hypernetwork editors, MEND's protocol).
        A method without one raises :class:`NotImplementedError` saying so."""
        raise NotImplementedError(f"{self.name} has no batch edit (only the trained hypernetwork editors do)")

    def stream(self, model: nn.Module, tokenizer) -> "EditStream":
        """Sequential editing: an :class:`EditStream` that keeps every edit added to it on ``model``, each computed on
        the model the earlier ones left. A method whose edits are weight deltas gets :class:`DeltaStream`; one that
        edits otherwise overrides this (GRACE's codebook, CaliNet's slots) or cannot, and says so."""
        if type(self).weight_deltas is EditingMethod.weight_deltas:
            raise NotImplementedError(f"{self.name} cannot keep edits in sequence: it neither returns weight deltas "
                                      "nor defines its own stream")
        return DeltaStream(self, model, tokenizer)

    def runner(self, model: nn.Module):
        """The forward runner scoring uses: a split at :attr:`first_edited_block` where the architecture allows."""
        cached = getattr(self, "_runner", None)
        if cached is not None and cached.model is model:
            return cached
        n_blocks = len(model.get_submodule(arch_spec(model).layers_path))
        start = self.first_edited_block
        runner = (SplitForward(model, min(start, n_blocks - 1)) if start is not None and supports_split(model)
                  else FullForward(model))
        self._runner = runner
        return runner


class StreamBroken(FloatingPointError):
    """A stream of edits broke at ``step`` (1-based): an edit gave a non-finite weight change, loss or weight."""

    def __init__(self, step: int, case_id: str, reason: str):
        super().__init__(f"the stream broke at edit {step} ({case_id}): {reason}")
        self.step, self.case_id, self.reason = step, case_id, reason


class EditStream:
    """Edits kept together on one model, in order (sequential editing)::

        with method.stream(model, tokenizer) as stream:
            for request in requests:
                stream.add(request)      # computed on the model the earlier edits left
                ...                      # the model now carries every edit so far
        # the model is as before, bit for bit

    ``steps`` counts the edits added. An edit that yields a non-finite loss, weight change or weight raises
    :class:`StreamBroken` with its step; the stream must not be used further (leaving the block still restores).
    Subclasses implement :meth:`start` (on entry) and :meth:`_add`; what they hook or change is undone by
    :attr:`stack` on exit."""

    def __init__(self, method: "EditingMethod", model: nn.Module, tokenizer):
        self.method, self.model, self.tokenizer = method, model, tokenizer
        self.steps = 0
        self.stack: contextlib.ExitStack | None = None

    def __enter__(self) -> "EditStream":
        self.stack = contextlib.ExitStack().__enter__()
        try:
            self.start()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        stack, self.stack = self.stack, None
        return bool(stack.__exit__(*exc))

    def start(self) -> None:
        pass

    def attach(self, context: contextlib.AbstractContextManager | None) -> None:
        """Replace the stream's current hook (if any) by ``context`` (None: detach): GRACE's and CaliNet's adaptors
        are re-attached after each edit. Whatever is attached is removed on exit as well."""
        hook = getattr(self, "_hook", None)
        if hook is not None:
            hook.close()
        self._hook = self.stack.enter_context(contextlib.ExitStack())
        if context is not None:
            self._hook.enter_context(context)

    def add(self, request: EditRequest) -> None:
        if self.stack is None:
            raise RuntimeError("EditStream.add outside its with block")
        self.steps += 1
        try:
            self._add(request)
        except FloatingPointError as exc:
            raise StreamBroken(self.steps, request.case_id, str(exc)) from exc

    def _add(self, request: EditRequest) -> None:
        raise NotImplementedError

    def deltas(self) -> dict[str, torch.Tensor] | None:
        """Every edit so far as one set of weight deltas (their sum), for streams whose edits are weight deltas
        (the harness then generates for many streams in one batch); None for the others."""
        return None


class DeltaStream(EditStream):
    """Weight deltas stacked in place (each by :func:`~instructedit_utils.models.deltas.applied`, undone in reverse
    order on exit): MEND, InstructEdit, KE and FT-L. :meth:`deltas` keeps their running sum."""

    def start(self) -> None:
        self.total: dict[str, torch.Tensor] = {}

    def deltas(self) -> dict[str, torch.Tensor]:
        return dict(self.total)

    def _add(self, request: EditRequest) -> None:
        self.apply(self.method.weight_deltas(self.model, self.tokenizer, request))

    def apply(self, deltas: dict[str, torch.Tensor]) -> None:
        """Keep ``deltas`` on the model (taken back on exit) and in the running sum; non-finite deltas or weights
        raise :class:`FloatingPointError`."""
        bad = nonfinite(deltas)
        if bad:
            raise FloatingPointError(f"{self.method.name}: non-finite weight change of {bad}")
        self.stack.enter_context(applied(self.model, deltas))
        for name, delta in deltas.items():
            delta = delta.detach()
            self.total[name] = self.total[name] + delta if name in self.total else delta.clone()
        params = dict(self.model.named_parameters())
        bad = nonfinite({n: params[n] for n in deltas})
        if bad:
            raise FloatingPointError(f"{self.method.name}: non-finite weights {bad} after the edit")


class _NoEdits(EditStream):
    def _add(self, request: EditRequest) -> None:
        pass


class Unedited(EditingMethod):
    """No edit at all: the unedited model's scores (Locality is 1 by definition)."""

    def __init__(self, name: str = "base", use_instructions: bool = False):
        self.name = name
        self.use_instructions = use_instructions
        self.first_edited_block = 10 ** 9  # nothing is edited: only the last block is replayed

    @contextlib.contextmanager
    def edited(self, model, tokenizer, request) -> Iterator[nn.Module]:
        yield model

    def stream(self, model, tokenizer) -> EditStream:
        return _NoEdits(self, model, tokenizer)


@register("base")
def _build_base(model, tokenizer, *, name: str = "base", use_instructions: bool = False) -> EditingMethod:
    return Unedited(name, use_instructions)
