"""Execute the book's notebooks with a named profile (papermill) and build the book (Jupyter Book 1.x).

Command line::

    instructedit-book --profile cpu                 # every notebook, then the book into _build/html
    instructedit-book --profile ci --no-build 01_instruction_construction
    instructedit-book --profile cpu -p sample_per_task=10 -f my_params.yaml 01_instruction_construction

Executed notebooks land in ``book/executed/`` (what ``_toc.yml`` lists); their artifacts in
``runs/<profile>/<notebook>/``. A profile (``instructedit_utils/profiles/<name>.yaml``) has ``defaults`` (given to
every notebook that declares them) and per-notebook ``notebooks.<name>`` values (which must be declared).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from .config import PROFILES
from .paths import PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
EXECUTED_DIR = PROJECT_ROOT / "book" / "executed"
RUNS_DIR = PROJECT_ROOT / "runs"


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
        raise FileNotFoundError(f"No notebook {path}; available: {[p.stem for p in notebooks()]}")
    return path


def declared_parameters(path: Path) -> set[str]:
    """Names assigned in the notebook's ``parameters`` cell."""
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def notebook_parameters(path: Path, profile: str, overrides: dict[str, Any] | None = None,
                        runs_dir: Path = RUNS_DIR) -> dict[str, Any]:
    """Parameters for one notebook: profile defaults it declares + its own section + overrides + profile/run_dir."""
    prof = load_profile(profile)
    declared = declared_parameters(path)
    params = {k: v for k, v in prof["defaults"].items() if k in declared}
    specific = {**prof["notebooks"].get(path.stem, {}), **(overrides or {})}
    unknown = sorted(set(specific) - declared)
    if unknown:
        raise KeyError(f"{path.name} has no parameter(s) {unknown}; its parameters cell declares {sorted(declared)}")
    params.update(specific)
    for key, value in (("profile", profile), ("run_dir", str(runs_dir / profile / path.stem))):
        if key in declared:
            params.setdefault(key, value)
    return params


def run_notebook(name: str, profile: str = "cpu", overrides: dict[str, Any] | None = None,
                 output_dir: Path = EXECUTED_DIR, runs_dir: Path = RUNS_DIR) -> Path:
    """Execute one notebook with papermill into ``output_dir``; raises on the first failing cell."""
    import papermill

    path = notebook_path(name)
    params = notebook_parameters(path, profile, overrides, runs_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / path.name
    os.environ.pop("MPLBACKEND", None)  # an inherited Agg backend would drop the inline figures
    papermill.execute_notebook(str(path), str(out), parameters=params, cwd=str(PROJECT_ROOT),
                               kernel_name="python3", progress_bar=False, log_output=False)
    return out


def build_book(root: Path = PROJECT_ROOT, strict: bool = True) -> Path:
    """``jupyter-book build`` (execution off in ``_config.yml``); ``strict`` turns warnings into errors (-W)."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe if exe.exists() else "jupyter-book"), "build", str(root), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    subprocess.run(cmd, check=True)
    index = root / "_build" / "html" / "index.html"
    if not index.is_file():
        raise FileNotFoundError(f"Book build finished without {index}")
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebook names (default: all, in order)")
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override one parameter (YAML value) of the named notebooks")
    parser.add_argument("-f", "--parameters-file", help="YAML file of parameter overrides")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR,
                        help="root of the run folders (default runs/; e.g. a separate one for another model_name)")
    parser.add_argument("--output-dir", type=Path, default=EXECUTED_DIR,
                        help="where executed notebooks go (default: the book's; another folder keeps the book as is)")
    parser.add_argument("--no-build", action="store_true", help="only execute, do not build the book")
    parser.add_argument("--no-execute", action="store_true", help="only build the book from executed notebooks")
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {}
    if args.parameters_file:
        overrides.update(yaml.safe_load(Path(args.parameters_file).read_text()) or {})
    for item in args.param:
        if "=" not in item:
            parser.error(f"--param expects NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    names = args.notebooks or [p.stem for p in notebooks()]
    if not args.no_execute:
        for name in names:
            print(f"[instructedit-book] executing {name} with profile {args.profile}", flush=True)
            out = run_notebook(name, args.profile, overrides, output_dir=args.output_dir.resolve(),
                               runs_dir=args.runs_dir.resolve())
            print(f"[instructedit-book] wrote {out}", flush=True)
    if not args.no_build:
        index = build_book()
        print(f"[instructedit-book] book: {index}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
