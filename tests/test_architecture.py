"""The architecture's rules that a test can hold: small functions, and nothing in the repository that needs
a file a user's clone does not have. (The import layers are checked by `lint-imports`, see pyproject.toml.)"""

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


def test_nothing_refers_to_the_developers_shared_folder():
    hits = []
    for folder in ("src", "tests", "bench", "examples", "docs", "configs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".yaml", ".yml", ".toml", ".txt") and path.is_file() \
                    and path != Path(__file__).resolve():
                for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
                    if "../shared" in line or "shared/data" in line or "shared/variants" in line:
                        hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "users' clones have no ../shared:\n" + "\n".join(hits)
