"""Table 3 of the paper from a run: the methods side by side, paired differences against InstructEdit, a verdict per
method computed from the numbers (:mod:`~instructedit_utils.analysis.verdicts`), and every cell of the paper's table
beside ours.

Everything here reads cases and summaries of :mod:`~instructedit_utils.experiments` (``multitask``/``holdout``); no
number is typed in: the paper's come from ``resources/paper.json`` (:mod:`~instructedit_utils.data.paper`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data import paper

from . import verdicts
from ..methods.registry import EditingMethod
from ..methods.mend import TrainedEditor
from ..evaluation.summaries import is_fraction, metric_label, paired_difference, summarize, wide_table
from ..models.metrics import bootstrap_ci
import dataclasses

ORDER = ("base", "ft-l", "calinet", "ke", "mend", "grace", "instructedit",  # the paper's column order, then
         "rome", "memit", "alphaedit")  # the columns beyond the paper
BEYOND_PAPER = ("rome", "memit", "alphaedit")  # not in the paper's Table 3 (issue 29)
LABELS = {"base": "Base", "ft-l": "FT-L", "calinet": "CaliNet", "ke": "KE", "mend": "MEND", "grace": "GRACE",
          "instructedit": "InstructEdit", "rome": "ROME", "memit": "MEMIT", "alphaedit": "AlphaEdit"}
KIND = {"base": "no edit", "ft-l": "optimised per edit (weights)", "calinet": "optimised per edit (added slots)",
        "grace": "optimised per edit (codebook)", "ke": "trained hypernetwork", "mend": "trained hypernetwork",
        "instructedit": "trained hypernetwork + instruction",
        **dict.fromkeys(BEYOND_PAPER, "located, closed-form update (beyond the paper)")}


def ordered(names: Sequence[str]) -> list[str]:
    """``names`` in the paper's column order (unknown names last, in their order)."""
    return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


def methods_table(methods: Mapping[str, EditingMethod], done: Mapping[str, dict] | None = None) -> pd.DataFrame:
    """One row per method: what it is, whether it reads instructions, the lowest block it changes, its settings
    (for trained editors the step of the kept checkpoint and its validation score, flagged when it is the untrained
    step 0; options for the optimisation methods) and its fingerprint."""
    rows = []
    for name in ordered(list(methods)):
        m = methods[name]
        if isinstance(m, TrainedEditor):
            s = (done or {}).get(name) or {}
            score = "—" if s.get("best") is None else f"{s['best']:.3f}"
            setting = (f"{m.editor.config.method}, best step {s.get('best_step', '—')} of {s.get('step', '—')} "
                       f"(validation score {score})" + ("" if verdicts.trained(s) else "; did not train"))
        elif hasattr(m, "config"):
            setting = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(m.config).items())
        else:
            setting = "—"
        rows.append({"method": name, "what": KIND.get(name, "trained editor"), "instructions": m.use_instructions,
                     "first changed block": "—" if name == "base" else m.first_edited_block, "settings": setting,
                     "fingerprint": m.fingerprint})
    return pd.DataFrame(rows).set_index("method")


def method_descriptions(methods: Mapping[str, EditingMethod]) -> str:
    """What each method of this run changes, as Markdown bullets, with the numbers of its own options (the config
    dataclasses of FT-L, CaliNet and GRACE; the trained editors' config) — never typed into the chapter."""
    lines = []
    for name in ordered(list(methods)):
        m = methods[name]
        c = getattr(m, "config", None)
        layer = getattr(m, "layer", None)
        if name == "ft-l":
            lines.append(f"**FT-L** (ROME's fine-tuning baseline {{cite:p}}`meng2022rome`, after "
                         f"{{cite:t}}`zhu2020modifying`): the MLP output matrix of block {layer} gets a change Δ found "
                         f"by {'at most ' if c.plateau else ''}{c.steps} Adam steps (learning rate {c.lr:g}) on the "
                         f"target's NLL, "
                         + (f"every entry clamped to |Δ| ≤ {c.norm_constraint:g} (ROME's L∞ constraint). "
                            if c.norm_constraint is not None else "unconstrained. ")
                         + (f"**Deviation from ROME:** the loop stops once a step lowers the loss by less than "
                            f"{100 * c.plateau:g} % (the bound is reached in the first step; the later steps barely "
                            f"move the loss, and stopping saves most of FT-L's time). " if c.plateau else "")
                         + "Small and local by construction.")
        elif name == "calinet":
            lines.append(f"**CaliNet** {{cite:p}}`dong2022calinet`: {c.slots} key/value memory slots in parallel to "
                         f"the FFN of block {layer}, FFN(x) + GELU(xKᵀ)V, trained on the edit with the model frozen "
                         f"({c.steps} Adam steps, learning rate {c.lr:g}); the values start at zero, so untrained "
                         "slots add nothing, and removing them restores the model exactly. The slots answer to any "
                         "input whose FFN input points along a key, so Locality is what the learning rate trades "
                         "against.")
        elif name == "grace":
            lines.append(f"**GRACE** {{cite:p}}`hartvigsen2023grace`: a codebook at the MLP of block {layer}; the "
                         "key is the MLP input at the edit prompt's last token, the value a replacement of the MLP "
                         f"output there, trained for the target (at most {c.steps} Adam steps); an MLP input within "
                         f"the deferral radius ({c.eps_init:g}) of a key gets the key's value, any other input runs "
                         "unchanged. The radius is small against the distances between an edit prompt and its "
                         "rephrases (measured in `instructedit_utils/grace.py`), so GRACE edits the prompt it saw "
                         "and little else — by design.")
        elif name in BEYOND_PAPER:
            lines.append(_locate_description(name, m))
        elif isinstance(m, TrainedEditor):
            kind = ("InstructEdit {cite:p}`tian2024instructedit`: chapter 2's hypernetwork with the instruction"
                    if m.use_instructions else "chapter 2's hypernetwork without the instruction")
            if m.editor.config.method == "ke":
                kind = ("KE {cite:p}`decao2021ke`: a hypernetwork conditioned on the edit (its tokens, through a "
                        "bi-LSTM) that gates the fine-tuning gradient with rank-one masks and adds a rank-one shift, "
                        "under a Lagrangian constraint on the locality KL")
            elif not m.use_instructions:
                kind = "MEND {cite:p}`mitchell2022mend`: " + kind
            lines.append(f"**{LABELS.get(name, name)}** — {kind}; trained in chapter 2 on "
                         f"{', '.join(m.editor.config.tasks)} for up to {m.editor.config.steps} steps.")
    return "\n".join(f"* {line}" for line in lines)


def _locate_description(name: str, m) -> str:
    """ROME's, MEMIT's or AlphaEdit's bullet: what it changes, with this run's settings (issue 29)."""
    c = m.config
    blocks = ", ".join(str(x) for x in m.layers)
    value = (f"the value: a shift of the residual stream after block {m.layers[-1]} at the subject's last token, "
             f"{c.v_steps} Adam steps (learning rate {c.v_lr:g}) on the target's NLL after the bare prompt and "
             f"{c.contexts} generated prefix context(s), plus {c.kl_factor:g} × the KL term on \"<subject> is a\", "
             f"norm at most {c.clamp_norm_factor:g} × the residual's; keys' statistics from "
             f"{m.stats[0].tokens:,} tokens of the train splits of {', '.join(c.stats_tasks)}")
    if name == "rome":
        return (f"**ROME** {{cite:p}}`meng2022rome` (beyond the paper): a rank-one change of the MLP output matrix "
                f"of block {blocks} that maps the subject's key to its new value exactly, in the metric of the keys' "
                f"second moment; {value}.")
    if name == "memit":
        return (f"**MEMIT** {{cite:p}}`meng2023memit` (beyond the paper): the same value spread over the MLP "
                f"output matrices of blocks {blocks} by least squares (λ = {c.mom2_update_weight:g} × the keys' "
                f"dimension); {value}.")
    dims = ", ".join(str(n) for n in m.null_space())
    return (f"**AlphaEdit** {{cite:p}}`fang2025alphaedit` (beyond the paper): MEMIT's spread over blocks {blocks} "
            f"with each update projected onto the null space of the keys' second moment (its weakest directions, "
            f"holding {100 * c.nullspace_energy:g} % of its trace: {dims} of {m.stats[0].moment.shape[0]} "
            f"dimensions per block); {value}.")


def beyond_paper_table(cases: Sequence[dict[str, Any]], reference: Sequence[str] = ("base", "mend", "instructedit"),
                       metrics: Sequence[str] = ("edit/acc", "gen/acc", "loc/acc"), seed: int = 0) -> pd.DataFrame:
    """The methods beyond the paper beside ``reference`` on the cases **all** of them edited (the smaller sample of
    ``method_samples``): rows task / method, cells mean ± half-width of the 95% bootstrap CI, in percent."""
    names = [n for n in (*reference, *BEYOND_PAPER) if any(c["method"] == n for c in cases)]
    by_method = {n: {(c.get("setting"), c["case_id"]) for c in cases if c["method"] == n} for n in names}
    common = set.intersection(*by_method.values()) if by_method else set()
    kept = [c for c in cases if c["method"] in names and (c.get("setting"), c["case_id"]) in common]
    if not kept:
        return pd.DataFrame()
    summary = summarize(kept, by=("task", "method"), metrics=[m for m in metrics if any(m in c for c in kept)],
                        seed=seed)
    wide = wide_table(summary.assign(row=summary["task"] + " / " + summary["method"].map(lambda n: LABELS.get(n, n))),
                      index="row")
    rows = [f"{t} / {LABELS.get(m, m)}" for t in dict.fromkeys(summary["task"]) for m in names]
    return wide.reindex([r for r in rows if r in wide.index])


def paired_against(cases: Sequence[dict[str, Any]], reference: str = "instructedit",
                   metrics: Sequence[str] = ("edit/acc", "gen/acc", "loc/acc"), seed: int = 0) -> pd.DataFrame:
    """``reference − method`` per task and metric for every other edited method (paired on the same records), in
    percentage points with the 95% bootstrap CI of the paired mean difference."""
    names = ordered([m for m in dict.fromkeys(c["method"] for c in cases) if m not in (reference, "base")])
    frames = [paired_difference(cases, metric, "method", name, reference, seed=seed)
              for name in names for metric in metrics]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames)
    df["metric"] = df["metric"].map(metric_label)
    for col in ("diff", "ci_low", "ci_high"):
        df[col] = (df[col] * 100).round(1)
    df = df.rename(columns={"a": "method"})
    return df.set_index(["task", "metric", "method"])[["diff", "ci_low", "ci_high", "n"]].sort_index(
        level=[0, 1], sort_remaining=False)


def _row(summary: pd.DataFrame, method: str, task: str, metric: str):
    r = summary[(summary["method"] == method) & (summary["task"] == task) & (summary["metric"] == metric)]
    return None if r.empty else r.iloc[0]


def _gain(cases: Sequence[dict[str, Any]], method: str, metric: str, seed: int = 0) -> dict[str, Any] | None:
    """A method's paired gain over the unedited model on the same cases (``metric − base/metric``), pooled over the
    cases' tasks, as a paired-difference row (``diff``, ``ci_low``, ``ci_high``, ``n``); None when not measured."""
    diffs = [c[metric] - c[f"base/{metric}"] for c in cases if c["method"] == method
             and c.get(metric) is not None and c.get(f"base/{metric}") is not None]
    if not diffs:
        return None
    mean, lo, hi = bootstrap_ci(diffs, seed=seed)
    return {"diff": mean, "ci_low": lo, "ci_high": hi, "n": len(diffs)}


def _pooled_mean(cases: Sequence[dict[str, Any]], method: str, metric: str, seed: int = 0):
    values = [c[metric] for c in cases if c["method"] == method and c.get(metric) is not None]
    if not values:
        return None
    mean, lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": len(values)}


def weak_sides(cases: Sequence[dict[str, Any]], method: str, seed: int = 0) -> list[str]:
    """Where a method resolvably falls short, by the thresholds :mod:`~instructedit_utils.analysis.verdicts` declares: a
    Reliability gain over Base whose interval lies below :data:`~instructedit_utils.analysis.verdicts.WEAK_GAIN`; a
    Generalization gain below its Reliability gain on the same cases by more than the equivalence margin, resolvably
    (it fits the prompt, not the fact);
    a Locality interval below :data:`~instructedit_utils.analysis.verdicts.LOCALITY_FLOOR`; each from at least
    :data:`~instructedit_utils.analysis.verdicts.MIN_N` cases."""
    out = []
    rel = _gain(cases, method, "edit/acc", seed)
    if rel is not None and rel["n"] >= verdicts.MIN_N and rel["ci_high"] < verdicts.WEAK_GAIN:
        out.append(f"Reliability barely above Base (gain below {100 * verdicts.WEAK_GAIN:.0f} points)")
    both = [{"case_id": c["case_id"], "task": "all", "kind": k, "v": c[m] - c[f"base/{m}"]}
            for c in cases if c["method"] == method and all(c.get(x) is not None for x in
                                                            ("gen/acc", "base/gen/acc", "edit/acc", "base/edit/acc"))
            for k, m in (("rel", "edit/acc"), ("gen", "gen/acc"))]
    if both:
        d = paired_difference(both, "v", "kind", "rel", "gen", seed=seed)
        if len(d) and d.iloc[0]["n"] >= verdicts.MIN_N and d.iloc[0]["ci_high"] < -verdicts.EQUIVALENCE_MARGIN:
            out.append("Generalization gains less than Reliability")
    loc = _pooled_mean(cases, method, "loc/acc", seed)
    if loc is not None and loc["n"] >= verdicts.MIN_N and loc["ci_high"] < verdicts.LOCALITY_FLOOR:
        out.append(f"Locality below {100 * verdicts.LOCALITY_FLOOR:.0f}%")
    return out


def method_verdicts(cases_mt: Sequence[dict[str, Any]], cases_ho: Sequence[dict[str, Any]], seed: int = 0,
                    done: Mapping[str, Mapping[str, Any] | None] | None = None) -> list[str]:
    """One sentence per edited method, computed from the cases: its mean Reliability / Generalization / Locality over
    the training tasks' cases with 95% intervals, its paired gain over Base (the unedited model on the same cases), its
    hold-out Reliability, and its weak sides (:func:`weak_sides`). A trained editor whose best checkpoint is step 0
    (``done``: editor → its ``done.json``) is said to be untrained. Metrics a method has no value for show as —."""
    out = []
    for m in ordered([m for m in dict.fromkeys(c["method"] for c in cases_mt) if m != "base"]):
        if done is not None and m in done and not verdicts.trained(done[m]):
            out.append(f"**{LABELS.get(m, m)}**: {verdicts.UNTRAINED} — its best checkpoint is its untrained "
                       "step 0, so these numbers describe the initial editor.")
            continue
        parts = []
        for metric in ("edit/acc", "gen/acc", "loc/acc"):
            mean = _pooled_mean(cases_mt, m, metric, seed)
            text = f"{metric_label(metric)} {verdicts.percent(None if mean is None else mean['mean'])}"
            gain = _gain(cases_mt, m, metric, seed) if metric != "loc/acc" else None
            if gain is not None:
                text += f" (gain over Base {verdicts.interval_text(gain)})"
            parts.append(text)
        ho = _pooled_mean(cases_ho, m, "edit/acc", seed)
        weak = weak_sides(cases_mt, m, seed)
        out.append(f"**{LABELS.get(m, m)}**: " + ", ".join(parts) + " (training tasks pooled); hold-out Reliability "
                   f"{verdicts.percent(None if ho is None else ho['mean'])}. "
                   + ("Weak side: " + "; ".join(weak) + "." if weak else "No resolvable weak side."))
    return out


def _pooled_difference(cases: Sequence[dict[str, Any]], method: str, reference: str, metric: str = "edit/acc",
                       seed: int = 0):
    rows = [dict(c, task="all") for c in cases if c["method"] in (method, reference)]
    d = paired_difference(rows, metric, "method", method, reference, seed=seed) if rows else pd.DataFrame()
    return None if d.empty else d.iloc[0]


def beyond_paper_verdicts(cases_mt: Sequence[dict[str, Any]], cases_ho: Sequence[dict[str, Any]],
                          reference: str = "instructedit", seed: int = 0,
                          done: Mapping[str, dict] | None = None) -> list[str]:
    """One sentence per method beyond the paper and setting: ``reference − method`` of Reliability, Generalization
    and Locality on the cases both edited (the training tasks pooled; the hold-out task), in words computed by
    :func:`~instructedit_utils.analysis.verdicts.direction` (unresolved below its ``MIN_N`` cases), gated on the
    reference editor having trained."""
    lines = []
    label = LABELS.get(reference, reference)
    for name in [n for n in BEYOND_PAPER if any(c["method"] == n for c in cases_mt + cases_ho)]:
        for setting, cases in (("training tasks (pooled)", cases_mt), ("hold-out", cases_ho)):
            parts = []
            for metric in ("edit/acc", "gen/acc", "loc/acc"):
                v = verdicts.gate(verdicts.direction(_pooled_difference(cases, name, reference, metric, seed)),
                                  {reference: (done or {}).get(reference)} if done is not None else {})
                word = (f"{label} higher" if v.word == verdicts.REPRODUCED else
                        f"{LABELS[name]} higher" if v.word == verdicts.REVERSED else v.word)
                parts.append(f"{metric_label(metric)}: {word}" + (f" ({v.evidence})" if v.evidence else ""))
            lines.append(f"**{LABELS[name]}**, {setting}, {label} − {LABELS[name]}: " + "; ".join(parts) + ".")
    return lines


def paper_claims(cases_mt: Sequence[dict[str, Any]], cases_ho: Sequence[dict[str, Any]],
                 reference: str = "instructedit", seed: int = 0,
                 done: Mapping[str, Mapping[str, Any] | None] | None = None) -> list[str]:
    """The paper's qualitative claims about each baseline, checked on this run, one sentence per method, every
    verdict from :mod:`~instructedit_utils.analysis.verdicts`.

    Claims: InstructEdit "consistently surpasses previous strong baselines" on the hold-out task (abstract) —
    InstructEdit − method in hold-out Reliability, paired; InstructEdit edits the training tasks more reliably
    (Table 3) — the same pooled over the training tasks' cases; and for GRACE the profile the paper describes
    (outstanding Reliability, Generalization short of it): its Reliability gain over Base resolvably above 0 and its
    Generalization equivalent to Base's within the equivalence margin. A verdict resting on a trained editor whose
    best checkpoint is step 0 (``done``) is *not measured (editor did not train)*."""
    out = []
    methods = ordered([m for m in dict.fromkeys(c["method"] for c in cases_mt) if m not in ("base", reference)])
    for m in methods:
        editors = {n: done[n] for n in (m, reference) if done is not None and n in done}
        ho = verdicts.gate(verdicts.direction(_pooled_difference(cases_ho, m, reference, seed=seed)), editors)
        mt = verdicts.gate(verdicts.direction(_pooled_difference(cases_mt, m, reference, seed=seed)), editors)
        text = (f"**{LABELS.get(m, m)}** — InstructEdit above it in hold-out Reliability: {ho}; in multi-task "
                f"Reliability: {mt}.")
        if m == "grace":
            rel = verdicts.direction(_gain(cases_mt, m, "edit/acc", seed))
            gen_rows = [{"case_id": c["case_id"], "task": "all", "kind": k, "v": c[x]}
                        for c in cases_mt if c["method"] == m and c.get("gen/acc") is not None
                        and c.get("base/gen/acc") is not None for k, x in (("base", "base/gen/acc"), ("edit", "gen/acc"))]
            gen = verdicts.equivalence(
                *(None if not gen_rows else _first(paired_difference(gen_rows, "v", "kind", "base", "edit", seed=seed,
                                                                     alpha=a)) for a in (0.10, 0.05)))
            text += (f" Reliability above Base: {rel}; Generalization equivalent to Base's (the paper: GRACE "
                     f"falls short in Generalization): {gen}.")
        out.append(text)
    return out


def _first(frame: pd.DataFrame):
    return None if frame.empty else frame.iloc[0]


def task_average_difference(cases: Sequence[dict[str, Any]], a: str, b: str, metric: str = "edit/acc",
                            tasks: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0
                            ) -> dict[str, Any] | None:
    """``b − a`` of ``metric`` averaged over tasks with equal weight (the paper's abstract averages its per-task
    gains this way), paired per task on the same records, with a 95% bootstrap interval that resamples records
    within each task. Returns a paired-difference row plus ``tasks`` and the per-task means, or None."""
    df = pd.DataFrame(cases)
    if df.empty or metric not in df:
        return None
    df = df[df["method"].isin([a, b]) & df[metric].notna()]
    wide = df.pivot_table(index=["task", "case_id"], columns="method", values=metric, aggfunc="first").dropna()
    if a not in wide or b not in wide:
        return None
    per_task = {t: (g[b] - g[a]).to_numpy() for t, g in wide.groupby(level=0, sort=False)
                if tasks is None or t in tasks}
    if not per_task:
        return None
    rng = np.random.default_rng(seed)
    boots = np.mean([x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1) for x in per_task.values()],
                    axis=0)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    means = {t: float(x.mean()) for t, x in per_task.items()}
    return {"diff": float(np.mean(list(means.values()))), "ci_low": float(lo), "ci_high": float(hi),
            "n": int(sum(len(x) for x in per_task.values())), "tasks": list(means), "per_task": means}


#: (teacher-forced metric, its generation-based twin) of :func:`success_gaps`
SUCCESS_PAIRS = (("edit/acc", "edit/greedy"), ("gen/acc", "gen/greedy"))


def success_gaps(cases: Sequence[dict[str, Any]], seed: int = 0) -> pd.DataFrame:
    """Teacher-forced minus generation-based success on the same cases (those that have both: ConvSent has no
    greedy success), per setting, method and metric pair: both means and the mean paired gap with a 95% bootstrap CI
    (in [0, 1]; positive: teacher forcing says more edits succeeded than greedy decoding shows)."""
    rows = []
    df = pd.DataFrame(cases)
    groups = [(setting, method) for setting in dict.fromkeys(df["setting"])
              for method in ordered(list(dict.fromkeys(df.loc[df["setting"] == setting, "method"])))]
    for setting, method in groups:
        part = df[(df["setting"] == setting) & (df["method"] == method)]
        for forced, greedy in SUCCESS_PAIRS:
            if greedy not in part:
                continue
            both = part[[forced, greedy]].dropna()
            if both.empty:
                continue
            gap, lo, hi = bootstrap_ci((both[forced] - both[greedy]).tolist(), seed=seed)
            rows.append({"setting": setting, "method": method, "metric": metric_label(forced),
                         "teacher-forced": both[forced].mean(), "greedy": both[greedy].mean(), "gap": gap,
                         "ci_low": lo, "ci_high": hi, "n": len(both)})
    return pd.DataFrame(rows)


def gap_table(gaps: pd.DataFrame) -> pd.DataFrame:
    """:func:`success_gaps` for the book: percent, the gap as ``+d [lo, hi]``."""
    shown = gaps.assign(**{c: (100 * gaps[c]).round(1) for c in ("teacher-forced", "greedy")},
                        gap=[f"{100 * g:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                             for g, lo, hi in zip(gaps["gap"], gaps["ci_low"], gaps["ci_high"])],
                        method=gaps["method"].map(lambda m: LABELS.get(m, m)))
    return shown.set_index(["setting", "method", "metric"])[["teacher-forced", "greedy", "gap", "n"]]


def gap_sentences(gaps: pd.DataFrame) -> list[str]:
    """Where the two kinds of success disagree, per setting and metric: each method's gap judged by
    :func:`~instructedit_utils.analysis.verdicts.side` (teacher forcing above greedy, below it, or not resolved)."""
    out = []
    for (setting, metric), part in gaps.groupby(["setting", "metric"], sort=False):
        part = part.assign(side=[verdicts.side({"diff": g, "ci_low": lo, "ci_high": hi, "n": n})
                                 for g, lo, hi, n in zip(part["gap"], part["ci_low"], part["ci_high"], part["n"])])
        above = part[part["side"] == "higher"].sort_values("gap", ascending=False)
        below = part[part["side"] == "lower"]
        same = part[~part["side"].isin(["higher", "lower"])]

        def names(rows) -> str:
            return ", ".join(LABELS.get(m, m) for m in rows["method"]) or "none"

        text = (f"**{setting}, {metric}**: teacher forcing reports more success than greedy decoding for "
                f"{len(above)} of {len(part)} methods ({names(above)})")
        if len(above):
            top = above.iloc[0]
            text += (f", most for {LABELS.get(top['method'], top['method'])} ({100 * top['gap']:+.1f} points "
                     f"[{100 * top['ci_low']:+.1f}, {100 * top['ci_high']:+.1f}])")
        text += f"; the difference is not resolved for {names(same)}"
        if len(below):
            text += f"; greedy decoding reports more for {names(below)}"
        out.append(text + ".")
    return out


def paper_comparison(summaries: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every cell of the paper's Table 3 that this run measures (``summaries``: setting → summary of
    :mod:`~instructedit_utils.experiments`), the paper's GPT2-XL and LLaMA-2 values beside ours with its 95% interval,
    in the paper's units (percent; Fluency × 100). Cells the paper has and we do not measure are left out; a cell
    the paper has for one model only shows — for the other."""
    cells = paper.table3()
    rows = []
    for (setting, task, metric, method), group in cells.groupby(["setting", "task", "metric", "method"], sort=False):
        summary = summaries.get(setting)
        ours = None if summary is None else _row(summary, method, task, metric)
        if ours is None:
            continue
        scale = 100.0 if is_fraction(metric) else paper.FLUENCY_SCALE
        by_model = dict(zip(group["model"], group["value"]))
        rows.append({"setting": setting, "task": task, "metric": metric_label(metric),
                     "method": LABELS.get(method, method),
                     **{f"paper {m}": by_model.get(m) for m in paper.MODELS},
                     "ours": round(scale * ours["mean"], 1),
                     "ours 95% CI": f"[{scale * ours['ci_low']:.1f}, {scale * ours['ci_high']:.1f}]",
                     "n": int(ours["n"])})
    out = pd.DataFrame(rows)
    return out.astype(object).fillna("—") if len(out) else out


#: how our measurement of a Table 3 metric differs from the paper's (shown beside the comparison)
MEASUREMENT_NOTES = {
    "Reliability": "teacher-forced token accuracy of the target, as the paper's Eq. 4; ConvSent: the sentiment edit "
                   "success of SERAC/EasyEdit (the paper's ConvSent measure), with the edit's own target response "
                   "left out of the responses scored",
    "Generalization": "the same on the record's rephrases (CounterFact's test rephrases are LLM paraphrases of a "
                      "derived file; ZsRE has one rephrase); the paper reports none for ConvSent, nor do we",
    "Locality": "agreement of the edited and unedited model's argmax on out-of-scope answers (Eq. 6); ConvSent: "
                "another topic's responses of both sentiments",
    "Portability": "token accuracy on the records' portability questions (at most the first three per record)",
    "Fluency": "n-gram entropy of the greedy continuation alone, in bits (the paper prints it × 100; shown here in "
               "the paper's scale), of at most `fluency_max_new_tokens` tokens, where EasyEdit's ConvSent evaluation "
               "generates up to 100 (`compute_sent_metric`) and scores prompt and continuation together: only the "
               "ordering of methods compares",
}
