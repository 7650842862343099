"""The runner's cost record: what each notebook execution cost, written to its run folder."""
import json
import os

import nbformat
import pytest
from pathlib import Path

from instructedit_utils.config import parameters
from instructedit_utils.models import loading as models
from instructedit_utils.publish import runner
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


def fake_papermill(monkeypatch, seen, publish=None):
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
                                              as_version=4).cells) + 1


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
