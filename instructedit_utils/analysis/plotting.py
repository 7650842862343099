"""Plots for the book (seaborn). Functions take tidy DataFrames and return the matplotlib Figure."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..evaluation.summaries import FRACTION_METRICS, METRIC_LABELS, is_fraction, metric_label
from ..data.instructions import EditRequest


def token_length_frame(tokenizer, requests_by_setting: dict[str, Sequence[EditRequest]]) -> pd.DataFrame:
    """Tidy frame of edit-prompt token lengths: columns ``task``, ``setting``, ``tokens``."""
    rows = []
    for setting, requests in requests_by_setting.items():
        for req in requests:
            rows.append({"task": req.task, "setting": setting,
                         "tokens": len(tokenizer(req.prompt, add_special_tokens=False)["input_ids"])})
    return pd.DataFrame(rows)


def plot_token_lengths(lengths: pd.DataFrame, title: str = "Edit-prompt length") -> plt.Figure:
    """Box + strip plot of token lengths per task, one colour per setting (e.g. with / without instruction)."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.boxplot(data=lengths, x="task", y="tokens", hue="setting", ax=ax, fliersize=0)
    sns.stripplot(data=lengths, x="task", y="tokens", hue="setting", dodge=True, ax=ax, size=2, alpha=0.35,
                  palette="dark:k", legend=False)
    ax.set(title=title, xlabel="task", ylabel="tokens")
    fig.tight_layout()
    return fig


def plot_metric_bars(summary: pd.DataFrame, hue: str = "task", metrics: Sequence[str] | None = None,
                     title: str = "", scale: float = 100.0) -> plt.Figure:
    """Bars of ``mean`` with 95% bootstrap CI whiskers, from :func:`instructedit_utils.evaluation.summarize`.

    Only share-valued metrics (percent scale) are drawn unless ``metrics`` names others.
    """
    sns.set_theme(style="whitegrid")
    df = summary[summary["metric"].isin(metrics or FRACTION_METRICS)].copy()
    df["label"] = df["metric"].map(lambda m: METRIC_LABELS.get(m, m))
    labels = list(dict.fromkeys(df["label"]))
    groups = list(dict.fromkeys(df[hue]))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
    width = 0.8 / max(1, len(groups))
    palette = sns.color_palette(n_colors=len(groups))
    for g, (name, color) in enumerate(zip(groups, palette)):
        part = df[df[hue] == name].set_index("label").reindex(labels)
        xs = [i - 0.4 + width * (g + 0.5) for i in range(len(labels))]
        means = part["mean"] * scale
        err = [(part["mean"] - part["ci_low"]) * scale, (part["ci_high"] - part["mean"]) * scale]
        ax.bar(xs, means, width=width, color=color, label=name, yerr=err, capsize=3)
    ax.set_xticks(range(len(labels)), labels, rotation=15)
    ax.set(ylabel="score (%)", ylim=(0, 105), title=title)
    ax.legend(title=hue, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _curves(frames: "dict[str, pd.DataFrame]", metrics, title: str, smooth: int = 1, marker=None, ylim=None):
    """One panel per metric, one line per run (x = ``step``)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, df in frames.items():
            if metric in df:
                ax.plot(df["step"], df[metric].rolling(smooth, min_periods=1).mean(), marker=marker, label=name)
        ax.set_title(metric)
        ax.set_xlabel("step")
        if ylim:
            ax.set_ylim(*ylim)
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_curves(logs: "dict[str, pd.DataFrame]", metrics=("loss/edit", "loss/loc", "edit/acc", "loc/acc"),
                         smooth: int = 5, title: str = "Training (logged means, rolling)"):
    """Training metrics from ``train_log.jsonl`` frames, one line per editor (rolling mean over ``smooth`` rows)."""
    return _curves(logs, metrics, title, smooth=smooth)


def plot_validation_curves(vals: "dict[str, pd.DataFrame]",
                           metrics=("val/edit/acc", "val/gen/acc", "val/loc/acc", "val/score"),
                           title: str = "Validation (held-out val splits)"):
    """Validation metrics against step, one line per editor (markers: each validation round)."""
    return _curves(vals, metrics, title, marker="o", ylim=(-0.02, 1.02))


def plot_method_bars(summary: pd.DataFrame, metric: str, x: str = "task", hue: str = "method",
                     title: str | None = None, scale: float = 100.0) -> plt.Figure:
    """One metric as grouped bars (``x`` groups, ``hue`` colours) with 95% bootstrap CI whiskers, from
    :func:`~instructedit_utils.evaluation.summarize` (e.g. Table 3 per task and method, Fig. 3 seen vs unseen)."""
    sns.set_theme(style="whitegrid")
    df = summary[summary["metric"] == metric]
    xs = list(dict.fromkeys(df[x]))
    groups = list(dict.fromkeys(df[hue]))
    s = scale if is_fraction(metric) else 1.0
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(xs) * max(1, len(groups)) / 2), 3.6))
    width = 0.8 / max(1, len(groups))
    for g, (name, color) in enumerate(zip(groups, sns.color_palette(n_colors=len(groups)))):
        part = df[df[hue] == name].set_index(x).reindex(xs)
        pos = [i - 0.4 + width * (g + 0.5) for i in range(len(xs))]
        err = [(part["mean"] - part["ci_low"]) * s, (part["ci_high"] - part["mean"]) * s]
        ax.bar(pos, part["mean"] * s, width=width, color=color, label=name, yerr=err, capsize=3)
    ax.set_xticks(range(len(xs)), xs)
    label = metric_label(metric) + (" (%)" if is_fraction(metric) else "")
    ax.set(ylabel=label, title=title if title is not None else metric_label(metric),
           ylim=(0, 105) if is_fraction(metric) else None)
    ax.legend(title=hue, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def plot_transfer_heatmap(matrix: pd.DataFrame, title: str = "Single-task transfer", fmt: str = ".2f",
                          label: str = "Reliability") -> plt.Figure:
    """Heatmap of a train-task × test-task matrix (:func:`~instructedit_utils.experiments.transfer_matrix`)."""
    sns.set_theme(style="white")
    fig, ax = plt.subplots(figsize=(1.6 * matrix.shape[1] + 2, 1.2 * matrix.shape[0] + 1.2))
    sns.heatmap(matrix.astype(float), annot=True, fmt=fmt, cmap="viridis", cbar_kws={"label": label}, ax=ax)
    ax.set(xlabel="tested on", ylabel="trained on", title=title)
    fig.tight_layout()
    return fig


def plot_editing_areas(coords: pd.DataFrame, title: str = "Editing areas (Fig. 4a)") -> plt.Figure:
    """Fig. 4a as a seaborn panel grid: rows = editor group, columns = projection (PCA, t-SNE); one point per edit,
    coloured by task, hold-out tasks drawn as crosses. ``coords`` columns: ``group``, ``projection``, ``x``, ``y``,
    ``task``, ``role`` (``training task`` / ``hold-out task``), as
    :func:`~instructedit_utils.analysis.separation.projections` gives them."""
    sns.set_theme(style="white")
    grid = sns.relplot(data=coords, x="x", y="y", row="group", col="projection", hue="task", style="role",
                       markers={"training task": "o", "hold-out task": "X"}, s=18, alpha=0.75, height=3.3,
                       aspect=1.15, facet_kws={"sharex": False, "sharey": False})
    grid.set(xticks=[], yticks=[], xlabel="", ylabel="")
    grid.set_titles("{row_name} — {col_name}")
    grid.figure.suptitle(title, y=1.01)
    return grid.figure


def plot_gradient_norms(norms: pd.DataFrame, title: str = "Norm of the editing gradient") -> plt.Figure:
    """Distributions (box + points, log scale) of the editing gradient's Frobenius norm per task, one colour per
    editor group. ``norms`` columns: ``group``, ``task``, ``norm``."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(8, 3.8))
    sns.boxplot(data=norms, x="task", y="norm", hue="group", ax=ax, fliersize=0, log_scale=True)
    sns.stripplot(data=norms, x="task", y="norm", hue="group", dodge=True, ax=ax, size=2, alpha=0.35,
                  palette="dark:k", legend=False, log_scale=True)
    ax.set(title=title, xlabel="task", ylabel="‖∇̃‖_F (log scale)")
    fig.tight_layout()
    return fig


def plot_task_scaling(results: pd.DataFrame, tasks: Sequence[str], metrics: Sequence[str] = ("edit/acc", "gen/acc",
                      "loc/acc"), title: str = "More training tasks (Fig. 4c)") -> plt.Figure:
    """Fig. 4c: each metric against the number of training tasks, one line per method (mean with 95% CI bars; one
    point per seed), one panel per metric × tested task. ``results`` as
    :func:`~instructedit_utils.analysis.findings.results` gives it (columns ``n_tasks``, ``method``, ``seed``, ``task``,
    ``metric``, ``mean``, ``ci_low``, ``ci_high``)."""
    sns.set_theme(style="whitegrid")
    df = results[results["metric"].isin(metrics) & results["task"].isin(tasks)]
    metrics = [m for m in metrics if m in set(df["metric"])]
    fig, axes = plt.subplots(len(metrics), len(tasks), figsize=(3.1 * len(tasks), 2.6 * len(metrics)),
                             squeeze=False, sharex=True)
    methods = list(dict.fromkeys(df["method"]))
    colors = dict(zip(methods, sns.color_palette(n_colors=len(methods))))
    for i, metric in enumerate(metrics):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            part = df[(df["metric"] == metric) & (df["task"] == task)]
            for k, method in enumerate(methods):
                for seed, line in part[part["method"] == method].groupby("seed"):
                    line = line.sort_values("n_tasks")
                    x = line["n_tasks"] + (k - (len(methods) - 1) / 2) * 0.06
                    ax.errorbar(x, line["mean"] * 100, yerr=[(line["mean"] - line["ci_low"]) * 100,
                                                               (line["ci_high"] - line["mean"]) * 100],
                                marker="o", capsize=3, color=colors[method], alpha=1.0 if seed == 0 else 0.6)
            ax.set(title=f"{task}", ylabel=f"{metric_label(metric)} (%)" if j == 0 else "", ylim=(0, 105),
                   xticks=sorted(set(df["n_tasks"])), xlabel="training tasks" if i == len(metrics) - 1 else "")
    handles = [plt.Line2D([], [], color=colors[m], marker="o", label=m) for m in methods]
    axes[0][-1].legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_differences(diffs: pd.DataFrame, x: str = "task", hue: str = "seed", title: str = "",
                     ylabel: str = "difference (points)") -> plt.Figure:
    """Paired differences with 95% CIs (points with error bars, a line at 0), one panel per metric: e.g. uniform −
    ConvSent-dominated per task and seed (Fig. 4d)."""
    sns.set_theme(style="whitegrid")
    metrics = list(dict.fromkeys(diffs["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.2), squeeze=False, sharey=True)
    hues = list(dict.fromkeys(diffs[hue]))
    colors = dict(zip(hues, sns.color_palette(n_colors=len(hues))))
    for ax, metric in zip(axes[0], metrics):
        part = diffs[diffs["metric"] == metric]
        xs = list(dict.fromkeys(part[x]))
        for k, h in enumerate(hues):
            p = part[part[hue] == h].set_index(x).reindex(xs)
            pos = [i + (k - (len(hues) - 1) / 2) * 0.15 for i in range(len(xs))]
            ax.errorbar(pos, p["diff"] * 100, yerr=[(p["diff"] - p["ci_low"]) * 100, (p["ci_high"] - p["diff"]) * 100],
                        fmt="o", capsize=3, color=colors[h], label=f"seed {h}" if hue == "seed" else str(h))
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(xs)), xs, rotation=20)
        ax.set(title=metric_label(metric), ylabel=ylabel)
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_sweep(rows: pd.DataFrame, metric: str, x: str, hue: str | None = None, col: str | None = None,
               title: str = "") -> plt.Figure:
    """A sweep's metric against the swept parameter ``x`` (one line per ``hue``, slightly dodged so equal values
    stay visible; one panel per ``col``) with each run's 95% CI, from one summary row per point (columns ``mean``,
    ``ci_low``, ``ci_high``; see :mod:`instructedit_utils.publish.sweeps`)."""
    sns.set_theme(style="whitegrid")
    s = 100.0 if is_fraction(metric) else 1.0
    panels = list(dict.fromkeys(rows[col])) if col else [None]
    hues = list(dict.fromkeys(rows[hue])) if hue else [None]
    colors = dict(zip(hues, sns.color_palette(n_colors=len(hues))))
    xs = list(dict.fromkeys(str(v) for v in rows[x]))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.0, 1.2 * len(xs) + 2.5) * len(panels), 3.4),
                             squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        part = rows if panel is None else rows[rows[col] == panel]
        for k, h in enumerate(hues):
            line = part if h is None else part[part[hue] == h]
            pos = [xs.index(str(v)) + (k - (len(hues) - 1) / 2) * 0.06 for v in line[x]]
            ax.errorbar(pos, line["mean"] * s, yerr=[(line["mean"] - line["ci_low"]) * s,
                                                     (line["ci_high"] - line["mean"]) * s],
                        marker="o", capsize=3, color=colors[h], label=None if h is None else str(h))
        ax.set_xticks(range(len(xs)), xs)
        ax.set(xlabel=x, title="" if panel is None else f"{col} = {panel}")
    axes[0][0].set_ylabel(metric_label(metric) + (" (%, 95% CI)" if is_fraction(metric) else " (95% CI)"))
    if hue:
        axes[0][-1].legend(title=hue, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_search_rounds(history: pd.DataFrame, rounds: pd.DataFrame, title: str = "") -> plt.Figure:
    """The instruction search per task: every scored candidate's score by round (hand-written ones at round 0;
    filled: in the final pool) and the pool's mean score after each round (line)."""
    sns.set_theme(style="whitegrid")
    tasks = list(dict.fromkeys(history["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.3), squeeze=False, sharey=True)
    scored = history[history["status"] == "scored"]
    for ax, task in zip(axes[0], tasks):
        part = scored[scored["task"] == task]
        for chosen, face in ((False, "none"), (True, "C0")):
            p = part[part["chosen"] == chosen]
            jitter = (p["index"] % 5 - 2) * 0.04
            ax.scatter(p["round"] + jitter, p["score"] * 100, facecolors=face, edgecolors="C0", s=22,
                       label="in the final pool" if chosen else "not chosen")
        line = rounds[rounds["task"] == task]
        ax.plot(line["round"], line["pool mean"] * 100, color="C1", marker="s", ms=4, label="pool mean")
        ax.set_xticks(sorted(set(line["round"])))
        ax.set(title=task, xlabel="round (0: hand-written)")
    axes[0][0].set_ylabel("search score (%)")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
