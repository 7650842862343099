"""Execute the book's notebooks with a named profile (papermill) and build the book (Jupyter Book 1.x).

Command line::

    instructedit-book --profile cpu                 # every notebook, the book into _build/html, its PDF
    instructedit-book --profile gpu --smoke         # the gpu profile's code paths, smallest sizes, tiny model, CPU
    instructedit-book --profile ci --no-build 01_instruction_construction
    instructedit-book --profile cpu -p sample_per_task=10 -f my_params.yaml 01_instruction_construction

Executed notebooks land in ``book/executed/`` (what ``_toc.yml`` lists); their artifacts in
``runs/<profile>/<notebook>/``. Around each execution the runner converts the GGUF models the notebooks load (so the
conversion's progress goes to the terminal, not onto a page), records what the execution cost in the run folder
(``cost.json``: wall time, threads, workers, CPU, commit, whether the run folder already held results), folds the
set-up cells (parameters, papermill's injected cell, config), copies the pages a notebook wrote for the rest of the
book (``<run folder>/publish/*.md``) next to the executed notebooks and ends each page with its provenance footer and
downloads (:mod:`.provenance`). After the HTML book it prints the PDF (:mod:`.pdf`). ``--smoke`` executes every
notebook with the profile's own code paths at the sizes of ``profiles/smoke.yaml``, on the tiny random model of the
profile's model's architecture, on CPU (runs under ``runs/smoke/``; no book).

Each notebook's parameters cell holds the book's default (``cpu``) values; a profile
(``instructedit_utils/profiles/<name>.yaml``) holds what differs from them: ``defaults`` (given to every notebook that
declares them) and per-notebook ``notebooks.<name>`` values (which must be declared). See
:mod:`instructedit_utils.config.parameters`, which the command-line twins of the notebooks share.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..config.parameters import (RUNS_DIR, add_arguments, notebook_parameters, notebook_path, notebooks,
                                overrides_by_notebook, parse_overrides, resolved_parameters, smoke_overrides)
from ..util.paths import PROJECT_ROOT, project_path
from ..config.experiment import ExperimentConfig, ModelConfig
from ..models import loading as models
from . import pdf, provenance

EXECUTED_DIR = PROJECT_ROOT / "book" / "executed"
COST_FILE = "cost.json"  # in each notebook's run folder: what its last execution by the runner cost
PUBLISH_DIR = "publish"  # in a run folder: pages for other pages of the book, copied next to the executed notebooks
ARCHIVE_PAGE = "09_results"  # links the archive of every run folder's summaries
READS_OTHER_RUNS = ("09_results", "10_cost")  # pages that read the other chapters' runs: no launch links
SMOKE_DIR = "smoke"  # under runs/: where --smoke runs go (runs/smoke/<profile>/...)


def cpu_name() -> str:
    """The machine's CPU model (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """The project's commit (short hash, ``+`` when the tree has changes), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def execution_cost(name: str, params: dict[str, Any], wall_s: float, started: float) -> dict[str, Any]:
    """What one execution cost and on what: wall time, profile, device, torch threads and worker processes as the
    notebook resolved them (``workers`` None means one per core on CPU, one on a GPU), the machine."""
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
            "python": platform.python_version(), "commit": git_commit()}


def prepare_models(names: Sequence[str], profile: str, overrides: dict[str, Any] | None = None,
                   runs_dir: Path = RUNS_DIR) -> list[str]:
    """Convert the GGUF models the notebooks will load, here in the runner: the conversion's progress bars go to
    the terminal, not onto a chapter's page. Returns the models converted (already converted ones cost nothing)."""
    done = []
    for name, mine in overrides_by_notebook(names, overrides).items():
        model_name = resolved_parameters(notebook_path(name), profile, mine, runs_dir).get("model_name")
        preset = models.MODEL_PRESETS.get(model_name) if model_name else None
        if preset is not None and preset.source == "gguf-package" and model_name not in done:
            models.converted_model_dir(preset)
            done.append(model_name)
    return done


#: cell tags whose source the book folds away ("Show code cell source"): the set-up a reader rarely needs to see
FOLDED = ("parameters", "injected-parameters", "config")


def fold_setup_cells(path: Path) -> None:
    """Tag the executed notebook's set-up cells (parameters, papermill's injected cell, config) ``hide-input``."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if set(tags) & set(FOLDED) and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]
    nbformat.write(nb, path)


def publish(run_dir: Path, output_dir: Path) -> list[Path]:
    """Copy the pages a notebook wrote for other pages of the book (``<run_dir>/publish/*.md``, e.g. the claims table
    the intro includes) next to the executed notebooks."""
    out = []
    for page in sorted((run_dir / PUBLISH_DIR).glob("*.md")):
        target = output_dir / page.name
        shutil.copyfile(page, target)
        out.append(target)
    return out


def run_notebook(name: str, profile: str = "cpu", overrides: dict[str, Any] | None = None,
                 output_dir: Path = EXECUTED_DIR, runs_dir: Path = RUNS_DIR, smoke: bool = False) -> Path:
    """Execute one notebook with papermill into ``output_dir``; raises on the first failing cell. Records what it
    cost in the run folder, folds the set-up cells, publishes the pages the notebook wrote for the book and ends the
    page with its provenance footer and downloads (:func:`finish_page`)."""
    import papermill

    path = notebook_path(name)
    params = notebook_parameters(path, profile, overrides, runs_dir)
    resolved = resolved_parameters(path, profile, overrides, runs_dir)
    run_dir = project_path(resolved["run_dir"])
    resumed = run_dir.is_dir() and any(p.name != COST_FILE for p in run_dir.iterdir())
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / path.name
    os.environ.pop("MPLBACKEND", None)  # an inherited Agg backend would drop the inline figures
    started = time.time()
    papermill.execute_notebook(str(path), str(out), parameters=params, cwd=str(PROJECT_ROOT),
                               kernel_name="python3", progress_bar=False, log_output=False)
    cost = execution_cost(path.stem, resolved, time.time() - started, started)
    cost.update(resumed=resumed, smoke=smoke)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / COST_FILE).write_text(json.dumps(cost, indent=2) + "\n")
    fold_setup_cells(out)
    publish(run_dir, output_dir)
    finish_page(out, cost, run_dir, Path(runs_dir) / profile)
    return out


def finish_page(out: Path, cost: dict[str, Any], run_dir: Path, profile_dir: Path) -> None:
    """The executed notebook's provenance footer: its downloads (summary tables; on the results page, the archive of
    every run folder's summaries) and, where a chapter runs on its own, links to run it in Colab or Binder."""
    name = out.stem
    downloads = provenance.copy_downloads(run_dir, out.parent, name)
    archive = provenance.summaries_archive(profile_dir, out.parent) if name == ARCHIVE_PAGE else None
    launch = ({} if name in READS_OTHER_RUNS else
              provenance.launch_links(provenance.repository_url(PROJECT_ROOT), cost.get("commit"), name))
    provenance.add_footer(out, provenance.footer_markdown(cost, downloads, archive, launch))


def read_costs(profile: str = "cpu", runs_dir: Path = RUNS_DIR) -> list[dict[str, Any]]:
    """The cost records of the notebooks' last executions by the runner with ``profile`` (book order)."""
    out = []
    for path in notebooks():
        file = Path(runs_dir) / profile / path.stem / COST_FILE
        if file.is_file():
            out.append(json.loads(file.read_text()))
    return out


def build_book(root: Path = PROJECT_ROOT, strict: bool = True, builder: str = "html") -> Path:
    """``jupyter-book build`` with ``builder`` (``html``, or ``singlehtml`` for the PDF; execution off in
    ``_config.yml``); ``strict`` turns warnings into errors (-W). Returns the build's ``index.html``."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe if exe.exists() else "jupyter-book"), "build", str(root), "--builder", builder]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    subprocess.run(cmd, check=True)
    index = root / "_build" / builder / "index.html"
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
    parser.add_argument("--no-pdf", action="store_true", help="build the HTML book only, not its PDF")
    parser.add_argument("--smoke", action="store_true",
                        help="every notebook with the profile's own code paths at the smallest scale, on the tiny "
                             "random model of the profile's model's architecture, on CPU, in a few minutes (runs "
                             f"and executed notebooks under {SMOKE_DIR}/ unless --runs-dir/--output-dir say; no book)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs_dir = args.runs_dir if args.runs_dir != RUNS_DIR else RUNS_DIR / SMOKE_DIR
        if args.output_dir == EXECUTED_DIR:
            args.output_dir = args.runs_dir / args.profile / "executed"
        args.no_build = True

    try:
        overrides = parse_overrides(args.param, args.parameters_file)
    except ValueError as exc:
        parser.error(str(exc))
    names = args.notebooks or [p.stem for p in notebooks()]
    try:
        per_notebook = overrides_by_notebook(names, overrides)
    except (KeyError, FileNotFoundError) as exc:
        parser.error(exc.args[0] if isinstance(exc, KeyError) else str(exc))
    if args.smoke:  # the smallest sizes and the tiny model first, what -p/-f say over them
        per_notebook = {n: {**smoke_overrides(n, args.profile), **mine} for n, mine in per_notebook.items()}
    if not args.no_execute:
        for model in prepare_models(names, args.profile, overrides, args.runs_dir.resolve()):
            print(f"[instructedit-book] model {model} ready (converted once, cached)", flush=True)
        for name in names:
            print(f"[instructedit-book] executing {name} with profile {args.profile}", flush=True)
            started = time.time()
            out = run_notebook(name, args.profile, per_notebook[name], output_dir=args.output_dir.resolve(),
                               runs_dir=args.runs_dir.resolve(), smoke=args.smoke)
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
        if not args.no_pdf:
            return print_book()
    return 0


def print_book(root: Path = PROJECT_ROOT) -> int:
    """The book's PDF: the ``singlehtml`` build printed by Chromium (:func:`.pdf.print_pdf`), checked for blank
    pages; 1 when one is blank."""
    started = time.time()
    build_book(root, builder="singlehtml")
    path = pdf.print_pdf(root)
    pages, blank = pdf.blank_pages(path)
    print(f"[instructedit-book] PDF: {path.relative_to(root)}, {pages} pages ({(time.time() - started) / 60:.1f} min)",
          flush=True)
    if blank:
        print(f"[instructedit-book] ERROR: blank PDF pages {blank}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
