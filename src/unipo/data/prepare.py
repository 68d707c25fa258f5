"""Preparation at tokenizer speed: the rows of :func:`unipo.data.tokenize.prepare_pairs` in chunks, each chunk
with batched calls of the (fast) tokenizer, the chat template rendered once per distinct prompt, optionally
in worker processes; the same pairs, truncation, validation and summary as one row at a time.

How a chunk is prepared (:func:`prepare_chunk`):

1. every row is normalised (:func:`unipo.data.formats.normalize_row`) and its texts are rendered: a
   conversational prompt once per distinct prompt (``add_generation_prompt=True``), each prompt + response;
   a text row's prompt and ``prompt + response``;
2. every distinct text of the chunk is tokenised in ONE call of the tokenizer (a fast tokenizer encodes the
   batch in Rust, in parallel); the response ids are then cut from them by the very rules of the per-row
   path (:func:`unipo.data.tokenize.conversational_response`, :func:`~unipo.data.tokenize.text_response`);
3. the rows go, in order, through the per-row reader (validation, weights, BMC masks, truncation, summary).
   A row that step 1 could not do (any error: a malformed row, a template that fails or is not
   prefix-consistent) goes through the per-row path whole, which raises or counts its error exactly as
   before, in the same row order.

With ``num_proc`` > 1 the chunks are prepared in worker processes (``fork`` where the platform has it) while
the main process reads the file; results come back in chunk order, and the summaries are merged
(:meth:`unipo.data.tokenize.PrepSummary.merge`). A chunk whose worker met an error is prepared again in the
main process, so the error raised is the one the sequential path raises, for the same row.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

from unipo.data.formats import PreferencePair, SourceRow
from unipo.data.tokenize import (
    PrepOptions,
    PrepSummary,
    TokenizedPair,
    _named_responses,
    _PairReader,
    _render,
    _Tok,
    check_prefix,
    conversational_response,
    normalized_row,
    text_prompt_ids,
    text_response,
)

__all__ = ["CHUNK_ROWS", "available_cores", "prepare_chunk", "prepared_chunks"]

#: rows per chunk: one batched tokenizer call, one unit of work for a worker process
CHUNK_ROWS = 1024
#: conversation texts tokenised both whole and in two pieces to check that the pieces are exact
CHECKED_TEXTS = 64
#: below this many rows the data is prepared in this process whatever ``num_proc`` says (starting workers
#: costs more than it saves)
MIN_ROWS_FOR_WORKERS = 2 * CHUNK_ROWS

_Ids = tuple[list[int], list[list[int]]]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _Texts:
    """The distinct texts of a chunk, each tokenised once in one batched call.

    A rendered conversation may be registered split after its prompt's last added (special) token
    (:meth:`add_split`): the head, shared by the prompt and every response of the pair, is then tokenised once,
    and each text's ids are the head's followed by the rest's. That is exact because a tokenizer cuts the text
    at its added tokens before anything else and tokenises the pieces apart; :func:`_batched_ids` checks it on
    the first :data:`CHECKED_TEXTS` conversation texts (both ways) and tokenises whole texts if it does not hold."""

    def __init__(self, split: bool, check: bool) -> None:
        self.index: dict[str, int] = {}
        self.ids: list[list[int]] = []
        self.split, self.check = split, check
        self.parts: dict[str, tuple[str, str]] = {}
        self.checked: list[str] = []

    def add(self, text: str) -> str:
        self.index.setdefault(text, len(self.index))
        return text

    def add_split(self, text: str, cut: int) -> str:
        if self.split:
            self.parts[text] = (self.add(text[:cut]), self.add(text[cut:]))
            if self.check and len(self.checked) < CHECKED_TEXTS:
                self.checked.append(self.add(text))
        else:
            self.add(text)
        return text

    def tokenise(self, tokenizer: Any) -> None:
        texts = list(self.index)
        self.ids = list(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else []

    def whole(self, text: str) -> list[int]:
        return self.ids[self.index[text]]

    def __getitem__(self, text: str) -> list[int]:
        if self.split and text in self.parts:
            head, tail = self.parts[text]
            return self.whole(head) + self.whole(tail)
        return self.whole(text)

    def split_agrees(self) -> bool:
        """Whether the checked texts' ids in two pieces equal their ids tokenised whole."""
        return all(self[text] == self.whole(text) for text in self.checked)


def _last_added_token_end(text: str, tok: _Tok) -> int:
    """Where the last added token of ``text`` ends (0: it has none)."""
    return max((i + len(t) for t in tok.added if (i := text.rfind(t)) >= 0), default=0)


def _plan_conversational(pair: PreferencePair, tok: _Tok, texts: _Texts, prompts: dict[str, tuple[str, int]],
                         file: str, row: int) -> tuple[str, list[str]] | None:
    if not tok.has_template:
        return None
    key = json.dumps(pair.prompt, sort_keys=True, ensure_ascii=False)
    if key not in prompts:  # the template renders each distinct prompt once
        text = _render(tok, pair.prompt, True, file, row, "prompt")  # type: ignore[arg-type]
        prompts[key] = (text, _last_added_token_end(text, tok))
    prompt_text, cut = prompts[key]
    texts.add_split(prompt_text, cut)
    fulls = []
    for name, msgs in _named_responses(pair):
        full_text = _render(tok, pair.prompt + msgs, False, file, row, name)  # type: ignore[operator]
        check_prefix(prompt_text, full_text, file, row, name)
        fulls.append(texts.add_split(full_text, cut))
    return prompt_text, fulls


def _plan_text(pair: PreferencePair, texts: _Texts) -> tuple[str, list[tuple[str, str]]]:
    prompt = pair.prompt
    assert isinstance(prompt, str)
    if prompt:
        texts.add(prompt)
    return prompt, [(texts.add(prompt + r), r) for _, r in _named_responses(pair)]  # type: ignore[operator]


def _batched_ids(recs: list[SourceRow], tok: _Tok, gold_column: str | None = None
                 ) -> list[tuple[PreferencePair, _Ids] | None]:
    """Each row's normalised pair (with its gold response when ``gold_column`` is set) and ids from one batched
    tokenizer call; None for a row the per-row path must do (it raises or counts that row's error exactly as
    before)."""
    texts, prompts = _Texts(split=tok.split_ok is not False, check=tok.split_ok is None), {}
    plans: list[tuple[PreferencePair, Any] | None] = []
    for rec in recs:
        try:
            pair = normalized_row(rec, gold_column)
            plan = (_plan_conversational(pair, tok, texts, prompts, rec.file, rec.row) if pair.conversational
                    else _plan_text(pair, texts))
            plans.append((pair, plan) if plan is not None else None)
        except Exception:  # noqa: BLE001 - the per-row path reports it, in row order
            plans.append(None)
    texts.tokenise(tok.tokenizer)
    if texts.checked:  # the first conversations: is the split exact for this tokenizer?
        tok.split_ok = texts.split_agrees()
        if not tok.split_ok:
            return _batched_ids(recs, tok, gold_column)  # this chunk again, every text whole
    out: list[tuple[PreferencePair, _Ids] | None] = []
    for item in plans:
        if item is None:
            out.append(None)
            continue
        pair, plan = item
        if pair.conversational:
            prompt_text, fulls = plan
            prompt_ids = list(texts[prompt_text])
            responses = [conversational_response(tok, prompt_text, prompt_ids, f, texts[f]) for f in fulls]
        else:
            prompt, fulls = plan
            plain = texts[prompt] if prompt else []
            prompt_ids = text_prompt_ids(tok, plain)
            responses = [text_response(tok, plain, resp_text, texts[full]) for full, resp_text in fulls]
        out.append((pair, (prompt_ids, responses)))
    return out


def prepare_chunk(reader: _PairReader, recs: list[SourceRow]) -> list[TokenizedPair]:
    """The kept pairs of ``recs`` (in order); ``reader.summary`` counts what happened to every row."""
    pairs = []
    for rec, pre in zip(recs, _batched_ids(recs, reader.tok, reader.opts.gold_column), strict=True):
        reader.summary.rows_read += 1
        pair = reader.read(rec, pre)
        if pair is not None:
            pairs.append(pair)
            reader.summary.pairs_kept += 1
    return pairs


# --------------------------------------------------------------------------------------------- chunks


def _read_chunks(rows: Iterator[SourceRow], limit: int | None) -> Iterator[tuple[list[SourceRow], Exception | None]]:
    """Chunks of rows; a file-level error met while reading (a line that is not JSON) comes with the rows
    read before it, so that an earlier invalid row is still reported first, as the sequential path does."""
    buf: list[SourceRow] = []
    n = 0
    try:
        for rec in rows:
            if limit is not None and n >= limit:
                break
            buf.append(rec)
            n += 1
            if len(buf) == CHUNK_ROWS:
                yield buf, None
                buf = []
    except Exception as exc:  # noqa: BLE001 - re-raised after the rows before it
        yield buf, exc
        return
    if buf:
        yield buf, None


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: Any, opts: PrepOptions) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _WORKER["tokenizer"], _WORKER["opts"] = tokenizer, opts


def _worker_chunk(recs: list[SourceRow]) -> tuple[list[TokenizedPair], PrepSummary] | None:
    opts = _WORKER["opts"]
    summary = PrepSummary(max_length=opts.max_length, max_prompt_length=opts.max_prompt_length,
                          truncation_mode=opts.truncation_mode)
    reader = _WORKER.get("reader")
    if reader is None:
        reader = _WORKER["reader"] = _PairReader(_WORKER["tokenizer"], opts, summary)
    reader.summary = summary
    try:
        return prepare_chunk(reader, recs), summary
    except Exception:  # noqa: BLE001 - the main process prepares this chunk again and raises the row's error
        return None


def prepared_chunks(rows: Iterator[SourceRow], tokenizer: Any, opts: PrepOptions,
                    summary: PrepSummary) -> Iterator[list[TokenizedPair]]:
    """The kept pairs chunk by chunk, in row order; ``summary`` accumulates every row's count. Worker
    processes when ``opts.num_proc`` (None: :func:`available_cores`) > 1 and there are enough rows."""
    reader = _PairReader(tokenizer, opts, summary)
    chunks = _read_chunks(rows, opts.limit)
    num_proc = opts.num_proc or available_cores()
    head: list[tuple[list[SourceRow], Exception | None]] = []
    if num_proc > 1:  # look ahead: are there rows enough for workers?
        for item in chunks:
            head.append(item)
            if item[1] is not None or sum(len(c) for c, _ in head) >= MIN_ROWS_FOR_WORKERS:
                break
    ahead = (c for group in (head, chunks) for c in group)
    if num_proc > 1 and sum(len(c) for c, _ in head) >= MIN_ROWS_FOR_WORKERS:
        yield from _in_workers(ahead, reader, tokenizer, opts, num_proc)
        return
    for recs, error in ahead:
        yield prepare_chunk(reader, recs)
        if error is not None:
            raise error


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods and sys.platform == "linux" else "spawn")


def _in_workers(chunks: Iterator[tuple[list[SourceRow], Exception | None]], reader: _PairReader, tokenizer: Any,
                opts: PrepOptions, num_proc: int) -> Iterator[list[TokenizedPair]]:
    """Chunks prepared by ``num_proc`` worker processes, at most ``2 × num_proc`` in flight (the memory
    held stays that of a few chunks), yielded in order."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # set before fork: no warning, no Rust thread pool copied
    try:
        with _context().Pool(num_proc, initializer=_init_worker, initargs=(tokenizer, opts)) as pool:
            pending: deque = deque()
            for recs, error in chunks:
                pending.append((recs, error, pool.apply_async(_worker_chunk, (recs,))))
                while len(pending) > 2 * num_proc or (pending and pending[0][2].ready()):
                    yield _collect(pending.popleft(), reader)
            while pending:
                yield _collect(pending.popleft(), reader)
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _collect(item: tuple[list[SourceRow], Exception | None, Any], reader: _PairReader) -> list[TokenizedPair]:
    recs, error, result = item
    done = result.get()
    if done is None:  # the worker met an error: this process raises it (or counts it) exactly
        pairs = prepare_chunk(reader, recs)
    else:
        pairs, part = done
        reader.summary.merge(part)
    if error is not None:
        raise error
    return pairs
