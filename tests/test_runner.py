"""The runner's cost record: what each notebook execution cost, written to its run folder."""
import json
import os

import pytest

from instructedit_utils import runner


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


def test_run_notebook_writes_the_cost_to_the_run_folder(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    seen = {}
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, out, parameters, **kw: seen.update(parameters))
    runner.run_notebook("02_editor_training", "ci", {"num_threads": 1}, output_dir=tmp_path / "out",
                        runs_dir=tmp_path / "runs")
    assert seen["num_threads"] == 1
    cost = json.loads((tmp_path / "runs" / "ci" / "02_editor_training" / runner.COST_FILE).read_text())
    assert cost["notebook"] == "02_editor_training" and cost["profile"] == "ci" and cost["num_threads"] == 1
    assert cost["wall_s"] >= 0 and cost["workers"] >= 1
    assert runner.read_costs("ci", tmp_path / "runs") == [cost]
