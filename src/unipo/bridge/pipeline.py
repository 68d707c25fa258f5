"""The resumable bridging pipeline: (x, y_w, y_l) → (x, ỹ_w, y_l), BMC's first phase.

BMC (Jiang et al., ICLR 2025, §3.1) trains on (x, ỹ_w, y_l) where ỹ_w is a minimal edit of the losing
response y_l made by an editor LLM with y_w as the reference; pairs the editor answers 'None' are dropped.
This module reads preference pairs, asks an :class:`~unipo.bridge.editors.Editor` for each edit and
appends every result the moment it arrives:

* ``OUT`` (JSONL): one row per edited pair, ``{"row", "prompt", "chosen": ỹ_w, "rejected": y_l,
  "original_chosen": y_w, "edit_distance", "edit_relative"}``; ``unipo train --data OUT --variant bmc``
  trains DPO-BMC on it, ``--variant dpo`` gives DPO-BC (bridged data, plain loss);
* ``OUT.failed.jsonl``: one record per pair dropped as 'None' (``status: dropped``) or that failed
  (``status: failed`` with the reason), so a resumed run knows which rows are done;
* ``OUT.lock``: held (``flock``) while a run writes, so that two runs cannot interleave;
* ``OUT.meta.json``: the input's checksum (a resume on different data is refused), the template, editor;
* ``OUT.summary.json`` and ``OUT.edit_distance.png``: the counts and the edit-distance histogram.

A row is *done* when it is in ``OUT`` or recorded in the sidecar; ``retry_failed`` redoes the failed
ones (never the dropped ones). A killed run therefore resumes where it stopped, with every row exactly
once; a line cut short by the kill is trimmed on resume.

The edit distance is a Levenshtein distance over tokens of the editor's tokenizer (or of ``tokenizer``),
or over whitespace-separated words when no tokenizer is available (a remote editor without
``--tokenizer``); ``edit_relative`` divides it by the length of y_l.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipo.bridge.config import BridgeConfig, BridgeOptions
from unipo.bridge.editors import EditJob, Editor, EditorStopped, EditResult
from unipo.bridge.prompts import EditTemplate, clean_output, render_context
from unipo.data.bmc_align import edit_distance
from unipo.errors import DataError, UnipoError, skip_invalid_hint
from unipo.io.atomic import atomic_path, atomic_write_text
from unipo.io.console import logger
from unipo.io.files import read_jsonl_repairing, sidecar_paths
from unipo.io.resumable import Progress, ResumablePipeline, RunFiles


@dataclass
class BridgePair:
    """One input pair: ``prompt`` is text or a list of chat messages; responses are plain text
    (for conversational pairs, the content of the single assistant response message)."""

    row: int
    prompt: str | list[dict[str, Any]]
    chosen: str
    rejected: str
    conversational: bool = False


# ----------------------------------------------------------------------------------------------------
# input
_log = logger("unipo bridge")


def _response_text(value: Any, *, file: str, row: int, field: str) -> str:
    if isinstance(value, str):
        return value
    if len(value) != 1 or value[0].get("role") != "assistant" or not isinstance(value[0].get("content"), str):
        raise DataError("bridging needs a single assistant message with text content as the response",
                        file=file, row=row, field=field)
    return value[0]["content"]


def read_pairs(source: str | Path, *, on_invalid: str = "error",
               invalid: list[tuple[int, str]] | None = None) -> Iterator[BridgePair]:
    """Yield the pairs of ``source`` with their 1-based row numbers.

    Reading and normalising is :mod:`unipo.data.formats`' (``load_rows`` / ``normalize_row``): explicit
    or implicit prompts, text or conversational rows, and Anthropic HH raw transcripts (which become
    conversational). Extra columns are not carried over (per-token weights would not fit the edited text).
    A row that fails validation raises (``on_invalid="error"``, with the way out) or is skipped and appended
    to ``invalid`` as (row, message) (``"skip"``).
    """
    from unipo.data.formats import load_rows, normalize_row

    name = str(source)
    for n, raw in load_rows(source):
        try:
            pair = normalize_row(raw, file=name, row_number=n)
            if pair.more_rejected:
                raise DataError(f"bridging rewrites one rejected response; this row has {len(pair.all_rejected)} "
                                "(give one rejected response per row)", file=name, row=n, field="rejected")
            chosen = _response_text(pair.chosen, file=name, row=n, field="chosen")
            rejected = _response_text(pair.rejected, file=name, row=n, field="rejected")
        except DataError as exc:
            if on_invalid == "error":
                raise exc.with_way_out(skip_invalid_hint("OUT.summary.json (invalid)")) from None
            if invalid is not None:
                invalid.append((n, str(exc)))
            continue
        yield BridgePair(n, pair.prompt, chosen, rejected, conversational=pair.conversational)


def file_sha256(path: str | Path) -> str | None:
    """A checksum of the input (a file's bytes, or a directory's file names and sizes), to refuse
    resuming an output on other data; ``None`` for a source that is not a local path."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    elif path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(path)}:{f.stat().st_size}\n".encode())
    else:
        return None
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# tokens for the edit distance (unipo.data.bmc_align.edit_distance)


def make_tokenize(tokenizer: Any | None) -> tuple[Callable[[str], list], str]:
    """A text → tokens function and its description: the tokenizer's ids, or whitespace words."""
    if tokenizer is None:
        return (lambda text: text.split()), "whitespace"
    name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    return (lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]), f"tokenizer:{name}"


# ----------------------------------------------------------------------------------------------------
# output files and resume state


@dataclass(frozen=True)
class BridgePaths:
    out: Path
    failed: Path
    meta: Path
    summary: Path
    histogram: Path
    lock: Path

    @classmethod
    def for_output(cls, out: str | Path) -> BridgePaths:
        return cls(**sidecar_paths(out, appended="results are appended as they complete",
                                   failed=".failed.jsonl", meta=".meta.json", summary=".summary.json",
                                   histogram=".edit_distance.png", lock=".lock"))


def _read_jsonl_repairing(path: Path) -> list[dict[str, Any]]:
    """Records of an append-only JSONL file; a last line cut short by a kill is trimmed off the file."""
    return read_jsonl_repairing(
        path, invalid_hint="fix or delete the file (bridge outputs are append-only)",
        log=_log)


@dataclass
class ResumeState:
    edited: dict[int, dict[str, Any]]
    sidecar: dict[int, dict[str, Any]]  # the latest record per row

    def done(self, retry_failed: bool) -> set[int]:
        done = set(self.edited)
        for row, rec in self.sidecar.items():
            if rec.get("status") == "dropped" or (rec.get("status") == "failed" and not retry_failed):
                done.add(row)
        return done


def load_state(paths: BridgePaths) -> ResumeState:
    edited = {int(r["row"]): r for r in _read_jsonl_repairing(paths.out) if "row" in r}
    sidecar: dict[int, dict[str, Any]] = {}
    for rec in _read_jsonl_repairing(paths.failed):
        if "row" in rec:
            sidecar[int(rec["row"])] = rec
    return ResumeState(edited, sidecar)


# ----------------------------------------------------------------------------------------------------
# the run


def _as_message(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _max_tokens_for(pair: BridgePair, count: Callable[[str], int], opts: BridgeOptions) -> int:
    if opts.max_new_tokens:
        return int(opts.max_new_tokens)
    longest = max(count(pair.chosen), count(pair.rejected))
    return min(opts.max_new_tokens_cap, int(1.5 * longest) + 64)


def run_bridge(cfg: BridgeConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Bridge every pair of ``cfg.data`` into ``cfg.out`` with ``cfg.editor`` and ``cfg.template`` (resuming),
    write the summary files, return the summary (:class:`~unipo.bridge.config.BridgeConfig`).

    ``cfg.tokenizer`` measures the token edit distance (default: the editor's own tokenizer when it has one,
    else whitespace words). ``log``: where progress lines go (default: ``unipo bridge: ...`` on stderr).
    """
    log = log or _log
    return _BridgeRun(cfg.data, BridgePaths.for_output(cfg.out), cfg.editor, cfg.template, cfg.options,
                      cfg.tokenizer, log).run()


class _BridgeRun(ResumablePipeline[BridgePair]):
    """The steps of ``unipo bridge`` in the resumable-pipeline skeleton (:mod:`unipo.io.resumable`)."""

    command = "unipo bridge"
    interruptions = (UnipoError, KeyboardInterrupt, EditorStopped)

    def __init__(self, data: str | Path, paths: BridgePaths, editor: Editor, template: EditTemplate,
                 opts: BridgeOptions, tokenizer: Any | None, log: Callable[[str], None]) -> None:
        files = RunFiles(lock=paths.lock, meta=paths.meta, appended={"out": paths.out, "failed": paths.failed},
                         outputs=(paths.out, paths.failed, paths.meta, paths.summary, paths.histogram))
        super().__init__(files, overwrite=opts.overwrite, log=log)
        self.data, self.paths, self.editor, self.template, self.opts = data, paths, editor, template, opts
        if tokenizer is None:
            tokenizer = getattr(editor, "tokenizer", None)
        self.tokenize, self.tokenizer_name = make_tokenize(tokenizer)
        self.counts = {"edited": 0, "dropped_none": 0, "failed": 0, "truncated": 0}
        self.by_row: dict[int, BridgePair] = {}
        self.invalid: list[tuple[int, str]] = []  # input rows skipped as invalid (on_invalid: skip)
        self._last_log = 0.0

    def load(self) -> list[BridgePair]:
        self.invalid = []
        pairs = list(read_pairs(self.data, on_invalid=self.opts.on_invalid, invalid=self.invalid))
        if self.opts.limit is not None:
            pairs = pairs[: self.opts.limit]
            self.invalid = [(n, m) for n, m in self.invalid if not pairs or n < pairs[-1].row]
        if self.invalid:
            self.log(f"skipped {len(self.invalid)} invalid rows (on_invalid: skip), e.g. {self.invalid[0][1]}")
        if not pairs:
            raise DataError(f"{self.data}: no rows")
        self.by_row = {p.row: p for p in pairs}
        return pairs

    def settings(self, items: list[BridgePair]) -> dict[str, Any]:
        return {"input": str(self.data), "input_sha256": file_sha256(self.data), "template": self.template.name,
                "editor": self.editor.describe()}

    def check_resume(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        if old.get("input_sha256") != new["input_sha256"]:
            raise DataError(f"{self.paths.out} was written from different input data ({old.get('input')}); "
                            "use another --out or --overwrite to start again")
        if old.get("template") != new["template"] or old.get("editor") != new["editor"]:
            self.log("warning: resuming with a different editor or template than the earlier run")

    def done_rows(self) -> set[int]:
        return load_state(self.paths).done(self.opts.retry_failed)

    def start_message(self, total: int, pending: int) -> str:
        return (f"{total} rows read, {total - pending} already done, {pending} to edit "
                f"(editor {self.editor.name}, template {self.template.name})")

    def results(self, pending: list[BridgePair]) -> Iterator[tuple[str, dict[str, Any]]]:
        stream = self.editor.edit_stream(self._jobs(pending))
        try:
            for row, result in stream:
                yield self._record(self.by_row[row], result)
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()

    def _jobs(self, pending: list[BridgePair]) -> Iterator[EditJob]:
        for p in pending:
            msgs = self.template.messages(render_context(p.prompt), p.chosen.strip(), p.rejected.strip())
            yield EditJob(p.row, msgs, _max_tokens_for(p, lambda t: len(self.tokenize(t)), self.opts))

    def _record(self, pair: BridgePair, result: EditResult) -> tuple[str, dict[str, Any]]:
        """Where the editor's answer for ``pair`` goes (``out`` or ``failed``) and the record to append."""
        row = pair.row
        if result.error:
            self.counts["failed"] += 1
            return "failed", {"row": row, "status": "failed", "reason": result.error, "attempts": result.attempts}
        if result.finish_reason == "length" and not self.opts.keep_truncated:
            self.counts["failed"] += 1
            self.counts["truncated"] += 1
            return "failed", {"row": row, "status": "failed", "attempts": result.attempts,
                              "reason": "truncated: the edit hit the new-token limit (raise --max-new-tokens "
                                        "or pass --keep-truncated)"}
        text = clean_output(result.text)
        if text is None:
            self.counts["dropped_none"] += 1
            return "failed", {"row": row, "status": "dropped", "reason": "editor answered None",
                              "editor_output": (result.text or "")[:200]}
        lead = pair.rejected[: len(pair.rejected) - len(pair.rejected.lstrip())]
        pseudo = lead + text  # keep y_l's leading whitespace (HH responses start with a space)
        ref_tokens = self.tokenize(pair.rejected)
        dist = edit_distance(ref_tokens, self.tokenize(pseudo))
        wrap = _as_message if pair.conversational else (lambda t: t)
        self.counts["edited"] += 1
        return "out", {"row": row, "prompt": pair.prompt, "chosen": wrap(pseudo),
                       "rejected": wrap(pair.rejected), "original_chosen": wrap(pair.chosen),
                       "edit_distance": dist, "edit_relative": round(dist / max(1, len(ref_tokens)), 4)}

    def written(self, name: str, record: dict[str, Any], progress: Progress) -> None:
        elapsed = progress.elapsed
        if not self.opts.progress_every or elapsed - self._last_log < self.opts.progress_every:
            return
        self._last_log = elapsed
        c, n = self.counts, progress.done
        self.log(f"{n}/{progress.total} this run ({c['edited']} edited, {c['dropped_none']} None, "
                 f"{c['failed']} failed), {n / max(elapsed, 1e-9):.2f} rows/s")

    def stop(self) -> None:
        self.editor.stop()

    def summarize(self, items: list[BridgePair], meta: dict[str, Any], elapsed: float) -> dict[str, Any]:
        return summarize(self.paths, items, self.counts, self.tokenizer_name, elapsed=elapsed,
                         invalid=self.invalid,
                         plot=self.opts.plot, meta=meta)

    def format_summary(self, summary: dict[str, Any]) -> str:
        return format_summary(summary)


# ----------------------------------------------------------------------------------------------------
# summary


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def summarize(paths: BridgePaths, pairs: list[BridgePair], this_run: dict[str, int], tokenizer_name: str,
              *, elapsed: float, plot: bool = True, meta: dict[str, Any] | None = None,
              invalid: list[tuple[int, str]] | None = None) -> dict[str, Any]:
    """Counts over the whole output (all runs so far), the edit-distance distribution, and the PNG;
    ``invalid``: the (row, message) of the input rows skipped as invalid (``on_invalid: skip``)."""
    state = load_state(paths)
    rows = {p.row for p in pairs}
    edited = [r for row, r in state.edited.items() if row in rows]
    side = {row: r for row, r in state.sidecar.items() if row in rows and row not in state.edited}
    dropped = sum(1 for r in side.values() if r.get("status") == "dropped")
    failed = sum(1 for r in side.values() if r.get("status") == "failed")
    dists = [int(r.get("edit_distance", 0)) for r in edited]
    rels = [float(r.get("edit_relative", 0.0)) for r in edited]
    summary: dict[str, Any] = {
        "input": (meta or {}).get("input"),
        "output": str(paths.out),
        "failed_file": str(paths.failed),
        "rows_read": len(pairs),
        "edited": len(edited),
        "dropped_none": dropped,
        "failed": failed,
        "pending": len(pairs) - len(edited) - dropped - failed,
        "invalid": len(invalid or []),
        "invalid_messages": [msg for _, msg in (invalid or [])[:5]],
        "this_run": {**this_run, "seconds": round(elapsed, 2)},
        "template": (meta or {}).get("template"),
        "editor": (meta or {}).get("editor"),
        "edit_distance": {"unit": tokenizer_name, "count": len(dists)},
    }
    if dists:
        summary["edit_distance"].update(
            mean=round(statistics.fmean(dists), 3), median=statistics.median(dists),
            p90=_quantile(dists, 0.9), max=max(dists), min=min(dists),
            mean_relative=round(statistics.fmean(rels), 4), median_relative=statistics.median(rels),
        )
    if plot and dists:
        plot_histogram(dists, rels, paths.histogram, tokenizer_name)
        summary["histogram"] = str(paths.histogram)
    atomic_write_text(paths.summary, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    summary["summary_file"] = str(paths.summary)
    return summary


def plot_histogram(dists: list[int], rels: list[float], path: Path, unit: str) -> None:
    """Two panels: the token edit distance y_l → ỹ_w, and the same divided by |y_l|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    lo, hi = min(dists), max(dists)
    bins = [b - 0.5 for b in range(lo, hi + 2)] if hi - lo <= 40 else 40  # integer bins when few
    ax1.hist(dists, bins=bins, color="#4477aa")
    short = unit if len(unit) <= 30 else unit.split(":")[0] + ":…" + unit[-20:]
    ax1.set_xlabel(f"token edit distance y_l → ỹ_w ({short})")
    ax1.set_ylabel("pairs")
    ax1.set_title(f"median {statistics.median(dists):g}, mean {statistics.fmean(dists):.1f}")
    ax2.hist(rels, bins=20, color="#ee6677")
    ax2.set_xlabel("edit distance / length of y_l")
    ax2.set_title(f"median {statistics.median(rels):.2f} (0 = unchanged)")
    fig.suptitle(f"BMC bridging: {len(dists)} edited pairs")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def format_summary(s: dict[str, Any]) -> str:
    ed = s["edit_distance"]
    lines = [
        f"rows read {s['rows_read']}: edited {s['edited']}, dropped as None {s['dropped_none']}, "
        f"failed {s['failed']}, pending {s['pending']}  (this run: {s['this_run']})"
        + (f"; {s['invalid']} invalid input rows skipped" if s.get("invalid") else ""),
    ]
    if ed.get("count"):
        lines.append(f"edit distance ({ed['unit']}): median {ed['median']}, mean {ed['mean']}, "
                     f"p90 {ed['p90']}, max {ed['max']}; relative to |y_l|: median {ed['median_relative']}")
    lines.append(f"summary: {s.get('summary_file', '')}" + (f", histogram: {s['histogram']}"
                                                           if s.get("histogram") else ""))
    if s["failed"]:
        lines.append(f"failed rows are listed in {s['failed_file']}; rerun with --retry-failed to redo them")
    return "\n".join(lines)
