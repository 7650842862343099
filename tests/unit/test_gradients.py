"""Editing areas: batched collection equals explicit gradients, sketches keep cosines, separation metrics on known
clusters, resumable storage."""
import json

import numpy as np
import pytest
import torch

from instructedit_utils.analysis import separation as separation_mod
from instructedit_utils.analysis import separation as sep_mod
from instructedit_utils.evaluation import gradients
from instructedit_utils.methods import registry as baselines
from instructedit_utils.config.method import MethodConfig
from instructedit_utils.models.targets import EditTarget, Factors
from instructedit_utils.methods.mend import MendEditor
from instructedit_utils.evaluation.requests import build_requests
from instructedit_utils.evaluation.gradients import Sketch, editing_areas, frobenius_norms
from instructedit_utils.analysis.separation import separation
from instructedit_utils.util.runs import SettingsMismatch

from conftest import cf_row
from instructedit_utils.data.tasks import parse_records


def _editor(model, edit_lr=3.0, seed=0):
    cfg = MethodConfig(name="tiny", rank=8, normalize=False, norm_warmup=0, edit_lr=edit_lr)
    torch.manual_seed(seed)
    editor = MendEditor.for_model(model, cfg, (2, 3))
    with torch.no_grad():  # a non-identity network, so the transform matters
        for p in editor.nets.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return editor


def _records(n=5):
    rows = [cf_row(subject=f"S{i}", prompt=f"The home city of person number {i} {'is' if i % 2 else 'was'}",
                   target_new=["Paris", "Rome", "New York City", "Lima", "Oslo"][i % 5]) for i in range(n)]
    return parse_records("counterfact", rows, "hand.json").records


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def tiny(request):
    return request.getfixturevalue(request.param)


def test_batched_editing_areas_equal_explicit_gradients(tiny):
    """Per edit and matrix: the norm and the sketch of the explicitly formed Σ δ̃ũᵀ (read back from the weight delta
    the editor applies, so the Llama Linear and GPT-2 Conv1D layouts are both checked) equal the batched ones."""
    model, tok = tiny
    editor = _editor(model)
    reqs = build_requests(_records(), instructions=True, seed=0)
    sketch = Sketch(editor.targets, 64, seed=1)
    areas = editing_areas(editor, model, tok, reqs, sketch, batch_edits=3)
    for i, r in enumerate(reqs):
        result = editor.edit(model, tok, r.prompt, r.target, header=r.header)
        for t in editor.targets:
            delta = result.deltas[t.name]
            g = -(delta.T if t.conv1d else delta) / editor.step_size(t.name).detach()  # [out, in]
            assert areas.norms[t.name][i] == pytest.approx(torch.linalg.norm(g).item(), rel=1e-3)
            assert np.allclose(areas.sketches[t.name][i], sketch.project_matrix(t.name, g).numpy(), rtol=1e-3,
                               atol=1e-4 * np.abs(areas.sketches[t.name][i]).max())
    assert all((areas.raw_norms[n] > 0).all() for n in areas.raw_norms)


def test_frobenius_norm_from_factors_hand_computed():
    # G = δ1 u1ᵀ + δ2 u2ᵀ with u1 ⟂ u2: ‖G‖² = ‖δ1‖²‖u1‖² + ‖δ2‖²‖u2‖² = 1·4 + 9·1 = 13
    f = Factors(u=torch.tensor([[2.0, 0.0], [0.0, 1.0]]), delta=torch.tensor([[1.0, 0.0], [0.0, 3.0]]),
                rows=torch.tensor([0, 0]))
    assert frobenius_norms(f, 1).item() == pytest.approx(13 ** 0.5)
    assert frobenius_norms(f, 1).item() == pytest.approx(torch.linalg.norm(f.gradient()).item())


def test_sketch_keeps_cosines_within_the_stated_tolerance():
    """k = 2048 random features: every pairwise cosine of 12 random rank-8 matrices (64 x 48) within 0.1 of the
    exact one, and the mean absolute error below 0.03 (the chapter reports the same check on real edits)."""
    gen = torch.Generator().manual_seed(0)
    target = EditTarget("m.weight", in_dim=48, out_dim=64)
    sketch = Sketch([target], 2048, seed=3)
    base_u, base_d = torch.randn(8, 48, generator=gen), torch.randn(8, 64, generator=gen)
    mats, sk = [], []
    for i in range(12):  # a third independent, the rest noisy copies of one edit (clearly correlated pairs)
        noise = (None, 0.5, 1.0)[i % 3]
        u = torch.randn(8, 48, generator=gen) if noise is None else base_u + noise * torch.randn(8, 48, generator=gen)
        d = torch.randn(8, 64, generator=gen) if noise is None else base_d + noise * torch.randn(8, 64, generator=gen)
        f = Factors(u, d, torch.zeros(8, dtype=torch.long))
        mats.append(f.gradient().flatten())
        sk.append(sketch.project("m.weight", f, 1)[0])
    exact = torch.nn.functional.normalize(torch.stack(mats), dim=1)
    approx = torch.nn.functional.normalize(torch.stack(sk), dim=1)
    err = ((exact @ exact.T) - (approx @ approx.T)).abs()
    assert err.max() < 0.1 and err.mean() < 0.03
    assert (exact @ exact.T).triu(1).abs().max() > 0.5  # the check includes clearly correlated pairs


def test_separation_metrics_hand_computed():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    s = sep_mod.record_scores(x, ["a", "a", "b", "b"], knn=1)
    assert np.allclose(s["silhouette"], 1.0) and np.allclose(s["knn_purity"], 1.0) and np.allclose(s["spread"], 0.0)
    assert sep_mod.between_cosine(x, np.array(["a", "a", "b", "b"])) == pytest.approx(0.0)
    y = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # pairs across tasks: cos(e1, e2) = 0, cos(v, e2) = 0.8
    assert sep_mod.between_cosine(y, np.array(["a", "a", "b"])) == pytest.approx(0.4)
    assert sep_mod.between_cosine(y, np.array(["a", "a", "b"]), np.array([0.0, 2.0, 1.0])) == pytest.approx(0.8)


def _clusters(spread, n=40, dims=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(dims)[:3]
    x = np.concatenate([c + spread * rng.standard_normal((n, dims)) for c in centres])
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(["a", "b", "c"], n)


def test_separation_on_known_clusters_and_the_permutation_control():
    x, labels = _clusters(0.05)
    sep = separation(x, labels, knn=5, n_boot=100, n_permutations=50).set_index("metric")
    assert sep.loc["silhouette", "value"] > 0.8 and sep.loc["knn_purity", "value"] == pytest.approx(1.0)
    assert sep.loc["between_cosine", "value"] < 0.05
    for m in ("silhouette", "knn_purity"):  # far above what shuffled labels score
        assert sep.loc[m, "ci_low"] > sep.loc[m, "perm_high"]
    assert sep.loc["between_cosine", "ci_high"] < sep.loc["between_cosine", "perm_low"]
    for m in sep.index:  # every point estimate lies inside its own interval
        assert sep.loc[m, "ci_low"] <= sep.loc[m, "value"] <= sep.loc[m, "ci_high"]
    # the same points with no structure: every task drawn from one cloud -> inside the permutation range
    rng = np.random.default_rng(1)
    y = rng.standard_normal((120, 32))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    mixed = separation(y, labels, knn=5, n_boot=100, n_permutations=50).set_index("metric")
    for m in ("silhouette", "knn_purity", "between_cosine"):
        assert mixed.loc[m, "perm_low"] - 0.05 <= mixed.loc[m, "value"] <= mixed.loc[m, "perm_high"] + 0.05
    assert abs(mixed.loc["silhouette", "value"]) < 0.05
    # overlapping clusters score between the two
    z, _ = _clusters(0.6)
    mid = separation(z, labels, knn=5, n_boot=50, n_permutations=20).set_index("metric")
    assert mixed.loc["silhouette", "value"] < mid.loc["silhouette", "value"] < sep.loc["silhouette", "value"]


def test_pca_and_tsne_shapes():
    x, _ = _clusters(0.1, n=10)
    coords, ratio = sep_mod.pca(x, 5)
    assert coords.shape == (30, 5) and np.all(np.diff(ratio) <= 1e-12) and ratio.sum() <= 1 + 1e-9
    assert sep_mod.tsne(x, perplexity=30.0, seed=0).shape == (30, 2)  # perplexity capped below n


def test_collection_resumes_and_refuses_another_editor_or_settings(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    method = baselines.build("mend", model, tok, editor=_editor(model), name="tiny")
    reqs = build_requests(_records(3), instructions=True, seed=0)
    sketch = Sketch(method.editor.targets, 16)
    folder = tmp_path / "areas"
    gradients.collect_areas(method, model, tok, reqs, folder, sketch, chunk=1, settings={"sample": 3})
    first = gradients.load_areas(folder)
    manifest = folder / "manifest.jsonl"
    manifest.write_text(manifest.read_text().splitlines(keepends=True)[0])  # killed after the first chunk
    computed = []
    real = gradients.editing_areas
    monkeypatch.setattr(gradients, "editing_areas",
                        lambda editor, m, t, part, *a, **k: computed.append(len(part)) or real(editor, m, t, part,
                                                                                               *a, **k))
    gradients.collect_areas(method, model, tok, reqs, folder, sketch, chunk=1, settings={"sample": 3})
    assert computed == [1, 1]
    again = gradients.load_areas(folder)
    assert list(again.manifest["case_id"]) == [r.case_id for r in reqs]
    for n in first.sketches:
        assert np.allclose(again.sketches[n], first.sketches[n], atol=1e-6)
    assert again.vectors().shape == (3, 16 * len(first.sketches))
    assert np.allclose(np.linalg.norm(again.vectors(), axis=1), 1.0)
    other = baselines.build("mend", model, tok, editor=_editor(model, seed=1), name="tiny")
    with pytest.raises(ValueError, match="vectors of another editor"):
        gradients.collect_areas(other, model, tok, reqs, folder, sketch, settings={"sample": 3})
    with pytest.raises(SettingsMismatch, match="sketch/dim: 16 → 32"):
        gradients.collect_areas(method, model, tok, reqs, folder, Sketch(method.editor.targets, 32),
                                settings={"sample": 3})


def test_malformed_manifest_or_vector_file_names_the_file(tiny_llama, tmp_path):
    model, tok = tiny_llama
    method = baselines.build("mend", model, tok, editor=_editor(model), name="tiny")
    reqs = build_requests(_records(2), instructions=False)
    folder = tmp_path / "areas"
    gradients.collect_areas(method, model, tok, reqs, folder, Sketch(method.editor.targets, 8), chunk=1)
    chunk = sorted(folder.glob("chunk_*.safetensors"))[1]
    chunk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=rf"{chunk.name}: unreadable vector file"):
        gradients.load_areas(folder)
    manifest = folder / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + json.dumps({"case_id": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"manifest\.jsonl line 3: not a manifest line"):
        gradients.load_areas(folder)


def test_sketch_check_compares_exact_and_sketched_cosines(tiny_llama):
    model, tok = tiny_llama
    method = baselines.build("mend", model, tok, editor=_editor(model), name="tiny")
    reqs = build_requests(_records(4), instructions=True, seed=0)
    check = gradients.sketch_check(method, model, tok, reqs, Sketch(method.editor.targets, 4096, seed=2))
    assert len(check) == 6 and check["exact"].between(-1 - 1e-9, 1 + 1e-9).all()
    assert check["error"].max() < 0.1
    # the exact side equals explicitly formed matrices
    mats = []
    for r in reqs:
        t = method.editor.edit(model, tok, r.prompt, r.target, header=r.header, return_factors=True).transformed
        mats.append(torch.cat([t[n].gradient().flatten() for n in t]).double())
    m = torch.nn.functional.normalize(torch.stack(mats), dim=1)
    cos = (m @ m.T).numpy()
    assert np.allclose(check["exact"], [cos[i, j] for i in range(4) for j in range(i + 1, 4)], atol=1e-6)


def test_group_separation_and_projections_tables():
    import pandas as pd

    from instructedit_utils.evaluation.gradients import Areas

    x, labels = _clusters(0.05, n=8)
    manifest = pd.DataFrame({"task": labels, "case_id": [f"r{i}" for i in range(len(labels))]})
    areas = Areas(manifest, {"m": x.astype(np.float32)})
    two = Areas(manifest[labels != "c"].reset_index(drop=True), {"m": x[labels != "c"].astype(np.float32)})
    scopes = {"training tasks": ["a", "b"], "all tasks": ["a", "b", "c"]}
    summary, records = sep_mod.group_separation({"full": areas, "two": two}, scopes, knn=3, n_boot=20,
                                                n_permutations=5)
    assert set(zip(summary["group"], summary["scope"])) == {("full", "training tasks"), ("full", "all tasks"),
                                                           ("two", "training tasks")}  # no repeated scope for "two"
    assert len(records) == 16 + 24 + 16 and set(records["case_id"]) == set(manifest["case_id"])
    coords = sep_mod.projections({"full": areas}, holdout_tasks=["c"], perplexity=5.0)
    assert set(coords["projection"]) == {"PCA", "t-SNE"} and (coords["role"] == "hold-out task").sum() == 2 * 8
    import matplotlib

    matplotlib.use("Agg", force=True)
    from instructedit_utils.analysis.plotting import plot_editing_areas

    assert len(plot_editing_areas(coords).axes) == 2


def test_hadamard_is_the_orthonormal_walsh_hadamard_transform():
    from scipy.linalg import hadamard as explicit

    x = torch.randn(3, 16, dtype=torch.float64)
    assert torch.allclose(gradients.hadamard(x), x @ torch.tensor(explicit(16), dtype=torch.float64).T / 4.0)
    assert torch.allclose(gradients.hadamard(gradients.hadamard(x)), x)  # H is symmetric and orthonormal
    with pytest.raises(ValueError, match="power-of-two"):
        gradients.hadamard(torch.zeros(2, 12))


def test_editors_sharing_a_runner_reuse_lower_states_and_get_the_same_areas(tiny_llama, monkeypatch):
    from instructedit_utils.models.forward import SplitForward

    model, tok = tiny_llama
    first, second = _editor(model, seed=0), _editor(model, seed=1)
    reqs = build_requests(_records(4), instructions=True, seed=0)
    sketch = Sketch(first.targets, 32)
    alone = [editing_areas(e, model, tok, reqs, sketch, batch_edits=2) for e in (first, second)]
    shared = SplitForward(model, first.first_block(model))
    lowered = []
    real = shared._lower
    monkeypatch.setattr(shared, "_lower", lambda seqs, *a: lowered.append(len(seqs)) or real(seqs, *a))
    with shared.reusing_states():
        together = [editing_areas(e, model, tok, reqs, sketch, batch_edits=2, runner=shared) for e in (first, second)]
    assert sum(lowered) == len(reqs)  # the second editor's lower pass came from the kept states
    for a, b in zip(alone, together):
        for n in a.sketches:
            assert np.allclose(a.sketches[n], b.sketches[n], rtol=1e-4, atol=1e-6 * np.abs(a.sketches[n]).max())
    with pytest.raises(ValueError, match="first edited block"):
        editing_areas(first, model, tok, reqs, sketch, runner=SplitForward(model, 1))


def test_collect_many_shares_lower_passes_per_chunk_and_matches_single_collections(tiny_llama, tmp_path,
                                                                                   monkeypatch):
    from instructedit_utils.models.forward import SplitForward

    model, tok = tiny_llama
    methods = [baselines.build("mend", model, tok, editor=_editor(model, seed=s), name=f"e{s}") for s in (0, 1)]
    reqs = build_requests(_records(5), instructions=False)
    sketch = Sketch(methods[0].editor.targets, 16)
    for i, m in enumerate(methods):  # each alone
        gradients.collect_areas(m, model, tok, reqs[:5 - 2 * i], tmp_path / f"alone{i}", sketch)
    shared = SplitForward(model, methods[0].editor.first_block(model))
    lowered = []
    real = shared._lower
    monkeypatch.setattr(shared, "_lower", lambda seqs, *a: lowered.append(len(seqs)) or real(seqs, *a))
    jobs = [gradients.AreaJob(m, reqs[:5 - 2 * i], tmp_path / f"shared{i}", sketch) for i, m in enumerate(methods)]
    gradients.collect_many(jobs, model, tok, runner=shared, chunk=2)
    assert sum(lowered) == 5  # one lower pass per distinct prompt for both editors
    assert shared._states is None  # no states kept after the collection
    for i in range(2):
        a, b = gradients.load_areas(tmp_path / f"alone{i}"), gradients.load_areas(tmp_path / f"shared{i}")
        assert list(a.manifest["case_id"]) == list(b.manifest["case_id"]) == [r.case_id for r in reqs[:5 - 2 * i]]
        for n in a.sketches:
            assert np.allclose(a.sketches[n], b.sketches[n], rtol=1e-4, atol=1e-6 * np.abs(a.sketches[n]).max())


def test_separation_differences_pair_the_reference_and_the_untrained_controls():
    import pandas as pd


    rows = [{"scope": "training tasks", "case_id": f"r{i}", "group": g, "silhouette": v + 0.01 * (i % 3),
             "knn_purity": 0.5} for i in range(30)
            for g, v in (("instructedit", 0.3), ("mend", 0.1), ("instructedit@0", 0.3), ("mend@0", 0.1))]
    diffs = separation_mod.separation_differences(pd.DataFrame(rows), "instructedit")
    got = diffs[diffs["metric"] == "silhouette"].set_index("comparison")["diff"].round(6).to_dict()
    assert got == {"instructedit − mend": 0.2, "instructedit − instructedit@0": 0.0, "instructedit − mend@0": 0.2,
                   "instructedit@0 − mend@0": 0.2}
    finding = separation_mod.control_finding(diffs)
    assert finding["text"].startswith("the instruction text separates the tasks")
    assert finding["training"].word == "not resolved" and finding["text_alone"].word == "reproduced"
    assert separation_mod.control_finding(diffs[diffs["comparison"] == "instructedit − mend"])["text"].startswith(
        "not measured")
