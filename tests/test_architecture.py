"""The shape ARCHITECTURE.md promises, read from the source: import direction, no import
loops between modules, files and functions of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# Functions that are data literals, not logic.
DATA_LITERALS = {"ragkv.settings_defaults.default_policies"}

# A package prefix -> prefixes it must never import.
FORBIDDEN = {
    "ragkv.kernels": ("ragkv.engine", "ragkv.cache", "ragkv.retrieval", "ragkv.pipeline",
                      "ragkv.server", "ragkv.cli", "ragkv.settings", "ragkv.cluster"),
    "ragkv.cache": ("ragkv.engine", "ragkv.pipeline", "ragkv.server", "ragkv.cli",
                    "ragkv.cluster"),
    "ragkv.retrieval": ("ragkv.engine", "ragkv.pipeline", "ragkv.server", "ragkv.cli",
                        "ragkv.cluster"),
    "ragkv.engine": ("ragkv.pipeline", "ragkv.server", "ragkv.cli", "ragkv.cluster"),
    # The pipeline talks to the engine through its contract (sequence, async_engine, sampling,
    # tokenizer), never to the blend algorithm, the model or the kernels.
    "ragkv.pipeline": ("ragkv.server", "ragkv.cli", "ragkv.engine.blend", "ragkv.engine.model",
                       "ragkv.kernels", "ragkv.engine.engine", "ragkv.cluster"),
    "ragkv.server": ("ragkv.cli", "ragkv.cluster"),
    "ragkv.settings": ("ragkv.cache", "ragkv.engine", "ragkv.retrieval", "ragkv.pipeline",
                       "ragkv.server", "ragkv.cli", "ragkv.cluster"),
    "ragkv.errors": ("ragkv.",),
    "ragkv.compute": ("ragkv.",),
    "ragkv.integrations": ("ragkv.engine", "ragkv.pipeline", "ragkv.server", "ragkv.cache",
                           "ragkv.retrieval", "ragkv.kernels", "ragkv.cli", "ragkv.cluster"),
    # The SDK installs without the engine: httpx and ragkv.errors only.
    "ragkv.sdk": ("ragkv.engine", "ragkv.pipeline", "ragkv.server", "ragkv.cache",
                  "ragkv.retrieval", "ragkv.kernels", "ragkv.cli", "ragkv.settings",
                  "ragkv.cluster"),
    # Scale-out sits on top: only the CLI starts it (lazily); it never imports the CLI.
    "ragkv.cluster": ("ragkv.cli",),
}  # fmt: skip


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (kernels/ is installed as ragkv.kernels)."""
    found = {}
    for base, package in ((ROOT / "ragkv", "ragkv"), (ROOT / "kernels", "ragkv.kernels")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(path: Path, module_level_only: bool = False) -> set[str]:
    """Dotted names of the ragkv modules `path` imports (TYPE_CHECKING blocks included)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("ragkv")}


def test_imports_point_down_only() -> None:
    wrong = []
    for name, path in modules().items():
        for owner, banned in FORBIDDEN.items():
            if name != owner and not name.startswith(owner + "."):
                continue
            wrong += [f"{name} imports {i}" for i in imports_of(path) if i.startswith(banned)]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_loops_between_modules() -> None:
    known = modules()
    graph = {
        name: {i for i in imports_of(path, module_level_only=False) if i in known and i != name}
        for name, path in known.items()
    }
    loops = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start and not start.startswith(nxt + "."):
                    loops.append(" -> ".join([*trail, nxt]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    packages_only = [loop for loop in loops if all(p in known for p in loop.split(" -> "))]
    assert not packages_only, "\n".join(sorted(set(packages_only))[:10])


@pytest.mark.parametrize("name", sorted(modules()))
def test_files_and_functions_stay_small(name: str) -> None:
    path = modules()[name]
    source = path.read_text()
    assert source.count("\n") <= MAX_FILE_LINES, f"{path} is over {MAX_FILE_LINES} lines"
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if f"{name}.{node.name}" in DATA_LITERALS:
            continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring does not count
        if not body:
            continue
        length = body[-1].end_lineno - body[0].lineno + 1
        assert length <= MAX_FUNCTION_LINES, f"{path}:{node.lineno} {node.name} is {length} lines"
