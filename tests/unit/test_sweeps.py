"""Papermill sweeps: parsing and validation before anything runs, run ids, failure records, resume and aggregation
(with a fake executor standing in for papermill; CI runs the real tiny sweep, sweeps/ci_edit_lr.yaml)."""
import json

import pandas as pd
import pytest
import yaml

from instructedit_utils.publish import sweeps
from instructedit_utils.util.paths import PROJECT_ROOT, project_path


class PapermillLikeError(Exception):
    """What papermill raises: the failing cell's execution count and the error's name and value."""

    def __init__(self, exec_count, ename, evalue):
        super().__init__(evalue)
        self.exec_count, self.ename, self.evalue = exec_count, ename, evalue


def write_sweep(tmp_path, **overrides):
    spec = {"name": "t", "profile": "ci", "notebooks": ["02_editor_training"], "fixed": {"balance_seeds": [0]},
            "grid": {"rank": [8, 16]}, "sweep_dir": str(tmp_path / "sweep"),
            "report": {"metric": "edit/acc", "x": "rank", "hue": "method", "col": "task"}}
    spec.update(overrides)
    spec = {k: v for k, v in spec.items() if v is not None}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class FakeExecutor:
    """Writes a chapter-2-like ``test_summary.csv`` whose Reliability is rank/100; fails for ranks in ``fail``."""

    def __init__(self, fail=()):
        self.fail, self.calls = set(fail), []

    def __call__(self, name, profile, overrides, output_dir, runs_dir):
        self.calls.append((name, profile, dict(overrides)))
        if overrides["rank"] in self.fail:
            raise PapermillLikeError(7, "RuntimeError", "Traceback (most recent call last)\n...\nboom: rank too small")
        run_dir = project_path(overrides["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        rows = [{"method": m, "task": t, "metric": "edit/acc", "mean": overrides["rank"] / 100 + (m == "mend") / 10,
                 "ci_low": 0.0, "ci_high": 1.0, "n": 2} for m in ("instructedit", "mend") for t in ("recent", "zsre")]
        pd.DataFrame(rows).to_csv(run_dir / "test_summary.csv")
        (output_dir / f"{name}.ipynb").write_text("{}")


def test_run_ids_are_readable_stable_and_distinct():
    assert sweeps.run_id({"rank": 16, "c_loc": 1.0}) == "c_loc-1.0_rank-16" == sweeps.run_id({"c_loc": 1.0, "rank": 16})
    assert sweeps.run_id({"train_tasks": ["recent", "convsent"], "x": None, "y": True}) == \
        "train_tasks-recent+convsent_x-none_y-true"
    assert sweeps.run_id({}) == "default"
    long = sweeps.run_id({"descriptions_file": "a/" * 80})
    assert len(long) <= 100 and long != sweeps.run_id({"descriptions_file": "a/" * 81})


def test_grid_and_explicit_runs_expand_in_order(tmp_path):
    cfg = sweeps.SweepConfig.load(write_sweep(tmp_path, grid={"rank": [8, 16], "c_loc": [1.0]},
                                              runs=[{"rank": 32}]))
    assert cfg.parameter_sets() == [{"rank": 8, "c_loc": 1.0}, {"rank": 16, "c_loc": 1.0}, {"rank": 32}]
    assert cfg.swept() == ["rank", "c_loc"]
    over = cfg.notebook_overrides("02_editor_training", {"rank": 8}, cfg.sweep_dir / "rank-8")
    assert over["rank"] == 8 and over["balance_seeds"] == [0]
    assert over["run_dir"].endswith("sweep/rank-8/02_editor_training")


@pytest.mark.parametrize("change, message", [
    ({"grid": {"rank": []}}, "non-empty list"),
    ({"grid": None}, "the sweep is empty"),
    ({"grid": {"no_such_knob": [1, 2]}}, r"has the parameter\(s\) \['no_such_knob'\]"),
    ({"fixed": {"rank": 8}}, "both fixed and swept"),
    ({"profile": "laptop"}, "unknown profile"),
    ({"report": {"metrik": "x"}}, "report"),
    ({"grid": {"run_dir": ["a", "b"]}}, "set by the sweep itself"),
])
def test_bad_sweep_files_are_errors_naming_the_file(tmp_path, change, message):
    path = write_sweep(tmp_path, **change)
    with pytest.raises(ValueError, match=message) as err:
        sweeps.SweepConfig.load(path)
    assert str(path) in str(err.value)


def test_unknown_key_and_unknown_notebook(tmp_path):
    path = write_sweep(tmp_path)
    path.write_text(path.read_text() + "gird: {rank: [1]}\n")
    with pytest.raises(ValueError, match="unknown key"):
        sweeps.SweepConfig.load(path)
    with pytest.raises(FileNotFoundError, match="No notebook"):
        sweeps.SweepConfig.load(write_sweep(tmp_path, notebooks=["99_nothing"]))


def test_a_value_the_config_rejects_stops_the_sweep_before_anything_runs(tmp_path):
    cfg = sweeps.SweepConfig.load(write_sweep(tmp_path, grid={"rank": [8, -1]}))
    fake = FakeExecutor()
    with pytest.raises(ValueError, match="run rank--1, notebook 02_editor_training"):
        sweeps.run_sweep(cfg, execute=fake, log=lambda s: None)
    assert fake.calls == [] and not cfg.sweep_dir.exists()


def test_a_failed_run_is_recorded_kept_apart_and_retried(tmp_path):
    cfg = sweeps.SweepConfig.load(write_sweep(tmp_path, grid={"rank": [8, 16, 32]}))
    runs = sweeps.run_sweep(cfg, execute=FakeExecutor(fail={16}), log=lambda s: None)
    assert list(runs["state"]) == ["done", "failed", "done"]
    status = json.loads((cfg.sweep_dir / "rank-16" / "status.json").read_text())
    assert status["failure"] == {"notebook": "02_editor_training", "cell": 7,
                                 "error": "RuntimeError: boom: rank too small"}
    summary = pd.read_csv(cfg.sweep_dir / "sweep_summary.csv")
    assert sorted(summary["run_id"].unique()) == ["rank-32", "rank-8"]  # the finished runs are not lost

    again = FakeExecutor()
    runs = sweeps.run_sweep(cfg, execute=again, log=lambda s: None)
    assert [c[2]["rank"] for c in again.calls] == [16]  # finished runs skipped, the failed one retried
    assert list(runs["state"]) == ["done"] * 3


def test_changed_settings_in_an_existing_run_folder_are_an_error(tmp_path):
    cfg = sweeps.SweepConfig.load(write_sweep(tmp_path))
    sweeps.run_sweep(cfg, execute=FakeExecutor(), log=lambda s: None)
    changed = sweeps.SweepConfig.load(write_sweep(tmp_path, fixed={"balance_seeds": [1]}))
    with pytest.raises(ValueError, match="holds a run with other settings"):
        sweeps.run_sweep(changed, execute=FakeExecutor(), log=lambda s: None)


def test_aggregation_long_table_markdown_and_figure(tmp_path):
    cfg = sweeps.SweepConfig.load(write_sweep(tmp_path))
    sweeps.run_sweep(cfg, execute=FakeExecutor(), log=lambda s: None)
    long = pd.read_csv(cfg.sweep_dir / "sweep_summary.csv")
    assert list(long.columns) == ["run_id", "rank", "notebook", "source", "method", "task", "metric", "mean",
                                  "ci_low", "ci_high", "n"]
    assert len(long) == 2 * 2 * 2  # runs x methods x tasks, one metric
    row = long[(long["rank"] == 16) & (long["method"] == "mend") & (long["task"] == "zsre")].iloc[0]
    assert row["mean"] == pytest.approx(0.26) and row["source"] == "02_editor_training"
    md = (cfg.sweep_dir / "sweep_summary.md").read_text()
    assert "| rank-16 | 16 | done |" in md and "26.0" in md
    assert (cfg.sweep_dir / "sweep_edit-acc.png").stat().st_size > 1000


def test_report_rows_that_do_not_identify_one_point_are_an_error(tmp_path):
    cfg = sweeps.SweepConfig.load(write_sweep(tmp_path, report={"metric": "edit/acc", "x": "rank"}))
    with pytest.raises(ValueError, match="several summary rows per"):
        sweeps.run_sweep(cfg, execute=FakeExecutor(), log=lambda s: None)


def test_example_sweep_files_are_valid():
    files = sorted((PROJECT_ROOT / "sweeps").glob("*.yaml"))
    assert any(f.name == "ci_edit_lr.yaml" for f in files)
    for f in files:
        cfg = sweeps.SweepConfig.load(f)
        cfg.check()
        assert cfg.parameter_sets()


def test_command_line_dry_run_and_errors(tmp_path, capsys):
    assert sweeps.main([str(write_sweep(tmp_path)), "--dry-run"]) == 0
    assert "rank-16" in capsys.readouterr().out
    assert sweeps.main([str(write_sweep(tmp_path, grid={"nope": [1]}))]) == 2
    assert "has the parameter(s) ['nope']" in capsys.readouterr().out


def test_without_an_executor_a_run_goes_through_the_book_runner(tmp_path, monkeypatch):
    """The default executor is the runner's ``run_notebook`` (after the model preparation), the path CI's real sweep
    takes; stand-ins for both record the calls."""
    prepared, fake = [], FakeExecutor()
    monkeypatch.setattr(sweeps, "prepare_models", lambda notebooks, profile, params: prepared.append(list(notebooks)))
    monkeypatch.setattr(sweeps, "run_notebook", fake)
    cfg = sweeps.SweepConfig.load(write_sweep(tmp_path, grid={"rank": [8]}))
    runs = sweeps.run_sweep(cfg, log=lambda s: None)
    assert list(runs["state"]) == ["done"] and prepared == [["02_editor_training"]]
    assert [(name, profile, overrides["rank"]) for name, profile, overrides in fake.calls] == [
        ("02_editor_training", "ci", 8)]
