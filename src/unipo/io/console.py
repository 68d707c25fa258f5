"""The package's one logger: every pipeline writes its progress lines here, on stderr, as ``unipo[ COMMAND]: MSG``.

* :func:`log` — ``unipo: MSG`` (training, eval, compare, the run directory);
* :func:`logger` — a log function with a command's prefix (``unipo iterate: MSG``, ``unipo weights: MSG``,
  ``unipo bridge: MSG``), the shape the resumable pipelines take as their ``log`` argument;
* :func:`progress_bars` — transformers' (and the hub's) own progress bars ("Loading weights", "Writing model
  shards", downloads) on or off for a block: ``--no-progress`` silences them with the Trainer's bar.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Log = Callable[[str], None]


def logger(prefix: str = "unipo") -> Log:
    """A log function writing ``PREFIX: MSG`` lines to stderr (flushed: they interleave with the progress bars)."""

    def write(msg: str) -> None:
        print(f"{prefix}: {msg}", file=sys.stderr, flush=True)

    return write


log: Log = logger("unipo")


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' progress bars (``transformers.utils.logging.tqdm``: "Loading weights", "Writing model
    shards", and huggingface_hub's download bars) off inside the block when not ``enabled`` (left as they are
    when enabled); the previous setting after it."""
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before:
            hf_logging.enable_progress_bar()
