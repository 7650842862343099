"""Layer 7 (experiments): the paper's evaluation settings on the one harness (:mod:`.settings`: multi-task,
hold-out, unseen instructions, transfer, editing gradients), chapter 7's mixture measurements (:mod:`.mixtures`),
chapter 8's sequential and batch editing (:mod:`.sequential`), edited models saved for use (:mod:`.deploy`) and
``instructedit-eval`` (:mod:`.cli`)."""
from .settings import (NOTEBOOKS, SETTINGS, SINGLE_TASK_GROUP, UNTRAINED_SUFFIX, GradientEditor, Job, edit_quality,
                       editor_done, editors_dir, evaluate_in_workers, evaluate_setting, gradient_editors, gradients,
                       holdout, load_methods, multitask, single_task_editors, single_task_names, transfer,
                       transfer_matrix, unseen)

__all__ = ["NOTEBOOKS", "SETTINGS", "SINGLE_TASK_GROUP", "UNTRAINED_SUFFIX", "GradientEditor", "Job", "edit_quality",
           "editor_done", "editors_dir", "evaluate_in_workers", "evaluate_setting", "gradient_editors", "gradients",
           "holdout", "load_methods", "multitask", "single_task_editors", "single_task_names", "transfer",
           "transfer_matrix", "unseen"]
