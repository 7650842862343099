"""One source of parameters for the notebooks, the book runner and every command line.

A notebook's ``parameters`` cell holds its defaults — the book's default settings, the ``cpu`` profile — as plain
``name = literal`` lines. A profile (``instructedit_utils/profiles/<name>.yaml``) holds only what differs from them:
``defaults`` (given to every notebook that declares the name) and ``notebooks.<name>`` (values for one notebook).
Overrides (``-p NAME=VALUE``, ``-f FILE``) come last. So, for a notebook, a profile and overrides:

* :func:`notebook_parameters` — what the runner injects after the parameters cell (profile values, overrides,
  ``profile`` and ``run_dir``, relative to the project root when inside it: relative run folders are resolved
  against the project root by :class:`~instructedit_utils.config.ExperimentConfig`);
* :func:`resolved_parameters` — every parameter as the notebook sees it after that injection (its own defaults
  updated with the injected values);
* :func:`notebook_config` — the :class:`~instructedit_utils.config.ExperimentConfig` built from them, exactly what
  the notebook's ``config`` cell builds (a test executes both for every notebook × profile).

The command-line twins of the notebooks (``instructedit-train`` for 02, ``instructedit-eval`` for 03/04) share their
options through :func:`add_arguments` and build their configuration with :func:`config_from_args`.
"""
from __future__ import annotations

import argparse
import ast
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from .experiment import PROFILES, ExperimentConfig
from ..models.loading import tiny_stand_in
from ..util.paths import PROJECT_ROOT, display_path

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
RUNS_DIR = PROJECT_ROOT / "runs"
#: names every notebook declares whose value the runner derives (profile name, run folder)
DERIVED = ("profile", "run_dir")


def load_profile(name: str) -> dict[str, Any]:
    """The profile's ``defaults`` and ``notebooks`` sections."""
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}; choose from {PROFILES}")
    text = (resources.files("instructedit_utils") / "profiles" / f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    return {"defaults": data.get("defaults") or {}, "notebooks": data.get("notebooks") or {}}


def notebooks() -> list[Path]:
    """The book's source notebooks, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def notebook_path(name: str) -> Path:
    path = NOTEBOOK_DIR / (name if name.endswith(".ipynb") else f"{name}.ipynb")
    if not path.is_file():
        raise FileNotFoundError(f"No notebook {path}; available: {[p.stem for p in notebooks()]} (the command-line "
                                "tools read the notebooks' parameters cells: run them from a checkout of the project)")
    return path


def tagged_cell(path: Path, tag: str):
    """The one cell of notebook ``path`` tagged ``tag`` (an error when there is none or more than one)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path.name}: expected one cell tagged {tag!r}, found {len(cells)}")
    return cells[0]


def parse_parameters_cell(source: str, where: str = "parameters cell") -> dict[str, Any]:
    """``{name: value}`` of a parameters cell; every statement must be ``name = <Python literal>``."""
    out: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{where}, line {node.lineno}: only `name = <literal>` lines belong in a parameters "
                             f"cell, got {ast.get_source_segment(source, node)!r}")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"{where}, line {node.lineno}: the value of {node.targets[0].id!r} is not a Python "
                             f"literal ({ast.get_source_segment(source, node.value)!r})") from None
    return out


def notebook_defaults(path: Path) -> dict[str, Any]:
    """The defaults in the notebook's ``parameters`` cell."""
    return parse_parameters_cell(tagged_cell(path, "parameters").source, f"{path.name} parameters cell")


def declared_parameters(path: Path) -> set[str]:
    """Names assigned in the notebook's ``parameters`` cell."""
    return set(notebook_defaults(path))


def notebook_parameters(path: Path, profile: str, overrides: dict[str, Any] | None = None,
                        runs_dir: Path = RUNS_DIR) -> dict[str, Any]:
    """What the runner injects: profile defaults the notebook declares + its own section + overrides +
    ``profile``/``run_dir``. Unknown names are an error naming the notebook and its declared parameters."""
    prof = load_profile(profile)
    declared = declared_parameters(path)
    params = {k: v for k, v in prof["defaults"].items() if k in declared}
    specific = {**prof["notebooks"].get(path.stem, {}), **(overrides or {})}
    unknown = sorted(set(specific) - declared)
    if unknown:
        raise KeyError(f"{path.name} has no parameter(s) {unknown}; its parameters cell declares {sorted(declared)}")
    params.update(specific)
    run_dir = display_path(Path(runs_dir) / profile / path.stem)  # relative to the project root where inside it
    for key, value in (("profile", profile), ("run_dir", run_dir)):
        if key in declared:
            params.setdefault(key, value)
    return params


#: beside the profiles: what ``--smoke`` puts over any profile (sizes only; see the file)
SMOKE_FILE = "smoke.yaml"


def smoke_sizes() -> dict[str, dict[str, Any]]:
    """The smallest sizes per notebook (``profiles/smoke.yaml``)."""
    text = (resources.files("instructedit_utils") / "profiles" / SMOKE_FILE).read_text()
    return (yaml.safe_load(text) or {}).get("notebooks") or {}


def smoke_overrides(name: str, profile: str) -> dict[str, Any]:
    """What ``instructedit-book --profile PROFILE --smoke`` puts over ``profile`` in notebook ``name``: the smallest
    sizes (:func:`smoke_sizes`) and, in place of the profile's model, the tiny random model of its architecture
    (:func:`~instructedit_utils.models.loading.tiny_stand_in`) on CPU in float32. Everything else is the profile's:
    methods, tasks, seeds, mixtures, instruction settings, scoring caps."""
    path = notebook_path(name)
    declared = declared_parameters(path)
    model = resolved_parameters(path, profile).get("model_name")
    swap = {"model_name": tiny_stand_in(model), "device": "cpu", "dtype": "float32"} if model else {}
    return {k: v for k, v in {**smoke_sizes().get(path.stem, {}), **swap}.items() if k in declared}


def overrides_by_notebook(names: Sequence[str], overrides: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Each named notebook's share of ``overrides``: the names its parameters cell declares. A name no notebook of
    ``names`` declares is an error naming the notebooks (so ``-p seed=1`` reaches every chapter with a seed, and a
    typo reaches none)."""
    declared = {n: declared_parameters(notebook_path(n)) for n in names}
    known = set().union(*declared.values()) if declared else set()
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise KeyError(f"no notebook of {list(names)} has the parameter(s) {unknown}")
    return {n: {k: v for k, v in (overrides or {}).items() if k in declared[n]} for n in names}


def resolved_parameters(path: Path, profile: str, overrides: dict[str, Any] | None = None,
                        runs_dir: Path = RUNS_DIR) -> dict[str, Any]:
    """Every parameter of the notebook as its code sees it after the runner's injection."""
    return {**notebook_defaults(path), **notebook_parameters(path, profile, overrides, runs_dir)}


def notebook_config(name: str, profile: str = "cpu", overrides: dict[str, Any] | None = None,
                    runs_dir: Path = RUNS_DIR) -> ExperimentConfig:
    """The configuration notebook ``name`` builds for ``profile`` and ``overrides`` (see the module docstring)."""
    return ExperimentConfig.from_parameters(**resolved_parameters(notebook_path(name), profile, overrides,
                                                                  Path(runs_dir)))


# --------------------------------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, what: str = "the notebook") -> argparse.ArgumentParser:
    """``--profile``, ``-p NAME=VALUE``, ``-f FILE`` and ``--runs-dir``, as the book runner has them."""
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help=f"override one parameter of {what} (YAML value)")
    parser.add_argument("-f", "--parameters-file", help="YAML file of parameter overrides (before -p)")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR,
                        help="root of the run folders (default runs/): runs/<profile>/<notebook>/")
    return parser


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping (empty: ``{}``); invalid YAML or another type is an error naming the file."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected {what}")
    return loaded


def parse_overrides(items: Sequence[str], parameters_file: str | Path | None = None) -> dict[str, Any]:
    """``-f`` file values, then ``NAME=VALUE`` items (YAML values); a malformed item is an error naming it."""
    overrides: dict[str, Any] = {}
    if parameters_file:
        overrides.update(read_yaml_mapping(parameters_file, "a mapping of parameter names to values"))
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param expects NAME=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def parse_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None, build
              ) -> tuple[argparse.Namespace, ExperimentConfig]:
    """Parse ``argv`` and build the command's configuration with ``build(args)``; a bad parameter, value or file is
    the parser's error (exit status 2, the message, no traceback), before any model loads."""
    args = parser.parse_args(argv)
    try:
        return args, build(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as exc:
        parser.error(str(exc.args[0]) if exc.args else str(exc))


def config_from_args(notebook: str, args: argparse.Namespace, extra: dict[str, Any] | None = None
                     ) -> ExperimentConfig:
    """The configuration a command-line twin of ``notebook`` runs with (profile, ``-f``, ``-p``, then ``extra``)."""
    overrides = {**parse_overrides(args.param, args.parameters_file), **(extra or {})}
    return notebook_config(notebook, args.profile, overrides, args.runs_dir.resolve())

