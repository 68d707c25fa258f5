"""The architecture's rules that a test can hold: small functions. (The import layers are checked by
`lint-imports`, see pyproject.toml; references to files a user's clone lacks by tests/test_docs_generated.py.)"""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80


def test_no_function_in_src_is_longer_than_80_lines():
    long = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines (split them):\n" + "\n".join(long)

