"""Where data, caches and runs live.

Every location can be overridden with an environment variable so that the same code works on a laptop, in CI
and on a GPU machine:

``INSTRUCTEDIT_DATA``
    folder holding the KnowEdit task files (default: ``../shared/data`` next to the project, else ``./data``).
``INSTRUCTEDIT_CACHE``
    folder for converted models (default: ``~/.cache/instructedit_utils``).
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "INSTRUCTEDIT_DATA"
CACHE_ENV = "INSTRUCTEDIT_CACHE"

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # instructedit_utils/util/paths.py → the project

KNOWEDIT_HINT = (
    "The task files come from KnowEdit (zjunlp/KnowEdit on Hugging Face or ModelScope) and EasyEdit's "
    "'editing-data' release (ZsRE portability file). Put them in a folder with the layout "
    "zsre/, wiki_recent/, wiki_counterfact/, convsent/ and point ${env} at it."
).replace("${env}", DATA_ENV)


class DataNotFoundError(FileNotFoundError):
    """Raised when no task data folder can be found."""


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Return the task-data folder: ``override``, then ``$INSTRUCTEDIT_DATA``, then ``../shared/data``, ``./data``."""
    candidates: list[Path] = []
    if override:
        candidates.append(Path(override))
    elif os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]))
    else:
        candidates += [PROJECT_ROOT.parent / "shared" / "data", PROJECT_ROOT / "data"]
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise DataNotFoundError(f"No task data folder found (tried: {tried}). {KNOWEDIT_HINT}")


def cache_dir() -> Path:
    """Folder for converted models and other derived, re-creatable files."""
    root = os.environ.get(CACHE_ENV) or (Path.home() / ".cache" / "instructedit_utils")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def display_path(path: str | os.PathLike | None) -> str | None:
    """A path as a reader of the book should see it: relative to the project root when inside it, else with the
    home folder as ``~`` (no machine-specific prefixes on a rendered page)."""
    if path is None:
        return None
    p = Path(path).expanduser().resolve()
    try:
        return p.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        pass
    try:
        return "~/" + p.relative_to(Path.home()).as_posix()
    except ValueError:
        return p.as_posix()


def project_path(path: str | os.PathLike) -> Path:
    """``path`` as an absolute path; a relative one is taken relative to the project root (where the book runner
    executes the notebooks), so a notebook and a command line started elsewhere mean the same folder."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p
