"""The lowest layer: where things live (:mod:`.paths`), run folders with resumable case files and atomic writes
(:mod:`.runs`) and the process's torch settings (:mod:`.runtime`). Imports nothing of the package."""
from .paths import PROJECT_ROOT, data_dir, display_path, project_path
from .runs import RunFolder, SettingsMismatch
from .runtime import setup_torch

__all__ = ["PROJECT_ROOT", "data_dir", "display_path", "project_path", "RunFolder", "SettingsMismatch", "setup_torch"]
