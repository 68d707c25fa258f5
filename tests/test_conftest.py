"""The tier rule itself: tests/conftest.py fails the collection when a test has not exactly one tier marker."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.unit

CONFTEST = Path(__file__).with_name("conftest.py")

TIERED = """
import pytest

pytestmark = pytest.mark.integration


def test_module_tier():
    pass


@pytest.mark.parametrize("x", [1, 2])
def test_parametrized(x):
    pass
"""

UNTIERED = """
import pytest


def test_forgotten():
    pass


@pytest.mark.unit
@pytest.mark.slow
def test_two_tiers():
    pass


@pytest.mark.unit
def test_unit_with_a_model(tiny_model_dir):
    pass


@pytest.mark.unit
def test_fine():
    pass
"""


@pytest.fixture()
def project(pytester):
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makeini("[pytest]\nmarkers =\n    unit\n    integration\n    slow\naddopts = --strict-markers\n")
    return pytester


def test_tiered_tests_collect(project):
    project.makepyfile(test_good=TIERED)
    result = project.runpytest("--collect-only", "-q")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*3 tests collected*"])


@pytest.mark.parametrize("select", [[], ["-m", "not slow"], ["-k", "fine"]])
def test_untiered_tests_fail_the_collection_whatever_is_selected(project, select):
    project.makepyfile(test_good=TIERED, test_bad=UNTIERED)
    result = project.runpytest("--collect-only", "-q", *select)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: 3 test(s) not in exactly one tier of unit, integration, slow*",
        "*test_bad.py::test_forgotten: no tier marker",
        "*test_bad.py::test_two_tiers: 2 tier markers (slow, unit)",
        "*test_bad.py::test_unit_with_a_model: marked unit but uses a model fixture (tiny_model_dir)",
    ])
    assert "test_fine" not in result.stderr.str() and "test_good" not in result.stderr.str()
