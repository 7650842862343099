"""The GitHub Actions workflow that executes, builds and deploys the book (``.github/workflows/book.yml``) cannot run
here; it must at least be valid (``actionlint``, installed by the test extras) and run nothing but what ``.ci/setup``
installs (the project's ``.venv`` commands) besides a few shell tools and GitHub's own actions."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
SHELL_TOOLS = {"test", "mkdir", "curl", "tar", "cp", "echo", "exit"}


def _actionlint() -> str:
    exe = Path(sys.executable).with_name("actionlint")
    found = str(exe) if exe.exists() else shutil.which("actionlint")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("actionlint must be installed in CI (bash .ci/setup installs the test extras)")
        pytest.skip("actionlint not installed (pip install -e '.[test]')")
    return found


def _steps() -> list[dict]:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return [step for job in jobs.values() for step in job.get("steps", [])]


def test_actionlint_passes_on_the_workflow():
    done = subprocess.run([_actionlint(), "-no-color", str(WORKFLOW)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_workflow_runs_only_what_the_set_up_installs():
    commands = []
    for step in _steps():
        for line in (step.get("run") or "").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for part in re.split(r"&&|\|\||\||;", line):  # every command of a chain or pipe
                words = [w for w in shlex.split(part.strip(" {}")) if not re.match(r"^[A-Z_]+=", w)]  # no env prefix
                if words:
                    commands.append(words)
    assert ["bash", ".ci/setup"] in commands, "the workflow must set up with .ci/setup"
    for words in commands:
        exe = words[0]
        if exe.startswith(".venv/bin/"):
            assert (ROOT / exe).exists() or not (ROOT / ".venv").exists(), f"{exe} is not what .ci/setup installs"
        else:
            assert exe in SHELL_TOOLS or words == ["bash", ".ci/setup"], f"the workflow runs {exe!r}"
    used = {step["uses"].split("@")[0] for step in _steps() if "uses" in step}
    assert used and all(u.startswith("actions/") for u in used), f"only GitHub's own actions: {sorted(used)}"


def test_the_workflow_executes_what_ci_checks():
    text = WORKFLOW.read_text()
    for command in ('.venv/bin/instructedit-book --profile "$PROFILE"', ".venv/bin/python -m pytest -q",
                    ".venv/bin/instructedit-book --profile gpu --smoke", "tests/book", "_build/html"):
        assert command in text, f"the workflow does not run {command!r}"
