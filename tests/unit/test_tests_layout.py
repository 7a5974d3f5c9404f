"""Test modules share helpers only through kit modules, never by importing one another.

A helper imported from a test module (``from test_local_farm import Farm``) ties two test files
together: moving or renaming one breaks the other, and its fixtures and module-level setup run
wherever it is imported. Shared helpers live in kit modules beside ``tests/conftest.py``
(``*kit.py``, ``helpers.py``, ...); this test reads every module under ``tests/``
(with ``ast``: nothing is imported) and names each import of a test module or a conftest.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _is_test_module(name: str) -> bool:
    top = name.split(".", 1)[0]
    return top.startswith("test_") or top == "conftest"


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import, also those inside functions."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_module_under_tests_imports_a_test_module() -> None:
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{line} imports {module}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, module in _imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        if _is_test_module(module)
    ]
    assert not offenders, "move what these share into a kit module (tests/*kit.py):\n" + "\n".join(offenders)


def test_the_check_sees_imports_inside_functions() -> None:
    tree = ast.parse("import os\ndef f():\n    from test_other import helper\n")
    assert [m for _, m in _imported_modules(tree) if _is_test_module(m)] == ["test_other"]


def test_kits_live_beside_the_root_conftest() -> None:
    """Only ``tests/`` itself is always on ``sys.path``; a kit in a subfolder is found only after
    pytest happened to collect a test module from that folder."""
    misplaced = [
        str(path.relative_to(TESTS.parent))
        for path in sorted(TESTS.rglob("*.py"))
        if path.parent != TESTS
        and path.parent != TESTS / "kubekit"  # the API double: a package beside the kits
        and not (path.name.startswith("test_") or path.name == "conftest.py")
    ]
    assert not misplaced, "move these kit modules into tests/:\n" + "\n".join(misplaced)
