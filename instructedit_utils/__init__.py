"""instructedit_utils: the package behind the InstructEdit book.

Subpackages by role, each importing only the layers below it (``tests/unit/test_layers.py`` runs import-linter's
contracts; the file map is ``instructedit_utils/README.md``), from the bottom:

:mod:`~instructedit_utils.util` (paths, run folders, torch settings) →
:mod:`~instructedit_utils.data` (records, tasks, instructions, the paper's numbers) and
:mod:`~instructedit_utils.models` (loading, metrics, split forward passes, edit targets, weight deltas) →
:mod:`~instructedit_utils.config` (one typed config per axis, notebook parameters) →
:mod:`~instructedit_utils.methods` (the registry, MEND, KE, FT-L, CaliNet, GRACE) →
:mod:`~instructedit_utils.evaluation` (the harness, scoring, summaries, editing areas) →
:mod:`~instructedit_utils.training` (the trainer, workers, the mixture plan) →
:mod:`~instructedit_utils.experiments` (the paper's settings, deployment) →
:mod:`~instructedit_utils.analysis` (verdicts, tables, findings, plots) →
:mod:`~instructedit_utils.search` (instruction search) → :mod:`~instructedit_utils.publish` (runner, sweeps, results).

This face exposes what a notebook needs first; everything else is imported from its subpackage.
"""
from __future__ import annotations

__version__ = "0.1.0"

import warnings  # noqa: E402

# tqdm.auto (imported by transformers) warns in kernels without ipywidgets; progress bars fall back to text anyway.
warnings.filterwarnings("ignore", message="IProgress not found")

from .config.experiment import ExperimentConfig, ModelConfig
from .config.method import MethodConfig
from .data.tasks import TASKS, load_split, load_task
from .data.records import EditRecord, Probe
from .data.instructions import EditRequest, InstructionPool, default_pool, make_edit_request
from .models.loading import load_model
from .util.runtime import setup_torch

__all__ = ["ExperimentConfig", "MethodConfig", "ModelConfig", "TASKS", "EditRecord", "EditRequest", "InstructionPool",
           "Probe", "default_pool", "load_split", "load_task", "make_edit_request", "load_model", "setup_torch",
           "__version__"]
