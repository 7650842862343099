"""Layer 6 (training): one MEND-family trainer for every editor — one training edit (:mod:`.step`), validation and
checkpoint selection (:mod:`.validation`), the run with checkpoints, resume and early stopping (:mod:`.trainer`),
several editors in worker processes (:mod:`.pool`), chapter 7's mixture plan and every editor chapter 2 trains
(:mod:`.plan`) and ``instructedit-train`` (:mod:`.cli`)."""
from .plan import trained_plan, training_configs
from .pool import evaluate_editor, live_edits, train_editors, worker_threads
from .step import initial_editor
from .trainer import TrainResult, budget_dir, is_trained, read_log, train_editor
from .validation import validation_metrics, validation_requests

__all__ = ["trained_plan", "training_configs", "evaluate_editor", "live_edits", "train_editors", "worker_threads",
           "initial_editor", "TrainResult", "budget_dir", "is_trained", "read_log", "train_editor",
           "validation_metrics", "validation_requests"]
