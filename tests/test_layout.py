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


PROJECT_PACKAGES = {"common", "irn", "glow", "bench"}
PROJECT_MODULES = {"train_irn", "train_irn_color", "train_glow", "evaluate", "evaluate_color"}


def imports_before_path_fix(source: str) -> list[str]:
    """Top-level imports of the project's own packages that come before the script puts the
    repository root on ``sys.path`` (``python bench/x.py`` puts only ``bench/`` there)."""
    early = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Expr) and "sys.path.insert" in ast.unparse(node):
            return early
        if isinstance(node, ast.If) and "sys.path.insert" in ast.unparse(node):
            return early
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        top = {n.split(".")[0] for n in names}
        if top & (PROJECT_PACKAGES | PROJECT_MODULES):
            early.append(ast.unparse(node))
    return early


def test_the_path_check_sees_an_early_import():
    bad = "import sys\nfrom common.atomic import x\nsys.path.insert(0, 'r')\n"
    good = "import sys\nsys.path.insert(0, 'r')\nfrom common.atomic import x\n"
    assert imports_before_path_fix(bad) == ["from common.atomic import x"]
    assert imports_before_path_fix(good) == []


def test_bench_scripts_run_from_the_repository_root():
    """Each is documented as ``python bench/NAME.py``, which needs the root on the path first."""
    bad = {
        p.name: early
        for p in sorted((ROOT / "bench").glob("*.py"))
        if (early := imports_before_path_fix(p.read_text()))
    }
    assert not bad, f"project imports before the sys.path fix: {bad}"
