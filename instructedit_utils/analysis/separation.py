"""How well editing areas (:mod:`instructedit_utils.evaluation.gradients`) separate tasks — measured in the original (sketched)
space, never on a 2-D picture — and the projections that draw them (the paper's Fig. 4a).

* :func:`pca`, :func:`tsne` — 2-D views (t-SNE: scikit-learn, cosine metric on the first 50 principal components,
  PCA initialisation, fixed seed; perplexity documented by the caller and capped below the number of points);
* :func:`record_scores` — per record: cosine **silhouette** of its task label, **k-NN task purity** (share of its
  ``knn`` nearest other records from the same task) and **spread** (cosine distance to its task's centroid);
* :func:`between_cosine` — the mean cosine between edits of different tasks, which is the inner product of the tasks'
  centroids (mean editing areas, not renormalised). Unlike the cosine of renormalised centroids it is linear in the
  records, so resampling them does not bias it (renormalised centroids of resampled records come out noisier and
  their cosine lower, which put the point estimate outside its own percentile interval);
* :func:`separation` — those four numbers with 95% bootstrap CIs over records and a **label-permutation control**
  (the same numbers with shuffled task labels: what "no separation" scores on the same vectors);
* :func:`group_separation`, :func:`projections` — the same for every editor group and task scope, as tidy tables.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..evaluation.gradients import Areas
from . import verdicts
from ..evaluation.summaries import paired_difference


def pca(x: np.ndarray, n_components: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates ``[N, n]`` on the first principal components and their explained-variance ratios."""
    from sklearn.decomposition import PCA

    n = max(1, min(n_components, x.shape[0], x.shape[1]))
    model = PCA(n_components=n, svd_solver="full").fit(x)
    return model.transform(x), model.explained_variance_ratio_


def tsne(x: np.ndarray, perplexity: float = 30.0, seed: int = 0, pca_dims: int = 50) -> np.ndarray:
    """2-D t-SNE (scikit-learn, cosine metric on the first ``pca_dims`` principal components, PCA initialisation,
    fixed seed). The perplexity is capped below the number of points, as t-SNE requires."""
    from sklearn.manifold import TSNE

    reduced, _ = pca(x, pca_dims)
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed
                ).fit_transform(reduced)


def _gram(x: np.ndarray) -> np.ndarray:
    """Cosines between unit rows (everything below needs only these: one ``N×N`` product, whatever the dimension)."""
    return np.clip(x @ x.T, -1.0, 1.0)


def _neighbours(gram: np.ndarray, knn: int) -> np.ndarray:
    """Indices of each record's ``knn`` most similar other records (independent of labels: computed once)."""
    k = max(1, min(knn, len(gram) - 1))
    return np.argsort(-(gram - np.eye(len(gram)) * 10.0), axis=1, kind="stable")[:, :k]


def _scores(gram: np.ndarray, labels: np.ndarray, order: np.ndarray) -> pd.DataFrame:
    from sklearn.metrics import silhouette_samples

    dist = np.clip(1.0 - gram, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    sil = silhouette_samples(dist, labels, metric="precomputed") if len(set(labels)) > 1 else np.zeros(len(gram))
    purity = (labels[order] == labels[:, None]).mean(1)
    spread = np.zeros(len(gram))
    for t in dict.fromkeys(labels):
        idx = np.flatnonzero(labels == t)
        to_centroid = gram[:, idx].mean(1)  # x_i · c_t
        norm = np.sqrt(max(gram[np.ix_(idx, idx)].mean(), 1e-30))  # |c_t|
        spread[idx] = 1.0 - to_centroid[idx] / norm
    return pd.DataFrame({"task": labels, "silhouette": sil, "knn_purity": purity, "spread": spread})


def record_scores(x: np.ndarray, labels: Sequence[str], knn: int = 10) -> pd.DataFrame:
    """Per record (rows of unit vectors ``x``): cosine ``silhouette`` of its task label, ``knn_purity`` (share of its
    ``knn`` nearest other records with the same task) and ``spread`` (cosine distance to its task's centroid)."""
    gram = _gram(x)
    return _scores(gram, np.asarray(labels), _neighbours(gram, knn))


def _between(gram: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    tasks = list(dict.fromkeys(labels))
    if len(tasks) < 2:
        return float("nan")
    w = np.ones(len(gram)) if weights is None else weights
    parts = [(labels == t) for t in tasks]
    sims = [w[a] @ gram[np.ix_(a, b)] @ w[b] / (w[a].sum() * w[b].sum())
            for i, a in enumerate(parts) for b in parts[i + 1:]]
    return float(np.mean(sims))


def between_cosine(x: np.ndarray, labels: Sequence[str], weights: np.ndarray | None = None) -> float:
    """Mean over pairs of tasks of the mean cosine between their edits (unit rows ``x``) = the inner product of the
    two tasks' centroids; with ``weights`` (bootstrap counts) each record counts that often. 0: the tasks' edits are
    orthogonal on average; 1: identical."""
    return _between(_gram(x), np.asarray(labels), weights)


SEPARATION_METRICS = {
    "silhouette": "Silhouette (cosine), higher = tasks apart",
    "knn_purity": "k-NN task purity, higher = neighbours share the task",
    "between_cosine": "Mean cosine between edits of different tasks (inner product of task centroids), lower = apart",
    "spread": "Within-task spread (cosine distance to centroid), lower = tighter",
}


def _stats(gram: np.ndarray, labels: np.ndarray, order: np.ndarray) -> dict[str, float]:
    scores = _scores(gram, labels, order)
    return {"silhouette": float(scores["silhouette"].mean()), "knn_purity": float(scores["knn_purity"].mean()),
            "between_cosine": _between(gram, labels), "spread": float(scores["spread"].mean())}


def separation(x: np.ndarray, labels: Sequence[str], *, knn: int = 10, n_boot: int = 1000,
               n_permutations: int = 200, seed: int = 0) -> pd.DataFrame:
    """Task separation of unit vectors ``x`` (one row per record): each metric of :data:`SEPARATION_METRICS` with a
    95% bootstrap CI over records (records resampled within each task; per-record metrics are means of per-record
    scores, the between-task cosine is recomputed with the resampled records' weights) and the permutation control: the
    same metric with the task labels shuffled (``perm_mean`` and its 2.5–97.5% range), what "no separation" scores
    on the same vectors."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    gram = _gram(x)
    order = _neighbours(gram, knn)
    scores = _scores(gram, labels, order)
    value = _stats(gram, labels, order)
    groups = [np.flatnonzero(labels == t) for t in dict.fromkeys(labels)]
    boot: dict[str, list[float]] = {m: [] for m in SEPARATION_METRICS}
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        for m in ("silhouette", "knn_purity", "spread"):
            boot[m].append(float(scores[m].to_numpy()[idx].mean()))
        weights = np.bincount(idx, minlength=len(x)).astype(float)
        boot["between_cosine"].append(_between(gram, labels, weights))
    perm: dict[str, list[float]] = {m: [] for m in SEPARATION_METRICS}
    for _ in range(n_permutations):
        for m, v in _stats(gram, rng.permutation(labels), order).items():
            perm[m].append(v)
    rows = []
    for m, label in SEPARATION_METRICS.items():
        lo, hi = np.percentile(boot[m], [2.5, 97.5])
        plo, phi = np.percentile(perm[m], [2.5, 97.5])
        rows.append({"metric": m, "label": label, "value": value[m], "ci_low": float(lo), "ci_high": float(hi),
                     "perm_mean": float(np.mean(perm[m])), "perm_low": float(plo), "perm_high": float(phi),
                     "n": len(x)})
    return pd.DataFrame(rows)


def group_separation(groups: Mapping[str, Areas], scopes: Mapping[str, Sequence[str]], *,
                     matrices: Sequence[str] | None = None, knn: int = 10, n_boot: int = 1000,
                     n_permutations: int = 200, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`separation` of every editor group on every task scope (e.g. ``{"training tasks": [...], "all tasks":
    [...]}``; a scope where a group has fewer than two tasks, or the same tasks as an earlier scope, is skipped). Returns (summary with ``group`` and
    ``scope`` columns, per-record scores with ``group``, ``scope``, ``case_id``)."""
    summaries, records = [], []
    for group, areas in groups.items():
        x = areas.vectors(matrices)
        labels = areas.manifest["task"].to_numpy()
        seen: list[set] = []
        for scope, tasks in scopes.items():
            sel = np.isin(labels, list(tasks))
            present = set(labels[sel])
            if len(present) < 2 or present in seen:  # e.g. single-task editors have no hold-out task to add
                continue
            seen.append(present)
            sep = separation(x[sel], labels[sel], knn=knn, n_boot=n_boot, n_permutations=n_permutations, seed=seed)
            summaries.append(sep.assign(group=group, scope=scope))
            rec = record_scores(x[sel], labels[sel], knn)
            records.append(rec.assign(group=group, scope=scope,
                                      case_id=areas.manifest["case_id"].to_numpy()[sel]))
    return pd.concat(summaries, ignore_index=True), pd.concat(records, ignore_index=True)


def projections(groups: Mapping[str, Areas], holdout_tasks: Sequence[str] = (), *,
                matrices: Sequence[str] | None = None, perplexity: float = 30.0, seed: int = 0) -> pd.DataFrame:
    """2-D coordinates of every group's editing areas by PCA and by t-SNE: columns ``group``, ``projection``, ``x``,
    ``y``, ``task``, ``role`` (``hold-out task`` or ``training task``; for
    :func:`~instructedit_utils.analysis.plotting.plot_editing_areas`)."""
    frames = []
    for group, areas in groups.items():
        x = areas.vectors(matrices)
        tasks = areas.manifest["task"].to_numpy()
        for name, coords in (("PCA", pca(x, 2)[0]), ("t-SNE", tsne(x, perplexity, seed))):
            role = np.where(np.isin(tasks, list(holdout_tasks)), "hold-out task", "training task")
            frames.append(pd.DataFrame({"group": group, "projection": name, "x": coords[:, 0], "y": coords[:, 1],
                                        "task": tasks, "role": role}))
    return pd.concat(frames, ignore_index=True)


def separation_differences(records: pd.DataFrame, reference: str, seed: int = 0,
                           metrics: Sequence[str] = ("silhouette", "knn_purity"),
                           untrained_suffix: str = "@0") -> pd.DataFrame:
    """Paired differences of per-record separation (:func:`group_separation`'s records), the same edits in both
    groups: ``reference`` minus every other group, and each untrained control (``<name>@0``) minus the other
    untrained ones. Column ``comparison`` names them as ``"first − second"``: the difference is first minus
    second."""
    rows = records.to_dict("records")
    groups = list(dict.fromkeys(records["group"]))
    pairs = [(reference, g) for g in groups if g != reference]
    controls = [g for g in groups if g.endswith(untrained_suffix)]
    pairs += [(a, b) for i, a in enumerate(controls) for b in controls[i + 1:]]
    frames = []
    for first, second in pairs:
        for metric in metrics:
            d = paired_difference(rows, metric, "group", second, first, by=("scope",), seed=seed)
            if len(d):
                frames.append(d.assign(comparison=f"{first} − {second}"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def control_finding(diffs: pd.DataFrame, trained: str = "instructedit", plain: str = "mend",
                    scope: str = "training tasks", metric: str = "silhouette", untrained_suffix: str = "@0"
                    ) -> dict[str, object]:
    """Whether training or the instruction text sets the tasks' editing areas apart (Finding 1's control), from
    :func:`separation_differences`: the trained instructed editor minus the same editor at step 0 (same instructed
    inputs: what training adds), and the instructed editor at step 0 minus the plain one at step 0 (what the
    instruction text gives without training). Words from :mod:`~instructedit_utils.analysis.verdicts`."""
    def row(comparison):
        r = diffs[(diffs["comparison"] == comparison) & (diffs["metric"] == metric) & (diffs["scope"] == scope)] \
            if len(diffs) else diffs
        return None if not len(r) else r.iloc[0]

    start, plain_start = trained + untrained_suffix, plain + untrained_suffix
    by_training = verdicts.direction(row(f"{trained} − {start}"), scale=1.0, unit="")
    by_text = verdicts.direction(row(f"{start} − {plain_start}"), scale=1.0, unit="")
    if not (by_training.measured and by_text.measured):
        return {"training": by_training, "text_alone": by_text, "text": "not measured (no step-0 control)"}
    grew, text_apart = by_training.word == verdicts.REPRODUCED, by_text.word == verdicts.REPRODUCED
    if grew and text_apart:
        says = "the instruction text already separates the tasks before training, and training separates them further"
    elif grew:
        says = "training separates the tasks: before training, instructed edits are not resolvably further apart"
    elif text_apart:
        says = ("the instruction text separates the tasks: the untrained editor's instructed edits are already "
                "apart, and training adds no resolvable separation" + (" (it reduces it)" if
                                                                        by_training.word == verdicts.REVERSED else ""))
    else:
        says = "neither the instruction text alone nor training resolvably separates the tasks"
    return {"training": by_training, "text_alone": by_text,
            "text": f"{says} ({metric}: trained − step 0 {by_training}; instructed − plain at step 0 {by_text})"}
