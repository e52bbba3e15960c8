"""The repository's own rules, checked so they cannot drift: every function fits on a screen,
nothing points at private notes outside the repository, the entry scripts stay small and the
README stays a quick start that opens with the two set-up commands."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", "runs", "__pycache__", ".pytest_cache", ".ruff_cache"}
MAX_FUNCTION_LINES = 80
# Built from pieces so that this file does not match itself.
PRIVATE = re.compile(r"\b" + "SP" + r"EC\b|\.\./" + "shared")


def project_files(*suffixes: str) -> list[Path]:
    return [
        p
        for p in sorted(ROOT.rglob("*"))
        if p.suffix in suffixes and p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)
    ]


def long_functions(source: str) -> list[tuple[str, int, int]]:
    """``(name, first line, length)`` of every function longer than the limit."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append((node.name, node.lineno, length))
    return out


def test_the_length_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def f():\n{body}\n") == [("f", 1, MAX_FUNCTION_LINES + 1)]
    assert long_functions("def g():\n    return 1\n") == []


def test_no_function_outside_the_tests_is_longer_than_a_screen():
    found = [
        f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)"
        for path in project_files(".py")
        if "tests" not in path.relative_to(ROOT).parts
        for name, line, length in long_functions(path.read_text())
    ]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines: {found}"


def test_nothing_refers_to_notes_outside_the_repository():
    assert PRIVATE.search("see " + "SP" + "EC sec. 3") and not PRIVATE.search("SPECIAL")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in project_files(".py", ".md")
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert not found, f"references to private notes (cite the papers or docs/method.md): {found}"


def test_entry_scripts_and_readme_stay_small():
    for script in ("train_irn.py", "evaluate.py"):
        lines = len((ROOT / script).read_text().splitlines())
        assert lines < 600, f"{script} has {lines} lines"
    readme = (ROOT / "README.md").read_text()
    assert len(readme) < 15_000, f"README.md has {len(readme)} characters"
    first_block = readme.split("```")[1]
    assert "python train_irn.py" in first_block and "python -m pytest" in first_block
    assert (ROOT / "docs" / "method.md").is_file()
