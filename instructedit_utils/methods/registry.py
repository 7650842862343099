"""Editing methods behind one signature, and the registry the evaluation harness finds them in.

Every method turns one :class:`~instructedit_utils.data.instructions.EditRequest` into an edited model, functionally::

    method = methods.build("mend", model, tokenizer, editor_dir="runs/cpu/02_editor_training/instructedit")
    with method.edited(model, tokenizer, request) as edited:   # base weights restored bit-exactly on exit
        ...

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
(:mod:`~instructedit_utils.methods.grace`), built from options of their config dataclass
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

from torch import nn

from ..config.options import OPTIONS
from ..data.instructions import EditRequest
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


class Unedited(EditingMethod):
    """No edit at all: the unedited model's scores (Locality is 1 by definition)."""

    def __init__(self, name: str = "base", use_instructions: bool = False):
        self.name = name
        self.use_instructions = use_instructions
        self.first_edited_block = 10 ** 9  # nothing is edited: only the last block is replayed

    @contextlib.contextmanager
    def edited(self, model, tokenizer, request) -> Iterator[nn.Module]:
        yield model


@register("base")
def _build_base(model, tokenizer, *, name: str = "base", use_instructions: bool = False) -> EditingMethod:
    return Unedited(name, use_instructions)
