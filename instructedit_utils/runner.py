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
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .parameters import (RUNS_DIR, add_arguments, notebook_parameters, notebook_path, notebooks, parse_overrides,
                         resolved_parameters)
from .paths import PROJECT_ROOT, project_path

EXECUTED_DIR = PROJECT_ROOT / "book" / "executed"
COST_FILE = "cost.json"  # in each notebook's run folder: what its last execution by the runner cost


def cpu_name() -> str:
    """The machine's CPU model (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def execution_cost(name: str, params: dict[str, Any], wall_s: float, started: float) -> dict[str, Any]:
    """What one execution cost and on what: wall time, profile, device, torch threads and worker processes as the
    notebook resolved them (``workers`` None means one per core on CPU, one on a GPU), the machine."""
    from .config import ExperimentConfig, ModelConfig

    cores = os.cpu_count() or 1
    device = params.get("device", "cpu")
    workers = params.get("workers", 1)
    if "workers" in params:
        cfg = ExperimentConfig(run_dir=".", model=ModelConfig(device=device), workers=workers)
        workers = cfg.n_workers()
    threads = params.get("num_threads") or cores
    return {"notebook": name, "profile": params.get("profile"), "wall_s": round(wall_s, 1),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "device": device,
            "model": params.get("model_name"), "num_threads": threads, "workers": workers,
            "threads_per_worker": max(1, threads // max(1, workers)), "cpu": cpu_name(), "cores": cores,
            "python": platform.python_version()}


def run_notebook(name: str, profile: str = "cpu", overrides: dict[str, Any] | None = None,
                 output_dir: Path = EXECUTED_DIR, runs_dir: Path = RUNS_DIR) -> Path:
    """Execute one notebook with papermill into ``output_dir``; raises on the first failing cell."""
    import papermill

    path = notebook_path(name)
    params = notebook_parameters(path, profile, overrides, runs_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / path.name
    os.environ.pop("MPLBACKEND", None)  # an inherited Agg backend would drop the inline figures
    started = time.time()
    papermill.execute_notebook(str(path), str(out), parameters=params, cwd=str(PROJECT_ROOT),
                               kernel_name="python3", progress_bar=False, log_output=False)
    resolved = resolved_parameters(path, profile, overrides, runs_dir)
    cost = execution_cost(path.stem, resolved, time.time() - started, started)
    run_dir = project_path(resolved["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / COST_FILE).write_text(json.dumps(cost, indent=2) + "\n")
    return out


def read_costs(profile: str = "cpu", runs_dir: Path = RUNS_DIR) -> list[dict[str, Any]]:
    """The cost records of the notebooks' last executions by the runner with ``profile`` (book order)."""
    out = []
    for path in notebooks():
        file = Path(runs_dir) / profile / path.stem / COST_FILE
        if file.is_file():
            out.append(json.loads(file.read_text()))
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
            started = time.time()
            out = run_notebook(name, args.profile, overrides, output_dir=args.output_dir.resolve(),
                               runs_dir=args.runs_dir.resolve())
            print(f"[instructedit-book] wrote {out} ({(time.time() - started) / 60:.1f} min)", flush=True)
        costs = [c for c in read_costs(args.profile, args.runs_dir.resolve()) if c["notebook"] in names]
        for c in costs:
            print(f"[instructedit-book] {c['notebook']}: {c['wall_s'] / 60:.1f} min, {c['workers']} worker(s) x "
                  f"{c['threads_per_worker']} thread(s), {c['cpu']} ({c['cores']} cores)", flush=True)
        print(f"[instructedit-book] notebooks: {sum(c['wall_s'] for c in costs) / 60:.1f} min", flush=True)
    if not args.no_build:
        started = time.time()
        index = build_book()
        print(f"[instructedit-book] book: {index} ({(time.time() - started) / 60:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
