"""Imports sit at the top of each module; the few deferred ones say why."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "handler").rglob("*.py"), *(ROOT / "tools").rglob("*.py")])


def _deferred_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """The imports inside a function body of the module at `path`."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


def _reason_above(lines: list[str], lineno: int) -> str | None:
    """The comment right above the group of imports that holds line `lineno` (1-based)."""
    index = lineno - 2
    while index >= 0 and lines[index].strip().startswith(("import ", "from ")):
        index -= 1
    above = lines[index].strip() if index >= 0 else ""
    return above if above.startswith("#") else None


def test_every_function_local_import_says_why_it_is_deferred() -> None:
    unexplained = []
    for path in SOURCES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in _deferred_imports(path):
            if _reason_above(lines, node.lineno) is None:
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unexplained == [], "import at the top, or say in a comment why it is deferred"
