"""Editing methods behind one signature, and the registry the evaluation harness finds them in.

Every method turns one :class:`~instructedit_utils.instructions.EditRequest` into an edited model, functionally::

    method = baselines.build("mend", model, tokenizer, editor_dir="runs/cpu/02_editor_training/instructedit")
    with method.edited(model, tokenizer, request) as edited:   # base weights restored bit-exactly on exit
        ...

A method says whether its requests carry the instruction (``use_instructions``), the lowest transformer block whose
weights an edit may change (``first_edited_block``; the harness then replays only the blocks from there on, see
:func:`~instructedit_utils.forward.score_split`; ``None`` = unknown, full forward passes) and a ``fingerprint`` of
its trained state (a resumed evaluation refuses results of a different editor).

Registered: ``base`` (the unedited model, the Base column of Table 3), ``mend`` (a trained MEND-family editor from
:mod:`~instructedit_utils.training`: InstructEdit when it was trained with instructions, multi-task or single-task
MEND without), ``ke`` (a trained KE editor, :mod:`~instructedit_utils.ke`) and the optimisation-based baselines
``ft-l`` (:mod:`~instructedit_utils.ft`), ``calinet`` (:mod:`~instructedit_utils.calinet`) and ``grace``
(:mod:`~instructedit_utils.grace`), built from options of their config dataclass. New methods join with
:func:`register`::

    @register("my-method", config=MyConfig)
    def _build(model, tokenizer, **options) -> EditingMethod: ...
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from typing import Any, Callable, Iterator

from torch import nn

from .editor import MendEditor, applied
from .instructions import EditRequest
from .models import arch_spec

Factory = Callable[..., "EditingMethod"]
REGISTRY: dict[str, Factory] = {}
CONFIGS: dict[str, type] = {}  # methods built from options alone (no trained state): their config dataclass


def register(name: str, config: type | None = None) -> Callable[[Factory], Factory]:
    """Decorator: make ``factory(model, tokenizer, **options) -> EditingMethod`` available as ``name``; ``config``
    is the dataclass its options fill (methods that need no training: the experiments build them from options)."""
    def wrap(factory: Factory) -> Factory:
        if name in REGISTRY:
            raise ValueError(f"Editing method {name!r} is registered already")
        REGISTRY[name] = factory
        if config is not None:
            CONFIGS[name] = config
        return factory
    return wrap


def build(kind: str, model: nn.Module, tokenizer, **options) -> "EditingMethod":
    """The registered method ``kind`` for ``model`` (``options`` are the factory's, e.g. ``editor_dir``)."""
    try:
        factory = REGISTRY[kind]
    except KeyError:
        raise KeyError(f"No editing method {kind!r}; registered: {sorted(REGISTRY)}") from None
    return factory(model, tokenizer, **options)


def make_config(cls, options: dict[str, Any], method: str):
    """``cls(**options)`` with an error naming ``method`` and the options it does not know."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{method}: unknown option(s) {unknown}; {cls.__name__} has {sorted(known)}")
    try:
        return cls(**options)
    except ValueError as exc:
        raise ValueError(f"{method}: {exc}") from None


def config_digest(config) -> str:
    """A short digest of a config dataclass (part of a method's fingerprint: other hyperparameters, other cases)."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:12]


class EditingMethod:
    """The one signature of an editing method (see the module docstring)."""

    name: str = "method"
    use_instructions: bool = False
    first_edited_block: int | None = None

    @property
    def fingerprint(self) -> str:
        return self.name

    def edited(self, model: nn.Module, tokenizer, request: EditRequest) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def weight_deltas(self, model: nn.Module, tokenizer, request: EditRequest) -> dict[str, Any] | None:
        """The edit as weight deltas (``{parameter name: delta}``, what :meth:`edited` adds with
        :func:`~instructedit_utils.editor.applied`), or None for a method whose edit is not only a change of
        weights (added modules, codebooks). The harness uses them to generate for many edits in one batch."""
        return None

    def runner(self, model: nn.Module):
        """The forward runner scoring uses: a split at :attr:`first_edited_block` where the architecture allows."""
        from .editor import FullForward
        from .forward import SplitForward, supports_split

        cached = getattr(self, "_runner", None)
        if cached is not None and cached.model is model:
            return cached
        n_blocks = len(model.get_submodule(arch_spec(model).layers_path))
        start = self.first_edited_block
        runner = (SplitForward(model, min(start, n_blocks - 1)) if start is not None and supports_split(model)
                  else FullForward(model))
        self._runner = runner
        return runner


class Unedited(EditingMethod):
    """No edit at all: the unedited model's scores (Locality is 1 by definition)."""

    def __init__(self, name: str = "base", use_instructions: bool = False):
        self.name = name
        self.use_instructions = use_instructions
        self.first_edited_block = 10 ** 9  # nothing is edited: only the last block is replayed

    @contextlib.contextmanager
    def edited(self, model, tokenizer, request) -> Iterator[nn.Module]:
        yield model


class TrainedEditor(EditingMethod):
    """A trained :class:`~instructedit_utils.editor.MendEditor` (InstructEdit or MEND) as an editing method."""

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

    @contextlib.contextmanager
    def edited(self, model, tokenizer, request) -> Iterator[nn.Module]:
        with applied(model, self.weight_deltas(model, tokenizer, request)):
            yield model


@register("base")
def _build_base(model, tokenizer, *, name: str = "base", use_instructions: bool = False) -> EditingMethod:
    return Unedited(name, use_instructions)


@register("mend")
def _build_mend(model, tokenizer, *, editor_dir=None, editor: MendEditor | None = None, name: str | None = None
                ) -> EditingMethod:
    """A trained editor, given as ``editor`` or loaded from ``editor_dir`` (checked against ``model``)."""
    if (editor is None) == (editor_dir is None):
        raise ValueError("mend: give exactly one of editor= or editor_dir=")
    if editor is None:
        editor = MendEditor.load(editor_dir, model, device=next(model.parameters()).device)
    return TrainedEditor(editor, model, name)


@register("ke")
def _build_ke(model, tokenizer, **options) -> EditingMethod:
    """A trained KE editor (:mod:`~instructedit_utils.ke`), loaded like MEND's (``editor_dir=`` or ``editor=``)."""
    return _build_mend(model, tokenizer, **options)


# The optimisation-based baselines register themselves on import (they build on the classes above).
from . import calinet, ft, grace  # noqa: E402,F401
