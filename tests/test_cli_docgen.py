"""The registry-generated parts of README.md and docs/objective.md are up to date, list every part and preset,
and the committed data slice is what tests/data/README.md says it is."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from unipo.cli import docgen
from unipo.objective.presets import PRESETS
from unipo.objective.registry import KINDS, parts

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def _block(text: str, name: str) -> str:
    begin = re.search(rf"^<!-- BEGIN GENERATED: {re.escape(name)}\b[^\n]*-->$", text, re.M)
    assert begin, f"no generated block {name!r}"
    end = text.index(docgen.end_marker(name), begin.end())
    return text[begin.end():end]


def test_committed_docs_match_the_generator():
    stale = [rel for rel, (old, new) in docgen.generate(ROOT).items() if old != new]
    assert not stale, (f"{', '.join(stale)} differ from what the registry generates: "
                       f"run `python -m unipo.cli.docgen` and commit the result")


def test_generated_docs_name_every_preset_and_part():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    objective = (ROOT / "docs" / "objective.md").read_text(encoding="utf-8")
    readme_parts, readme_presets = _block(readme, "parts"), _block(readme, "presets")
    doc_parts, doc_presets = _block(objective, "objective-parts"), _block(objective, "objective-presets")
    missing = []
    for name in PRESETS:
        if not re.search(rf"(?<![\w`]){re.escape(name)}(?![\w`])", readme_presets):
            missing.append(f"README presets: {name}")
        if f"| `{name}` |" not in doc_presets:
            missing.append(f"docs/objective.md presets: {name}")
    for kind in KINDS:
        row = next((ln for ln in readme_parts.splitlines() if ln.startswith(f"| `{kind}` |")), "")
        section = doc_parts.split(f"### `{kind}`", 1)[1].split("\n### ", 1)[0] if f"### `{kind}`" in doc_parts \
            else ""
        for name in parts(kind):
            if f"`{name}`" not in row:
                missing.append(f"README parts: {kind}={name}")
            if f"| `{name}` |" not in section:
                missing.append(f"docs/objective.md parts: {kind}={name}")
    assert not missing, f"not in the generated docs: {missing}"


def test_render_blocks_covers_every_marked_file():
    blocks = docgen.render_blocks()
    assert set(blocks) == {name for names in docgen.FILES.values() for name in names}
    assert all(text.strip() for text in blocks.values())


def test_apply_blocks_replaces_only_between_markers():
    text = "intro\n<!-- BEGIN GENERATED: a -->\nold\n<!-- END GENERATED: a -->\noutro\n"
    out = docgen.apply_blocks(text, {"a": "new"}, ["a"])
    assert out == f"intro\n{docgen.begin_marker('a')}\nnew\n<!-- END GENERATED: a -->\noutro\n"
    assert docgen.apply_blocks(out, {"a": "new"}, ["a"]) == out  # idempotent
    with pytest.raises(docgen.DocgenError, match="no '<!-- END GENERATED: a -->'"):
        docgen.apply_blocks("<!-- BEGIN GENERATED: a -->\nx\n", {"a": "new"})
    with pytest.raises(docgen.DocgenError, match="unknown generated block 'b'"):
        docgen.apply_blocks("<!-- BEGIN GENERATED: b -->\n<!-- END GENERATED: b -->\n", {"a": "new"})
    with pytest.raises(docgen.DocgenError, match="no generated block 'a'"):
        docgen.apply_blocks("nothing here\n", {"a": "new"}, ["a"])
    with pytest.raises(docgen.DocgenError, match="has no BEGIN"):
        docgen.apply_blocks("x\n<!-- END GENERATED: a -->\n", {"a": "new"})


def test_check_mode_reports_stale_files(tmp_path, capsys):
    for rel in docgen.FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text(encoding="utf-8"), encoding="utf-8")
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 0
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8").replace("| `prior` |", "| `prior_x` |"), encoding="utf-8")
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "python -m unipo.cli.docgen" in capsys.readouterr().err
    assert docgen.main(["--root", str(tmp_path)]) == 0  # rewrites it
    assert readme.read_text(encoding="utf-8") == (ROOT / "README.md").read_text(encoding="utf-8")


def test_docgen_imports_no_transformers():
    code = "import sys, unipo.cli.docgen; print('transformers' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_no_reference_to_the_developers_shared_folder():
    """Users' clones lack the developers' shared folder beside the project: the math reference
    (docs/variants.md) and the test data (tests/data) are committed instead."""
    bad = []
    for top in ("src", "tests", "bench", "examples", "docs"):
        for path in (ROOT / top).rglob("*"):
            if path.suffix in {".py", ".md", ".yaml", ".yml", ".toml"} and path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")
                if re.search(r"\.\./shared|(?<![\w.-])shared/(?:variants|data)", text):
                    bad.append(str(path.relative_to(ROOT)))
    assert not bad, f"refer to the developers' shared folder, which users do not have: {bad}"


def test_committed_hh_slice_matches_its_readme():
    from tests.conftest import HH_FILE

    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    blank = [i for i, r in enumerate(rows, 1)
             if any(not r[side].rpartition("\n\nAssistant:")[2].strip() for side in ("chosen", "rejected"))]
    assert len(rows) == 200 and blank == [87]
    readme = (HH_FILE.parent / "README.md").read_text(encoding="utf-8")
    assert "first 200 rows" in readme and "**1** of the 200" in readme and "Row 87" in readme
    assert "MIT License" in readme and "Copyright (c) 2022 Anthropic" in readme
