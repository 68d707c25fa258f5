"""Prepared once, reused: a content-addressed cache of prepared pairs (docs/data.md, "The prepared-data cache").

:func:`prepared_table` returns the pairs of a data file prepared with a tokenizer and options as a
memory-mapped :class:`~unipo.data.table.PairsTable`. The first call prepares them (streaming, chunk by chunk,
so memory does not grow with the file) into ``$UNIPO_CACHE/data/KEY.arrow`` (an Arrow IPC file) and writes
``KEY.json`` beside it; later calls with the same key map the file instead of preparing again. KEY hashes:

- the content of the data (every byte of the file, or of every file under a directory) and the source name
  as given (it is in the summary and the error messages);
- :func:`unipo.data.tokenize.tokenizer_fingerprint` of the tokenizer;
- every :class:`~unipo.data.tokenize.PrepOptions` field that can change the result (all but ``num_proc`` and
  ``invalid_counted_in``, which only changes the wording of an error, and errors are never cached);
- the code that prepares (the bytes of ``formats.py``, ``tokenize.py``, ``prepare.py``, ``bmc_align.py`` and
  ``table.py``), so a changed rule never reads an old entry.

An entry is verified on every read: ``KEY.json`` must name KEY, the file's size and SHA-256 must be those
recorded, and the table must have the recorded columns and number of pairs. An entry that fails (a torn write,
a foreign or damaged file) is prepared again, with one line saying so; it is never read. Writers take a lock
(``KEY.lock``), so processes of one run (torchrun) prepare an entry once, and write through a temporary file
renamed into place, so a reader never sees a half-written entry.

Not cached: rows given as a Python list and Hub dataset names (those are prepared in memory, as before), and
everything when ``UNIPO_DATA_CACHE=off``. ``UNIPO_DATA_CACHE=DIR`` puts the entries in DIR instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from unipo.data.formats import iter_rows
from unipo.data.table import PairsTable, record_batch, schema_for
from unipo.data.tokenize import PrepOptions, PrepSummary, new_summary, prepare_pairs, tokenizer_fingerprint

__all__ = ["CACHE_ENV", "cache_key", "data_cache_dir", "prepared_table", "source_digest"]

#: ``UNIPO_DATA_CACHE=DIR`` puts the cache in DIR; ``off`` (or 0 / false / no) prepares in memory every time
CACHE_ENV = "UNIPO_DATA_CACHE"
_OFF = ("0", "off", "false", "no")
FORMAT = 1
_CODE = ("formats.py", "tokenize.py", "prepare.py", "bmc_align.py", "table.py")
#: options that never change the prepared pairs
_NOT_KEYED = ("num_proc", "invalid_counted_in")


def data_cache_dir() -> Path:
    """``$UNIPO_DATA_CACHE`` if it names a directory, else ``$UNIPO_CACHE/data`` (``~/.cache/unipo/data``)."""
    own = os.environ.get(CACHE_ENV, "").strip()
    if own and own.lower() not in _OFF:
        return Path(os.path.expanduser(own))
    return Path(os.environ.get("UNIPO_CACHE", Path.home() / ".cache" / "unipo")) / "data"


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)


def source_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, or of every file under a directory (relative names and bytes, sorted)."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode() + b"\0")
            _hash_file(h, p)
    else:
        _hash_file(h, path)
    return h.hexdigest()


def _code_digest() -> str:
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _CODE:
        h.update(name.encode())
        _hash_file(h, here / name)
    return h.hexdigest()


def cache_key(source: str, data_digest: str, tokenizer: Any, opts: PrepOptions) -> str:
    """The entry's name: a hash of the data, the tokenizer, the options that matter and the code (24 hex)."""
    options = {k: v for k, v in asdict(opts).items() if k not in _NOT_KEYED}
    material = {"format": FORMAT, "source": source, "data": data_digest, "tokenizer": tokenizer_fingerprint(tokenizer),
                "options": options, "code": _code_digest()}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _local_path(source: Any) -> Path | None:
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(os.path.expanduser(str(source)))
    return path if path.exists() else None


def _cache_enabled() -> bool:
    return os.environ.get(CACHE_ENV, "").strip().lower() not in _OFF


def prepared_table(source: str | os.PathLike | Sequence[dict], tokenizer: Any, options: PrepOptions, *,
                   log: Callable[[str], None] = print) -> tuple[PairsTable, PrepSummary]:
    """The pairs of ``source`` prepared with ``tokenizer`` and ``options`` (:func:`prepare_pairs`), as a
    :class:`PairsTable`, from the cache when an entry verifies, else prepared and cached; ``log`` gets one
    line saying which (and one more when an entry failed its check)."""
    options.validate()
    path = _local_path(source)
    if path is None or not _cache_enabled():
        pairs, summary = prepare_pairs(source, tokenizer, options)
        return PairsTable.from_pairs(pairs, options), summary
    name = str(source)
    root = data_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log(f"data cache: cannot use {root} ({exc.strerror or exc}); preparing in memory (set UNIPO_CACHE to a "
            f"writable directory)")
        pairs, summary = prepare_pairs(source, tokenizer, options)
        return PairsTable.from_pairs(pairs, options), summary
    start = time.perf_counter()
    key = cache_key(name, source_digest(path), tokenizer, options)
    with _lock(root / f"{key}.lock"):
        entry = _Entry(root, key)
        found = entry.read()
        if isinstance(found, tuple):
            log(f"data: {name}: {len(found[0])} prepared pairs reused from the cache ({entry.arrow}, memory-mapped; "
                f"key and check {time.perf_counter() - start:.1f} s)")
            return found
        if found is not None:
            log(f"data cache: {entry.arrow} failed its check ({found}); preparing the pairs again")
        start = time.perf_counter()  # the time to prepare, without the hashing before
        try:
            entry.write(name, tokenizer, options)
        except OSError as exc:  # a full or read-only disk: the run goes on without the cache
            log(f"data cache: cannot write {entry.arrow} ({exc.strerror or exc}); preparing in memory (free space "
                f"there, or set UNIPO_DATA_CACHE to another directory or to off)")
            pairs, summary = prepare_pairs(source, tokenizer, options)
            return PairsTable.from_pairs(pairs, options), summary
        table = entry.read()
        if not isinstance(table, tuple):  # what was just written does not verify: a fault of the disk
            raise OSError(f"{entry.arrow}: the entry just written does not verify ({table})")
        log(f"data: {name}: {len(table[0])} pairs prepared in {time.perf_counter() - start:.1f} s and cached as "
            f"{entry.arrow}")
        return table


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (one process at a time is then the user's part)
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Entry:
    """``KEY.arrow`` (the table) and ``KEY.json`` (key, size, SHA-256, pairs, summary) in the cache."""

    def __init__(self, root: Path, key: str):
        self.key, self.arrow, self.manifest = key, root / f"{key}.arrow", root / f"{key}.json"

    def read(self) -> tuple[PairsTable, PrepSummary] | str | None:
        """The verified table and summary; a reason why the entry cannot be trusted; None if there is none."""
        if not self.arrow.exists() and not self.manifest.exists():
            return None
        try:
            meta = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"its record {self.manifest.name} is missing or unreadable: {type(exc).__name__}"
        if not isinstance(meta, dict) or meta.get("key") != self.key or meta.get("format") != FORMAT:
            return f"{self.manifest.name} is not this entry's record"
        try:
            size = self.arrow.stat().st_size
        except OSError:
            return "the table file is missing"
        if size != meta.get("bytes"):
            return f"{size} bytes, {meta.get('bytes')} recorded: a torn or replaced file"
        if source_digest(self.arrow) != meta.get("sha256"):
            return "its SHA-256 is not the one recorded: a damaged or foreign file"
        try:
            table = pa.ipc.open_file(pa.memory_map(str(self.arrow), "r")).read_all()
        except (OSError, pa.ArrowException) as exc:
            return f"not a readable Arrow file: {exc}"
        if table.num_rows != meta.get("pairs") or table.schema.names != meta.get("columns"):
            return "its columns or number of pairs are not those recorded"
        return PairsTable(table), PrepSummary.from_dict(meta["summary"])

    def write(self, name: str, tokenizer: Any, options: PrepOptions) -> None:
        """Prepare the pairs chunk by chunk into a temporary file, then move it and its record into place."""
        from unipo.data.prepare import prepared_chunks

        schema = schema_for(options)
        opts = replace(options)
        summary = new_summary(name, opts)
        tmp = self.arrow.with_name(f"{self.arrow.name}.tmp{os.getpid()}")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for chunk in prepared_chunks(iter_rows(name, split=opts.split), tokenizer, opts, summary):
                    if chunk:
                        writer.write_batch(record_batch(chunk, schema))
            meta = {"format": FORMAT, "key": self.key, "bytes": tmp.stat().st_size, "sha256": source_digest(tmp),
                    "pairs": summary.pairs_kept, "columns": schema.names, "summary": summary.to_dict()}
            self.manifest.unlink(missing_ok=True)  # no record names a table that is being replaced
            os.replace(tmp, self.arrow)
            record = self.manifest.with_name(f"{self.manifest.name}.tmp{os.getpid()}")
            record.write_text(json.dumps(meta), encoding="utf-8")
            os.replace(record, self.manifest)
        finally:
            tmp.unlink(missing_ok=True)
