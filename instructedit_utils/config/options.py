"""The options of the methods built from options alone (no trained state): FT-L, CaliNet, GRACE, ROME, MEMIT and
AlphaEdit, one config
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


@dataclass
class LocateEditConfig:
    """The options ROME, MEMIT and AlphaEdit share (:mod:`instructedit_utils.methods.rome`): where they edit, the
    value optimisation (:mod:`instructedit_utils.methods.locate`) and the keys' statistics. Defaults are MEMIT's and
    AlphaEdit's GPT2-XL settings (their ``hparams/*/gpt2-xl.json``) but where the module docstring says otherwise."""

    layers: tuple[int, ...] | None = None  # edited blocks (None: the rule of methods.rome.default_layers)
    window: int = 5  # blocks the rule spreads MEMIT/AlphaEdit over (MEMIT's 13-17 of GPT2-XL); ROME edits the top one
    contexts: int = 1  # generated prefix contexts besides the bare prompt (the reference: 5)
    context_tokens: int = 10
    v_steps: int = 20  # Adam steps of the value optimisation
    v_lr: float = 0.5
    kl_factor: float = 0.0625  # weight of the essence (KL) term
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75  # ‖δ‖ ≤ this × ‖z‖ (ROME's own GPT2-XL value is 4, see methods.rome)
    stop_loss: float = 5e-2  # the value optimisation stops below this loss
    stats_tasks: tuple[str, ...] = ("counterfact", "recent", "convsent")  # the keys' statistics: their train text
    stats_tokens: int = 20000  # tokens of that text

    def __post_init__(self):
        if self.layers is not None:
            self.layers = tuple(int(x) for x in self.layers)
            if not self.layers or len(set(self.layers)) != len(self.layers):
                raise ValueError(f"{type(self).__name__}.layers must name distinct blocks, got {self.layers}")
        self.stats_tasks = tuple(self.stats_tasks)
        for name in ("window", "v_steps", "stats_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1")
        for name in ("contexts", "context_tokens", "v_lr", "kl_factor", "v_weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 0")
        for name in ("clamp_norm_factor", "stop_loss"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{type(self).__name__}.{name} must be > 0")
        if not self.stats_tasks:
            raise ValueError(f"{type(self).__name__}.stats_tasks must name at least one task")


@dataclass
class RomeConfig(LocateEditConfig):
    """ROME's options: one block (the top of the rule's window), a rank-one update."""

    mom2_adjustment: bool = True  # weigh the update by the keys' second moment (False: the identity)


@dataclass
class MemitConfig(LocateEditConfig):
    """MEMIT's options: the update spread over ``layers`` by least squares."""

    mom2_update_weight: float = 3.125  # λ of λC + KKᵀ in units of the keys' dimension (GPT2-XL: 20000 = 3.125 × 6400)

    def __post_init__(self):
        super().__post_init__()
        if not self.mom2_update_weight > 0:
            raise ValueError("MemitConfig.mom2_update_weight must be > 0")


@dataclass
class AlphaEditConfig(LocateEditConfig):
    """AlphaEdit's options: MEMIT's spread, the update projected onto the null space of the preserved keys."""

    nullspace_energy: float = 0.01  # the null space: C's weakest eigenvectors holding this share of its trace
    l2: float = 0.005  # the ridge term α, in units of tr C (a typical key's squared norm)

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.nullspace_energy < 1 or not self.l2 > 0:
            raise ValueError("AlphaEditConfig.nullspace_energy must be in (0, 1) and l2 > 0")


#: methods built from options alone: name → its options' dataclass
OPTIONS: dict[str, type] = {"ft-l": FTLConfig, "calinet": CaliNetConfig, "grace": GraceConfig, "rome": RomeConfig,
                            "memit": MemitConfig, "alphaedit": AlphaEditConfig}
