"""Validation of an editor in training: the fixed validation edits (:func:`validation_requests`), each applied alone
and scored through the editor's split forward (:func:`edit_and_score`), and the score checkpoints are kept by
(:func:`validation_metrics`: each task's own metrics; ConvSent's Reliability is its sentiment edit success)."""
from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Any, Sequence

import numpy as np

from ..config.method import MethodConfig
from ..data.instructions import EditRequest, load_pool
from ..data.tasks import load_task, sample
from ..evaluation.requests import build_requests
from ..evaluation.scoring import score_requests
from ..methods.mend import MendEditor
from ..models.deltas import applied
from ..models.batches import score_split

def validation_requests(config: MethodConfig, data_dir=None) -> list[EditRequest]:
    """The fixed validation edits: ``val_records_per_task`` records of each task's val split, seeded descriptions."""
    out, pool = [], load_pool(config.instructions_file)
    for task in config.tasks:
        recs = sample(load_task(task, "val", data_dir), config.val_records_per_task, config.seed)
        out += build_requests(recs, instructions=config.use_instructions, seed=config.seed, pool=pool)
    return out


def edit_and_score(editor: MendEditor, model, tokenizer, requests: Sequence[EditRequest], reference: dict,
                   states: dict | None = None, **score_kwargs) -> list[dict[str, Any]]:
    """Apply each request's edit alone, score it (metrics of :func:`~instructedit_utils.evaluation.score_requests`,
    ``loc/acc`` against ``reference``), restore the model. The editor runs in eval mode (statistics frozen).

    Scoring goes through the editor's split forward (:func:`~instructedit_utils.models.forward.score_split`): the blocks
    below the edited ones run once per distinct prompt for all requests (kept for this call only), each edit replays
    the edited blocks. Measured on the cpu profile's 45 validation edits: 27.4 s instead of 56.7 s, the same
    metrics. With ``states`` (a dict the caller keeps, :meth:`~instructedit_utils.models.forward.SplitForward.
    reusing_states`) the lower states are kept across calls: the trainer's later validation rounds run no lower
    block, and score exactly as the first (the same requests in the same order, so the same batches)."""

    was_training = editor.training
    editor.eval()
    runner = editor.runner(model)
    headers = tuple({tuple(tokenizer(r.header)["input_ids"]) for r in requests if r.header})
    scorer = partial(score_split, runner, pad_id=tokenizer.pad_token_id,
                     batch_size=score_kwargs.get("batch_size", 16), headers=headers)
    cases = []
    try:
        with runner.reusing_states(states):
            for req in requests:
                result = editor.edit(model, tokenizer, req.prompt, req.target, header=req.header)
                with applied(model, result.deltas):
                    case, _ = score_requests(model, tokenizer, [req], reference=reference, scorer=scorer,
                                             **score_kwargs)
                cases.append({**case[0], "loss/pre_edit": result.loss})
    finally:
        editor.train(was_training)
    return cases


def validation_metrics(cases: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``val/<task>/<metric>``, task-averaged ``val/<metric>`` and ``val/score``: the mean over tasks of each task's
    own metrics, the ones the paper reports for it — Reliability, Generalization (when the task has rephrases and
    the paper reports it) and Locality. ConvSent's Reliability is its sentiment edit success and it has no
    Generalization (:mod:`~instructedit_utils.evaluation`), so checkpoint selection sees a sentiment edit learn even
    while the token accuracy of the one target response falls; that token accuracy is logged
    (``val/convsent/edit/token_acc``) but not scored."""
    by_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in cases:
        for k in SCORED + LOGGED:
            if c.get(k) is not None:
                by_task[c["task"]][k].append(c[k])
    out: dict[str, float] = {}
    scores = []
    for task, ms in by_task.items():
        means = {k: float(np.mean(v)) for k, v in ms.items()}
        out.update({f"val/{task}/{k}": v for k, v in means.items()})
        scores.append(float(np.mean([v for k, v in means.items() if k in SCORED])))
    for k in SCORED:
        vals = [out[f"val/{t}/{k}"] for t in by_task if f"val/{t}/{k}" in out]
        if vals:
            out[f"val/{k}"] = float(np.mean(vals))
    out["val/score"] = float(np.mean(scores)) if scores else float("nan")
    return out


#: the validation metrics :func:`validation_metrics` scores, and those it only logs
SCORED, LOGGED = ("edit/acc", "gen/acc", "loc/acc"), ("edit/token_acc",)
