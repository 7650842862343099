"""Typed configuration, one dataclass per axis, validated on construction.

* :class:`ModelConfig` — which model, where, which layers are edited.
* :class:`ExperimentConfig` — data, sampling, evaluation settings and the run folder.
* :class:`MethodConfig` — the editor and its training; :class:`GradientConfig` — editing-gradient analysis;
  :class:`MixtureConfig` — chapter 7's training mixtures (task scaling and data balance); :class:`SearchConfig` —
  chapter 5's instruction search (generate, filter, score with a trial editor, keep the best).

Notebooks build these from their ``parameters`` cell; :meth:`ExperimentConfig.to_dict` is what lands in
``params.json`` of the run folder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import paper
from .data import TASKS, task_spec
from .instructions import load_pool, read_descriptions
from .paths import display_path, project_path
from .models import MODEL_PRESETS

PROFILES = ("ci", "cpu", "gpu")


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    device: str = "cpu"
    dtype: str = "float32"
    num_threads: int | None = 1  # torch intra-op threads on CPU (None: leave torch's default)
    edit_layers: tuple[int, ...] | None = None  # None: the preset's layers (last three for unknown models)

    def __post_init__(self):
        if not self.name:
            raise ValueError("ModelConfig.name must be a preset or a Hugging Face id/path")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"ModelConfig.dtype must be float32/float16/bfloat16, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise ValueError(f"ModelConfig.device must be cpu, cuda[:N] or mps, got {self.device!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("ModelConfig.num_threads must be >= 1 or None")
        if self.edit_layers is not None:
            self.edit_layers = tuple(int(x) for x in self.edit_layers)
        elif self.name in MODEL_PRESETS and MODEL_PRESETS[self.name].edit_layers:
            self.edit_layers = MODEL_PRESETS[self.name].edit_layers


@dataclass
class ExperimentConfig:
    run_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    profile: str = "cpu"
    data_dir: str | None = None  # None: $INSTRUCTEDIT_DATA or ../shared/data
    tasks: tuple[str, ...] = TASKS
    split: str = "test"
    sample_per_task: int | None = 50  # None: the whole split
    seed: int = 0
    batch_size: int = 16
    use_instructions: bool = True
    instruct_locality: bool = False
    max_rephrases: int = 3  # rephrases scored per case (Generalization)
    max_probes: int = 3  # locality / portability probes scored per case
    max_aliases: int = 1  # an answer counts as predicted if any of its first N aliases is
    fluency_max_new_tokens: int = 40  # 0 disables generation (and Fluency)
    success_max_new_tokens: int = 0  # > 0: generation-based Reliability/Generalization (greedy, at most this long)
    sentiment_responses: int = 4  # responses per sentiment scored for ConvSent success
    length_sample_per_task: int | None = 300  # records per task for token-length statistics
    live_edits: int = 3  # example edits shown before/after in the training chapter
    workers: int | None = 1  # processes working at once (editors trained, methods evaluated); None: one per core
    method: "MethodConfig | None" = None  # the editor and its training (notebooks that train/use editors)
    gradients: "GradientConfig | None" = None  # editing-gradient collection and analysis (chapter 6)
    mixtures: "MixtureConfig | None" = None  # chapter 7's training mixtures, trained in chapter 2's pool
    search: "SearchConfig | None" = None  # chapter 5's instruction search
    # --- evaluation settings (notebooks 03/04, instructedit-eval) ---
    editors_dir: str | None = None  # trained editors (default: the sibling run folder 02_editor_training)
    methods: tuple[str, ...] = ("base", "mend", "instructedit")  # "base", ft-l/calinet/grace or editor folders
    method_options: dict[str, dict] | None = None  # options of ft-l/calinet/grace (their config dataclasses)
    holdout_tasks: tuple[str, ...] = ("zsre",)  # tasks no editor was trained on
    holdout_split: str = "all"  # split hold-out tasks are sampled from (no multi-task editor saw any of it)
    descriptions_file: str | None = None  # external descriptions to test (unseen-instruction setting)
    instructions_file: str | None = None  # the instruction pool requests draw descriptions from (None: the package's)
    single_task_steps: int | None = None  # steps of each single-task editor (None: the multi-task budget)
    single_tasks: tuple[str, ...] | None = None  # tasks with a single-task editor (Table 1; None: the training tasks)
    transfer_tasks: tuple[str, ...] = ("counterfact", "zsre")  # Table 1's test tasks (the paper's blocks)
    transfer_instructions: bool = False  # single-task editors with instructions (InstructEdit) or without (MEND)

    def __post_init__(self):
        self.run_dir = str(project_path(self.run_dir))
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if isinstance(self.method, dict):
            self.method = MethodConfig.from_dict(self.method)
        if isinstance(self.gradients, dict):
            self.gradients = GradientConfig(**self.gradients)
        if isinstance(self.mixtures, dict):
            self.mixtures = MixtureConfig(**self.mixtures)
        if isinstance(self.search, dict):
            self.search = SearchConfig(**self.search)
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        self.tasks = tuple(self.tasks)
        self.holdout_tasks = tuple(self.holdout_tasks)
        for task in self.tasks + self.holdout_tasks:
            split = self.split_of(task)
            if split not in task_spec(task).splits:
                role = "Hold-out task" if task in self.holdout_tasks else "Task"
                raise ValueError(f"{role} {task!r} has no split {split!r}; it has {list(task_spec(task).splits)}")
        if self.sample_per_task is not None and self.sample_per_task < 1:
            raise ValueError("sample_per_task must be >= 1 or None")
        for name in ("batch_size", "max_rephrases", "max_probes", "max_aliases", "sentiment_responses"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be >= 1 or None (one per core)")
        if self.fluency_max_new_tokens < 0 or self.success_max_new_tokens < 0:
            raise ValueError("fluency_max_new_tokens and success_max_new_tokens must be >= 0")
        self.methods = tuple(self.methods)
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct names, got {self.methods}")
        for name in self.methods:
            if not name or "/" in name:
                raise ValueError(f"methods: {name!r} is not a plain name (an editor folder in editors_dir)")
        self.method_options = {k: dict(v) for k, v in (self.method_options or {}).items()} or None
        for name, options in (self.method_options or {}).items():
            from .baselines import CONFIGS, make_config

            if name not in CONFIGS:
                raise ValueError(f"method_options: {name!r} takes no options (methods with options: "
                                 f"{sorted(CONFIGS)})")
            make_config(CONFIGS[name], options, name)
        if self.descriptions_file is not None:
            self.descriptions()  # validated now, before any model loads
        if self.instructions_file is not None:
            self.instructions_file = str(project_path(self.instructions_file))
            self.pool()  # validated now
            if self.method is not None and self.method.instructions_file is None:  # editors train on it too
                self.method = dataclasses.replace(self.method, instructions_file=self.instructions_file)
        if self.single_task_steps is not None and self.single_task_steps < 1:
            raise ValueError("single_task_steps must be >= 1 or None")
        if self.single_tasks is not None:
            self.single_tasks = tuple(self.single_tasks)
            for task in self.single_tasks:
                if "train" not in task_spec(task).splits or "val" not in task_spec(task).splits:
                    raise ValueError(f"single_tasks: {task!r} has no train/val split to train an editor on")
        self.transfer_tasks = tuple(self.transfer_tasks)
        for task in self.transfer_tasks:
            if "test" not in task_spec(task).splits:
                raise ValueError(f"transfer_tasks: {task!r} has no test split")
        if self.mixtures is not None:
            self.mixtures.check_tasks(self.method.tasks if self.method is not None else MethodConfig().tasks)

    def n_workers(self) -> int:
        """Processes that may work at once: :attr:`workers`, or one per core when it is None. On a GPU, one."""
        import os

        if self.model.device != "cpu":
            return 1
        return self.workers or os.cpu_count() or 1

    def split_of(self, task: str) -> str:
        """The split a task's cases are sampled from: :attr:`holdout_split` for hold-out tasks, else :attr:`split`."""
        return self.holdout_split if task in self.holdout_tasks else self.split

    def splits(self, tasks: Sequence[str]) -> dict[str, str]:
        return {task: self.split_of(task) for task in tasks}

    def pool(self):
        """The instruction pool of :attr:`instructions_file` (None: the package's)."""
        return load_pool(self.instructions_file)

    def descriptions(self) -> dict[str, list[str]]:
        """The external descriptions of :attr:`descriptions_file` per task (training + hold-out), validated."""
        if self.descriptions_file is None:
            return {}
        return read_descriptions(self.descriptions_file, tuple(dict.fromkeys(self.tasks + self.holdout_tasks)))

    @classmethod
    def from_parameters(cls, *, model_name: str = "smollm2-135m", device: str = "cpu", dtype: str = "float32",
                        num_threads: int | None = 1, edit_layers=None, **fields) -> "ExperimentConfig":
        """Build from a notebook's flat ``parameters`` cell: ``model_name``/``device``/``dtype``/``num_threads``/
        ``edit_layers`` go to :class:`ModelConfig`; names of :class:`MethodConfig` fields (and ``train_tasks`` for
        its ``tasks``) go to a :class:`MethodConfig` seeded with ``seed``; names of :class:`GradientConfig` fields
        to a :class:`GradientConfig`, of :class:`MixtureConfig` fields to a :class:`MixtureConfig`, of
        :class:`SearchConfig` fields to a :class:`SearchConfig`; the rest to this class. Without ``tasks``,
        the tasks evaluated are the training tasks. Unknown names are an error."""
        own = {f.name for f in dataclasses.fields(cls)}
        method_names = {f.name for f in dataclasses.fields(MethodConfig)} - own - {"name"}
        method_fields = {k: fields.pop(k) for k in list(fields) if k in method_names}
        gradient_names = {f.name for f in dataclasses.fields(GradientConfig)} - own
        gradient_fields = {k: fields.pop(k) for k in list(fields) if k in gradient_names}
        mixture_names = {f.name for f in dataclasses.fields(MixtureConfig)} - own
        mixture_fields = {k: fields.pop(k) for k in list(fields) if k in mixture_names}
        search_names = {f.name for f in dataclasses.fields(SearchConfig)} - own
        search_fields = {k: fields.pop(k) for k in list(fields) if k in search_names}
        if "train_tasks" in fields:
            method_fields["tasks"] = fields.pop("train_tasks")
            fields.setdefault("tasks", method_fields["tasks"])
        unknown = set(fields) - own
        if unknown:
            raise TypeError(f"Unknown experiment parameter(s): {sorted(unknown)}")
        model = ModelConfig(name=model_name, device=device, dtype=dtype, num_threads=num_threads,
                            edit_layers=edit_layers)
        if method_fields:
            fields["method"] = MethodConfig(seed=fields.get("seed", 0), **method_fields)
        if gradient_fields:
            fields["gradients"] = GradientConfig(**gradient_fields)
        if mixture_fields:
            fields["mixtures"] = MixtureConfig(**mixture_fields)
        if search_fields:
            fields["search"] = SearchConfig(**search_fields)
        return cls(model=model, **fields)

    def editor_configs(self) -> dict[str, "MethodConfig"]:
        """The trained multi-task editors of the paper from :attr:`method`: ``instructedit`` (instructions on) and
        ``mend`` (instructions off), identical otherwise, and ``ke`` (KE's conditioned hypernetwork on the same
        mixture and budget, without instructions, raw gradients, its KL constraint; see
        :mod:`instructedit_utils.ke`)."""
        if self.method is None:
            raise ValueError("This experiment has no method config (no editor parameters were given)")
        out = {name: dataclasses.replace(self.method, name=name, use_instructions=on)
               for name, on in (("instructedit", True), ("mend", False))}
        out["ke"] = dataclasses.replace(self.method, name="ke", method="ke", use_instructions=False, normalize=False,
                                        edit_lr=self.method.ke_edit_lr)
        return out

    def single_task_configs(self, use_instructions: bool = True) -> dict[str, "MethodConfig"]:
        """One single-task editor per task of :attr:`single_tasks` (default: the training tasks; Table 1 / Fig. 4):
        ``<instructedit|mend>-<task>``, the multi-task hyperparameters with :attr:`single_task_steps` steps (None:
        the multi-task budget). A hold-out task may have one (ZsRE: Table 1's in-task editor), trained on its own
        train split; no multi-task editor ever sees that task."""
        if self.method is None:
            raise ValueError("This experiment has no method config (no editor parameters were given)")
        prefix = "instructedit" if use_instructions else "mend"
        steps = self.single_task_steps or self.method.steps
        return {f"{prefix}-{task}": dataclasses.replace(self.method, name=f"{prefix}-{task}", tasks=(task,),
                                                        task_weights=None, use_instructions=use_instructions,
                                                        steps=steps)
                for task in self.single_tasks or self.method.tasks}

    def training_configs(self) -> dict[str, "MethodConfig"]:
        """Every editor chapter 2 trains, in one pool of workers: the multi-task editors (:meth:`editor_configs`),
        the single-task editors of Table 1 (:meth:`single_task_configs`, instructions as
        :attr:`transfer_instructions`), which chapters 4 and 6 load, and, with :attr:`mixtures`, chapter 7's
        mixture editors that no other editor already gives (:func:`instructedit_utils.mixtures.plan`)."""
        base = {**self.editor_configs(), **self.single_task_configs(self.transfer_instructions)}
        if self.mixtures is None:
            return base
        from .mixtures import plan

        return plan(self, base).train

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def case_settings(self, tasks: Sequence[str], *, instructions: bool, description: int | str | None = None
                      ) -> dict[str, Any]:
        """What this configuration contributes to a case file's settings (see
        :func:`instructedit_utils.evaluation.case_settings`, which adds the scoring caps and a digest of the requests):
        model, tasks with their splits, sample, seed, instruction flags and the digests of the data files read."""
        from .data import data_fingerprint

        splits = self.splits(tasks)
        return {"model": {"name": self.model.name, "dtype": self.model.dtype,
                          "device": self.model.device.split(":")[0]},
                "splits": splits, "sample_per_task": self.sample_per_task, "seed": self.seed,
                "instructions": instructions, "instruct_locality": self.instruct_locality,
                "description": description, "data": data_fingerprint(splits, self.data_dir)}

    def score_kwargs(self) -> dict[str, int]:
        """Keyword arguments for :func:`instructedit_utils.evaluation.score_requests`."""
        return dict(batch_size=self.batch_size, max_rephrases=self.max_rephrases, max_probes=self.max_probes,
                    max_aliases=self.max_aliases, sentiment_responses=self.sentiment_responses,
                    fluency_max_new_tokens=self.fluency_max_new_tokens,
                    success_max_new_tokens=self.success_max_new_tokens)


@dataclass
class GradientConfig:
    """How editing gradients ("editing areas", chapter 6) are collected and analysed.

    Each edit's transformed gradient ``G̃ = Σ_t δ̃_t ũ_tᵀ`` of an edited matrix is stored as a seeded random sketch of
    ``sketch_dim`` numbers (entries of ``G̃`` rotated on both sides by random signs and a Walsh–Hadamard transform, at
    random positions: inner products of ``G̃`` are kept in expectation, computed from the factors without forming
    ``G̃``) plus its exact Frobenius norm; see :mod:`instructedit_utils.gradients`.
    """

    sketch_dim: int = 2048  # random features per edited matrix
    sketch_seed: int = 0
    matrices: tuple[str, ...] | None = None  # edited matrices whose areas are analysed (None: all of them)
    single_task: bool = True  # also the single-task editors of chapter 4 (each task through its own editor)
    # also each editor of `methods` as its training started (step 0): what the instruction text alone separates,
    # Finding 1's control
    untrained_control: bool = True
    edit_batch: int = 16  # edits whose gradients one batched forward/backward pass computes
    tsne_perplexity: float = 30.0
    knn: int = 10  # neighbours for the k-nearest-neighbour task purity
    n_boot: int = 1000  # bootstrap resamples of records for the CIs
    n_permutations: int = 200  # label permutations for the "no separation" control

    def __post_init__(self):
        for name in ("sketch_dim", "edit_batch", "knn", "n_boot", "n_permutations"):
            if getattr(self, name) < 1:
                raise ValueError(f"GradientConfig.{name} must be >= 1")
        if not self.tsne_perplexity > 0:
            raise ValueError("GradientConfig.tsne_perplexity must be > 0")
        if self.matrices is not None:
            self.matrices = tuple(self.matrices)
            if not self.matrices:
                raise ValueError("GradientConfig.matrices is empty (None: every edited matrix)")


#: Training-set sizes of the paper's tasks (records; KnowEdit's dataset table, which the paper's text does not print:
#: :func:`instructedit_utils.paper.train_sizes`). Drawn in these proportions, ConvSent is most of the training edits:
#: the "ConvSent-dominated" mixture of the paper's Fig. 4d.
PAPER_TRAIN_SIZES = paper.train_sizes()
#: The paper's balanced training set (Fig. 4d): Recent and CounterFact whole, ConvSent cut to the size the caption
#: gives (:func:`instructedit_utils.paper.balanced_sizes`).
PAPER_BALANCED_SIZES = paper.balanced_sizes()


@dataclass
class MixtureConfig:
    """Chapter 7's training mixtures (paper Fig. 4b-d): which editors are trained to test task scaling and balance.

    * **Task scaling**: InstructEdit and MEND editors trained on the first 1, 2, ... tasks of :attr:`scaling_order`
      (uniform task weights), one per seed of :attr:`scaling_seeds`.
    * **Balance**: InstructEdit on all training tasks with tasks drawn in proportion to :attr:`dominant_weights`
      (default: the paper's training-set sizes, ConvSent-dominated) against tasks drawn in proportion to
      :attr:`balanced_weights` (default: the paper's balanced set, Fig. 4d), one pair per seed of
      :attr:`balance_seeds`; and the uniform mixture (the book's default) for each seed of :attr:`uniform_seeds`.

    Every mixture editor has the multi-task hyperparameters and :attr:`mixture_steps` steps (None: the multi-task
    budget). An editor whose training config another editor of chapter 2 already has is not trained twice; one that
    differs from a longer run only in its budget is that run's best editor at the budget (``keep_best_at``).
    """

    scaling_order: tuple[str, ...] = ("recent", "counterfact", "convsent")  # tasks added one at a time (Fig. 4c)
    scaling_seeds: tuple[int, ...] = (0,)
    dominant_weights: dict[str, float] | None = None  # None: PAPER_TRAIN_SIZES
    balanced_weights: dict[str, float] | None = None  # None: PAPER_BALANCED_SIZES
    balance_seeds: tuple[int, ...] = (0,)
    uniform_seeds: tuple[int, ...] | None = None  # seeds of the uniform arm (None: balance_seeds)
    mixture_steps: int | None = None  # steps of every mixture editor (None: the multi-task budget)

    def __post_init__(self):
        self.scaling_order = tuple(self.scaling_order)
        if not self.scaling_order or len(set(self.scaling_order)) != len(self.scaling_order):
            raise ValueError(f"MixtureConfig.scaling_order must name distinct tasks, got {self.scaling_order}")
        if self.uniform_seeds is None:
            self.uniform_seeds = self.balance_seeds
        for name in ("scaling_seeds", "balance_seeds", "uniform_seeds"):
            seeds = tuple(int(s) for s in getattr(self, name))
            if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
                raise ValueError(f"MixtureConfig.{name} must be distinct seeds >= 0, got {seeds}")
            setattr(self, name, seeds)
        for name in ("dominant_weights", "balanced_weights"):
            if getattr(self, name) is not None:
                setattr(self, name, {str(k): float(v) for k, v in getattr(self, name).items()})
        for name, weights in (("dominant_weights", self.weights()), ("balanced_weights", self.balanced())):
            if any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"MixtureConfig.{name} must be >= 0 and not all zero, got {weights}")
        if self.mixture_steps is not None and self.mixture_steps < 1:
            raise ValueError("MixtureConfig.mixture_steps must be >= 1 or None")

    def weights(self) -> dict[str, float]:
        """The ConvSent-dominated mixture's task weights."""
        return dict(self.dominant_weights if self.dominant_weights is not None else PAPER_TRAIN_SIZES)

    def balanced(self) -> dict[str, float]:
        """The balanced mixture's task weights."""
        return dict(self.balanced_weights if self.balanced_weights is not None else PAPER_BALANCED_SIZES)

    def check_tasks(self, train_tasks: Sequence[str]) -> None:
        """Every task named here must be a training task of the editors."""
        for what, tasks in (("scaling_order", self.scaling_order), ("dominant_weights", self.weights()),
                            ("balanced_weights", self.balanced())):
            unknown = [t for t in tasks if t not in train_tasks]
            if unknown:
                raise ValueError(f"MixtureConfig.{what} names task(s) {unknown} that are not training tasks "
                                 f"{list(train_tasks)}")
        for what, own, paper_sizes in (("dominant_weights", self.dominant_weights, PAPER_TRAIN_SIZES),
                                       ("balanced_weights", self.balanced_weights, PAPER_BALANCED_SIZES)):
            missing = [t for t in train_tasks if t not in paper_sizes]
            if own is None and missing:
                raise ValueError(f"No paper training-set size for {missing}: give {what}")


PATH_FIELDS = ("run_dir", "data_dir", "editors_dir", "descriptions_file", "instructions_file")


def config_table(config: "ExperimentConfig | MethodConfig | SearchConfig") -> "pd.DataFrame":
    """A configuration as a two-column table for the book (nested fields as ``model/name``; paths as
    :func:`~instructedit_utils.paths.display_path` shows them; the editor config of an experiment left out)."""
    import pandas as pd

    rows = []
    for key, value in config.to_dict().items():
        if key in ("method", "gradients", "mixtures", "search"):
            continue
        if isinstance(value, dict) and key == "model":
            rows += [(f"model/{k}", v) for k, v in value.items()]
            continue
        if key in PATH_FIELDS and value is not None:
            value = display_path(value)
        rows.append((key, value))
    return pd.DataFrame([{"parameter": k, "value": "—" if v is None else
                          ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)} for k, v in rows]
                        ).set_index("parameter")


METHODS = ("mend", "ke")  # trained editors (MEND family, KE); other methods register in instructedit_utils.baselines


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
    grad_accumulation: int = 1  # edits per optimizer step
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
    # --- KE (De Cao et al., 2021), the third trained editor: see instructedit_utils.ke ---
    ke_hidden: int = 128  # width of KE's condition encoder (bi-LSTM) and of each conditioner's hidden layer
    ke_edit_lr: float = 1e-2  # KE's initial step size on the raw (unnormalised) gradient
    kl_margin: float = 0.05  # KE's constraint: locality KL <= kl_margin (Lagrange multiplier starts at c_loc)
    lagrange_lr: float = 0.1  # step of the multiplier's dual ascent per training edit
    log_every: int = 10
    seed: int = 0

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


GENERATORS = ("local", "endpoint")
SEARCH_METRICS = ("edit/acc", "gen/acc", "loc/acc", "port/acc", "sentiment/success")


@dataclass
class SearchConfig:
    """Chapter 5's instruction search (paper Fig. 2): a generator proposes descriptions, filters reject some with a
    reason, a trial editor scores the rest on a fixed validation sample, the best ``pool_size`` per task form the
    pool; rounds stop when the pool's score stops improving. See :mod:`instructedit_utils.instruction_search`.

    The endpoint's base URL and model may also come from ``$INSTRUCTEDIT_LLM_BASE_URL`` and
    ``$INSTRUCTEDIT_LLM_MODEL``; its key only from ``$INSTRUCTEDIT_LLM_API_KEY`` (or ``$OPENAI_API_KEY``), so that
    it never lands in a run folder.
    """

    search_tasks: tuple[str, ...] = ("counterfact", "recent", "convsent")  # tasks whose descriptions are searched
    generator: str = "local"  # "local": the embedded chat model; "endpoint": an OpenAI-compatible chat endpoint
    generator_model: str | None = None  # local: a model preset (None: the experiment's); endpoint: its model name
    endpoint_url: str | None = None  # base URL, e.g. http://127.0.0.1:8000/v1 (None: $INSTRUCTEDIT_LLM_BASE_URL)
    endpoint_timeout: float = 60.0  # seconds per request
    endpoint_retries: int = 4  # further tries after a timeout, a refused connection, HTTP 429 or 5xx
    endpoint_backoff: float = 2.0  # seconds before the first retry, doubled each time (or the server's Retry-After)
    samples_per_round: int = 6  # generator replies per task and round (a reply may hold several descriptions)
    gen_max_new_tokens: int = 48
    temperature: float = 0.9
    top_p: float = 0.95
    example_records: int = 2  # training records shown in the prompt
    feedback: int = 3  # best and worst scored descriptions shown in the prompt (each)
    min_words: int = 6
    max_words: int = 40
    max_similarity: float = 0.6  # word-bigram Jaccard similarity above which a candidate is a near-duplicate
    leak_ngram: int = 5  # a run of this many words shared with one test record is a leak
    val_records: int = 8  # validation records per task each candidate edits
    score_weights: dict[str, float] | None = None  # metric -> weight of the score (None: Rel, Gen, Loc equally)
    pool_size: int = 9  # seen descriptions kept per task (the hand-written held-out one stays last)
    max_rounds: int = 3  # generation rounds after round 0 (the hand-written pool scored)
    search_patience: int = 1  # rounds without improvement before stopping
    min_delta: float = 0.005  # improvement of the stopping statistic that counts
    stop_on: str = "mean"  # the statistic: the pool's "mean" score or its "best" description's, averaged over tasks
    finetune_steps: int = 0  # > 0: fine-tune the trial editor on the chosen pool for that many steps

    def __post_init__(self):
        self.search_tasks = tuple(self.search_tasks)
        if not self.search_tasks or len(set(self.search_tasks)) != len(self.search_tasks):
            raise ValueError(f"SearchConfig.search_tasks must name distinct tasks, got {self.search_tasks}")
        for task in self.search_tasks:
            if "val" not in task_spec(task).splits:
                raise ValueError(f"SearchConfig.search_tasks: {task!r} has no val split to score candidates on")
        if self.generator not in GENERATORS:
            raise ValueError(f"SearchConfig.generator must be one of {GENERATORS}, got {self.generator!r}")
        for name in ("samples_per_round", "gen_max_new_tokens", "example_records", "min_words", "leak_ngram",
                     "val_records", "pool_size", "max_rounds", "search_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchConfig.{name} must be >= 1")
        for name in ("feedback", "endpoint_retries", "finetune_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"SearchConfig.{name} must be >= 0")
        if self.max_words < self.min_words:
            raise ValueError(f"SearchConfig.max_words ({self.max_words}) < min_words ({self.min_words})")
        if not 0 < self.max_similarity <= 1:
            raise ValueError("SearchConfig.max_similarity must be in (0, 1]")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError("SearchConfig.temperature must be > 0 and top_p in (0, 1]")
        if not (self.endpoint_timeout > 0 and self.endpoint_backoff >= 0 and self.min_delta >= 0):
            raise ValueError("SearchConfig.endpoint_timeout must be > 0, endpoint_backoff and min_delta >= 0")
        if self.stop_on not in ("mean", "best"):
            raise ValueError(f"SearchConfig.stop_on must be 'mean' or 'best', got {self.stop_on!r}")
        weights = self.weights()
        unknown = set(weights) - set(SEARCH_METRICS)
        if unknown or any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"SearchConfig.score_weights must map metrics of {SEARCH_METRICS} to weights >= 0, "
                             f"not all 0; got {weights}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def weights(self) -> dict[str, float]:
        """The score's weights, summing to 1."""
        raw = {str(k): float(v) for k, v in (self.score_weights or {"edit/acc": 1, "gen/acc": 1, "loc/acc": 1}).items()}
        total = sum(raw.values())
        return {k: v / total for k, v in raw.items()} if total > 0 else raw
