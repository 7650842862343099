"""The editor and how it is trained: :class:`MethodConfig` (names follow MEND's hparams where they exist)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..data.instructions import load_pool
from ..data.tasks import task_spec
from ..models.loading import check_lower_dtype

METHODS = ("mend", "ke")  # trained editors (MEND family, KE); other methods register in instructedit_utils.methods


@dataclass
class MethodConfig:
    """The editor (MEND gradient transform) and how it is trained. Names follow MEND's hparams where they exist.

    ``use_instructions`` is the only difference between an **InstructEdit** editor (on) and a multi-task **MEND**
    editor (off); ``tasks`` with one entry gives a single-task editor.
    """

    name: str = "instructedit"  # the editor's folder name in the run folder
    method: str = "mend"
    use_instructions: bool = True
    tasks: tuple[str, ...] = ("counterfact", "recent", "convsent")
    task_weights: dict[str, float] | None = None  # sampling weight per task (None: uniform over tasks)
    # --- editor network ---
    rank: int = 1920  # hidden size of each low-rank residual block (paper/EasyEdit: 1920)
    n_blocks: int = 1  # residual blocks per network
    combine: bool = True  # one network over [u; δ] (MEND's default) — kept for clarity, must be True
    normalize: bool = True  # running mean/std normalisation of u and δ per edited matrix
    skip_first_token: bool = True  # drop position 0 (attention-sink activations ~100x the rest)
    edit_lr: float = 1e-4  # initial learned step size per edited matrix
    norm_warmup: int = 20  # training edits whose u/δ fill the normalisation statistics before step 1
    # --- training ---
    lr: float = 1e-4  # Adam learning rate of the editor network
    lr_lr: float = 1e-4  # Adam learning rate of the step sizes
    c_edit: float = 0.1
    c_loc: float = 1.0
    steps: int = 1000  # optimizer steps
    grad_accumulation: int = 1  # edits per optimizer step in each process (accelerate launch: × processes)
    grad_clip: float = 100.0
    val_every: int = 200  # steps between validations (and checkpoints)
    val_records_per_task: int = 20
    early_stop_metric: str = "val/score"
    early_stop_mode: str = "max"
    patience: int = 5  # validations without improvement before stopping (0: never stop early)
    # steps at which the best editor so far is also kept as ``<name>@<step>`` beside the run: the editor a run with
    # that budget would have given (the schedule does not depend on ``steps``); multiples of val_every
    keep_best_at: tuple[int, ...] = ()
    instructions_file: str | None = None  # instruction pool of the training/validation requests (None: the package's)
    init_editor: str | None = None  # a trained editor's folder to start from (fine-tuning; None: a fresh editor)
    loc_probes: int = 1  # locality sequences per edit in the loss
    sentiment_responses: int = 2  # ConvSent: responses per sentiment in the likelihood/unlikelihood loss
    max_target_tokens: int = 24  # ConvSent responses are cut to this many tokens in the training loss
    max_nonfinite: int = 10  # consecutive non-finite steps tolerated before training aborts
    # --- KE (De Cao et al., 2021), the third trained editor: see instructedit_utils.methods.ke ---
    ke_hidden: int = 128  # width of KE's condition encoder (bi-LSTM) and of each conditioner's hidden layer
    ke_edit_lr: float = 1e-2  # KE's initial step size on the raw (unnormalised) gradient
    kl_margin: float = 0.05  # KE's constraint: locality KL <= kl_margin (Lagrange multiplier starts at c_loc)
    lagrange_lr: float = 0.1  # step of the multiplier's dual ascent per training edit
    log_every: int = 10
    seed: int = 0
    # precision of the model's frozen lower blocks while training (set from ModelConfig.lower_dtype; the trainer
    # refuses a model loaded with another): part of the editor's identity
    lower_dtype: str = "float32"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"MethodConfig.method must be one of {METHODS}, got {self.method!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"MethodConfig.name must be a plain folder name, got {self.name!r}")
        self.tasks = tuple(self.tasks)
        if not self.tasks:
            raise ValueError("MethodConfig.tasks is empty")
        for task in self.tasks:
            task_spec(task)
            if "train" not in task_spec(task).splits or "val" not in task_spec(task).splits:
                raise ValueError(f"Task {task!r} has no train/val split to train an editor on")
        if self.task_weights is not None:
            self.task_weights = {k: float(v) for k, v in self.task_weights.items()}
            extra = set(self.task_weights) - set(self.tasks)
            if extra:
                raise ValueError(f"task_weights names tasks not trained on: {sorted(extra)}")
            if any(w < 0 for w in self.task_weights.values()) or sum(self.weights().values()) <= 0:
                raise ValueError("task_weights must be >= 0 and not all zero")
        if not self.combine:
            raise ValueError("Only the combined [u; δ] network (combine=True) is implemented")
        for name in ("rank", "n_blocks", "steps", "grad_accumulation", "val_every", "val_records_per_task",
                     "loc_probes", "sentiment_responses", "max_nonfinite", "log_every", "max_target_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"MethodConfig.{name} must be >= 1")
        for name in ("lr", "lr_lr", "grad_clip", "ke_edit_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MethodConfig.{name} must be > 0")
        if self.c_edit < 0 or self.c_loc < 0 or self.c_edit + self.c_loc == 0:
            raise ValueError("c_edit and c_loc must be >= 0 and not both 0")
        if self.early_stop_mode not in ("max", "min"):
            raise ValueError("early_stop_mode must be 'max' or 'min'")
        if self.norm_warmup < 0 or (self.normalize and self.norm_warmup == 0):
            raise ValueError("norm_warmup must be >= 1 when normalize is on (statistics must exist before use)")
        if self.patience < 0:
            raise ValueError("patience must be >= 0")
        self.keep_best_at = tuple(sorted(set(int(s) for s in self.keep_best_at)))
        for step in self.keep_best_at:
            if not self.can_keep_best_at(step):
                raise ValueError(f"keep_best_at: {step} is not a validation step below steps={self.steps} "
                                 f"(a multiple of val_every={self.val_every})")
        if self.ke_hidden < 1 or self.kl_margin < 0 or self.lagrange_lr < 0:
            raise ValueError("ke_hidden must be >= 1, kl_margin and lagrange_lr >= 0")
        check_lower_dtype(self.lower_dtype, "MethodConfig.")
        if self.instructions_file is not None:
            load_pool(self.instructions_file)  # a missing or malformed pool is an error now, before training

    def can_keep_best_at(self, step: int) -> bool:
        """Whether a run of this config can keep its best editor at ``step`` (``keep_best_at``): a validation step
        below the budget."""
        return 0 < step < self.steps and step % self.val_every == 0

    def weights(self) -> dict[str, float]:
        """Sampling weight per task (uniform when ``task_weights`` is None; missing tasks get 0)."""
        if self.task_weights is None:
            return {t: 1.0 for t in self.tasks}
        return {t: self.task_weights.get(t, 0.0) for t in self.tasks}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "MethodConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise TypeError(f"Unknown method parameter(s): {sorted(unknown)}")
        return cls(**raw)
