"""Run folders: every notebook reads and writes its artifacts under one folder.

Layout: ``params.json`` (the config), ``<name>.jsonl`` (one JSON line per case, appended as cases finish so an
interrupted run resumes without redoing them), ``<name>.settings.json`` (everything that changes those cases'
numbers, see :meth:`RunFolder.check_settings`), ``<name>_summary.csv`` (aggregates).

A case file only ever holds cases of one set of settings: each case line carries the digest of its settings, and
resuming with other settings is an error naming the file and every differing field (delete the file or use another
run folder). The run folder is not keyed by the settings on purpose: a notebook and its command-line twin must find
each other's cases, and an experiment that changed must say so rather than land silently next to the old one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8", suffix=".tmp") as fh:
        fh.write(text)
    os.replace(fh.name, path)


def atomic_write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON with sorted keys, written atomically."""
    atomic_write_text(Path(path), json.dumps(payload, indent=2, sort_keys=True))


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(_clean(r), ensure_ascii=False) + "\n" for r in rows)


class SettingsMismatch(ValueError):
    """Cases in a run folder were scored with other settings than the ones asked for now."""


def settings_digest(settings: dict[str, Any]) -> str:
    """A short, order-independent digest of JSON-able settings."""
    text = json.dumps(_clean(settings), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one flat dict with slash keys (``{"a": {"b": 1}}`` → ``{"a/b": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``field: old → new`` for every field that differs (slash keys; ``—`` where a side lacks the field)."""
    a, b = flatten(_clean(old)), flatten(_clean(new))
    return [f"{k}: {json.dumps(a[k]) if k in a else '—'} → {json.dumps(b[k]) if k in b else '—'}"
            for k in sorted(set(a) | set(b)) if a.get(k, ...) != b.get(k, ...)]


class RunFolder:
    """A folder of artifacts for one notebook run (``runs/<profile>/<notebook>``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_params(self, params: dict[str, Any]) -> Path:
        import transformers

        payload = {**params, "_versions": {"python": platform.python_version(), "torch": torch.__version__,
                                           "transformers": transformers.__version__}}
        path = self.path / "params.json"
        atomic_write_text(path, json.dumps(_clean(payload), indent=2, sort_keys=True))
        return path

    def read_params(self) -> dict[str, Any]:
        return json.loads((self.path / "params.json").read_text())

    def write_json(self, name: str, payload: Any) -> Path:
        """``<name>.json`` written atomically (NaN/inf as null)."""
        path = self.path / f"{name}.json"
        atomic_write_text(path, json.dumps(_clean(payload), indent=2, ensure_ascii=False))
        return path

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / f"{name}.json").read_text(encoding="utf-8"))

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
                atomic_write_text(path, jsonl(rows))
        with path.open("a", encoding="utf-8") as fh:
            fh.write(jsonl(cases))
            fh.flush()
            os.fsync(fh.fileno())

    def settings_path(self, name: str) -> Path:
        return self.path / f"{name}.settings.json"

    def check_settings(self, name: str, settings: dict[str, Any]) -> str:
        """Make sure the cases of ``<name>.jsonl`` belong to ``settings``; return their digest.

        No cases yet: the settings are recorded (``<name>.settings.json``). Cases there: they must carry the same
        digest, else :class:`SettingsMismatch` names the file and each differing field. Cases without a settings
        record (an older version wrote them) are refused too: what they were scored with is unknown."""
        digest = settings_digest(settings)
        rows = self.read_cases(name)
        path, cases = self.settings_path(name), self.cases_path(name)
        if not rows:
            atomic_write_text(path, json.dumps({"digest": digest, "settings": _clean(settings)}, indent=2,
                                                ensure_ascii=False, sort_keys=True))
            return digest
        hint = f"delete {cases} (and {path.name}) or use another run folder (run_dir / --runs-dir)"
        if not path.is_file():
            raise SettingsMismatch(f"{cases} holds {len(rows)} cases but no record of the settings they were scored "
                                   f"with ({path.name} is missing, an older version wrote them); {hint}")
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("digest") != digest:
            diff = settings_diff(stored.get("settings", {}), settings)
            raise SettingsMismatch(f"{cases} holds cases scored with other settings — " + "; ".join(diff) +
                                   f". To score with the new settings, {hint}")
        strays = sorted({str(r.get("settings")) for r in rows} - {digest})
        if strays:
            raise SettingsMismatch(f"{cases} holds cases of other settings (digests {strays}, the record says "
                                   f"{digest}); {hint}")
        return digest

    def write_table(self, name: str, table: pd.DataFrame) -> Path:
        path = self.path / f"{name}.csv"
        atomic_write_text(path, table.to_csv(index=True))
        return path

    def read_table(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.path / f"{name}.csv", index_col=0)
