"""The architecture's rules that a test can hold: small functions, the run directory's file names in RunDir alone,
no sibling imports out of the training job. (The import layers are checked by
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



# -- the run directory is typed: its file names are written in RunDir alone (issue 24) -----------------------
RUNDIR_MODULE = "src/unipo/training/rundir.py"
#: the one literal allowed elsewhere, and why: the data layer sits below the run directory's layer, and its
#: invalid-row error names the file where ``unipo train`` counts skipped rows (tied to RunDir's name below)
ALLOWED = {("src/unipo/data/tokenize.py", "data_summary.json")}


def _run_dir_names() -> list[str]:
    from unipo.training.rundir import RunDir

    return [RunDir.CONFIG, RunDir.METRICS, RunDir.EVAL, RunDir.DATA_SUMMARY, RunDir.TRAINER_STATE,
            RunDir.CHECKPOINT_CONFIG, RunDir.SIGNAL_SPEC, RunDir.SIGNAL_WEIGHTS, RunDir.OBJECTIVE_STATE,
            RunDir.REFERENCE_WEIGHTS, RunDir.BEMA_STATE, RunDir.CURVES, RunDir.LOCK, RunDir.CHECKPOINT_PREFIX]


def _literals(path: Path, pattern) -> list[tuple[int, str]]:
    """The run-directory names in ``path``'s string literals (docstrings left out: prose about the files)."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, m) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            for m in pattern.findall(node.value)]


def _name_pattern(names: list[str]):
    import re

    return re.compile("|".join(rf"(?<![\w.-]){re.escape(n)}" + ("" if n.endswith("-") else r"(?![\w-])")
                               for n in names))


def test_no_run_directory_file_name_is_written_outside_rundir():
    pattern = _name_pattern(_run_dir_names())
    found = []
    for top in ("src", "claims", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel == RUNDIR_MODULE:
                continue
            found += [f"{rel}:{line} {name!r}" for line, name in _literals(path, pattern) if (rel, name) not in ALLOWED]
    assert not found, ("run-directory file names outside unipo.training.rundir.RunDir (use its attributes):\n"
                       + "\n".join(found))


def test_the_name_check_finds_a_literal_and_skips_prose(tmp_path):
    """The check itself: a path literal is found, a longer name that ends alike and a docstring are not."""
    pattern = _name_pattern(_run_dir_names())
    module = tmp_path / "m.py"
    module.write_text('"""Writes eval.json."""\n'
                      'A = run / "eval.json"\nB = "reference_eval.json"\nC = f"checkpoint-{3}"\nD = "metrics.json"\n')
    assert _literals(module, pattern) == [(2, "eval.json"), (4, "checkpoint-")]


def test_the_allowed_literal_is_rundirs_name():
    from unipo.data.tokenize import PrepOptions
    from unipo.training.rundir import RunDir

    assert PrepOptions().invalid_counted_in == RunDir.DATA_SUMMARY
    assert {name for _, name in ALLOWED} <= set(_run_dir_names())


# -- training/train.py is the training job: its siblings import the plan, not the job (issue 24) --------------
def test_no_sibling_imports_anything_but_train_from_the_training_job():
    allowed = {"train", "TrainResult"}
    found = []
    for path in sorted((ROOT / "src" / "unipo").rglob("*.py")):
        if path.name == "train.py" and path.parent.name == "training":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "unipo.training.train":
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                          if a.name not in allowed]
    assert not found, "import these from unipo.training.plan (or their own module):\n" + "\n".join(found)
