"""Streaming: prepared pairs read, validated and tokenised as training consumes them, nothing written to disk.

For data larger than the prepared-data cache should hold (docs/data.md, "Streaming"). :class:`PairStream` is an
iterable dataset over a local file or directory (read lazily, as :func:`unipo.data.formats.iter_rows` reads it)
or a Hugging Face Hub dataset (``datasets.load_dataset(..., streaming=True)``: nothing is downloaded whole).
Every row goes through the preparation of the cached path, chunk by chunk (:func:`unipo.data.prepare.
prepared_chunks`: the same normalisation, validation, truncation, worker processes and summary counts), so a full
pass yields the pairs that :func:`unipo.data.tokenize.prepare_pairs` returns and the same summary.

Trade-offs (what the map-style cache gives that a stream cannot):

- no global shuffle: the order is the file's, shuffled within a buffer of ``buffer_size`` pairs (each pair
  leaves the buffer at a uniformly random time once it is full: the classic shuffle buffer, as
  ``datasets.IterableDataset.shuffle`` and tf.data's ``shuffle``), seeded by ``seed`` and the epoch, so an
  epoch's order is the same on every run;
- no length: training needs ``max_steps``, and a hold-out split (``eval_fraction``) is not available (give
  ``eval_data``);
- the summary is known only once a pass has read every row (:attr:`PairStream.summary` counts the rows read
  so far);
- every epoch reads and tokenises the data again; a resumed run replays the epoch's stream up to its position
  (transformers' Trainer reads and skips the batches already trained; :meth:`PairStream.start_at` does the
  same for other callers), so the pairs after it are exactly those an uninterrupted run would have seen, at
  the cost of tokenising the rows before it again.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from unipo.data.formats import SourceRow, iter_rows
from unipo.data.tokenize import PrepOptions, PrepSummary, TokenizedPair, new_summary
from unipo.errors import ConfigError

__all__ = ["DEFAULT_BUFFER", "PairStream", "open_stream", "shuffle_buffer", "stream_rows"]

#: pairs held by the shuffle buffer by default
DEFAULT_BUFFER = 10_000

T = TypeVar("T")


def stream_rows(source: str | os.PathLike, split: str) -> Iterator[SourceRow]:
    """The raw rows of ``source``, lazily: a local file or directory as :func:`unipo.data.formats.iter_rows`
    reads it, else a Hub dataset opened with ``streaming=True``."""
    if Path(os.path.expanduser(str(source))).exists():
        yield from iter_rows(source, split=split)
        return
    from unipo.data.formats import _iter_hf_dataset, _iter_hub

    try:
        import datasets

        ds = datasets.load_dataset(str(source), split=split, streaming=True)
    except Exception:  # noqa: BLE001 - the non-streaming path names what is wrong (not found, offline, ...)
        yield from _iter_hub(str(source), split)
        return
    yield from _iter_hf_dataset(ds, str(source))


def shuffle_buffer(items: Iterator[T], size: int, rng: random.Random) -> Iterator[T]:
    """``items`` shuffled within a buffer of ``size``: the first ``size`` fill it; then each new item takes the
    place of a uniformly chosen one, which is yielded; at the end the rest leave in random order. ``size`` ≤ 1:
    the items in order."""
    if size <= 1:
        yield from items
        return
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


def pair_row(pair: TokenizedPair, index: int) -> dict[str, Any]:
    """The pair as the collator takes it: its non-null fields and ``index`` (its position in the stream), as
    :class:`unipo.data.table.PairsTable` gives a row."""
    out = {k: v for k, v in pair.to_dict().items() if v is not None}
    out["index"] = index
    return out


class PairStream(torch.utils.data.IterableDataset):
    """The prepared pairs of ``source`` as an iterable dataset (module docstring): the same pairs and summary as
    the cached path, shuffled within ``buffer_size``, a new order each epoch (:meth:`set_epoch`)."""

    def __init__(self, source: str | os.PathLike, tokenizer: Any, options: PrepOptions, *,
                 buffer_size: int = DEFAULT_BUFFER, seed: int = 0, listwise_refusal: str | None = None) -> None:
        options.validate()
        if buffer_size < 0:
            raise ConfigError(f"stream_buffer must be 0 or more pairs, not {buffer_size}")
        self.source, self.tokenizer, self.options = str(source), tokenizer, options
        self.buffer_size, self.seed, self.epoch, self.skip = buffer_size, seed, 0, 0
        self.listwise_refusal = listwise_refusal
        self.summary: PrepSummary = new_summary(self.source, options)
        self.complete = False

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration yields (transformers' Trainer calls it each epoch)."""
        self.epoch = int(epoch)

    def start_at(self, pairs: int) -> None:
        """Skip the first ``pairs`` pairs of the next iteration (a resumed run's position in its epoch)."""
        self.skip = max(0, int(pairs))

    def pairs(self) -> Iterator[dict[str, Any]]:
        """Every kept pair in source order (no shuffle), each with its ``index``; :attr:`summary` counts the
        rows as they are read and is complete (:attr:`complete`) once the pass ends."""
        from unipo.data.prepare import prepared_chunks

        summary = self.summary  # reset in place: a caller holding it sees this pass's counts
        summary.__dict__.update(new_summary(self.source, self.options).__dict__)
        self.complete = False
        index = 0
        for chunk in prepared_chunks(stream_rows(self.source, self.options.split), self.tokenizer, self.options,
                                     summary):
            for pair in chunk:
                if self.listwise_refusal and pair.more_rejected_ids:
                    raise ConfigError(f"{self.source}: row {pair.row} (and maybe others) has "
                                      f"{1 + len(pair.more_rejected_ids)} rejected responses, but "
                                      f"{self.listwise_refusal}")
                yield pair_row(pair, index)
                index += 1
        self.complete = True

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        skip, self.skip = self.skip, 0
        for n, row in enumerate(shuffle_buffer(self.pairs(), self.buffer_size, rng)):
            if n >= skip:
                yield row


def open_stream(source: str | os.PathLike, tokenizer: Any, options: PrepOptions, *, buffer_size: int, seed: int,
                listwise_refusal: str | None = None, log: Callable[[str], None] = print) -> PairStream:
    """The training data as a :class:`PairStream` (``unipo train --data-streaming``), announced with one line."""
    stream = PairStream(source, tokenizer, options, buffer_size=buffer_size, seed=seed,
                        listwise_refusal=listwise_refusal)
    log(f"data: {stream.source}: streamed (read and tokenised as training consumes it, no cache; shuffled within "
        f"{buffer_size} pairs); the run's data summary counts the rows read by its end")
    return stream
