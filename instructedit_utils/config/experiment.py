"""An experiment's configuration: :class:`ModelConfig` (which model, where, which layers are edited) and
:class:`ExperimentConfig` (data, sampling, evaluation settings, the run folder, and the other axes' configs:
:mod:`.method`, :mod:`.options`, :mod:`.studies`), validated on construction.

Notebooks build these from their ``parameters`` cell; :meth:`ExperimentConfig.to_dict` is what lands in
``params.json`` of the run folder.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data.tasks import TASKS, data_fingerprint, task_spec
from ..data.instructions import load_pool, read_descriptions
from ..util.paths import display_path, project_path
from ..models.loading import MODEL_PRESETS, check_lower_dtype, load_model
from .method import MethodConfig
from .options import OPTIONS, make_config
from .studies import GradientConfig, MixtureConfig, SearchConfig, SequenceConfig
import pandas as pd

PROFILES = ("ci", "cpu", "gpu")
EDITORS_NOTEBOOK = "02_editor_training"  # the chapter that trains every editor the others load


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    device: str = "cpu"
    dtype: str = "float32"
    num_threads: int | None = 1  # torch intra-op threads on CPU (None: leave torch's default)
    edit_layers: tuple[int, ...] | None = None  # None: the preset's layers (last three for unknown models)
    # precision of the frozen blocks below the edited ones in the split forward ("bfloat16": autocast there only;
    # models.loading.set_lower_dtype); part of every case file's settings and of every editor's training config
    lower_dtype: str = "float32"

    def __post_init__(self):
        if not self.name:
            raise ValueError("ModelConfig.name must be a preset or a Hugging Face id/path")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"ModelConfig.dtype must be float32/float16/bfloat16, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise ValueError(f"ModelConfig.device must be cpu, cuda[:N] or mps, got {self.device!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("ModelConfig.num_threads must be >= 1 or None")
        check_lower_dtype(self.lower_dtype, "ModelConfig.")
        if self.edit_layers is not None:
            self.edit_layers = tuple(int(x) for x in self.edit_layers)
        elif self.name in MODEL_PRESETS and MODEL_PRESETS[self.name].edit_layers:
            self.edit_layers = MODEL_PRESETS[self.name].edit_layers

    def load(self):
        """``(model, tokenizer)`` of this configuration (:func:`~instructedit_utils.models.loading.load_model` with
        its name, device, dtype and lower-block precision)."""
        return load_model(self.name, self.device, self.dtype, lower_dtype=self.lower_dtype)


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
    natural_max_new_tokens: int = 0  # > 0: success as the model says it (greedy to a natural stop, this many tokens)
    natural_rephrases: int | None = None  # rephrases answered freely (None: max_rephrases; 0: the edit prompt only)
    sentiment_responses: int = 4  # responses per sentiment scored for ConvSent success
    length_sample_per_task: int | None = 300  # records per task for token-length statistics
    live_edits: int = 3  # example edits shown before/after in the training chapter
    workers: int | None = 1  # processes working at once (editors trained, methods evaluated); None: one per core
    method: "MethodConfig | None" = None  # the editor and its training (notebooks that train/use editors)
    gradients: "GradientConfig | None" = None  # editing-gradient collection and analysis (chapter 6)
    mixtures: "MixtureConfig | None" = None  # chapter 7's training mixtures, trained in chapter 2's pool
    search: "SearchConfig | None" = None  # chapter 5's instruction search
    sequence: "SequenceConfig | None" = None  # sequential and batch editing (the chapter on edits that must last)
    # --- evaluation settings (notebooks 03/04, instructedit-eval) ---
    editors_dir: str | None = None  # trained editors (default: the sibling run folder 02_editor_training)
    methods: tuple[str, ...] = ("base", "mend", "instructedit")  # "base", methods of OPTIONS or editor folders
    method_options: dict[str, dict] | None = None  # options of the methods of OPTIONS (their config dataclasses)
    method_samples: dict[str, int] | None = None  # records per task for the named methods: the first n of each task's
    # sample, so that they pair with every other method's cases (None: sample_per_task for every method)
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
        if isinstance(self.sequence, dict):
            self.sequence = SequenceConfig(**self.sequence)
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
        if min(self.fluency_max_new_tokens, self.success_max_new_tokens, self.natural_max_new_tokens) < 0:
            raise ValueError("fluency_max_new_tokens, success_max_new_tokens and natural_max_new_tokens must be >= 0")
        if self.natural_rephrases is not None and self.natural_rephrases < 0:
            raise ValueError("natural_rephrases must be >= 0 or None (max_rephrases)")
        self.methods = tuple(self.methods)
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct names, got {self.methods}")
        for name in self.methods:
            if not name or "/" in name:
                raise ValueError(f"methods: {name!r} is not a plain name (an editor folder in editors_dir)")
        self.method_options = {k: dict(v) for k, v in (self.method_options or {}).items()} or None
        for name, options in (self.method_options or {}).items():
            if name not in OPTIONS:
                raise ValueError(f"method_options: {name!r} takes no options (methods with options: "
                                 f"{sorted(OPTIONS)})")
            make_config(OPTIONS[name], options, name)
        self.method_samples = {k: int(v) for k, v in (self.method_samples or {}).items()} or None
        for name, n in (self.method_samples or {}).items():
            if n < 1:
                raise ValueError(f"method_samples: {name!r} needs at least one record per task, got {n}")
        if self.descriptions_file is not None:
            self.descriptions()  # validated now, before any model loads
        if self.instructions_file is not None:
            self.instructions_file = str(project_path(self.instructions_file))
            self.pool()  # validated now
            if self.method is not None and self.method.instructions_file is None:  # editors train on it too
                self.method = dataclasses.replace(self.method, instructions_file=self.instructions_file)
        if self.method is not None and self.method.lower_dtype != self.model.lower_dtype:  # editors train with it
            self.method = dataclasses.replace(self.method, lower_dtype=self.model.lower_dtype)
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

    def editors_path(self) -> Path:
        """Where the trained editors are: :attr:`editors_dir`, or the sibling run folder of chapter 2
        (:data:`EDITORS_NOTEBOOK`)."""
        return Path(self.editors_dir) if self.editors_dir else Path(self.run_dir).parent / EDITORS_NOTEBOOK

    def n_workers(self) -> int:
        """Processes that may work at once: :attr:`workers`, or one per core when it is None. On a GPU, one."""
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
                        num_threads: int | None = 1, edit_layers=None, lower_dtype: str = "float32",
                        **fields) -> "ExperimentConfig":
        """Build from a notebook's flat ``parameters`` cell: ``model_name``/``device``/``dtype``/``num_threads``/
        ``edit_layers``/``lower_dtype`` go to :class:`ModelConfig`; names of :class:`MethodConfig` fields (and ``train_tasks`` for
        its ``tasks``) go to a :class:`MethodConfig` seeded with ``seed``; names of :class:`GradientConfig` fields
        to a :class:`GradientConfig`, of :class:`MixtureConfig` fields to a :class:`MixtureConfig`, of
        :class:`SearchConfig` fields to a :class:`SearchConfig`, of :class:`SequenceConfig` fields to a
        :class:`SequenceConfig`; the rest to this class. Without ``tasks``,
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
        sequence_names = {f.name for f in dataclasses.fields(SequenceConfig)} - own
        sequence_fields = {k: fields.pop(k) for k in list(fields) if k in sequence_names}
        if "train_tasks" in fields:
            method_fields["tasks"] = fields.pop("train_tasks")
            fields.setdefault("tasks", method_fields["tasks"])
        unknown = set(fields) - own
        if unknown:
            raise TypeError(f"Unknown experiment parameter(s): {sorted(unknown)}")
        model = ModelConfig(name=model_name, device=device, dtype=dtype, num_threads=num_threads,
                            edit_layers=edit_layers, lower_dtype=lower_dtype)
        if method_fields:
            fields["method"] = MethodConfig(seed=fields.get("seed", 0), **method_fields)
        if gradient_fields:
            fields["gradients"] = GradientConfig(**gradient_fields)
        if mixture_fields:
            fields["mixtures"] = MixtureConfig(**mixture_fields)
        if search_fields:
            fields["search"] = SearchConfig(**search_fields)
        if sequence_fields:
            fields["sequence"] = SequenceConfig(**sequence_fields)
        return cls(model=model, **fields)

    def editor_configs(self) -> dict[str, "MethodConfig"]:
        """The trained multi-task editors of the paper from :attr:`method`: ``instructedit`` (instructions on) and
        ``mend`` (instructions off), identical otherwise, and ``ke`` (KE's conditioned hypernetwork on the same
        mixture and budget, without instructions, raw gradients, its KL constraint; see
        :mod:`instructedit_utils.methods.ke`)."""
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def case_settings(self, tasks: Sequence[str], *, instructions: bool, description: int | str | None = None
                      ) -> dict[str, Any]:
        """What this configuration contributes to a case file's settings (see
        :func:`instructedit_utils.evaluation.case_settings`, which adds the scoring caps and a digest of the requests):
        model, tasks with their splits, sample, seed, instruction flags and the digests of the data files read."""
        splits = self.splits(tasks)
        return {"model": {"name": self.model.name, "dtype": self.model.dtype, "lower_dtype": self.model.lower_dtype,
                          "device": self.model.device.split(":")[0]},
                "splits": splits, "sample_per_task": self.sample_per_task, "seed": self.seed,
                "instructions": instructions, "instruct_locality": self.instruct_locality,
                "description": description, "data": data_fingerprint(splits, self.data_dir)}

    def score_kwargs(self) -> dict[str, int]:
        """Keyword arguments for :func:`instructedit_utils.evaluation.score_requests`."""
        return dict(batch_size=self.batch_size, max_rephrases=self.max_rephrases, max_probes=self.max_probes,
                    max_aliases=self.max_aliases, sentiment_responses=self.sentiment_responses,
                    fluency_max_new_tokens=self.fluency_max_new_tokens,
                    success_max_new_tokens=self.success_max_new_tokens,
                    natural_max_new_tokens=self.natural_max_new_tokens, natural_rephrases=self.natural_rephrases)


PATH_FIELDS = ("run_dir", "data_dir", "editors_dir", "descriptions_file", "instructions_file")


def config_table(config: "ExperimentConfig | MethodConfig | SearchConfig") -> "pd.DataFrame":
    """A configuration as a two-column table for the book (nested fields as ``model/name``; paths as
    :func:`~instructedit_utils.util.paths.display_path` shows them; the editor config of an experiment left out)."""
    rows = []
    for key, value in config.to_dict().items():
        if key in ("method", "gradients", "mixtures", "search", "sequence"):
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
