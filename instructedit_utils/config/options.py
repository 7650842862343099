"""The options of the methods built from options alone (no trained state): FT-L, CaliNet and GRACE, one config
dataclass each (validated on construction), and :data:`OPTIONS`, which names them. The config layer validates
``ExperimentConfig.method_options`` with them before any model loads; the methods (:mod:`instructedit_utils.methods`)
take their options from them. Defaults and the reasons for them are in each method's module docstring.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def check_loop_options(config) -> None:
    """The options every per-edit optimisation's config shares: ``steps`` and ``lr`` must be >= 0 (the error names
    the config class and the field)."""
    for name in ("steps", "lr"):
        if getattr(config, name) < 0:
            raise ValueError(f"{type(config).__name__}.{name} must be >= 0")


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


@dataclass
class FTLConfig:
    """FT-L's options (:mod:`instructedit_utils.methods.ft`)."""

    layer: int | None = None  # block whose matrix is tuned (None: the lowest block the editors edit)
    matrix: str | None = None  # weight path within the block (None: the MLP's output matrix, e.g. mlp.down_proj.weight)
    steps: int = 25  # Adam steps per edit
    lr: float = 5e-4
    norm_constraint: float | None = 5e-4  # L∞ bound on every entry of the change (None: unconstrained)
    plateau: float | None = 1e-3  # stop once a step lowers the loss by less than this fraction (None: every step)

    def __post_init__(self):
        check_loop_options(self)
        if self.norm_constraint is not None and not self.norm_constraint > 0:
            raise ValueError("FTLConfig.norm_constraint must be > 0 or None")
        if self.plateau is not None and not 0 < self.plateau < 1:
            raise ValueError("FTLConfig.plateau must be in (0, 1) or None")


@dataclass
class CaliNetConfig:
    """CaliNet's options (:mod:`instructedit_utils.methods.calinet`)."""

    layer: int | None = None  # block whose FFN gets the slots (None: the highest block the editors edit)
    slots: int = 16  # calibration memory slots
    steps: int = 25  # Adam steps per edit
    lr: float = 3e-3
    seed: int = 0  # of the keys' initialisation

    def __post_init__(self):
        if self.slots < 1:
            raise ValueError("CaliNetConfig.slots must be >= 1")
        check_loop_options(self)


@dataclass
class GraceConfig:
    """GRACE's options (:mod:`instructedit_utils.methods.grace`)."""

    layer: int | None = None  # block whose MLP gets the codebook (None: the lowest block the editors edit)
    eps_init: float = 0.5  # initial deferral radius (Euclidean distance between MLP inputs)
    steps: int = 12  # at most this many Adam steps per new value
    lr: float = 5.0  # Adam learning rate of a value
    stop_loss: float | None = 0.2  # stop once the target's NLL is below this (None: always run every step)

    def __post_init__(self):
        if not self.eps_init > 0:
            raise ValueError("GraceConfig.eps_init must be > 0")
        check_loop_options(self)
        if self.stop_loss is not None and not self.stop_loss > 0:
            raise ValueError("GraceConfig.stop_loss must be > 0 or None")


#: methods built from options alone: name → its options' dataclass
OPTIONS: dict[str, type] = {"ft-l": FTLConfig, "calinet": CaliNetConfig, "grace": GraceConfig}
