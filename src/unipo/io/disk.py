"""An output directory's disk, checked before any model loads, and file-system failures reported as one line.

* :func:`preflight` — before anything is loaded: DIR can be created and written (a probe file named
  :data:`PROBE_PREFIX` + pid, removed at once), and the disk has room for what the run will write (refused when
  clearly too small, warned when tight);
* :func:`describe_os_error` — a file-system failure of any exception type (an ``OSError``, torch's
  serialisation error or the tokenizers library's plain ``Exception`` on a full disk:
  :func:`unipo.io.atomic.is_file_system_error`) as one line: what failed, where, and what to free or change.

The run directory itself (its files, its lock, its checkpoints) is :class:`unipo.training.rundir.RunDir`.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from unipo.errors import UnipoError
from unipo.io.atomic import is_disk_full
from unipo.io.console import log

GiB = 1024 ** 3
#: the name of preflight's write probe (a file a killed preflight may leave behind: not part of a run)
PROBE_PREFIX = ".unipo-write-test-"


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def preflight(directory: str | Path, *, need_bytes: int = 0, what: str = "this run") -> None:
    """Check, before any model is loaded, that ``directory`` can be created and written and that its disk has
    ``need_bytes`` free (refused below that; warned below 1.25×). Raises :class:`UnipoError` with one line."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnipoError(f"cannot create the output directory {d}: {exc.strerror or exc}; choose another "
                         f"output directory") from None
    if not d.is_dir():
        raise UnipoError(f"the output directory {d} exists and is not a directory; choose another")
    probe = d / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        raise UnipoError(f"the output directory {d} is not writable ({exc.strerror or exc}); choose another "
                         f"output directory or fix its permissions") from None
    if need_bytes:
        free = shutil.disk_usage(d).free
        if free < need_bytes:
            raise UnipoError(f"not enough disk space in {d}: {_gib(free)} free, {what} writes up to about "
                             f"{_gib(need_bytes)}; free space there, lower save_total_limit, or choose another "
                             f"output directory")
        if free < 1.25 * need_bytes:
            log(f"warning: {d} has {_gib(free)} free and {what} writes up to about {_gib(need_bytes)}")


def describe_os_error(exc: BaseException, directory: str | Path) -> str:
    """One line for a file-system failure while writing into ``directory``."""
    d = Path(directory)
    where = getattr(exc, "filename", None) or d
    if is_disk_full(exc):
        try:
            free = _gib(shutil.disk_usage(d).free)
        except OSError:
            free = "?"
        return (f"no space left on the device while writing {where} ({free} free now); free space there or "
                f"lower save_total_limit, then run again with --resume")
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write {where}: {exc.strerror}; make {d} writable or choose another output directory, "
                f"then run again with --resume")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
    return f"file-system error while writing {where}: {reason}; fix it and run again with --resume"
