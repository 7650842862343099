"""Run folders: every notebook reads and writes its artifacts under one folder.

Layout: ``params.json`` (the config), ``<name>.jsonl`` (one JSON line per case, appended as cases finish so an
interrupted run resumes without redoing them), ``<name>_summary.csv`` (aggregates).
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8", suffix=".tmp") as fh:
        fh.write(text)
    os.replace(fh.name, path)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(_clean(r), ensure_ascii=False) + "\n" for r in rows)


class RunFolder:
    """A folder of artifacts for one notebook run (``runs/<profile>/<notebook>``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_params(self, params: dict[str, Any]) -> Path:
        import torch
        import transformers

        payload = {**params, "_versions": {"python": platform.python_version(), "torch": torch.__version__,
                                           "transformers": transformers.__version__}}
        path = self.path / "params.json"
        _atomic_write_text(path, json.dumps(_clean(payload), indent=2, sort_keys=True))
        return path

    def read_params(self) -> dict[str, Any]:
        return json.loads((self.path / "params.json").read_text())

    def cases_path(self, name: str) -> Path:
        return self.path / f"{name}.jsonl"

    def read_cases(self, name: str) -> list[dict[str, Any]]:
        """Cases written so far; a torn last line (killed mid-write) is ignored."""
        path = self.cases_path(name)
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rows

    def done_ids(self, name: str) -> set[str]:
        return {row["case_id"] for row in self.read_cases(name)}

    def append_cases(self, name: str, cases: Iterable[dict[str, Any]]) -> None:
        """Append cases as JSON lines. A torn last line (a kill mid-write leaves no final newline) is cut first."""
        path = self.cases_path(name)
        if path.exists() and path.stat().st_size:
            with path.open("rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
            if torn:
                rows = self.read_cases(name)
                _atomic_write_text(path, _jsonl(rows))
        with path.open("a", encoding="utf-8") as fh:
            fh.write(_jsonl(cases))
            fh.flush()
            os.fsync(fh.fileno())

    def write_table(self, name: str, table: pd.DataFrame) -> Path:
        path = self.path / f"{name}.csv"
        _atomic_write_text(path, table.to_csv(index=True))
        return path

    def read_table(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.path / f"{name}.csv", index_col=0)
