"""The one skeleton of unipo's resumable pipelines (``unipo bridge``, ``unipo weights estimate``).

A run of a :class:`ResumablePipeline`, under the lock on ``OUT.lock`` (:class:`~unipo.io.files.RunLock`):

1. :meth:`~ResumablePipeline.load` the work: every item has a ``row`` (its 1-based input row number);
2. with ``overwrite``, delete the outputs and their sidecars;
3. when results of an earlier run are on disk, compare this run's :meth:`~ResumablePipeline.settings`
   with the earlier ones in ``OUT.meta.json`` (:meth:`~ResumablePipeline.check_resume` refuses or warns);
4. read back the rows already done (:meth:`~ResumablePipeline.done_rows`) and log what is left;
5. if rows are left, :meth:`~ResumablePipeline.prepare` (load models, ...), then write ``OUT.meta.json``
   (also written when missing);
6. append each ``(file, record)`` from :meth:`~ResumablePipeline.results` the moment it comes
   (:class:`~unipo.io.files.JsonlAppender`, flushed line by line), telling
   :meth:`~ResumablePipeline.written` after each for progress; an interruption (a
   :class:`~unipo.errors.UnipoError`, Ctrl-C, or one of :attr:`~ResumablePipeline.interruptions`)
   stops the producer (:meth:`~ResumablePipeline.stop`);
7. :meth:`~ResumablePipeline.summarize` what is on disk (all runs so far), log it, and re-raise the
   interruption if there was one.

A killed run therefore resumes where it stopped, with every row exactly once.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from unipo.errors import UnipoError
from unipo.io.atomic import atomic_write_text
from unipo.io.files import JsonlAppender, RunLock

__all__ = ["Progress", "ResumablePipeline", "RunFiles"]

ItemT = TypeVar("ItemT")


@dataclass(frozen=True)
class RunFiles:
    """The files of one run: ``appended`` maps a name to an append-only JSONL file the results go to
    (the first is the output ``OUT``); ``outputs`` is every file ``overwrite`` deletes."""

    lock: Path
    meta: Path
    appended: Mapping[str, Path]
    outputs: Sequence[Path]

    @property
    def out(self) -> Path:
        return next(iter(self.appended.values()))


@dataclass
class Progress:
    """Where this run stands: ``done`` of the ``total`` rows pending at its start, since ``started``."""

    total: int
    started: float
    done: int = 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class ResumablePipeline(ABC, Generic[ItemT]):
    """Lock, resume check, done rows, results appended as they come, summary: the steps are the subclass's."""

    #: names the pipeline in the lock's refusal ("another `unipo bridge` is writing ...")
    command: str = "unipo"
    #: exceptions that stop a run cleanly: the summary is still written, then they propagate
    interruptions: tuple[type[BaseException], ...] = (UnipoError, KeyboardInterrupt)

    def __init__(self, files: RunFiles, *, overwrite: bool, log: Callable[[str], None]) -> None:
        self.files = files
        self.overwrite = overwrite
        self.log = log

    # -- the steps ----------------------------------------------------------------------------------
    @abstractmethod
    def load(self) -> list[ItemT]:
        """All the work, in order (raise when there is none); each item has a ``row``."""

    @abstractmethod
    def settings(self, items: list[ItemT]) -> dict[str, Any]:
        """What ``OUT.meta.json`` records about this run."""

    @abstractmethod
    def check_resume(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Refuse (raise) or warn when the earlier run's settings ``old`` differ from ``new``."""

    @abstractmethod
    def done_rows(self) -> set[int]:
        """The rows the outputs already hold (read back, repairing a line cut short by a kill)."""

    @abstractmethod
    def start_message(self, total: int, pending: int) -> str:
        """The line logged before the work starts."""

    def prepare(self, pending: list[ItemT], meta: dict[str, Any]) -> None:  # noqa: B027 - optional step
        """Get ready to produce results (e.g. load models); may add to ``meta`` before it is written."""

    @abstractmethod
    def results(self, pending: list[ItemT]) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(name in RunFiles.appended, record)`` per finished row, as soon as it is ready."""

    def written(self, name: str, record: dict[str, Any], progress: Progress) -> None:  # noqa: B027
        """Called after each record is on disk (progress reports, callbacks)."""

    def stop(self) -> None:  # noqa: B027 - optional step
        """Ask the producer of :meth:`results` to give up promptly (on an interruption)."""

    @abstractmethod
    def summarize(self, items: list[ItemT], meta: dict[str, Any], elapsed: float) -> dict[str, Any]:
        """The summary over everything on disk (written to ``OUT.summary.json`` by the subclass)."""

    @abstractmethod
    def format_summary(self, summary: dict[str, Any]) -> str:
        """The summary as log lines."""

    # -- the run --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or resume) the pipeline under its lock; returns the summary."""
        with RunLock(self.files.lock, self.command):
            return self._run_locked()

    def _run_locked(self) -> dict[str, Any]:
        items = self.load()
        if self.overwrite:
            for path in self.files.outputs:
                path.unlink(missing_ok=True)
        meta = self.settings(items)
        self._check_resume(meta)
        done = self.done_rows()
        pending = [item for item in items if item.row not in done]
        self.log(self.start_message(len(items), len(pending)))
        if pending:
            self.prepare(pending, meta)
        if pending or not self.files.meta.exists():
            atomic_write_text(self.files.meta, json.dumps(meta, indent=2, ensure_ascii=False, default=str) + "\n")
        progress = Progress(total=len(pending), started=time.monotonic())
        interrupted = self._append_results(pending, progress)
        summary = self.summarize(items, meta, progress.elapsed)
        self.log(self.format_summary(summary))
        if interrupted is not None:
            raise interrupted
        return summary

    def _check_resume(self, meta: dict[str, Any]) -> None:
        if not any(path.exists() for path in self.files.appended.values()):
            return  # nothing to resume
        if self.files.meta.exists():
            self.check_resume(json.loads(self.files.meta.read_text(encoding="utf-8")), meta)
        else:
            self.log(f"warning: {self.files.out} exists without {self.files.meta.name}; resuming by row number")

    def _append_results(self, pending: list[ItemT], progress: Progress) -> BaseException | None:
        """Append every result as it comes; returns the interruption that stopped the run, if any."""
        writers = {name: JsonlAppender(path, default=str) for name, path in self.files.appended.items()}
        results = self.results(pending)
        try:
            for name, record in results:
                writers[name].write(record)
                progress.done += 1
                self.written(name, record, progress)
        except self.interruptions as exc:
            self.stop()
            return exc
        finally:
            for writer in writers.values():
                writer.close()
            close = getattr(results, "close", None)  # a generator: run its cleanup now
            if close is not None:
                close()
        return None
