"""The runner's cost record: what each notebook execution cost, written to its run folder."""
import json
import os

import nbformat
import pytest
from pathlib import Path

from instructedit_utils.config import parameters
from instructedit_utils.models import loading as models
from instructedit_utils.publish import provenance, runner
from instructedit_utils.util.paths import project_path


def test_execution_cost_resolves_threads_and_workers(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    cost = runner.execution_cost("02_editor_training", {"profile": "cpu", "num_threads": 2, "workers": None,
                                                        "device": "cpu", "model_name": "smollm2-135m"}, 61.27, 0.0)
    assert (cost["wall_s"], cost["num_threads"], cost["workers"], cost["threads_per_worker"]) == (61.3, 2, 4, 1)
    assert cost["cores"] == 4 and cost["cpu"]
    gpu = runner.execution_cost("03", {"num_threads": None, "workers": None, "device": "cuda"}, 1.0, 0.0)
    assert (gpu["num_threads"], gpu["workers"], gpu["threads_per_worker"]) == (4, 1, 4)
    plain = runner.execution_cost("01", {"num_threads": 2, "device": "cpu"}, 1.0, 0.0)  # no workers parameter
    assert (plain["workers"], plain["threads_per_worker"]) == (1, 2)


def fake_papermill(monkeypatch, seen, publish=None, files=None):
    """papermill.execute_notebook as far as the runner sees it: the notebook with papermill's injected cell."""
    papermill = pytest.importorskip("papermill")

    def execute(src, out, parameters, **kw):
        seen.update(parameters)
        nb = nbformat.read(src, as_version=4)
        first = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        injected = nbformat.v4.new_code_cell("x = 1")
        injected.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(first + 1, injected)
        nbformat.write(nb, out)
        for rel, text in (files or {}).items():  # what the notebook writes to its run folder
            _write(Path(project_path(parameters["run_dir"])) / rel, text)
        if publish:
            page = Path(project_path(parameters["run_dir"])) / runner.PUBLISH_DIR / "claims.md"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(publish)

    monkeypatch.setattr(papermill, "execute_notebook", execute)


def test_run_notebook_writes_the_cost_to_the_run_folder(tmp_path, monkeypatch):
    seen = {}
    fake_papermill(monkeypatch, seen)
    runner.run_notebook("02_editor_training", "ci", {"num_threads": 1}, output_dir=tmp_path / "out",
                        runs_dir=tmp_path / "runs")
    assert seen["num_threads"] == 1
    cost = json.loads((tmp_path / "runs" / "ci" / "02_editor_training" / runner.COST_FILE).read_text())
    assert cost["notebook"] == "02_editor_training" and cost["profile"] == "ci" and cost["num_threads"] == 1
    assert cost["wall_s"] >= 0 and cost["workers"] >= 1 and cost["resumed"] is False
    assert runner.read_costs("ci", tmp_path / "runs") == [cost]
    (tmp_path / "runs" / "ci" / "02_editor_training" / "params.json").write_text("{}")  # a result: a rerun resumes
    runner.run_notebook("02_editor_training", "ci", {"num_threads": 1}, output_dir=tmp_path / "out",
                        runs_dir=tmp_path / "runs")
    assert runner.read_costs("ci", tmp_path / "runs")[0]["resumed"] is True


def test_set_up_cells_are_folded_and_other_cells_are_not(tmp_path, monkeypatch):
    fake_papermill(monkeypatch, {})
    out = runner.run_notebook("01_instruction_construction", "ci", output_dir=tmp_path / "out",
                              runs_dir=tmp_path / "runs")
    nb = nbformat.read(out, as_version=4)
    folded = [c.metadata.get("tags", []) for c in nb.cells if "hide-input" in c.metadata.get("tags", [])]
    assert sorted(t[0] for t in folded) == ["config", "injected-parameters", "parameters"]
    assert len(nb.cells) == len(nbformat.read(parameters.notebook_path("01_instruction_construction"),
                                              as_version=4).cells) + 2  # papermill's cell and the footer


def test_pages_a_notebook_publishes_are_copied_beside_the_executed_notebooks(tmp_path, monkeypatch):
    fake_papermill(monkeypatch, {}, publish="| claim |\n")
    runner.run_notebook("09_results", "ci", output_dir=tmp_path / "out", runs_dir=tmp_path / "runs")
    assert (tmp_path / "out" / "claims.md").read_text() == "| claim |\n"


def test_models_are_converted_by_the_runner_once(monkeypatch):

    calls = []
    monkeypatch.setattr(models, "converted_model_dir", lambda preset: calls.append(preset.name))
    names = ["01_instruction_construction", "02_editor_training", "09_results"]
    assert runner.prepare_models(names, "ci") == ["smollm2-135m"]
    assert calls == ["smollm2-135m"]
    assert runner.prepare_models(names, "ci", {"model_name": "tiny-llama"}) == []  # not a GGUF package model


def _write(path: Path, text: str = "a,b\n1,2\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_each_page_ends_with_its_provenance_and_its_tables_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.REPOSITORY_ENV, "https://github.com/example/instructedit-book")
    fake_papermill(monkeypatch, {}, files={"multitask/summary.csv": "a,b\n1,2\n",
                                           "multitask/unedited/scores.csv": "a\n1\n",  # cached: not a summary
                                           "mend/last/editor.json": "{}"})
    out = runner.run_notebook("03_multitask_and_holdout", "ci", output_dir=tmp_path / "out",
                              runs_dir=tmp_path / "runs")
    footer = nbformat.read(out, as_version=4).cells[-1]
    assert footer.cell_type == "markdown" and footer.metadata["tags"] == [provenance.FOOTER_TAG]
    text = footer.source
    assert "`ci` profile" in text and "`smollm2-135m`" in text and "fresh:" in text and "min (" in text
    assert "{download}`multitask/summary.csv <downloads/03_multitask_and_holdout/multitask/summary.csv>`" in text
    assert "unedited" not in text
    assert (tmp_path / "out" / "downloads" / "03_multitask_and_holdout" / "multitask" / "summary.csv").read_text() \
        == "a,b\n1,2\n"
    assert "https://colab.research.google.com/github/example/instructedit-book/blob/" in text
    assert "?labpath=notebooks%2F03_multitask_and_holdout.ipynb" in text
    assert str(tmp_path) not in text  # no machine path on a page
    again = runner.run_notebook("03_multitask_and_holdout", "ci", output_dir=tmp_path / "out",
                                runs_dir=tmp_path / "runs")
    cells = nbformat.read(again, as_version=4).cells
    assert sum(provenance.FOOTER_TAG in c.metadata.get("tags", []) for c in cells) == 1
    assert "resumed:" in cells[-1].source


def test_the_results_page_links_one_archive_of_every_runs_summaries(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.delenv(provenance.REPOSITORY_ENV, raising=False)
    fake_papermill(monkeypatch, {})
    runs = tmp_path / "runs" / "ci"
    _write(runs / "03_multitask_and_holdout" / "holdout" / "summary.csv")
    _write(runs / "02_editor_training" / "mend" / "editor.json", "{}")
    _write(runs / "02_editor_training" / "mend" / "editor.safetensors", "weights")
    _write(runs / "02_editor_training" / "lower_states" / "k" / "meta.json", "{}")
    out = runner.run_notebook("09_results", "ci", output_dir=tmp_path / "out", runs_dir=tmp_path / "runs")
    text = nbformat.read(out, as_version=4).cells[-1].source
    assert "{download}`run-summaries.zip <downloads/run-summaries.zip>`" in text
    assert "Colab" not in text  # the results page reads the other chapters' runs: nothing to launch alone
    assert "Executed with the `ci` profile at commit" in text  # it loads no model: none is named
    with zipfile.ZipFile(tmp_path / "out" / "downloads" / "run-summaries.zip") as archive:
        names = set(archive.namelist())
    assert {"03_multitask_and_holdout/holdout/summary.csv", "02_editor_training/mend/editor.json",
            "09_results/cost.json"} <= names
    assert not {n for n in names if n.endswith(".safetensors") or "lower_states" in n}


def test_launch_links_need_a_github_repository():
    assert provenance.launch_links(None, "abc123", "01_instruction_construction") == {}
    assert provenance.launch_links("/work/main", "abc123", "01_instruction_construction") == {}
    links = provenance.launch_links("git@github.com:me/book.git", "abc123+", "01_instruction_construction")
    assert links == {
        "Colab": "https://colab.research.google.com/github/me/book/blob/abc123/notebooks/01_instruction_construction.ipynb",
        "Binder": "https://mybinder.org/v2/gh/me/book/abc123?labpath=notebooks%2F01_instruction_construction.ipynb"}


def test_smoke_keeps_the_profiles_code_paths_at_the_smallest_sizes():
    sizes = parameters.smoke_sizes()
    assert set(sizes) == {p.stem for p in parameters.notebooks()} - {"09_results", "10_cost"}

    def is_size(value):
        if isinstance(value, bool) or value is None:
            return False
        if isinstance(value, (int, float)):
            return True
        if isinstance(value, list):
            return all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return isinstance(value, dict) and all(is_size(v) for v in value.values())

    for name, values in sizes.items():
        declared = parameters.declared_parameters(parameters.notebook_path(name))
        assert set(values) <= declared, f"smoke.yaml: {name} has no {sorted(set(values) - declared)}"
        not_sizes = {k: v for k, v in values.items() if not is_size(v)}
        assert not not_sizes, f"smoke.yaml may hold only sizes; {name}: {not_sizes}"
    smoke = parameters.smoke_overrides("02_editor_training", "gpu")
    assert (smoke["model_name"], smoke["device"], smoke["dtype"], smoke["steps"]) == ("tiny-gpt2", "cpu", "float32", 4)
    gpu = parameters.resolved_parameters(parameters.notebook_path("02_editor_training"), "gpu")
    both = parameters.resolved_parameters(parameters.notebook_path("02_editor_training"), "gpu", smoke)
    kept = {k for k in gpu if k not in smoke}
    assert {"scaling_seeds", "balance_seeds", "lr", "c_loc", "mixture_steps"} <= kept
    assert all(both[k] == gpu[k] for k in kept) and both["profile"] == "gpu"
    assert parameters.smoke_overrides("01_instruction_construction", "cpu")["model_name"] == "tiny-llama"


def test_tiny_stand_ins_follow_the_architecture():
    assert [models.tiny_stand_in(n) for n in ("gpt2-xl", "llama-2-7b", "smollm2-135m", "gemma3-270m",
                                              "openai-community/gpt2-medium", "/models/my-llama")] == \
        ["tiny-gpt2", "tiny-llama", "tiny-llama", "tiny-llama", "tiny-gpt2", "tiny-llama"]
