"""``instructedit-train`` with every file this process writes under a folder recorded (Python's audit hooks: files
opened for writing, renamed or removed), for tests/integration/test_accelerate_launch.py.

    accelerate launch … tests/integration/launch_audited.py AUDIT_DIR WATCHED_DIR [instructedit-train arguments]

writes ``AUDIT_DIR/rank<RANK>.json``: ``{"rank", "processes", "backend", "writes": [paths relative to WATCHED_DIR]}``.
"""
import json
import os
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main() -> int:
    audit_dir, watched, argv = Path(sys.argv[1]), Path(sys.argv[2]).resolve(), sys.argv[3:]
    writes: list[str] = []

    def under(path) -> str | None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None  # an open file descriptor
        try:
            return str(Path(os.fsdecode(path)).resolve().relative_to(watched))
        except ValueError:
            return None

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") if mode is not None else bool((flags or 0) & WRITE_FLAGS)
            paths = [path] if writing else []
        elif event in ("os.rename", "os.remove", "os.truncate"):
            paths = list(args[:2]) if event == "os.rename" else [args[0]]
        else:
            return
        writes.extend(p for p in map(under, paths) if p is not None)

    sys.addaudithook(hook)
    from accelerate import PartialState

    from instructedit_utils.training.cli import main as train

    code = train(argv)
    state = PartialState()
    audit_dir.mkdir(parents=True, exist_ok=True)
    (audit_dir / f"rank{state.process_index}.json").write_text(json.dumps({
        "rank": state.process_index, "processes": state.num_processes, "backend": state.backend,
        "writes": sorted(set(writes))}))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
