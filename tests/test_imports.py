"""The package's import graph: no module imports itself back at import time, and the commands
that only read a study folder or fit a table (`s2r report`, `s2r status`, `s2r fit`) never load
Ray, so they run fast and anywhere the folder is, with or without a cluster."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from s2r_ray.config import build_config
from s2r_ray.folder import StudyFolder

PACKAGE = Path(__file__).resolve().parents[1] / "s2r_ray"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: its body's, and those of a top-level
    if/try (except `if TYPE_CHECKING:`, which never runs); a function's run only when called."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody
    return found


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]
) -> set[str]:
    """The s2r_ray modules an import statement loads, relative imports resolved against
    `module`. `from a import b` loads a.b when that is a module, and needs a itself only for
    a name that is not (`from s2r_ray.scaling import diagnostics` inside the scaling package
    is no cycle; `from s2r_ray.scaling import ci_key` there would be one)."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")[: len(module.split(".")) - node.level + is_package]
            base = ".".join(package + ([base] if base else []))
        subs = {f"{base}.{alias.name}" for alias in node.names}
        names = subs | ({base} if subs - modules else set())
    return {n for n in names if n == "s2r_ray" or n.startswith("s2r_ray.")}


def import_graph() -> dict[str, set[str]]:
    """Each s2r_ray module -> the s2r_ray modules its top-level imports load."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        loaded = set()
        for node in _top_level_imports(tree):
            loaded |= _targets(node, name, is_package, set(files))
        # importing a.b.c runs a.b's __init__ first, unless the importer is inside a.b already
        loaded |= {p for t in loaded for p in _parents(t) if not name.startswith(f"{p}.")}
        graph[name] = {t for t in loaded if t in files and t != name}
    return graph


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                stack = [*path, node]
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_the_cycle_finder_names_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_back_at_import_time() -> None:
    graph = import_graph()
    assert graph["s2r_ray.cli"] and "s2r_ray.render.format" in graph["s2r_ray.render.text"]
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def _run_cli(args: list[str], cwd: Path) -> dict:
    """`s2r ARGS` in a fresh interpreter: its exit code and whether Ray got imported."""
    code = (
        "import json, sys\n"
        "from s2r_ray.cli import main\n"
        f"rc = main({args!r})\n"
        "print(json.dumps({'rc': rc, 'ray': sorted(m for m in sys.modules"
        " if m == 'ray' or m.startswith('ray.'))}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A study folder as a finished driver leaves it: config, state, a ledger on a known law."""
    folder = StudyFolder(tmp_path / "study")
    folder.write_config(
        build_config({"name": "quiet", "sizes": [100, 300, 1000], "repetitions": 2})
    )
    folder.update_state(status="complete", attempts=1, elapsed_seconds=60.0)
    for n in (0, 100, 300, 1000):
        for r in range(2):
            mae = 0.6 if n == 0 else 2 * n**-0.5 + 0.1 + 0.01 * r
            record = {"cell": f"n{n}-mall-r{r}", "n": n, "m": None, "repetition": r}
            folder.append_cell(record | {"status": "ok", "mae": mae, "finished_at": 1.0})
    return folder.path


def test_report_status_and_fit_run_without_ray(study: Path, tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    results.write_text("n,repetition,mae\n100,0,0.3\n300,0,0.2\n1000,0,0.16\n3000,0,0.14\n")
    for args in (
        ["report", str(study)],
        ["status", str(study)],
        ["fit", str(results), "--out", str(tmp_path / "fit"), "--n-boot", "50"],
    ):
        assert _run_cli(args, tmp_path) == {"rc": 0, "ray": []}, args
    assert (study / "report.json").is_file() and (tmp_path / "fit" / "report.json").is_file()
