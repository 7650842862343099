"""Layer 2 (data): the task records (:mod:`.records`: schema, file layouts, parsers), the tasks and their splits
(:mod:`.tasks`), instructions and edit requests (:mod:`.instructions`) and the paper's own numbers
(:mod:`.paper`). Imports only :mod:`instructedit_utils.util`."""
from . import paper
from .instructions import (EditRequest, InstructionPool, default_pool, load_pool, make_edit_request,
                           read_descriptions)
from .records import EditRecord, Probe, RecordError
from .tasks import TASKS, TRAIN_TASKS, load_split, load_task, overview_table, sample, task_spec

__all__ = ["paper", "EditRequest", "InstructionPool", "default_pool", "load_pool", "make_edit_request",
           "read_descriptions", "EditRecord", "Probe", "RecordError", "TASKS", "TRAIN_TASKS", "load_split", "load_task",
           "overview_table", "sample", "task_spec"]
