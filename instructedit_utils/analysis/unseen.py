"""The paper's Fig. 3 as an equivalence question: held-out − seen description on the same records, per task and
metric, with the 95% and the 90% intervals two one-sided tests need (:func:`unseen_differences`), and the verdict of
:func:`~instructedit_utils.analysis.verdicts.equivalence` per task (:func:`unseen_verdicts`). The cases come from
:func:`instructedit_utils.experiments.settings.unseen` (chapter 4)."""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from ..evaluation.summaries import paired_difference
from . import verdicts


def unseen_differences(cases: Sequence[dict[str, Any]], metrics: Sequence[str] = ("edit/acc", "gen/acc",
                       "loc/acc"), seed: int = 0) -> pd.DataFrame:
    """Fig. 3 as an equivalence question: held-out − seen description per task and metric on the same records,
    with the 95% interval (``ci_low``/``ci_high``) and the 90% interval (``ci90_low``/``ci90_high``) two one-sided
    tests need (:func:`~instructedit_utils.analysis.verdicts.equivalence`)."""
    frames = []
    for metric in metrics:
        d95 = paired_difference(cases, metric, "condition", "seen", "held_out", seed=seed)
        d90 = paired_difference(cases, metric, "condition", "seen", "held_out", seed=seed, alpha=0.10)
        if len(d95):
            frames.append(d95.assign(ci90_low=d90["ci_low"].to_numpy(), ci90_high=d90["ci_high"].to_numpy()))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def unseen_verdicts(diffs: pd.DataFrame, metrics: Sequence[str] = ("edit/acc",), margin: float | None = None
                    ) -> pd.DataFrame:
    """Per task and metric, the equivalence verdict of :func:`unseen_differences`' rows: word and evidence."""
    rows = []
    part = diffs[diffs["metric"].isin(metrics)] if len(diffs) else diffs
    for r in part.to_dict("records"):
        r90 = {**r, "ci_low": r["ci90_low"], "ci_high": r["ci90_high"]}
        v = verdicts.equivalence(r90, r, **({} if margin is None else {"margin": margin}))
        rows.append({"task": r["task"], "metric": r["metric"], "verdict": v.word, "evidence": v.evidence})
    return pd.DataFrame(rows, columns=["task", "metric", "verdict", "evidence"])
