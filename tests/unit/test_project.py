"""The project's own consistency: README commands, CI, pins, the book's notebooks and profiles."""
import re
import subprocess
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from instructedit_utils.config import parameters
from instructedit_utils.config.experiment import PROFILES

ROOT = Path(__file__).resolve().parents[2]


def readme_command(label: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {label} -->\s*```bash\n(.+?)\n```", text, re.S)
    assert m, f"README lacks the {label} command block"
    return m.group(1).strip()


def test_ci_runs_the_readme_test_command():
    assert readme_command("test-command") in (ROOT / ".ci" / "run").read_text()
    assert "--profile cpu" in readme_command("main-command")


def test_environment_yml_matches_pyproject_pins():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(pyproject["dependencies"]) | set(pyproject["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins == {p for p in pip if "==" in p}
    assert "torch==2.13.0" in pins


def test_every_notebook_is_in_the_toc_and_well_formed():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    names = [p.stem for p in parameters.notebooks()]
    executed = [f for f in files if f.startswith("book/executed/")]
    assert names and executed == [f"book/executed/{n}" for n in names]
    assert all((ROOT / f"{f}.md").is_file() for f in files if f not in executed)
    for path in parameters.notebooks():
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        assert "**Overview.**" in nb.cells[0].source
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1
        assert any(c.cell_type == "markdown" and c.source.startswith("## Summary") for c in nb.cells)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks unexecuted"


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_only_set_declared_parameters(profile):
    for path in parameters.notebooks():
        params = parameters.notebook_parameters(path, profile)
        assert params["profile"] == profile and params["run_dir"].endswith(f"{profile}/{path.stem}")
        assert set(params) <= parameters.declared_parameters(path)


def test_unknown_override_is_rejected():
    path = parameters.notebooks()[0]
    with pytest.raises(KeyError, match="has no parameter"):
        parameters.notebook_parameters(path, "ci", {"no_such_parameter": 1})


def test_no_task_data_is_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert "pyproject.toml" in tracked and "instructedit_utils/__init__.py" in tracked  # the listing is real
    data_names = {"zsre_mend_eval_portability_gpt4.json", "recent_train.json", "benchmark_wiki_counterfact_train_cf.json",
                  "benchmark_Convsent_blender_test.json", "benchmark_Convsent_blender_val.json"}
    assert not [f for f in tracked if Path(f).name in data_names or "wiki_counterfact" in f]


def test_every_file_of_the_package_is_tracked():
    """An ignore rule must not swallow part of the package (a root-level `data/` rule once hid `data/__init__.py`, and
    a fresh clone could not import the data subpackage's face)."""
    ignored = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "instructedit_utils",
                              "notebooks", "tests", "benchmarks"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    ignored = [f for f in ignored if "__pycache__" not in f and not f.endswith(".pyc")]
    assert ignored == []


def test_license_and_citation_describe_this_package():
    import instructedit_utils

    root = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert pyproject["license"] == "MIT" and (root / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((root / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert cff["version"] == instructedit_utils.__version__ == pyproject["version"]
    paper = cff["references"][0]
    assert "arXiv:2402.16123" in [i["value"] for i in paper["identifiers"]]
    intro = (root / "book" / "intro.md").read_text()
    assert "## How to cite" in intro and f"version = {{{cff['version']}}}" in intro
