"""Reading preference data from files, directories or the Hub, and normalising rows to one shape.

Supported sources (see docs/data.md):

- local files: ``.jsonl`` / ``.jsonl.gz`` (one JSON object per line), ``.json`` / ``.json.gz`` (a list of
  objects, or ``{"data": [...]}``; a ``.json`` file holding JSON lines is read as JSONL), ``.parquet``,
  ``.csv`` (text rows only);
- a directory written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a directory
  of data files of the kinds above;
- a Hugging Face Hub dataset name, through ``datasets.load_dataset``, only when no local path of that name
  exists (this needs a network connection).

Supported row shapes (the conventions of TRL's preference datasets, plus Anthropic's raw HH-RLHF):

- explicit prompt: ``{"prompt", "chosen", "rejected"}``, all strings (standard text) or lists of
  ``{"role", "content"}`` messages (conversational; the prompt may be multi-turn);
- implicit prompt: only ``{"chosen", "rejected"}`` sharing a prefix; the longest common prefix is the
  prompt (for messages: the common leading messages);
- Anthropic HH-RLHF raw format (Bai et al. 2022, "Training a Helpful and Harmless Assistant with RLHF"):
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` strings, turned into conversational messages; the prompt is every
  turn before the last Assistant turn and the responses are the last Assistant turns.

Any other column is kept in :attr:`PreferencePair.extras` (e.g. ``chosen_weights`` / ``rejected_weights``,
the per-token weights of TIS-DPO, Liu et al., ICLR 2025).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from unipo.errors import DataError

__all__ = [
    "DATA_SUFFIXES",
    "PreferencePair",
    "SourceRow",
    "iter_rows",
    "load_rows",
    "normalize_row",
    "parse_hh_dialogue",
    "is_hh_format",
    "write_rows",
]

#: File name endings read as data files (longest first, so ``.jsonl.gz`` wins over ``.gz``).
DATA_SUFFIXES: tuple[str, ...] = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".csv")
_KNOWN_SPLITS = ("train", "test", "validation", "valid", "dev", "eval")
_ROLES = ("system", "user", "assistant", "tool")
_RESPONSE_FIELDS = ("chosen", "rejected")
_CORE_FIELDS = ("prompt", "chosen", "rejected")

Message = dict[str, Any]


class SourceRow(NamedTuple):
    """One raw row: the file it came from (for error messages), its 1-based row number and its columns.

    For JSONL files the row number is the line number (blank lines are skipped but counted); for the other
    formats it is the 1-based index of the record (a CSV header line is not counted).
    """

    file: str
    row: int
    data: dict


@dataclass
class PreferencePair:
    """A preference pair in one normalised shape.

    Conversational pairs (``conversational=True``): ``prompt`` is a list of messages
    (``{"role", "content"}``, possibly multi-turn) and ``chosen`` / ``rejected`` are the lists of response
    messages that follow it (usually one assistant message). Standard text pairs: three strings, and the
    text to train on is ``prompt + chosen`` / ``prompt + rejected``.
    """

    prompt: list[Message] | str
    chosen: list[Message] | str
    rejected: list[Message] | str
    conversational: bool
    extras: dict = field(default_factory=dict)
    #: a listwise row's further rejected responses (its 'rejected' was a list of K > 1): ``rejected`` is the
    #: first, these the others, in the row's order
    more_rejected: list = field(default_factory=list)
    #: a third, gold response (TPO: the data's gold column, :func:`with_gold`), in the shape of ``chosen``; None
    #: unless the objective reads one
    gold: Any = None

    @property
    def all_rejected(self) -> list:
        """Every rejected response: ``[rejected, *more_rejected]``."""
        return [self.rejected, *self.more_rejected]

    def to_row(self) -> dict:
        """The pair as an explicit-prompt row (``prompt``, ``chosen``, ``rejected`` — a list for a listwise
        row — and the extras)."""
        rejected = self.all_rejected if self.more_rejected else self.rejected
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": rejected, **self.extras}


# --------------------------------------------------------------------------------------------- reading


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suf in DATA_SUFFIXES:
        if name.endswith(suf):
            return suf
    return None


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig")  # noqa: SIM115  (utf-8-sig: a leading byte-order mark is dropped)


def _iter_jsonl(path: Path, file: str) -> Iterator[SourceRow]:
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"line {lineno} is not valid JSON ({exc.msg} at column {exc.colno})",
                                    file=file, row=lineno) from None
                if not isinstance(obj, dict):
                    raise DataError(f"line {lineno} is a JSON {type(obj).__name__}, expected an object "
                                    "with 'chosen' and 'rejected'", file=file, row=lineno)
                yield SourceRow(file, lineno, obj)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the file: {exc}", file=file) from None


def _iter_json(path: Path, file: str) -> Iterator[SourceRow]:
    try:
        with _open_text(path) as fh:
            text = fh.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the file: {exc}", file=file) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        # Many ".json" files (and the Hub's) are really JSON lines: read them as such.
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            yield from _iter_jsonl(path, file)
            return
        raise DataError(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
                        file=file, row=exc.lineno) from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError("expected a JSON list of objects, or an object with a 'data' list", file=file)
    for i, item in enumerate(obj, start=1):
        if not isinstance(item, dict):
            raise DataError(f"item {i} is a JSON {type(item).__name__}, expected an object", file=file, row=i)
        yield SourceRow(file, i, item)


def _iter_csv(path: Path, file: str) -> Iterator[SourceRow]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            for i, rec in enumerate(reader, start=1):
                if None in rec:
                    raise DataError("the row has more cells than the header has columns", file=file, row=i)
                yield SourceRow(file, i, dict(rec))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the CSV file: {exc}", file=file) from None


def _iter_parquet(path: Path, file: str) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types
        raise DataError(f"cannot read the Parquet file: {exc}", file=file) from None
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            i += 1
            yield SourceRow(file, i, rec)


def _iter_file(path: Path, file: str | None = None) -> Iterator[SourceRow]:
    file = file or str(path)
    suf = _suffix(path)
    if suf in (".jsonl", ".jsonl.gz"):
        yield from _iter_jsonl(path, file)
    elif suf in (".json", ".json.gz"):
        yield from _iter_json(path, file)
    elif suf == ".csv":
        yield from _iter_csv(path, file)
    elif suf == ".parquet":
        yield from _iter_parquet(path, file)
    else:
        raise DataError(f"unsupported file type; expected one of {', '.join(DATA_SUFFIXES)}", file=file)


def _iter_hf_dataset(ds: Any, file: str) -> Iterator[SourceRow]:
    for i, rec in enumerate(ds, start=1):
        yield SourceRow(file, i, dict(rec))


def _pick_split(dsd: Any, split: str, file: str) -> Any:
    if split in dsd:
        return dsd[split]
    if len(dsd) == 1:
        return next(iter(dsd.values()))
    raise DataError(f"split '{split}' not found; available splits: {', '.join(dsd.keys())}", file=file)


def _iter_directory(path: Path, split: str) -> Iterator[SourceRow]:
    file = str(path)
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() \
            or (path / "state.json").exists():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DataError(f"cannot load the saved dataset: {exc}", file=file) from None
        if isinstance(ds, datasets.DatasetDict):
            ds = _pick_split(ds, split, file)
        yield from _iter_hf_dataset(ds, file)
        return
    files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) is not None
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DataError(f"the directory holds no data files ({', '.join(DATA_SUFFIXES)}) and is not a "
                        "dataset saved with datasets.save_to_disk", file=file)

    def mentions(p: Path, name: str) -> bool:
        return re.search(rf"(^|[^a-z]){name}([^a-z]|$)", str(p.relative_to(path)).lower()) is not None

    if any(mentions(p, s) for p in files for s in _KNOWN_SPLITS):
        chosen_files = [p for p in files if mentions(p, split)]
        if not chosen_files:
            raise DataError(f"no data file for split '{split}' (files: "
                            f"{', '.join(str(p.relative_to(path)) for p in files)})", file=file)
        files = chosen_files
    for p in files:
        yield from _iter_file(p)


def _looks_like_path(source: str) -> bool:
    return (_suffix(Path(source)) is not None or source.startswith((".", "/", "~")) or "\\" in source
            or source.count("/") > 1)


def _iter_hub(name: str, split: str) -> Iterator[SourceRow]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(
            f"not found: no local file or directory of that name, and loading it as a Hugging Face Hub "
            f"dataset failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Hub dataset names need a network connection (and HF_DATASETS_OFFLINE unset); otherwise give "
            "the path of a local .jsonl/.json/.parquet/.csv file or a saved dataset directory",
            file=name) from None
    yield from _iter_hf_dataset(ds, name)


def iter_rows(source: str | os.PathLike, *, split: str = "train") -> Iterator[SourceRow]:
    """Yield every raw row of ``source`` as a :class:`SourceRow` (file, 1-based row number, columns).

    ``source`` is a local data file, a directory (``save_to_disk`` output or data files) or, only when no
    such local path exists, a Hub dataset name. ``split`` picks the split of a ``DatasetDict``, of a
    directory whose file names mention splits, or of a Hub dataset; it is ignored for a single file.
    Rows are read lazily; errors are :class:`~unipo.errors.DataError` naming the file and row.
    """
    src = str(source)
    path = Path(os.path.expanduser(src))
    if path.is_dir():
        yield from _iter_directory(path, split)
    elif path.is_file():
        yield from _iter_file(path, src)
    elif _looks_like_path(src):
        raise DataError("file not found", file=src)
    else:
        yield from _iter_hub(src, split)


def load_rows(source: str | os.PathLike, *, split: str = "train") -> Iterator[tuple[int, dict]]:
    """Yield ``(row_number, row)`` for every row of ``source`` (1-based; see :func:`iter_rows`).

    For a directory of several files the row numbers restart in each file; use :func:`iter_rows` to
    also get the file each row came from.
    """
    for rec in iter_rows(source, split=split):
        yield rec.row, rec.data


# --------------------------------------------------------------------------------------------- writing


def write_rows(path: str | os.PathLike, rows: Iterable[dict | PreferencePair]) -> int:
    """Write ``rows`` (dicts or :class:`PreferencePair`) as JSON lines to ``path``; return the count.

    A path ending in ``.gz`` is gzip-compressed. The file is written to a temporary name and moved into
    place at the end, so a crash never leaves a half-written file under the final name.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    opener = gzip.open if out.name.endswith(".gz") else open
    try:
        with opener(tmp, "wt", encoding="utf-8") as fh:
            for row in rows:
                rec = row.to_row() if isinstance(row, PreferencePair) else row
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


# --------------------------------------------------------------------------------------------- HH-RLHF

_HH_SPLIT = re.compile(r"\n\n(Human|Assistant):")
_HH_START = re.compile(r"^\s*Human:")


def is_hh_format(text: Any) -> bool:
    """Whether ``text`` looks like an Anthropic HH-RLHF transcript (``"\\n\\nHuman: …\\n\\nAssistant: …"``)."""
    return isinstance(text, str) and bool(_HH_START.match(text)) and "\n\nAssistant:" in text


def parse_hh_dialogue(text: str) -> list[Message]:
    """Split an HH-RLHF transcript into ``user`` / ``assistant`` messages (contents stripped).

    The format (Bai et al. 2022) alternates ``"\\n\\nHuman: "`` and ``"\\n\\nAssistant: "`` turns; a final
    ``"Assistant:"`` with nothing after it gives an assistant message with empty content.
    """
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip()
    parts = _HH_SPLIT.split(text)
    # parts = [before, role1, content1, role2, content2, ...]
    roles, contents = parts[1::2], parts[2::2]
    return [{"role": "user" if r == "Human" else "assistant", "content": c.strip()}
            for r, c in zip(roles, contents, strict=True)]


# --------------------------------------------------------------------------------------------- normalising


def _check_messages(value: Any, name: str, file: str, row: int) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError("expected a non-empty list of {'role', 'content'} messages", file=file, row=row,
                        field=name)
    out = []
    for i, msg in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            raise DataError(f"message {i} is a {type(msg).__name__}, expected an object with 'role' and "
                            "'content'", file=file, row=row, field=where)
        if "role" not in msg or "content" not in msg:
            missing = "role" if "role" not in msg else "content"
            raise DataError(f"message {i} has no '{missing}'", file=file, row=row, field=f"{where}.{missing}")
        if msg["role"] not in _ROLES:
            raise DataError(f"message {i} has role {msg['role']!r}; expected one of {', '.join(_ROLES)}",
                            file=file, row=row, field=f"{where}.role")
        if not isinstance(msg["content"], str):
            raise DataError(f"message {i} has non-string content ({type(msg['content']).__name__}); only "
                            "text content is supported", file=file, row=row, field=f"{where}.content")
        out.append(msg)
    return out


def _check_response_messages(msgs: list[Message], name: str, file: str, row: int) -> None:
    if not msgs:
        raise DataError("empty response: nothing follows the prompt", file=file, row=row, field=name)
    if msgs[0]["role"] != "assistant" or msgs[-1]["role"] != "assistant":
        bad = msgs[0] if msgs[0]["role"] != "assistant" else msgs[-1]
        raise DataError(f"the response must start and end with an assistant message (found role "
                        f"{bad['role']!r})", file=file, row=row, field=name)
    if any(m["role"] in ("user", "system") for m in msgs):
        raise DataError("the response contains a user/system turn: chosen and rejected must share "
                        "everything before their last assistant turn", file=file, row=row, field=name)
    if not msgs[-1]["content"].strip():
        raise DataError("empty response (the last assistant message is blank)", file=file, row=row,
                        field=name)


def _split_common_messages(chosen: list[Message], rejected: list[Message]) -> int:
    """Number of leading messages shared by both lists, backed off so the responses start with assistant."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    while k > 0 and chosen[k - 1]["role"] == "assistant":
        k -= 1
    return k


def _as_response_messages(value: Any, name: str, file: str, row: int) -> list[Message]:
    """Responses to a conversational prompt: a list of messages, one message, or a plain string."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        value = [value]
    return _check_messages(value, name, file, row)


def _text_common_prefix(a: str, b: str) -> int:
    """Length of the common prefix of ``a`` and ``b``, backed off to a word boundary.

    If the difference falls inside a word ("is 12" / "is 15"), the whole word goes to the responses; the
    spaces right before the responses also go to them (" 12" / " 15"), as in TRL's prompt extraction,
    which suits tokenizers that attach a leading space to words.
    """
    n = len(os.path.commonprefix([a, b]))

    def after(s: str) -> str:
        return s[n] if n < len(s) else " "

    if n > 0 and a[n - 1].isalnum() and (after(a).isalnum() or after(b).isalnum()):
        while n > 0 and a[n - 1].isalnum():
            n -= 1
    while n > 0 and a[n - 1] in " \t":
        n -= 1
    return n


def _rejected_list(value: Any, prompt: Any, file: str, row: int) -> list[tuple[str, Any]]:
    """``[(field name, response), ...]``: the row's rejected responses. A list whose items are text or lists
    (not one conversation's message objects) is a listwise row's K rejected responses."""
    if not isinstance(value, list) or (value and all(isinstance(x, dict) for x in value)):
        return [("rejected", value)]
    if not value:
        raise DataError("the list of rejected responses is empty: give at least one", file=file, row=row,
                        field="rejected")
    for k, item in enumerate(value):
        if not isinstance(item, str | list):
            raise DataError(f"rejected response {k} is a {type(item).__name__}; with several rejected responses "
                            "each one is text or a list of messages", file=file, row=row, field=f"rejected[{k}]")
    if prompt is None and len(value) > 1:
        raise DataError("several rejected responses need an explicit 'prompt' column (the prompt cannot be "
                        "inferred from a common prefix)", file=file, row=row, field="prompt")
    return [(f"rejected[{k}]", item) for k, item in enumerate(value)]


def _explicit_prompt(prompt: Any, chosen: Any, rejecteds: list[tuple[str, Any]], extras: dict, f: str,
                     r: int) -> PreferencePair:
    """A row with a ``prompt`` column: all text, or messages (responses as messages or plain text)."""
    if isinstance(prompt, str):
        for name, val in (("chosen", chosen), *rejecteds):
            if not isinstance(val, str):
                raise DataError(f"the prompt is text but this field is a {type(val).__name__}; use text "
                                "for all three fields, or messages for all three", file=f, row=r, field=name)
            if not val.strip():
                raise DataError("empty response", file=f, row=r, field=name)
        rest = [val for _, val in rejecteds]
        return PreferencePair(prompt, chosen, rest[0], False, extras, rest[1:])
    if isinstance(prompt, dict):
        prompt = [prompt]
    msgs = _check_messages(prompt, "prompt", f, r)
    responses = []
    for name, val in (("chosen", chosen), *rejecteds):
        resp = _as_response_messages(val, name, f, r)
        _check_response_messages(resp, name, f, r)
        responses.append(resp)
    return PreferencePair(msgs, responses[0], responses[1], True, extras, responses[2:])


def with_gold(pair: PreferencePair, row: dict, column: str, *, file: str, row_number: int) -> PreferencePair:
    """``pair`` with its gold response (TPO, Saeidi et al. 2024, arXiv 2405.16681: a third response per prompt)
    read from ``row[column]``: in the shape of ``chosen`` (text for a text pair; messages, or text as one assistant
    message, for a conversational pair). In a row without a ``prompt`` column the gold response may repeat the
    prompt, as chosen does (TRL's implicit-prompt ``reference``): the pair's prompt is then split off it."""
    f, r = file, row_number
    value = row.get(column)
    if value is None:
        raise DataError(f"missing the gold response: this variant reads a third, gold response per pair from the "
                        f"column {column!r} (set gold_column to the column that holds it)", file=f, row=r,
                        field=column)
    implicit = row.get("prompt") is None
    if not pair.conversational:
        if not isinstance(value, str):
            raise DataError(f"the pair is text but the gold response is a {type(value).__name__}; use text",
                            file=f, row=r, field=column)
        if implicit and isinstance(pair.prompt, str) and value.startswith(pair.prompt):
            value = value[len(pair.prompt):]
        if not value.strip():
            raise DataError("empty gold response", file=f, row=r, field=column)
        return replace(pair, gold=value)
    resp = _as_response_messages(value, column, f, r)
    if implicit and resp[:len(pair.prompt)] == pair.prompt:
        resp = resp[len(pair.prompt):]
    _check_response_messages(resp, column, f, r)
    return replace(pair, gold=resp)


def normalize_row(row: dict, *, file: str, row_number: int) -> PreferencePair:
    """Turn one raw row into a :class:`PreferencePair`, or raise :class:`~unipo.errors.DataError`.

    Handles explicit prompts, implicit prompts (longest common prefix / common leading messages),
    conversational rows and the HH-RLHF raw format (see the module docstring). Errors name ``file``,
    ``row_number`` and the field: a missing field, a wrong type, a malformed message, or an empty response.
    Identical chosen and rejected responses are accepted when the prompt is explicit. With an explicit
    prompt, ``rejected`` may be a list of K responses (text, or lists of messages): one chosen against
    several rejected (listwise rows, :attr:`PreferencePair.more_rejected`).
    """
    f, r = file, row_number
    if not isinstance(row, dict):
        raise DataError(f"expected an object, got {type(row).__name__}", file=f, row=r)
    for name in _RESPONSE_FIELDS:
        if row.get(name) is None:
            cols = ", ".join(map(str, row.keys())) or "none"
            raise DataError(f"missing field (the row's columns: {cols}); a preference row needs 'chosen' "
                            "and 'rejected', and optionally 'prompt'", file=f, row=r, field=name)
    extras = {k: v for k, v in row.items() if k not in _CORE_FIELDS}
    chosen, prompt = row["chosen"], row.get("prompt")
    rejecteds = _rejected_list(row["rejected"], prompt, f, r)

    if prompt is not None:
        return _explicit_prompt(prompt, chosen, rejecteds, extras, f, r)
    rejected = rejecteds[0][1]

    # Implicit prompt.
    if isinstance(chosen, str) and isinstance(rejected, str):
        if is_hh_format(chosen) or is_hh_format(rejected):
            for name, val in (("chosen", chosen), ("rejected", rejected)):
                if not is_hh_format(val):
                    raise DataError("not in the HH-RLHF '\\n\\nHuman: … \\n\\nAssistant: …' format like the "
                                    "other response", file=f, row=r, field=name)
            chosen, rejected = parse_hh_dialogue(chosen), parse_hh_dialogue(rejected)
            # fall through to the conversational implicit-prompt case
        else:
            if chosen == rejected:
                raise DataError("chosen and rejected are identical, so no prompt can be extracted (give an "
                                "explicit 'prompt' column)", file=f, row=r, field="rejected")
            n = _text_common_prefix(chosen, rejected)
            p, c, j = chosen[:n], chosen[n:], rejected[n:]
            for name, val in (("chosen", c), ("rejected", j)):
                if not val.strip():
                    raise DataError("empty response after removing the prompt shared with the other "
                                    "response", file=f, row=r, field=name)
            return PreferencePair(p, c, j, False, extras)
    if isinstance(chosen, str) or isinstance(rejected, str):
        bad = "chosen" if not isinstance(chosen, str) else "rejected"
        raise DataError("chosen and rejected must both be text or both be lists of messages", file=f, row=r,
                        field=bad)
    c = _check_messages(chosen, "chosen", f, r)
    j = _check_messages(rejected, "rejected", f, r)
    k = _split_common_messages(c, j)
    if k == 0:
        raise DataError("chosen and rejected share no leading messages, so there is no prompt (give an "
                        "explicit 'prompt' column)", file=f, row=r, field="chosen")
    prompt_msgs, c_resp, j_resp = c[:k], c[k:], j[k:]
    _check_response_messages(c_resp, "chosen", f, r)
    _check_response_messages(j_resp, "rejected", f, r)
    return PreferencePair(prompt_msgs, c_resp, j_resp, True, extras)
