"""Execute the book's notebooks with a named profile (papermill) and build the book (Jupyter Book 1.x).

Command line::

    instructedit-book --profile cpu                 # every notebook, then the book into _build/html
    instructedit-book --profile ci --no-build 01_instruction_construction
    instructedit-book --profile cpu -p sample_per_task=10 -f my_params.yaml 01_instruction_construction

Executed notebooks land in ``book/executed/`` (what ``_toc.yml`` lists); their artifacts in
``runs/<profile>/<notebook>/``. Each notebook's parameters cell holds the book's default (``cpu``) values; a profile
(``instructedit_utils/profiles/<name>.yaml``) holds what differs from them: ``defaults`` (given to every notebook that
declares them) and per-notebook ``notebooks.<name>`` values (which must be declared). See
:mod:`instructedit_utils.parameters`, which the command-line twins of the notebooks share.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from .parameters import RUNS_DIR, add_arguments, notebook_parameters, notebook_path, notebooks, parse_overrides
from .paths import PROJECT_ROOT

EXECUTED_DIR = PROJECT_ROOT / "book" / "executed"


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
    add_arguments(parser, "the named notebooks")
    parser.add_argument("--output-dir", type=Path, default=EXECUTED_DIR,
                        help="where executed notebooks go (default: the book's; another folder keeps the book as is)")
    parser.add_argument("--no-build", action="store_true", help="only execute, do not build the book")
    parser.add_argument("--no-execute", action="store_true", help="only build the book from executed notebooks")
    args = parser.parse_args(argv)

    try:
        overrides = parse_overrides(args.param, args.parameters_file)
    except ValueError as exc:
        parser.error(str(exc))
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
