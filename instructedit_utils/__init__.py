"""instructedit_utils: the package behind the InstructEdit book.

Modules follow the method's steps: :mod:`~instructedit_utils.records` (the record schema, file layouts and parsers),
:mod:`~instructedit_utils.data` (task files and splits),
:mod:`~instructedit_utils.instructions` (instruction construction), :mod:`~instructedit_utils.models` (model
loading, edit targets), :mod:`~instructedit_utils.metrics` and :mod:`~instructedit_utils.evaluation` (the paper's
metrics), :mod:`~instructedit_utils.plotting`, :mod:`~instructedit_utils.runs` (run folders),
:mod:`~instructedit_utils.parameters` (one source of parameters: notebooks' parameters cells, profiles, command lines)
and :mod:`~instructedit_utils.runner` (papermill and the book build).
"""
from __future__ import annotations

__version__ = "0.1.0"

import warnings  # noqa: E402

# tqdm.auto (imported by transformers) warns in kernels without ipywidgets; progress bars fall back to text anyway.
warnings.filterwarnings("ignore", message="IProgress not found")

from .config import ExperimentConfig, ModelConfig  # noqa: E402
from .data import TASKS, EditRecord, Probe, load_split, load_task  # noqa: E402
from .instructions import EditRequest, InstructionPool, default_pool, make_edit_request  # noqa: E402


def setup_torch(num_threads: int | None = None, seed: int = 0) -> None:
    """Set torch's intra-op threads (explicitly: contention on 2 shared cores hurts) and all seeds."""
    import random

    import numpy as np
    import torch

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


__all__ = ["ExperimentConfig", "ModelConfig", "TASKS", "EditRecord", "Probe", "load_split", "load_task",
           "EditRequest", "InstructionPool", "default_pool", "make_edit_request", "setup_torch", "__version__"]
