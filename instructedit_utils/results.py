"""The book's results in one place: read the executed chapters' run folders and check the paper's claims.

Nothing here computes an edit or trains an editor: every number comes from the files the chapters wrote
(``summary.csv``, case files, ``separation.csv``, chapter 7's paired differences) in the run folders next to this
page's own (``runs/<profile>/<chapter>/``). A chapter that was not run gives *not measured*.

:func:`claims` checks each claim of the paper the book tests and returns a :class:`Claim` with a verdict computed
from 95% intervals — *reproduced*, *reverse holds* (the interval is on the other side of 0), *not resolved* (it
contains 0) or *not measured* — and the numbers behind it; :func:`claims_markdown` writes them as the table the intro
includes; :func:`costs` reads what each chapter's last execution cost (``cost.json``, written by the runner).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from .config import ExperimentConfig
from .evaluation import paired_difference
from .runner import COST_FILE, PUBLISH_DIR
from .runs import RunFolder

CHAPTERS = {
    "01_instruction_construction": "Chapter 1",
    "02_editor_training": "Chapter 2",
    "03_multitask_and_holdout": "Chapter 3",
    "04_unseen_instructions": "Chapter 4",
    "06_gradient_analysis": "Chapter 6",
    "07_task_scaling_and_balance": "Chapter 7",
}
REPRODUCED, REVERSED, UNRESOLVED, MISSING = "reproduced", "reverse holds", "not resolved", "not measured"
MIXED = "mixed"  # parts of one claim (e.g. Table 1's editors) disagree


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, where the book tests it, and what this build's numbers say."""

    key: str
    claim: str
    source: str  # where the paper makes it
    chapter: str  # notebook stem of the chapter that shows it
    verdict: str
    evidence: str


def chapter_dir(cfg: ExperimentConfig, notebook: str) -> Path:
    """The run folder of ``notebook`` beside this page's own (same profile)."""
    return Path(cfg.run_dir).parent / notebook


def read_table(cfg: ExperimentConfig, notebook: str, name: str) -> pd.DataFrame | None:
    """``<chapter run folder>/<name>`` as a table (None when the chapter did not write it)."""
    path = chapter_dir(cfg, notebook) / name
    return pd.read_csv(path, index_col=0) if path.is_file() else None


def read_cases(cfg: ExperimentConfig, notebook: str, setting: str, names: Sequence[str]) -> list[dict[str, Any]]:
    """The case records of ``cases_<name>.jsonl`` in ``<chapter>/<setting>/`` (missing files give none)."""
    folder = chapter_dir(cfg, notebook) / setting
    if not folder.is_dir():
        return []
    run = RunFolder(folder)
    return [row for name in names for row in run.read_cases(f"cases_{name}")]


#: the words of :func:`instructedit_utils.mixtures.verdict` as this page's verdicts
FROM_FINDING = {"holds": REPRODUCED, "does not hold": REVERSED, "inconclusive": UNRESOLVED}


def _word(low: float, high: float) -> str:
    from .mixtures import interval_word

    return FROM_FINDING[interval_word(low, high)]


def _points(d) -> str:
    return f"{100 * d['diff']:+.1f} points [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}], n={int(d['n'])}"


def _pooled(cases: list[dict[str, Any]], metric: str, column: str, a: str, b: str, seed: int):
    if not cases:
        return None
    rows = [dict(c, task="all") for c in cases]
    d = paired_difference(rows, metric, column, a, b, seed=seed)
    return None if d.empty else d.iloc[0]


def _instructedit_over_mend(cfg: ExperimentConfig, setting: str) -> tuple[str, str]:
    cases = read_cases(cfg, "03_multitask_and_holdout", setting, ["mend", "instructedit"])
    d = _pooled(cases, "edit/acc", "method", "mend", "instructedit", cfg.seed)
    if d is None:
        return MISSING, "chapter 3 has no MEND/InstructEdit cases for this setting"
    return _word(d["ci_low"], d["ci_high"]), f"InstructEdit − MEND, Reliability: {_points(d)} (paired, same records)"


def claim_multitask(cfg: ExperimentConfig) -> Claim:
    verdict, evidence = _instructedit_over_mend(cfg, "multitask")
    return Claim("multitask", "One InstructEdit editor edits the training tasks more reliably than multi-task MEND",
                 "Table 3, abstract", "03_multitask_and_holdout", verdict, evidence + ", pooled over the tasks")


def claim_holdout(cfg: ExperimentConfig) -> Claim:
    verdict, evidence = _instructedit_over_mend(cfg, "holdout")
    return Claim("holdout", "InstructEdit edits a task it never saw (ZsRE) more reliably than MEND",
                 "Table 3 (hold-out)", "03_multitask_and_holdout", verdict, evidence)


def claim_unseen(cfg: ExperimentConfig) -> Claim:
    """Fig. 3: a held-out description edits about as well as seen ones — held-out minus seen Reliability, per task;
    reproduced when no task's interval lies below 0 (the held-out wording loses nothing resolvable)."""
    cases = [dict(c, condition=cond) for cond in ("seen", "held_out")
             for c in read_cases(cfg, "04_unseen_instructions", "unseen", [f"instructedit_{cond}"])]
    d = paired_difference(cases, "edit/acc", "condition", "seen", "held_out", seed=cfg.seed) if cases else None
    if d is None or d.empty:
        return Claim("unseen", "Unseen instructions edit about as well as seen ones", "Fig. 3",
                     "04_unseen_instructions", MISSING, "chapter 4 has no seen/held-out cases")
    below = d[d["ci_high"] < 0]
    verdict = REPRODUCED if below.empty else REVERSED
    evidence = "held-out − seen description, Reliability: " + "; ".join(
        f"{r['task']} {_points(r)}" for _, r in d.iterrows())
    return Claim("unseen", "Unseen instructions edit about as well as seen ones", "Fig. 3",
                 "04_unseen_instructions", verdict, evidence + (f" (below 0 on {', '.join(below['task'])})"
                                                                if len(below) else ""))


def claim_transfer(cfg: ExperimentConfig) -> Claim:
    """Table 1: a single-task editor edits its own task better than the others — per editor, reproduced when its
    own task's Reliability interval lies above every other task's, reversed when below every one; *mixed* when the
    editors disagree."""
    s = read_table(cfg, "04_unseen_instructions", "transfer/summary.csv")
    text = "A single-task editor edits its own task far better than other tasks"
    if s is None:
        return Claim("transfer", text, "Table 1", "04_unseen_instructions", MISSING, "chapter 4 wrote no transfer")
    s = s[s["metric"] == "edit/acc"]
    results, parts = [], []
    for train, rows in s.groupby("train_task", sort=False):
        own = rows[rows["task"] == train]
        other = rows[rows["task"] != train]
        if own.empty or other.empty:
            continue
        own = own.iloc[0]
        word = _word(own["ci_low"] - other["ci_high"].max(), own["ci_high"] - other["ci_low"].min())
        results.append(word)
        parts.append(f"{train} editor: {100 * own['mean']:.1f}% on its task vs {100 * other['mean'].mean():.1f}% "
                     f"on the others (mean), {word}")
    verdict = MISSING if not results else results[0] if len(set(results)) == 1 else MIXED
    return Claim("transfer", text, "Table 1", "04_unseen_instructions", verdict, "; ".join(parts) or "no editors")


def claim_separation(cfg: ExperimentConfig) -> Claim:
    """Finding 1: instructions set the tasks' editing areas apart — InstructEdit's silhouette (training tasks)
    against MEND's, with intervals."""
    text = "With instructions, the editing areas of different tasks lie further apart (Finding 1)"
    sep = read_table(cfg, "06_gradient_analysis", "separation.csv")
    if sep is None:
        return Claim("separation", text, "Fig. 4a", "06_gradient_analysis", MISSING, "chapter 6 wrote no numbers")
    part = sep[(sep["metric"] == "silhouette") & (sep["scope"] == "training tasks")].set_index("group")
    if not {"instructedit", "mend"} <= set(part.index):
        return Claim("separation", text, "Fig. 4a", "06_gradient_analysis", MISSING, "no InstructEdit/MEND pair")
    ie, me = part.loc["instructedit"], part.loc["mend"]
    verdict = _word(ie["ci_low"] - me["ci_high"], ie["ci_high"] - me["ci_low"])
    return Claim("separation", text, "Fig. 4a", "06_gradient_analysis", verdict,
                 f"silhouette InstructEdit {ie['value']:.3f} [{ie['ci_low']:.3f}, {ie['ci_high']:.3f}] vs MEND "
                 f"{me['value']:.3f} [{me['ci_low']:.3f}, {me['ci_high']:.3f}] (label-shuffled ≤ "
                 f"{max(ie['perm_high'], me['perm_high']):.3f})")


def _mixture_claim(cfg: ExperimentConfig, key: str, text: str, file: str, method: str | None) -> Claim:
    from .mixtures import verdict as mixture_verdict

    diffs = read_table(cfg, "07_task_scaling_and_balance", file)
    holdout = (cfg.holdout_tasks or ("zsre",))[0]
    if diffs is None:
        return Claim(key, text, "Fig. 4c-d", "07_task_scaling_and_balance", MISSING, "chapter 7 wrote no numbers")
    v = mixture_verdict(diffs, holdout, "edit/acc", method=method)
    word = FROM_FINDING.get(v["verdict"], MISSING)
    return Claim(key, text, "Fig. 4c-d", "07_task_scaling_and_balance", word, f"{holdout} Reliability, {v['text']}")


def claim_scaling(cfg: ExperimentConfig) -> Claim:
    return _mixture_claim(cfg, "scaling", "Training InstructEdit on more tasks improves hold-out editing (Finding 2)",
                          "scaling_differences.csv", "instructedit")


def claim_balance(cfg: ExperimentConfig) -> Claim:
    return _mixture_claim(cfg, "balance", "Balanced task data edits the hold-out task better than ConvSent-dominated "
                          "data (Finding 3)", "balance_differences.csv", None)


CLAIMS: tuple[Callable[[ExperimentConfig], Claim], ...] = (
    claim_multitask, claim_holdout, claim_unseen, claim_transfer, claim_separation, claim_scaling, claim_balance)


def claims(cfg: ExperimentConfig) -> list[Claim]:
    """Every claim the book tests, checked on this profile's run folders."""
    return [check(cfg) for check in CLAIMS]


def _when(started: str | None) -> str:
    """``2026-11-29T10:11:12+0000`` as ``2026-11-29 10:11``."""
    return started[:16].replace("T", " ") if started else "—"


def provenance(cfg: ExperimentConfig, notebooks: Sequence[str] = tuple(CHAPTERS)) -> pd.DataFrame:
    """Which model, profile and commit produced each chapter's run folder (its ``params.json`` and ``cost.json``)."""
    rows = []
    for nb in notebooks:
        folder = chapter_dir(cfg, nb)
        params = json.loads((folder / "params.json").read_text()) if (folder / "params.json").is_file() else None
        cost = json.loads((folder / COST_FILE).read_text()) if (folder / COST_FILE).is_file() else {}
        rows.append({"chapter": CHAPTERS.get(nb, nb), "notebook": nb,
                     "model": (params or {}).get("model", {}).get("name", "not run"),
                     "profile": (params or {}).get("profile", "—"),
                     "executed": _when(cost.get("started")),
                     "commit": cost.get("commit") or "—"})
    out = pd.DataFrame(rows).set_index("chapter")
    out.index.name = None
    return out


def publish_claims(cfg: ExperimentConfig, found: Sequence[Claim], model: str) -> Path:
    """Write the claims table for the intro (``<run_dir>/publish/claims.md``; the runner copies it beside the
    executed notebooks, where ``book/intro.md`` includes it)."""
    path = Path(cfg.run_dir) / PUBLISH_DIR / "claims.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(claims_markdown(found, "executed/{}.ipynb", cfg.profile, model))
    return path


def claims_frame(found: Sequence[Claim]) -> pd.DataFrame:
    return pd.DataFrame([asdict(c) for c in found])


def claims_markdown(found: Sequence[Claim], link: str = "{}.ipynb", profile: str = "", model: str = "") -> str:
    """The claims as a markdown table, each linked to its chapter (``link`` formatted with the notebook's stem:
    ``executed/{}.ipynb`` from a page beside ``executed/``, ``{}.ipynb`` from an executed notebook)."""
    head = (f"Computed from this build's run folders (profile `{profile}`, model `{model}`); a verdict is *reproduced* "
            "when the 95% interval of the difference lies on the paper's side of 0, *reverse holds* when it lies on "
            "the other side, *not resolved* when it contains 0, *mixed* when parts of the claim disagree.\n\n"
            ) if profile else ""
    lines = ["| claim | paper | verdict | evidence | shown in |", "|---|---|---|---|---|"]
    for c in found:
        where = f"[{CHAPTERS.get(c.chapter, c.chapter)}]({link.format(c.chapter)})"
        lines.append(f"| {c.claim} | {c.source} | **{c.verdict}** | {c.evidence} | {where} |")
    return head + "\n".join(lines) + "\n"


def cost_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The runner's cost records (:func:`instructedit_utils.runner.read_costs`) as the cost page shows them."""
    rows = [{"notebook": r["notebook"], "wall time (min)": round(r["wall_s"] / 60, 1), "profile": r.get("profile"),
             "model": r.get("model") or "—", "device": r.get("device"),
             "processes × threads": f"{r.get('workers', 1)} × {r.get('threads_per_worker')}",
             "CPU": f"{r.get('cpu')} ({r.get('cores')} cores)", "started": _when(r.get("started")),
             "commit": r.get("commit") or "?",
             "run folder": "resumed" if r.get("resumed") else "fresh" if "resumed" in r else "?"} for r in records]
    return pd.DataFrame(rows)


def cost_summary(table: pd.DataFrame, profile: str) -> str:
    """The cost page's summary, from :func:`cost_table`: the total, the longest notebook and whether the total is
    what a build from scratch costs (every notebook started from an empty run folder) or less (some resumed)."""
    if not len(table):
        return "Nothing to sum up: no notebook has been executed by the runner with this profile yet."
    slowest = table.loc[table["wall time (min)"].idxmax()]
    text = (f"{len(table)} notebooks took **{table['wall time (min)'].sum():.1f} min** of wall time in all with the "
            f"`{profile}` profile on {table['CPU'].iloc[0]}; the longest is {slowest['notebook']} "
            f"({slowest['wall time (min)']:.1f} min).")
    state = table["run folder"]
    if (state == "fresh").all():
        return text + " Every one started from an empty run folder: this is what a build from scratch costs here."
    resumed, unknown = table[state == "resumed"], table[state == "?"]
    if len(resumed):
        text += (f" {len(resumed)} resumed from results already in their run folders "
                 f"({', '.join(resumed['notebook'])}): their times are what was left to do.")
    if len(unknown):
        text += (f" For {len(unknown)} ({', '.join(unknown['notebook'])}) the record does not say whether the run "
                 "folder was empty (written before the runner recorded it).")
    return text + " So the total is not necessarily what a build from scratch costs."
