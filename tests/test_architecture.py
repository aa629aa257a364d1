"""The package's shape: no import cycle, every module importable on its own, the library
never imports its CLI, ``quantizers`` never imports ``vqbench``, files stay short.

The import graph is read from the source with ``ast``: every ``import`` and ``from ... import``
anywhere in a module (function-local and ``TYPE_CHECKING`` ones too), relative ones
resolved, ``from package import name`` counted as an import of the submodule where ``name``
is one. ``python tests/test_architecture.py`` prints the graph's cycles (none, one a line).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vqbench", "quantizers")
MAX_LINES = 250  # docstrings included


def module_files(root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (``__init__`` as the package)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The dotted name a (possibly relative) import refers to, seen from ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base[:len(base) - level + (1 if is_package else 0)]
    return ".".join(base + ([name] if name else []))


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its body)."""
    files = module_files(root)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, is_package, node.level, node.module)
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source
                           for alias in node.names]
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a module: the nearest known
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checker_sees_a_planted_cycle(tmp_path):
    for name, text in {"__init__.py": "from .a import x\n", "a.py": "x = 1\n",
                       "b.py": "def f():\n    from . import c\n", "c.py": "from .b import f\n"}.items():
        (tmp_path / "vqbench" / "sub").mkdir(parents=True, exist_ok=True)
        (tmp_path / "vqbench" / "sub" / name).write_text(text)
    (tmp_path / "vqbench" / "__init__.py").write_text("")
    (tmp_path / "quantizers").mkdir()
    assert cycles(import_graph(tmp_path)) == [["vqbench.sub.b", "vqbench.sub.c"]]


def test_the_library_never_imports_its_cli():
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if t == "vqbench.cli" or t.startswith("vqbench.cli."))
                 for m, targets in graph.items()
                 if not (m == "vqbench.cli" or m.startswith("vqbench.cli.") or m == "vqbench.__main__")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_quantizers_never_import_vqbench():
    graph = import_graph()
    assert {m: sorted(t for t in targets if t.split(".")[0] == "vqbench")
            for m, targets in graph.items()
            if m.split(".")[0] == "quantizers" and any(t.split(".")[0] == "vqbench" for t in targets)} == {}


def _top_level_names(path: Path) -> tuple[set[str], set[str]]:
    """(names a module defines, names it imports) at its top level."""
    defined, imported = set(), set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                defined.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imported.update(a.asname or a.name.split(".")[0] for a in node.names)
    return defined, imported - defined


def test_names_are_imported_from_where_they_are_defined():
    """One name, one address: only a package's ``__init__`` hands on names it imported."""
    files = module_files()
    # Test modules by their dotted path: basenames repeat across tests/'s folders (test_run.py).
    tests = {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in (REPO / "tests").rglob("*.py")}
    importers = {**files, **tests, **{f"benchmarks.{p.stem}": p for p in (REPO / "benchmarks").glob("*.py")}}
    passed_on = []
    for module, path in importers.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _absolute(module, path.name == "__init__.py", node.level, node.module) if module in files \
                else node.module or ""
            if source in files and files[source].name != "__init__.py":
                reexported = _top_level_names(files[source])[1]
                passed_on += [f"{path.relative_to(REPO)}: {a.name} from {source}" for a in node.names
                              if a.name in reexported and f"{source}.{a.name}" not in files]
    assert passed_on == []


def test_vqbench_files_stay_short():
    long = {str(path.relative_to(REPO)): n for name, path in module_files().items()
            if name.split(".")[0] == "vqbench" and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"over {MAX_LINES} lines: split them by concept"


# Each module is imported in a child forked from one interpreter that has loaded the
# third-party libraries (torch's import is most of the cost) but no module of ours.
def third_party_imports(root: Path = REPO) -> list[str]:
    """Every absolute import outside the packages (``torch``, ``optuna.samplers``, ``json``)."""
    found = set()
    for path in module_files(root).values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            found.update(n for n in names if n.split(".")[0] not in PACKAGES)
    return sorted(found)


FORKED_IMPORTS = """
import importlib, os, sys, traceback
preload, modules = sys.argv[1].split(), sys.argv[2:]
for name in preload:  # third-party and stdlib only, loaded once and shared by every child
    try:
        importlib.import_module(name)
    except Exception:  # an optional dependency that is absent: the child that needs it says so
        pass
failed = []
for module in modules:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        failed.append(module)
print(" ".join(failed))
"""


def test_every_module_imports_on_its_own():
    """An import that works only after another of our modules was imported first fails here.
    Each module is imported in a fresh fork of a process that holds only third-party modules."""
    modules = sorted(m for m in module_files() if not m.endswith("__main__"))
    done = subprocess.run([sys.executable, "-c", FORKED_IMPORTS, " ".join(third_party_imports()), *modules],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and not done.stdout.strip(), f"{done.stdout}\n{done.stderr[-4000:]}"


def test_the_cli_imports_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", "import vqbench.cli"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


if __name__ == "__main__":
    found = cycles(import_graph())
    for component in found:
        print(" <-> ".join(component))
    print(f"{len(found)} import cycle(s) among {len(module_files())} modules")
    sys.exit(1 if found else 0)


# Skips CI may take: the environment, not an install step, decides them (and these tests say why).
CI_MAY_SKIP = {"tests/vqbench/test_disk_full.py": "tmpfs needs mount privileges",
               "tests/vqbench/sweep/test_postgres_restart.py": "fails under CI=true itself (_unavailable)",
               "tests/vqbench/sweep/test_storage.py": "fails under CI=true itself"}


def test_every_skip_fails_under_ci():
    """A test that skips where a dependency is missing must fail under ``CI=true`` (through
    ``tests.conftest.skip_unless_ci`` / ``import_or_skip_unless_ci``), or a broken install
    step in .ci/run would pass as a row of skips."""
    bare = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in CI_MAY_SKIP or rel in ("tests/conftest.py", "tests/test_architecture.py"):
            continue
        text = path.read_text()
        bare += [f"{rel}: {call}" for call in ("pytest.skip(", "importorskip(", "mark.skipif(") if call in text]
    assert not bare, "use tests.conftest.skip_unless_ci / import_or_skip_unless_ci:\n" + "\n".join(bare)


def test_skip_unless_ci_fails_under_ci(monkeypatch):
    import pytest

    from tests.conftest import import_or_skip_unless_ci, skip_unless_ci

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must not skip: why"):
        skip_unless_ci("why")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_xyz"):
        import_or_skip_unless_ci("no_such_module_xyz", "pip install it")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="pip install it"):
        import_or_skip_unless_ci("no_such_module_xyz", "pip install it")
    assert import_or_skip_unless_ci("json", "") is __import__("json")
