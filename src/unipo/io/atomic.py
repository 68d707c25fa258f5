"""Saving without leaving anything half-written, and file-system errors of any exception type as one line.

A full disk does not always raise ``OSError``: the tokenizers library raises a plain ``Exception`` whose
text is the Rust I/O error (``No space left on device (os error 28)``), torch's writer a ``RuntimeError``
(``PytorchStreamWriter failed``). :func:`is_file_system_error` recognises all of them (issue 23, item 3).

:func:`atomic_path` is how reports, caches and summaries are written: into a temporary sibling that is
renamed over the target only once complete (``os.replace``, atomic on POSIX), so a failure mid-write leaves
the previous file (or none) and removes the temporary; a file-system failure becomes a
:class:`~unipo.errors.UnipoError` whose one line names the file, what happened and the way out.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unipo.errors import UnipoError

__all__ = ["atomic_path", "atomic_write_text", "describe_fs_error", "describe_write_error", "is_disk_full",
           "is_file_system_error", "remove_quietly"]

#: the text of file-system errors raised as other exception types (Rust's io::Error, torch's stream writer)
_FS_TEXT = re.compile(r"\(os error \d+\)|No space left on device|Disk quota exceeded|Read-only file system"
                      r"|PytorchStreamWriter failed|unexpected pos \d+", re.IGNORECASE)


def is_file_system_error(exc: BaseException) -> bool:
    """An ``OSError``, or any exception whose message is a file-system error's (see the module doc)."""
    return isinstance(exc, OSError) or bool(_FS_TEXT.search(str(exc)))


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return any(s in text for s in ("No space left", "Disk quota exceeded", "os error 28", "os error 122",
                                   "PytorchStreamWriter failed", "unexpected pos"))


def describe_write_error(exc: BaseException, path: str | Path, *, again: str = "run the command again") -> str:
    """One line: what could not be written, why, and the way out (``again``: how to continue)."""
    where = Path(path)
    if is_disk_full(exc):
        try:
            free = f"{shutil.disk_usage(where.parent if not where.is_dir() else where).free / 1024 ** 3:.1f} GiB"
        except OSError:
            free = "?"
        return f"no space left on the device while writing {where} ({free} free now); free space there, then {again}"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc).strip() or type(exc).__name__)
    return f"cannot write {where}: {reason.splitlines()[0]}; fix it (space, permissions), then {again}"


def describe_fs_error(exc: BaseException) -> str:
    """One line for a file-system error that reached the command line undescribed (read or write)."""
    where = getattr(exc, "filename", None)
    if is_disk_full(exc):
        if where:
            return describe_write_error(exc, where)
        return "no space left on the device; free space where the command writes, then run it again"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc).strip() or type(exc).__name__)
    return (f"file-system error{f' on {where}' if where else ''}: {reason.splitlines()[0]}; fix it (space, "
            "permissions, the path), then run the command again")


def remove_quietly(path: Path) -> None:
    """Remove a file or directory tree if it exists; errors while cleaning up are ignored."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            path.unlink()
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | Path, *, again: str = "run the command again") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that infer the format from it work);
    on success it replaces ``path``; on any failure it is removed and ``path`` is left as it was.

    A file-system failure (:func:`is_file_system_error`) is raised as :class:`UnipoError` (one line); any
    other exception propagates unchanged."""
    target = Path(path)
    tmp = target.with_name(f".{target.stem}.partial-{os.getpid()}{target.suffix}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        remove_quietly(tmp)
        if isinstance(exc, Exception) and not isinstance(exc, UnipoError) and is_file_system_error(exc):
            raise UnipoError(describe_write_error(exc, target, again=again)) from None
        raise


def atomic_write_text(path: str | Path, text: str, *, again: str = "run the command again") -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, again=again) as tmp:
        tmp.write_text(text, encoding="utf-8")
