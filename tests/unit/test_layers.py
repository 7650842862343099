"""The package's layer contract (``[tool.importlinter]`` in pyproject.toml): subpackages import only the layers below
them, no module is part of an import circle, and no module imports through the package root."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import instructedit_utils

PACKAGE = Path(instructedit_utils.__file__).resolve().parent
ROOT = PACKAGE.parent


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                          cwd=cwd, capture_output=True, text=True, env={"PYTHONPATH": str(cwd), "PATH": ""})


def test_the_layer_contracts_hold():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: a copy of the package whose lowest layer imports the publishing layer fails."""
    shutil.copytree(PACKAGE, tmp_path / "instructedit_utils", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    paths = tmp_path / "instructedit_utils" / "util" / "paths.py"
    paths.write_text(paths.read_text() + "\nfrom ..publish import results  # noqa: E402,F401  (deliberately upward)\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert "instructedit_utils.util is not allowed to import" in done.stdout
    assert "instructedit_utils.util.paths -> instructedit_utils.publish.results" in done.stdout


def _circles(graph) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return out


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("instructedit_utils", include_external_packages=False)


def test_no_import_circle(graph):
    """Between and inside subpackages: a package face importing its own modules is an edge like any other, so a
    module importing its package face back would show here too."""
    assert _circles(graph) == []


def test_no_module_imports_through_the_package_root(graph):
    importers = graph.find_modules_that_directly_import("instructedit_utils")
    assert importers == set(), importers  # the root face is for notebooks and users, never for the package itself


def test_imports_sit_at_the_top_of_modules():
    """Package imports are module-level: an import inside a function (to dodge a circle, or otherwise) is not."""
    inside = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and node.level > 0:
                        inside.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert inside == []
