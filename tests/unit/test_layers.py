"""The package's layer contract (``[tool.importlinter]`` in pyproject.toml): subpackages import only the layers below
them, no module is part of an import circle, and no module imports through the package root."""
import ast
import dataclasses
import importlib
import inspect
import json
import re
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


def test_the_circle_finder_finds_circles():
    """The circle test can fail: a hand-made graph with one circle of three modules and a tail."""
    g = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.e", "p.d")]:
        g.add_import(importer=importer, imported=imported)
    assert _circles(g) == [{"p.a", "p.b", "p.c"}]


def _modules() -> set[str]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
            if p.parent != PACKAGE and p.name not in ("__init__.py", "__main__.py")}


def test_the_file_map_names_every_module():
    """`instructedit_utils/README.md` has a line on every module, and every module it names exists."""
    text = (PACKAGE / "README.md").read_text()
    named = set()
    for room, body in re.findall(r"\*\*`(\w+)`\*\* — (.*?)(?:\n\n|$)", text, flags=re.S):
        named |= {f"{room}.{m}" for m in re.findall(r"`(\w+)`\s+\(", body)}
    chapters = set(re.findall(r"`(\w+\.\w+)`", text.split("## Chapter → modules")[1].split("## Modules")[0]))
    assert named == _modules()
    assert chapters <= _modules(), chapters - _modules()


def test_every_chapter_names_the_modules_it_uses():
    """Each notebook's overview has a **Modules.** paragraph naming modules that exist, among them every module the
    notebook imports by name."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        overview = "".join(cells[0]["source"])
        assert "**Modules.**" in overview, path.name
        named = set(re.findall(r"`(\w+\.\w+)`", overview.split("**Modules.**")[1]))
        assert named and named <= _modules(), (path.name, named - _modules())
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        imported = {f"{room}.{m.strip().split(' ')[0]}" for room, names in
                    re.findall(r"^from instructedit_utils\.(\w+) import ([^\n(]+)$", code, flags=re.M)
                    for m in names.split(",")}
        assert imported & _modules() <= named, (path.name, (imported & _modules()) - named)


def _instance_attributes(cls: type) -> set[str]:
    """Attributes an instance has beyond its class's: dataclass fields and ``self.name = …`` in the class body."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    tree = ast.parse(inspect.getsource(cls).lstrip() if not dataclasses.is_dataclass(cls) else "")
    return fields | {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                     and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
                     and node.value.id == "self"}


def _notebook_references(source: str) -> tuple[list[str], list[str]]:
    """(names imported from the package that do not exist, `name.attribute` uses of imported package names that do
    not exist) in a notebook's code."""
    tree = ast.parse("\n".join(line for line in source.split("\n") if not line.lstrip().startswith(("%", "!"))))
    names, missing, attributes = {}, [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("instructedit_utils"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    names[alias.asname or alias.name] = getattr(module, alias.name)
                else:
                    try:
                        names[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{node.module}.{alias.name}")
    instances = {}  # `cfg = ExperimentConfig.from_parameters(...)` or `cfg = SomeConfig(...)`: cfg is a SomeConfig
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.Call):
            func = node.value.func
            owner = func.value if isinstance(func, ast.Attribute) else func
            if isinstance(owner, ast.Name) and isinstance(names.get(owner.id), type):
                instances[node.targets[0].id] = names[owner.id]
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
            continue
        if node.value.id in names and not hasattr(names[node.value.id], node.attr):
            attributes.append(f"{node.value.id}.{node.attr}")
        elif node.value.id in instances:
            cls = instances[node.value.id]
            fields = _instance_attributes(cls)
            if not hasattr(cls, node.attr) and node.attr not in fields:
                attributes.append(f"{node.value.id}.{node.attr}")
    return missing, attributes


def test_the_reference_finder_finds_missing_names():
    source = ("from instructedit_utils import ExperimentConfig, data, no_such_thing\n%matplotlib inline\n"
              "data.load_task('zsre')\ndata.no_such_function()\n"
              "cfg = ExperimentConfig.from_parameters(profile='ci')\ncfg.seed, cfg.editor_configs(), cfg.moved_away()\n")
    assert _notebook_references(source) == (["instructedit_utils.no_such_thing"],
                                            ["data.no_such_function", "cfg.moved_away"])


def test_every_name_a_notebook_uses_from_the_package_exists():
    """A static check of every chapter against the package's faces, seconds instead of a papermill run."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert _notebook_references(code) == ([], []), path.name
