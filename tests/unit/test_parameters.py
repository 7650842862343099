"""One source of parameters: the notebook (as papermill runs it), the book runner and every command line build the
same configuration; profiles hold only what differs from the parameters cells."""
import ast
import json

import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from instructedit_utils.config import parameters
from instructedit_utils.experiments import cli as experiments
from instructedit_utils.search import cli as instruction_search
from instructedit_utils.training import cli as training
from instructedit_utils.config.experiment import PROFILES, ExperimentConfig
from instructedit_utils.util.paths import PROJECT_ROOT
import instructedit_utils.config.experiment as experiment_config  # every CLI loads its model here (ModelConfig.load)

NOTEBOOKS = parameters.notebooks()
# every command line that is the twin of a notebook: argv prefix -> the function building its configuration
CLI_TWINS = {
    "02_editor_training": [(training, [])],
    "03_multitask_and_holdout": [(experiments, ["multitask"]), (experiments, ["holdout"])],
    "04_unseen_instructions": [(experiments, ["unseen"]), (experiments, ["transfer"])],
    "05_instruction_search": [(instruction_search, [])],
    "06_gradient_analysis": [(experiments, ["gradients"])],
    "07_task_scaling_and_balance": [(experiments, ["mixtures"])],
    "08_sequential_editing": [(experiments, ["sequential"])],
}


def _cell_source(cell) -> str:
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))


def notebook_config(path, injected: dict) -> ExperimentConfig:
    """Run the notebook's parameters cell, papermill's injected cell and its ``config`` cell; return ``cfg``."""
    nb = parameterize_notebook(load_notebook_node(str(path)), injected, kernel_name="python3", language="python")
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    first = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert "injected-parameters" in tags[first + 1] and "config" in tags[first + 2], \
        f"{path.name}: the cell after the parameters (and papermill's injected cell) must be the `config` cell"
    namespace: dict = {}
    for cell in nb.cells[first:first + 3]:
        exec(_cell_source(cell), namespace)
    return namespace["cfg"]


def _argv(profile, runs_dir, overrides):
    return ["--profile", profile, "--runs-dir", str(runs_dir)] + [f"-p{k}={json.dumps(v)}" for k, v in overrides.items()]


@pytest.mark.parametrize("overrides", [{}, {"seed": 3, "sample_per_task": 7}], ids=["profile", "overrides"])
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runner_and_cli_build_the_same_config(path, profile, overrides, tmp_path):
    overrides = {k: v for k, v in overrides.items() if k in parameters.declared_parameters(path)}
    injected = parameters.notebook_parameters(path, profile, overrides, tmp_path)
    from_notebook = notebook_config(path, injected).to_dict()
    assert from_notebook == parameters.notebook_config(path.stem, profile, overrides, tmp_path).to_dict()
    assert from_notebook["run_dir"] == str(tmp_path / profile / path.stem)
    for module, prefix in CLI_TWINS.get(path.stem, []):
        args = module.build_parser().parse_args(prefix + _argv(profile, tmp_path, overrides))
        assert module.config_from_args(args).to_dict() == from_notebook, (module.__name__, prefix)


def test_every_notebook_with_a_command_line_has_its_twin_tested():
    twins = {experiments.NOTEBOOKS[s] for s in experiments.SETTINGS} | {training.NOTEBOOK, instruction_search.NOTEBOOK}
    assert twins == set(CLI_TWINS)
    assert {s for name in experiments.NOTEBOOKS.values() for _, prefix in CLI_TWINS[name]
            for s in prefix} == set(experiments.SETTINGS)


@pytest.mark.parametrize("module, prefix", [(training, []), (experiments, ["multitask"]), (instruction_search, [])],
                         ids=["train", "eval", "search"])
def test_every_cli_refuses_a_missing_instruction_pool_before_loading_a_model(module, prefix, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setattr(experiment_config, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_:
        module.main(prefix + ["--profile", "ci", "--runs-dir", str(tmp_path), "-p",
                              f"instructions_file={tmp_path}/no.json"])
    assert exit_.value.code == 2 and f"No instruction pool file {tmp_path}/no.json" in capsys.readouterr().err


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_config_cell_feeds_every_declared_parameter(path):
    """The ``config`` cell passes each parameter of the parameters cell, by its own name, and nothing else."""
    tree = ast.parse(_cell_source(parameters.tagged_cell(path, "config")))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "from_parameters"]
    assert len(calls) == 1
    passed = {kw.arg: kw.value.id for kw in calls[0].keywords if isinstance(kw.value, ast.Name)}
    assert len(passed) == len(calls[0].keywords), "config cell: only parameter names may be passed"
    assert passed == {name: name for name in parameters.declared_parameters(path)}


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_hold_only_what_differs_from_the_parameters_cells(profile):
    prof = parameters.load_profile(profile)
    declared_anywhere = set()
    for path in NOTEBOOKS:
        defaults = parameters.notebook_defaults(path)
        declared_anywhere |= set(defaults)
        for name, value in prof["notebooks"].get(path.stem, {}).items():
            assert defaults[name] != value, f"{profile}.yaml repeats {path.stem}'s {name} = {value!r}"
        for name, value in prof["defaults"].items():
            if name in defaults:
                assert defaults[name] != value, f"{profile}.yaml defaults repeat {path.stem}'s {name} = {value!r}"
    assert set(prof["defaults"]) <= declared_anywhere
    assert set(prof["notebooks"]) <= {p.stem for p in NOTEBOOKS}


def test_parameters_cell_must_hold_literals():
    assert parameters.parse_parameters_cell("a = 1\nb = [1, 'x']  # note\nc = None\n") == \
        {"a": 1, "b": [1, "x"], "c": None}
    with pytest.raises(ValueError, match="line 2: the value of 'b' is not a Python literal"):
        parameters.parse_parameters_cell("a = 1\nb = compute()\n")
    with pytest.raises(ValueError, match="line 1: only `name = <literal>`"):
        parameters.parse_parameters_cell("import os\n")


def test_overrides_are_parsed_and_checked(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("sample_per_task: 3\nseed: 1\n")
    assert parameters.parse_overrides(["seed=2", "tasks=[zsre]"], params) == \
        {"sample_per_task": 3, "seed": 2, "tasks": ["zsre"]}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parameters.parse_overrides(["seed"])
    with pytest.raises(KeyError, match="has no parameter"):
        parameters.notebook_config("03_multitask_and_holdout", "cpu", {"no_such": 1})


def test_run_dir_is_injected_relative_and_resolved_against_the_project_root():
    path = parameters.notebook_path("03_multitask_and_holdout")
    injected = parameters.notebook_parameters(path, "ci")
    assert injected["run_dir"] == "runs/ci/03_multitask_and_holdout"  # no machine path in the rendered book
    cfg = ExperimentConfig(run_dir=injected["run_dir"])
    assert cfg.run_dir == str(PROJECT_ROOT / "runs" / "ci" / "03_multitask_and_holdout")


def test_cli_checks_a_descriptions_file_before_loading_a_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiment_config, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    bad = tmp_path / "descriptions.json"
    bad.write_text(json.dumps({"_about": "my wordings", "zsre": ["Answer with the new fact."]}))
    with pytest.raises(SystemExit) as exit_:
        experiments.main(["unseen", "--profile", "ci", "--runs-dir", str(tmp_path), "--descriptions", str(bad)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "descriptions.json" in err and "'_about'" in err


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_as_we_do(path):
    """papermill's own parser (used to warn about unknown parameters) must see the same names: a line it cannot
    parse prints noise into every run's log."""
    import papermill

    assert set(papermill.inspect_notebook(str(path))) == parameters.declared_parameters(path)


def test_config_table_shows_no_machine_paths(tmp_path):
    from instructedit_utils.config.experiment import config_table
    from instructedit_utils.util.paths import display_path

    cfg = parameters.notebook_config("01_instruction_construction", "ci")
    table = config_table(cfg)
    assert table.loc["run_dir", "value"] == "runs/ci/01_instruction_construction"
    assert table.loc["tasks", "value"] == "counterfact, recent, convsent, zsre" and table.loc["data_dir", "value"] == "—"
    assert display_path(PROJECT_ROOT / "runs" / "x") == "runs/x"
    assert display_path(tmp_path) == str(tmp_path)  # outside the project and home: as it is
