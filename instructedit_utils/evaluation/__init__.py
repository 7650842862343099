"""Layer 5 (evaluation): the harness (:mod:`.harness`: each edit alone, scored and taken back, resumable case files
with their settings), the scoring of one model on requests (:mod:`.scoring`: the metrics of every case), the
requests (:mod:`.requests`), summaries and paired differences (:mod:`.summaries`) and the editing areas of an editor
(:mod:`.gradients`)."""
from .harness import evaluate_method, evaluate_unedited
from .requests import build_requests, task_requests
from .scoring import score_requests
from .summaries import (METRIC_LABELS, difference_table, is_fraction, metric_label, paired_difference, summarize,
                        wide_table)

__all__ = ["evaluate_method", "evaluate_unedited", "build_requests", "task_requests", "score_requests",
           "METRIC_LABELS", "difference_table", "is_fraction", "metric_label", "paired_difference", "summarize",
           "wide_table"]
