"""The architecture's rules that a test can hold: small functions, the run directory's file names in RunDir alone,
no sibling imports out of the training job. (The import layers are checked by
`lint-imports`, see pyproject.toml; references to files a user's clone lacks by tests/test_cli_docgen.py.)"""

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


# -- one entry-point shape: each pipeline takes one typed config (issue 24, item 4) ---------------------------
#: entry point → (its module, the config class, the parameters before the config, the optional extras after it)
ENTRY_POINTS = {
    "train": ("unipo.training.train", "unipo.training.config.TrainConfig", (), ("callbacks",)),
    "run_iterate": ("unipo.iterate.pipeline", "unipo.iterate.config.IterateConfig", (), ("log",)),
    "evaluate_run": ("unipo.eval.evaluate", "unipo.eval.config.EvalOptions", ("run_dir", "data"), ("judge",)),
    "compare": ("unipo.compare.pipeline", "unipo.compare.config.CompareConfig", (), ()),
    "run_bridge": ("unipo.bridge.pipeline", "unipo.bridge.config.BridgeConfig", (), ("log",)),
}
#: the configs built afresh for each call, never changed after: frozen (TrainConfig and IterateConfig are
#: filled field by field from layered YAML and flags, and stay mutable)
FROZEN = {"unipo.compare.config.CompareConfig", "unipo.bridge.config.BridgeConfig", "unipo.bridge.config.BridgeOptions",
          "unipo.eval.config.EvalOptions", "unipo.eval.config.JudgeOptions"}


def _resolve(dotted: str):
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_each_pipeline_entry_point_takes_one_typed_config(name):
    import dataclasses
    import inspect
    import typing

    module, config, before, extras = ENTRY_POINTS[name]
    fn, config_type = _resolve(f"{module}.{name}"), _resolve(config)
    params = list(inspect.signature(fn).parameters.values())
    hints = typing.get_type_hints(fn)
    assert [p.name for p in params] == [*before, params[len(before)].name, *extras], name
    config_param = params[len(before)]
    assert dataclasses.is_dataclass(config_type)
    assert config_type in (hints[config_param.name], *typing.get_args(hints[config_param.name])), (name, hints)
    # nothing after the config is another options record: the extras are hooks (callbacks, a log) or the judge
    for p in params[len(before) + 1:]:
        assert p.default is not inspect.Parameter.empty, (name, p.name)
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params), name


@pytest.mark.parametrize("dotted", sorted(FROZEN))
def test_the_per_call_configs_are_frozen(dotted):
    import dataclasses

    cls = _resolve(dotted)
    field = dataclasses.fields(cls)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cls.__new__(cls), field.name, None)


def test_every_call_of_an_entry_point_fits_its_signature():
    """Every call in src/, claims/, bench/ and examples/ of an entry point imported from its module binds to
    the one-config signature (claims/ and bench/ are not all run by the tests: a stale call would only fail
    there)."""
    import inspect

    modules = {module: name for name, (module, *_) in ENTRY_POINTS.items()}
    bad, seen = [], 0
    for folder in ("src", "claims", "bench", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            local = {a.asname or a.name: a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and modules.get(node.module) in {a.name for a in node.names} for a in node.names
                     if a.name == modules[node.module]}
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in local:
                    name = local[node.func.id]
                    sig = inspect.signature(_resolve(f"{ENTRY_POINTS[name][0]}.{name}"))
                    seen += 1
                    try:
                        sig.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords if k.arg})
                    except TypeError as exc:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}: {exc}")
    assert seen >= 8, seen
    assert not bad, "\n".join(bad)
