"""Typed configuration, one dataclass per axis, validated on construction.

* :class:`ModelConfig` — which model, where, which layers are edited.
* :class:`ExperimentConfig` — data, sampling, evaluation settings and the run folder.

Notebooks build these from their ``parameters`` cell; :meth:`ExperimentConfig.to_dict` is what lands in
``params.json`` of the run folder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .data import TASKS, task_spec
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
    sentiment_responses: int = 4  # responses per sentiment scored for ConvSent success
    length_sample_per_task: int | None = 300  # records per task for token-length statistics

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        self.tasks = tuple(self.tasks)
        for task in self.tasks:
            spec = task_spec(task)
            if self.split not in spec.splits:
                raise ValueError(f"Task {task!r} has no split {self.split!r}")
        if self.sample_per_task is not None and self.sample_per_task < 1:
            raise ValueError("sample_per_task must be >= 1 or None")
        for name in ("batch_size", "max_rephrases", "max_probes", "max_aliases", "sentiment_responses"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.fluency_max_new_tokens < 0:
            raise ValueError("fluency_max_new_tokens must be >= 0")

    @classmethod
    def from_parameters(cls, *, model_name: str = "smollm2-135m", device: str = "cpu", dtype: str = "float32",
                        num_threads: int | None = 1, edit_layers=None, **fields) -> "ExperimentConfig":
        """Build from a notebook's flat ``parameters`` cell: ``model_name``/``device``/``dtype``/``num_threads``/
        ``edit_layers`` go to :class:`ModelConfig`, the rest to this class (unknown names are an error)."""
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"Unknown experiment parameter(s): {sorted(unknown)}")
        model = ModelConfig(name=model_name, device=device, dtype=dtype, num_threads=num_threads,
                            edit_layers=edit_layers)
        return cls(model=model, **fields)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def score_kwargs(self) -> dict[str, int]:
        """Keyword arguments for :func:`instructedit_utils.evaluation.score_requests`."""
        return dict(batch_size=self.batch_size, max_rephrases=self.max_rephrases, max_probes=self.max_probes,
                    max_aliases=self.max_aliases, sentiment_responses=self.sentiment_responses,
                    fluency_max_new_tokens=self.fluency_max_new_tokens)
