"""unipo.io.atomic: a write that fails on a full disk leaves the old file and no temporary, in one line; other
errors pass through (issue 23, item 3; docs/faults.md; was tests/test_faults_save.py)."""

from __future__ import annotations

import errno

import pytest

from tests.helpers import DISK_FULL


@pytest.mark.unit
@pytest.mark.parametrize("exc", [Exception(DISK_FULL), OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128")])
def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, exc):
    from unipo.errors import UnipoError
    from unipo.io.atomic import atomic_path

    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(UnipoError, match="no space left on the device while writing .*report.json"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise exc
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.unit
def test_an_atomic_write_lets_other_errors_through(tmp_path):
    from unipo.io.atomic import atomic_path

    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise KeyError("not a file-system error")
    assert list(tmp_path.iterdir()) == []
