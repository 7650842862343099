"""The book's results in one place: read the executed chapters' run folders and check the paper's claims.

Nothing here computes an edit or trains an editor: every number comes from the files the chapters wrote
(``summary.csv``, case files, ``separation.csv``, chapter 4's Table 1 drops and Fig. 3 differences, chapter 7's
paired differences, chapter 2's ``done.json``) in the run folders next to this page's own
(``runs/<profile>/<chapter>/``), and every number of the paper from ``resources/paper.json``
(:mod:`~instructedit_utils.data.paper`). A chapter that was not run gives *not measured*.

:func:`claims` checks each claim of the paper the book tests and returns a :class:`Claim` with the paper's numbers,
ours, and a verdict decided by :mod:`~instructedit_utils.analysis.verdicts` — the one module every chapter's verdicts
come from; :func:`claims_markdown` writes them as the table the intro includes; :func:`costs` reads what each chapter's
last execution cost (``cost.json``, written by the runner).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ..data import paper

from ..analysis import verdicts
from ..config.experiment import ExperimentConfig
from ..evaluation.summaries import paired_difference
from .runner import COST_FILE, PUBLISH_DIR
from ..util.runs import RunFolder
from ..analysis.findings import verdict as mixture_verdict
from ..analysis.separation import control_finding
from ..analysis.table1 import table1_verdicts
from ..analysis.table3 import task_average_difference
from ..analysis.unseen import unseen_verdicts

CHAPTERS = {
    "01_instruction_construction": "Chapter 1",
    "02_editor_training": "Chapter 2",
    "03_multitask_and_holdout": "Chapter 3",
    "04_unseen_instructions": "Chapter 4",
    "06_gradient_analysis": "Chapter 6",
    "07_task_scaling_and_balance": "Chapter 7",
    "08_sequential_editing": "Chapter 8",
}
SEQUENTIAL_NOTEBOOK = "08_sequential_editing"
SEQUENTIAL_VERDICTS = "verdicts.csv"  # chapter 8's verdicts (analysis.sequential.verdict_table), beyond the paper
REPRODUCED, REVERSED, UNRESOLVED, MISSING = (verdicts.REPRODUCED, verdicts.REVERSED, verdicts.UNRESOLVED,
                                             verdicts.MISSING)
MIXED, UNTRAINED, EQUIVALENT, DIFFERENT = verdicts.MIXED, verdicts.UNTRAINED, verdicts.EQUIVALENT, verdicts.DIFFERENT
EDITORS_NOTEBOOK = "02_editor_training"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, where the book tests it, the paper's numbers and what this build's numbers say."""

    key: str
    claim: str
    source: str  # where the paper makes it
    chapter: str  # notebook stem of the chapter that shows it
    verdict: str
    evidence: str
    paper: str = ""  # the paper's own numbers behind the claim (from resources/paper.json)


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


def done(cfg: ExperimentConfig, names: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Chapter 2's ``done.json`` of each editor (None where there is none): whether it trained."""
    out = {}
    for name in names:
        path = chapter_dir(cfg, EDITORS_NOTEBOOK) / name / "done.json"
        out[name] = json.loads(path.read_text()) if path.is_file() else None
    return out


def _pooled(cases: list[dict[str, Any]], metric: str, column: str, a: str, b: str, seed: int):
    if not cases:
        return None
    rows = [dict(c, task="all") for c in cases]
    d = paired_difference(rows, metric, column, a, b, seed=seed)
    return None if d.empty else d.iloc[0]


def _gated(cfg: ExperimentConfig, v: verdicts.Verdict, editors: Sequence[str]) -> verdicts.Verdict:
    """``v``, or *not measured (editor did not train)* when a trained editor behind it kept its step 0. Without
    chapter 2's run folder nothing is gated (the chapter that measured ``v`` loaded the editors)."""
    found = done(cfg, editors)
    return v if all(d is None for d in found.values()) else verdicts.gate(v, found)


def _paper_gain(tasks: Sequence[str]) -> str:
    parts = []
    for model in paper.MODELS:
        gain = paper.reliability_gain(model).reindex(list(tasks)).dropna()
        if len(gain):
            parts.append(f"{model} " + ", ".join(f"{t} {g:+.2f}" for t, g in gain.items()))
    return "InstructEdit − MEND, Reliability (points): " + "; ".join(parts)


def _instructedit_over_mend(cfg: ExperimentConfig, setting: str) -> verdicts.Verdict:
    cases = read_cases(cfg, "03_multitask_and_holdout", setting, ["mend", "instructedit"])
    v = verdicts.direction(_pooled(cases, "edit/acc", "method", "mend", "instructedit", cfg.seed))
    if v.measured:
        v = verdicts.Verdict(v.word, "InstructEdit − MEND, Reliability: " + v.evidence + " (paired, same records)")
    return _gated(cfg, v, ["mend", "instructedit"])


def claim_multitask(cfg: ExperimentConfig) -> Claim:
    v = _instructedit_over_mend(cfg, "multitask")
    train = [t for t in ("counterfact", "recent", "convsent")]
    return Claim("multitask", "One InstructEdit editor edits the training tasks more reliably than multi-task MEND",
                 "Table 3", "03_multitask_and_holdout", v.word,
                 (v.evidence + ", pooled over the training tasks") if v.measured else v.evidence or "chapter 3 not run",
                 _paper_gain(train))


def claim_holdout(cfg: ExperimentConfig) -> Claim:
    v = _instructedit_over_mend(cfg, "holdout")
    return Claim("holdout", "InstructEdit edits a task it never saw (ZsRE) more reliably than MEND",
                 "Table 3 (hold-out)", "03_multitask_and_holdout", v.word, v.evidence or "chapter 3 not run",
                 _paper_gain(["zsre"]))


def claim_average(cfg: ExperimentConfig) -> Claim:
    """The abstract's average gain: InstructEdit − MEND Reliability averaged over the four tasks of Table 3, the
    hold-out ZsRE included, each task weighing the same."""
    cases = [c for setting in ("multitask", "holdout")
             for c in read_cases(cfg, "03_multitask_and_holdout", setting, ["mend", "instructedit"])]
    d = task_average_difference(cases, "mend", "instructedit", seed=cfg.seed) if cases else None
    v = _gated(cfg, verdicts.direction(d), ["mend", "instructedit"])
    evidence = (f"mean over {', '.join(d['tasks'])} of InstructEdit − MEND Reliability: {v.evidence}"
                if d is not None else "chapter 3 not run")
    gpt = paper.reliability_gain("GPT2-XL")
    return Claim("average", "InstructEdit's Reliability exceeds MEND's on average over the four tasks (the "
                 "abstract's average gain)", "Abstract", "03_multitask_and_holdout", v.word, evidence,
                 f"GPT2-XL: mean of {', '.join(f'{g:+.2f}' for g in gpt)} = {gpt.mean():.2f} points "
                 f"(the abstract's {paper.quoted('abstract_reliability_gain'):.2f}; ZsRE included)")


def claim_unseen(cfg: ExperimentConfig) -> Claim:
    """Fig. 3: held-out descriptions edit about as well as seen ones — per task, two one-sided tests on held-out −
    seen Reliability with the equivalence margin (chapter 4's ``unseen/differences.csv``)."""
    text = "Instructions the editor never saw edit about as well as seen ones"
    diffs = read_table(cfg, "04_unseen_instructions", "unseen/differences.csv")
    if diffs is None or diffs.empty:
        return Claim("unseen", text, "Fig. 3", "04_unseen_instructions", MISSING, "chapter 4 wrote no differences",
                     "no numbers in the text: Fig. 3 calls the two comparable")

    per_task = unseen_verdicts(diffs)
    word = _gated(cfg, verdicts.Verdict(verdicts.combine(per_task["verdict"])), ["instructedit"]).word
    evidence = "held-out − seen description, Reliability: " + "; ".join(
        f"{r['task']} {r['verdict']} ({r['evidence']})" for _, r in per_task.iterrows())
    return Claim("unseen", text, "Fig. 3", "04_unseen_instructions", word, evidence,
                 f"Fig. 3 calls them comparable ({paper.quoted('unseen_instructions')} unseen instructions per task); "
                 "no numbers in the text")


def claim_transfer(cfg: ExperimentConfig) -> Claim:
    """Table 1: per test task, an editor trained on another task edits it worse than the in-task editor — the
    paper's blocks only (:func:`~instructedit_utils.experiments.table1_verdicts` on chapter 4's ``drops.csv``);
    editors that did not train are not measured."""
    text = "An editor trained on another task edits a test task far worse than that task's own editor"
    drops = read_table(cfg, "04_unseen_instructions", "transfer/drops.csv")
    cells = paper.table1()
    if drops is None or drops.empty:
        return Claim("transfer", text, "Table 1", "04_unseen_instructions", MISSING, "chapter 4 wrote no drops",
                     _paper_drops(cells))
    found = done(cfg, sorted(set(drops["a"]) | set(drops["b"])))
    rows = table1_verdicts(drops, found if any(d is not None for d in found.values()) else None)
    rows = rows[rows["verdict"] != MISSING]
    parts = [f"{r.test_task} block, {r.train_task} editor: {r.verdict}" + (f" ({r.evidence})" if r.evidence else "")
             for r in rows.itertuples()]
    return Claim("transfer", text, "Table 1", "04_unseen_instructions", verdicts.combine(rows["verdict"]),
                 "Reliability against the in-task editor: " + "; ".join(parts) if parts else "no pairs",
                 _paper_drops(cells))


def _paper_drops(cells: pd.DataFrame) -> str:
    rel = cells[(cells["metric"] == "edit/acc") & (cells["kind"] == "drop")]
    return "GPT2-XL, Reliability change against the in-task editor: " + "; ".join(
        f"{r.test_task} block, {r.train_task} editor {r.printed}" for r in rel.itertuples())


def claim_separation(cfg: ExperimentConfig) -> Claim:
    """Finding 1: instructions set the tasks' editing areas apart — InstructEdit's silhouette (training tasks)
    minus MEND's, paired per record (chapter 6's ``separation_differences.csv``); the control (the same editors
    before training) says whether training or the instruction text does it."""
    text = "With instructions, the editing areas of different tasks lie further apart (Finding 1)"
    diffs = read_table(cfg, "06_gradient_analysis", "separation_differences.csv")
    if diffs is None or diffs.empty:
        return Claim("separation", text, "Fig. 4a", "06_gradient_analysis", MISSING, "chapter 6 wrote no numbers",
                     "pictures only (t-SNE), no numbers")
    row = diffs[(diffs["comparison"] == "instructedit − mend") & (diffs["metric"] == "silhouette")
                & (diffs["scope"] == "training tasks")]
    v = verdicts.direction(None if row.empty else row.iloc[0], scale=1.0, unit="")
    v = _gated(cfg, v, ["mend", "instructedit"])
    control = control_finding(diffs)
    return Claim("separation", text, "Fig. 4a", "06_gradient_analysis", v.word,
                 f"silhouette, InstructEdit − MEND (paired per edit): {v.evidence}. Control: {control['text']}",
                 "pictures only (t-SNE), no numbers")


def _mixture_claim(cfg: ExperimentConfig, key: str, text: str, file: str, paper_text: str, **select) -> Claim:
    diffs = read_table(cfg, "07_task_scaling_and_balance", file)
    holdout = (cfg.holdout_tasks or ("zsre",))[0]
    if diffs is None or diffs.empty:
        return Claim(key, text, "Fig. 4c-d", "07_task_scaling_and_balance", MISSING, "chapter 7 wrote no numbers",
                     paper_text)
    folders = sorted(set(diffs["a"]) | set(diffs["b"]))
    found = done(cfg, folders)
    v = mixture_verdict(diffs, holdout, "edit/acc", done=found if any(d is not None for d in found.values())
                        else None, **select)
    extra = ""
    if key == "balance":
        side = {REPRODUCED: "higher with the balanced data", REVERSED: "higher with the ConvSent-dominated data"}
        loc = {t: mixture_verdict(diffs, t, "loc/acc", **select)["verdict"] for t in dict.fromkeys(diffs["task"])}
        extra = "; Locality: " + ", ".join(f"{t} {side.get(w, w)}" for t, w in loc.items())
    return Claim(key, text, "Fig. 4c-d", "07_task_scaling_and_balance", v["verdict"],
                 f"{holdout} Reliability, {v['text']}{extra}", paper_text)


def claim_scaling(cfg: ExperimentConfig) -> Claim:
    return _mixture_claim(cfg, "scaling", "Training InstructEdit on more tasks improves hold-out editing (Finding 2)",
                          "scaling_differences.csv", "Fig. 4c, no numbers in the text", method="instructedit")


def claim_balance(cfg: ExperimentConfig) -> Claim:
    return _mixture_claim(cfg, "balance", "Balanced task data edits the hold-out task better than ConvSent-dominated "
                          "data (Finding 3)", "balance_differences.csv",
                          f"out-of-distribution Reliability {paper.quoted('finding3_unbalanced'):.2f} → "
                          f"{paper.quoted('finding3_balanced'):.2f} after balancing (ConvSent cut to "
                          f"{paper.quoted('convsent_balanced_size'):,.0f} records)", arm="paper-balanced")


CLAIMS: tuple[Callable[[ExperimentConfig], Claim], ...] = (
    claim_multitask, claim_holdout, claim_average, claim_unseen, claim_transfer, claim_separation, claim_scaling,
    claim_balance)


def claims(cfg: ExperimentConfig) -> list[Claim]:
    """Every claim the book tests, checked on this profile's run folders."""
    return [check(cfg) for check in CLAIMS]


def beyond_the_paper(cfg: ExperimentConfig) -> pd.DataFrame | None:
    """Chapter 8's verdicts on sequential editing (questions the paper does not ask), as the chapter wrote them; None
    when it was not run."""
    table = read_table(cfg, SEQUENTIAL_NOTEBOOK, SEQUENTIAL_VERDICTS)
    return None if table is None else table.reset_index(drop=True)


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
    head = (f"Computed from this build's run folders (profile `{profile}`, model `{model}`) by one verdict rule "
            f"(`instructedit_utils.analysis.verdicts`): *reproduced* when the 95% interval of the paired difference "
            f"lies on the paper's side of 0, *reverse holds* when it lies on the other side, *not resolved* when it "
            f"contains 0 or "
            f"rests on fewer than {verdicts.MIN_N} records; for Fig. 3 *equivalent* when the 90% interval lies within "
            f"±{100 * verdicts.EQUIVALENCE_MARGIN:.0f} points; *mixed* when parts of a claim disagree; *not measured "
            "(editor did not train)* when an editor behind it kept its untrained step 0.\n\n") if profile else ""
    lines = ["| claim | paper | the paper's numbers | ours | verdict | shown in |", "|---|---|---|---|---|---|"]
    for c in found:
        where = f"[{CHAPTERS.get(c.chapter, c.chapter)}]({link.format(c.chapter)})"
        lines.append(f"| {c.claim} | {c.source} | {c.paper or '—'} | {c.evidence} | **{c.verdict}** | {where} |")
    return head + "\n".join(lines) + "\n"


def cost_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The runner's cost records (:func:`instructedit_utils.publish.runner.read_costs`) as the cost page shows them."""
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
