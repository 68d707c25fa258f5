"""The shared machinery of unipo's resumable pipelines (``unipo bridge``, ``unipo weights estimate``).

Each such pipeline writes an append-only JSONL output ``OUT`` plus sidecar files named from its stem
(``OUT.meta.json``, ``OUT.summary.json``, ``OUT.lock``, ...), holds an exclusive lock on ``OUT.lock``
while it writes, appends each result the moment it is ready, and on resume reads back what is already
there, trimming a last line that a kill cut short. This module is that machinery:

* :func:`sidecar_paths`: the output and its sidecar paths (a ``.gz`` output is refused: results are
  appended);
* :class:`RunLock`: the ``flock`` that stops two runs from interleaving rows;
* :func:`read_jsonl_repairing`: the records of an append-only JSONL file, repairing a torn last line;
* :class:`JsonlAppender`: appends JSON lines, flushed one by one.

:class:`unipo.io.resumable.ResumablePipeline` runs a pipeline with these pieces.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unipo.errors import DataError, UnipoError

__all__ = ["JsonlAppender", "RunLock", "read_jsonl_repairing", "sidecar_paths"]


def sidecar_paths(out: str | Path, *, appended: str, **suffixes: str) -> dict[str, Path]:
    """``{"out": OUT, name: STEM + suffix, ...}`` for each ``name=suffix`` in ``suffixes``.

    STEM is ``OUT`` without a ``.jsonl`` / ``.json`` suffix (``o.jsonl`` → ``o.meta.json``). A ``.gz``
    output is refused with a message that ends in ``(appended)``, which says how results are appended.
    """
    out = Path(out)
    if out.suffix == ".gz":
        raise UnipoError(f"--out {out}: write plain JSONL ({appended})")
    stem = out.with_suffix("") if out.suffix in (".jsonl", ".json") else out
    return {"out": out, **{name: Path(f"{stem}{suffix}") for name, suffix in suffixes.items()}}


def _is_main_process() -> bool:
    """False on the non-zero ranks of a distributed launch (they work under the main process's lock)."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


class RunLock:
    """An exclusive ``flock`` on ``path`` while a run writes ``subject`` (default: the ``OUT.*`` files of a
    pipeline whose lock is ``OUT.lock``), so two runs cannot interleave. The lock file records its holder
    (pid, host, command, start time): a second writer is refused at once with that holder named.

    The OS drops a ``flock`` when its process dies, so the lock of a killed run is taken over by the next
    one, which says so.
    """

    def __init__(self, path: Path, command: str, subject: str | None = None) -> None:
        self.path = Path(path)
        self.command = command
        self.subject = subject or f"{self.path.with_suffix('')}.*"
        self._fh = None

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no protection against concurrent runs
            return self
        if not _is_main_process():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        previous = self._holder() if self.path.exists() else {}
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            self._fh = None
            h = self._holder()
            who = (f"`{h.get('command', self.command)}` (pid {h.get('pid', '?')} on {h.get('host', '?')}, "
                   f"started {h.get('started', '?')})")
            raise UnipoError(f"another {who} is writing {self.subject}; wait for it to finish or stop it "
                             f"(kill {h.get('pid', 'PID')}), or write somewhere else") from None
        if previous.get("pid") and previous.get("pid") != os.getpid():
            print(f"unipo: taking over the lock on {self.subject} from `{previous.get('command')}` (pid "
                  f"{previous['pid']}, started {previous.get('started')}), which is no longer running",
                  file=sys.stderr, flush=True)
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                                   "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
        self._fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:  # the file stays: unlinking it would race with a waiting run
            self._fh.close()
            self._fh = None


def read_jsonl_repairing(path: Path, *, invalid_hint: str, log: Callable[[str], None],
                         keep_complete_tail: bool = True) -> list[dict[str, Any]]:
    """Records of an append-only JSONL file; a last line cut short by a kill is trimmed off the file.

    A last line without its newline is cut off the file; if it is nevertheless a complete JSON record
    and ``keep_complete_tail`` is true, it is written back with its newline and kept. Dropping a line
    is reported through ``log``. A bad line elsewhere raises :class:`DataError` ("line N is not valid
    JSON; ``invalid_hint``"). A missing file has no records.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise DataError(f"line {i} is not valid JSON; {invalid_hint}", file=str(path)) from None
    if tail.strip():  # the last write was cut short (no newline yet)
        rec = None
        if keep_complete_tail:
            try:
                rec = json.loads(tail)
            except ValueError:
                rec = None
        with open(path, "r+b") as fh:
            fh.truncate(len(data) - len(tail))
        if rec is not None:  # complete record that only misses its newline: keep it
            with open(path, "ab") as fh:
                fh.write(tail + b"\n")
            records.append(rec)
        else:
            log(f"trimmed an incomplete last line from {path}")
    return records


class JsonlAppender:
    """Append JSON lines, flushed one by one, so a kill loses at most the line being written.

    The file (and its directory) is created at the first :meth:`write`; :meth:`close` syncs it to disk.
    ``default`` is :func:`json.dumps`'s, for values JSON has no type for (e.g. ``str``).
    """

    def __init__(self, path: Path, *, default: Callable[[Any], Any] | None = None) -> None:
        self.path = path
        self.default = default
        self._fh = None

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record, ensure_ascii=False, default=self.default) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
