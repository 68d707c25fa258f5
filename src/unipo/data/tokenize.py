"""Tokenising preference pairs: prompt / response token ids, truncation, per-token extras and a summary.

The ids follow TRL's ``DPOTrainer`` conventions (von Werra et al., TRL) so results are comparable:

- conversational pairs: ``prompt_ids`` are the chat template applied to the prompt messages with
  ``add_generation_prompt=True``; the response ids are what the template adds for the response messages,
  ending at the end-of-turn token (a newline the template writes after it is removed);
- standard text pairs: the prompt is tokenised without special tokens (plus the tokenizer's BOS if it adds
  one by default), the response is the tokenisation of ``prompt + response`` after the prompt's tokens,
  and EOS is appended.

Per-token TIS-DPO weights (Liu et al., ICLR 2025) are read from row columns and checked against the
response length; BMC difference masks (Jiang et al., ICLR 2025) are computed here, once per pair.
See docs/data.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from unipo.data.bmc_align import ALIGNMENTS, EXEMPTIONS, StopTokens, diff_masks
from unipo.data.formats import PreferencePair, SourceRow, iter_rows, normalize_row, with_gold
from unipo.errors import ConfigError, DataError, skip_invalid_hint
from unipo.layout import MAX_REJECTED

#: the largest float32 magnitude: weights are multiplied into the float32 loss, where a larger value is inf
FLOAT32_MAX = 3.4028234663852886e38

__all__ = [
    "DROP_REASONS",
    "PrepSummary",
    "TemplateError",
    "TokenizedPair",
    "TokenizerFacts",
    "prepare_pairs",
    "tokenize_pair",
    "tokenize_responses",
    "tokenizer_fingerprint",
]

#: Why a row can be dropped (the keys of :attr:`PrepSummary.dropped`) and what that means.
DROP_REASONS: dict[str, str] = {
    "prompt_too_long": "the prompt alone fills max_length, leaving no room for a response",
    "too_long": "longer than max_length / max_prompt_length (on_too_long='drop')",
    "empty_response": "a response has no tokens left",
    "invalid": "the row failed validation (on_invalid='skip')",
}
#: the closed choices of the data settings (TrainConfig, EvalConfig and TisdpoConfig read them from here)
TRUNCATION_MODES = ("keep_end", "keep_start")
ON_TOO_LONG = ("truncate", "drop", "error")
ON_INVALID = ("error", "skip")
FINGERPRINT_COLUMN = "tokenizer"


@dataclass
class TokenizedPair:
    """One tokenised pair, ready for the collator.

    ``chosen_ids`` / ``rejected_ids`` are the response tokens only (they end with the EOS / end-of-turn
    token unless truncated); the sequence a model sees is ``prompt_ids + chosen_ids``. The optional lists
    are aligned one-to-one with the response ids.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    row: int
    chosen_weights: list[float] | None = None
    rejected_weights: list[float] | None = None
    chosen_diff_mask: list[int] | None = None
    rejected_diff_mask: list[int] | None = None
    pair_weight: float | None = None  # multiplies the pair's loss (PrepOptions.pair_weight_column)
    chosen_score: float | None = None  # the responses' scores from the data (PrepOptions.score_columns)
    rejected_score: float | None = None
    more_rejected_ids: list[list[int]] | None = None  # a listwise row's 2nd … K-th rejected responses
    gold_ids: list[int] | None = None  # a third, gold response (TPO; PrepOptions.gold_column)

    def to_dict(self) -> dict:
        """The pair as a dict (the collator's input: ``prompt_ids``, ``chosen_ids``, ... and ``row``)."""
        return asdict(self)


@dataclass
class PrepSummary:
    """What :func:`prepare_pairs` did: rows read and kept, truncations, drops with their reasons."""

    source: str = ""
    rows_read: int = 0
    pairs_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated_prompt: int = 0
    truncated_response: int = 0
    conversational: int = 0
    text: int = 0
    #: rows with several rejected responses (listwise), and their rejected responses in all
    listwise: int = 0
    listwise_rejected: int = 0
    max_length: int = 0
    max_prompt_length: int | None = None
    truncation_mode: str = "keep_end"
    prompt_tokens_max: int = 0
    response_tokens_max: int = 0
    prompt_tokens_total: int = 0
    response_tokens_total: int = 0
    #: the first few row numbers dropped for each reason, and the first validation messages
    dropped_rows: dict[str, list[int]] = field(default_factory=dict)
    invalid_messages: list[str] = field(default_factory=list)

    @property
    def rows_dropped(self) -> int:
        """Total rows dropped, all reasons together."""
        return sum(self.dropped.values())

    def _drop(self, reason: str, row: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        rows = self.dropped_rows.setdefault(reason, [])
        if len(rows) < 5:
            rows.append(row)

    def merge(self, part: PrepSummary) -> None:
        """Add the counts of ``part``, the summary of the rows that follow this one's (a later chunk)."""
        for name in ("rows_read", "pairs_kept", "truncated_prompt", "truncated_response", "conversational", "text",
                     "listwise", "listwise_rejected", "prompt_tokens_total", "response_tokens_total"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.prompt_tokens_max = max(self.prompt_tokens_max, part.prompt_tokens_max)
        self.response_tokens_max = max(self.response_tokens_max, part.response_tokens_max)
        for reason, n in part.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n
            rows = self.dropped_rows.setdefault(reason, [])
            rows.extend(part.dropped_rows.get(reason, [])[:5 - len(rows)])
        self.invalid_messages.extend(part.invalid_messages[:5 - len(self.invalid_messages)])

    @classmethod
    def from_dict(cls, d: dict) -> PrepSummary:
        """The summary :meth:`to_dict` wrote."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        """The summary as a JSON-serialisable dict (for run logs)."""
        d = asdict(self)
        d["rows_dropped"] = self.rows_dropped
        return d

    def format(self) -> str:
        """A short human-readable report, one fact per line."""
        kinds = []
        if self.conversational:
            kinds.append(f"{self.conversational} conversational")
        if self.text:
            kinds.append(f"{self.text} text")
        prompt_rule = (f"to max_prompt_length {self.max_prompt_length}, {self.truncation_mode}"
                       if self.max_prompt_length is not None else "no max_prompt_length")
        lines = [
            f"data: {self.source}",
            f"  rows read:  {self.rows_read}",
            f"  pairs kept: {self.pairs_kept}" + (f" ({', '.join(kinds)})" if kinds else ""),
            *([f"  listwise:   {self.listwise} rows with several rejected responses ({self.listwise_rejected} "
               f"rejected responses in them)"] if self.listwise else []),
            f"  truncated:  {self.truncated_prompt} prompts ({prompt_rule}), {self.truncated_response} "
            f"pairs' responses (to fit max_length {self.max_length})",
            f"  dropped:    {self.rows_dropped}",
        ]
        for reason, n in sorted(self.dropped.items()):
            rows = ", ".join(map(str, self.dropped_rows.get(reason, [])))
            more = ", ..." if n > len(self.dropped_rows.get(reason, [])) else ""
            lines.append(f"    {reason}: {n} ({DROP_REASONS.get(reason, reason)}; rows {rows}{more})")
        for msg in self.invalid_messages:
            lines.append(f"      {msg}")
        n = self.pairs_kept + self.dropped.get("prompt_too_long", 0) + self.dropped.get("too_long", 0) \
            + self.dropped.get("empty_response", 0)
        if n:
            lines.append(
                f"  lengths before truncation (tokens): prompt mean {self.prompt_tokens_total / n:.0f}, "
                f"max {self.prompt_tokens_max}; response mean {self.response_tokens_total / (2 * n):.0f}, "
                f"max {self.response_tokens_max}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- tokenizer


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash (16 hex digits) identifying how ``tokenizer`` turns text into ids.

    It covers the vocabulary (with added tokens), the special tokens, the chat template and the ids of a
    fixed probe text (which catches normalisation and BOS/EOS post-processing). Files of per-token values
    (TIS-DPO weights) store it in a ``tokenizer`` column so that a later run can refuse weights computed
    with another tokenizer.
    """
    h = hashlib.sha256()
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    h.update(json.dumps(vocab, ensure_ascii=False).encode())
    specials = {name: str(getattr(tokenizer, name, None)) for name in
                ("bos_token", "eos_token", "pad_token", "unk_token")}
    specials["all"] = sorted(map(str, getattr(tokenizer, "all_special_tokens", [])))
    h.update(json.dumps(specials, sort_keys=True).encode())
    h.update(json.dumps(getattr(tokenizer, "chat_template", None), sort_keys=True).encode())
    probe = tokenizer("Hello world! 12 + 35 = 47.\n  Ünïcode", add_special_tokens=True)["input_ids"]
    h.update(json.dumps(list(probe)).encode())
    return h.hexdigest()[:16]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer prepends BOS by default (Llama-style); ChatML tokenizers usually don't."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    return bool(with_special) and with_special[0] == bos and with_special != _ids(tokenizer, "a")


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(tid))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class _Tok:
    """Per-tokenizer facts computed once for a whole dataset."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.adds_bos = _adds_bos(tokenizer)
        self.bos = getattr(tokenizer, "bos_token_id", None)
        self.eos = getattr(tokenizer, "eos_token_id", None)
        self.specials = _special_ids(tokenizer)
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self._blank: dict[tuple[int, ...], bool] = {}
        #: the added tokens' texts, and whether a text may be tokenised in pieces cut after one of them (None:
        #: not checked yet; unipo.data.prepare checks it on the first conversations it prepares)
        self.added = sorted({str(t) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()} - {""})
        self.split_ok: bool | None = None

    def is_blank(self, ids: list[int]) -> bool:
        """Whether ``ids`` decode to whitespace only (memoised: templates write the same few tails)."""
        key = tuple(ids)
        if key not in self._blank:
            self._blank[key] = not self.tokenizer.decode(ids).strip()
        return self._blank[key]


#: Public name of :class:`_Tok`: pass one to :func:`tokenize_pair` to reuse its facts across rows.
TokenizerFacts = _Tok


class TemplateError(DataError):
    """The tokenizer or its chat template cannot serve conversational data (not a problem of one row)."""


def _render(tok: _Tok, messages: list[dict], generation_prompt: bool, file: str, row: int, name: str) -> str:
    try:
        text = tok.tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja2 errors, raise_exception() in templates
        raise DataError(f"the chat template cannot render this conversation: {exc}", file=file, row=row,
                        field=name) from None
    if not isinstance(text, str):  # some versions return a list for batched input
        text = text[0]
    return text


def _strip_after_end_of_turn(ids: list[int], tok: _Tok) -> list[int]:
    """Cut whitespace-only tokens a template writes after the end-of-turn token (ChatML's final "\\n")."""
    for k in range(len(ids) - 1, -1, -1):
        if ids[k] in tok.specials:
            tail = ids[k + 1:]
            if tail and tok.is_blank(tail):
                return ids[:k + 1]
            return ids
    return ids


def _conversational_ids(pair: PreferencePair, tok: _Tok, file: str, row: int) -> tuple[list, list[list]]:
    if not tok.has_template:
        raise TemplateError("this row is conversational (lists of messages) but the tokenizer has no chat "
                        "template: use a tokenizer with a chat template (e.g. an instruct model's), or give "
                        "the data as text rows (prompt/chosen/rejected strings)", file=file, row=row,
                        field="prompt")
    assert isinstance(pair.prompt, list)
    prompt_text = _render(tok, pair.prompt, True, file, row, "prompt")
    prompt_ids = _ids(tok.tokenizer, prompt_text)
    responses = []
    for name, msgs in _named_responses(pair):
        assert isinstance(msgs, list)
        full_text = _render(tok, pair.prompt + msgs, False, file, row, name)
        check_prefix(prompt_text, full_text, file, row, name)
        responses.append(conversational_response(tok, prompt_text, prompt_ids, full_text,
                                                 _ids(tok.tokenizer, full_text)))
    return prompt_ids, responses


def conversational_response(tok: _Tok, prompt_text: str, prompt_ids: list[int], full_text: str,
                            full_ids: list[int]) -> list[int]:
    """The response ids of a conversation rendered as ``full_text`` (tokenised: ``full_ids``) after its prompt
    ``prompt_text`` (``prompt_ids``): the tokens after the prompt's, or, when a BPE merge joins the boundary,
    the response text tokenised on its own; ending at the end-of-turn token (EOS added if the template has
    none)."""
    if full_ids[:len(prompt_ids)] == prompt_ids:
        resp = list(full_ids[len(prompt_ids):])
    else:  # a BPE merge across the boundary: tokenise the response text on its own
        resp = _ids(tok.tokenizer, full_text[len(prompt_text):])
    resp = _strip_after_end_of_turn(resp, tok)
    if resp and resp[-1] not in tok.specials and tok.eos is not None:
        resp.append(tok.eos)  # a template without an end-of-turn token: end with EOS
    return resp


def check_prefix(prompt_text: str, full_text: str, file: str, row: int, name: str) -> None:
    """Refuse a chat template whose prompt rendering is not the start of the prompt + response rendering."""
    if not full_text.startswith(prompt_text):
        raise TemplateError(
            "the chat template is not prefix-consistent: the prompt rendered with "
            "add_generation_prompt=True is not the beginning of the prompt + response rendering, so the "
            "response tokens cannot be separated from the prompt (does the template rewrite earlier "
            "turns, e.g. drop reasoning, or lack an add_generation_prompt branch?)",
            file=file, row=row, field=name)


def _named_responses(pair: PreferencePair) -> list[tuple[str, Any]]:
    """``(field, response)`` for the chosen and every rejected response of ``pair``, then its gold response (TPO)
    when it has one."""
    rejected = [("rejected", pair.rejected)] if not pair.more_rejected else \
        [(f"rejected[{k}]", r) for k, r in enumerate(pair.all_rejected)]
    gold = [] if pair.gold is None else [("gold", pair.gold)]
    return [("chosen", pair.chosen), *rejected, *gold]


def _text_ids(pair: PreferencePair, tok: _Tok) -> tuple[list, list[list]]:
    assert isinstance(pair.prompt, str)
    plain = _ids(tok.tokenizer, pair.prompt) if pair.prompt else []
    responses = []
    for _, resp_text in _named_responses(pair):
        assert isinstance(resp_text, str)
        responses.append(text_response(tok, plain, resp_text, _ids(tok.tokenizer, pair.prompt + resp_text)))
    return text_prompt_ids(tok, plain), responses


def text_prompt_ids(tok: _Tok, plain: list[int]) -> list[int]:
    """A text prompt's ids from its plain tokens: BOS first if the tokenizer adds one; an empty prompt is one
    BOS (or EOS) so that the first response token has a position to be predicted from."""
    prompt_ids = ([tok.bos] if tok.adds_bos else []) + list(plain)
    if not prompt_ids:
        # No prompt at all (an implicit prompt with nothing shared): the first response token still needs
        # a position to be predicted from, so the prompt is one BOS (or EOS when there is no BOS).
        start = tok.bos if tok.bos is not None else tok.eos
        prompt_ids = [start] if start is not None else []
    return prompt_ids


def text_response(tok: _Tok, plain: list[int], resp_text: str, full: list[int]) -> list[int]:
    """A text response's ids from the tokens ``full`` of ``prompt + response`` (the prompt's plain tokens
    ``plain``): the tokens after the prompt's, or the response alone when the boundary tokens merged; EOS
    appended."""
    if full[:len(plain)] == plain:
        resp = list(full[len(plain):])
    else:  # the prompt's last token merged with the response's first: tokenise the response alone
        resp = _ids(tok.tokenizer, resp_text)
    if tok.eos is not None and (not resp or resp[-1] != tok.eos):
        resp.append(tok.eos)
    return resp


def tokenize_responses(pair: PreferencePair, tokenizer: Any, *, file: str = "<rows>",
                       row: int = 0) -> tuple[list[int], list[list[int]]]:
    """``(prompt_ids, [chosen_ids, rejected_ids, *more_rejected_ids])`` of one normalised pair (a listwise row
    has several rejected responses), before any truncation; see :func:`tokenize_pair`."""
    tok = tokenizer if isinstance(tokenizer, _Tok) else _Tok(tokenizer)
    if pair.conversational:
        return _conversational_ids(pair, tok, file, row)
    return _text_ids(pair, tok)


def tokenize_pair(pair: PreferencePair, tokenizer: Any, *, file: str = "<rows>",
                  row: int = 0) -> tuple[list[int], list[int], list[int]]:
    """``(prompt_ids, chosen_ids, rejected_ids)`` of one normalised pair, before any truncation.

    See the module docstring for the conventions; ``file`` / ``row`` only label errors.
    """
    prompt_ids, responses = tokenize_responses(pair, tokenizer, file=file, row=row)
    return prompt_ids, responses[0], responses[1]


# --------------------------------------------------------------------------------------------- weights


def _read_weights(value: Any, name: str, n_tokens: int, file: str, row: int) -> list[float]:
    if value is None:
        raise DataError("missing per-token weights (compute them first, e.g. with the TIS-DPO weights "
                        "step)", file=file, row=row, field=name)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError("weights are a string that is not a JSON list of numbers", file=file, row=row,
                            field=name) from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"expected a list of numbers, got {type(value).__name__}", file=file, row=row,
                        field=name)
    try:
        weights = [float(v) for v in value]
    except (TypeError, ValueError):
        raise DataError("weights must all be numbers", file=file, row=row, field=name) from None
    if not all(math.isfinite(w) and abs(w) <= FLOAT32_MAX for w in weights):
        raise DataError(f"weights contain NaN, infinity or a value beyond float32 (|w| at most {FLOAT32_MAX:.4g})",
                        file=file, row=row, field=name)
    if len(weights) != n_tokens:
        raise DataError(
            f"{len(weights)} weights for {n_tokens} response tokens: the weights were computed for a "
            "different tokenisation (another tokenizer or chat template); recompute them with this "
            "tokenizer", file=file, row=row, field=name)
    return weights


# --------------------------------------------------------------------------------------------- pipeline


def source_rows(source: str | os.PathLike | Sequence[dict] | Iterable[dict],
                 split: str) -> tuple[str, Iterator[SourceRow]]:
    if isinstance(source, (str, os.PathLike)):
        return str(source), iter_rows(source, split=split)
    return "<rows>", (SourceRow("<rows>", i, r) for i, r in enumerate(source, start=1))


def normalized_row(rec: SourceRow, gold_column: str | None) -> PreferencePair:
    """One raw row as a :class:`~unipo.data.formats.PreferencePair`, with its gold response (TPO) when
    ``gold_column`` is set (:func:`unipo.data.formats.with_gold`)."""
    pair = normalize_row(rec.data, file=rec.file, row_number=rec.row)
    if gold_column is None:
        return pair
    return with_gold(pair, rec.data, gold_column, file=rec.file, row_number=rec.row)


def _truncate(ids: list[int], n: int, mode: str) -> list[int]:
    return ids[-n:] if mode == "keep_end" else ids[:n]


@dataclass(frozen=True)
class PrepOptions:
    """How :func:`prepare_pairs` reads, tokenises and truncates pairs.

    - Truncation: a prompt longer than ``max_prompt_length`` keeps its end (``truncation_mode="keep_end"``)
      or its start (``"keep_start"``); then each response keeps its start so that prompt + response ≤
      ``max_length``. Rows whose prompt alone is ≥ ``max_length`` are dropped (reason ``prompt_too_long``).
    - ``on_too_long``: ``"truncate"`` (the above), ``"error"`` (as above, but a row with no room for a
      response raises :class:`DataError` naming it), or ``"drop"`` (drop every row that would need any
      truncation, reason ``too_long``).
    - ``on_invalid``: ``"error"`` raises the first validation error (file, row, field); ``"skip"`` drops
      such rows under reason ``invalid`` and lists the first messages in the summary. Problems that are
      not about one row (no chat template, a template that is not prefix-consistent, weights for another
      tokenisation) always raise.
    - ``weights_columns``: the row columns holding per-token weights for the chosen and rejected
      responses (TIS-DPO); their lengths must equal the response token counts before truncation, and
      they are truncated alongside. A ``tokenizer`` column, if present, must equal
      :func:`tokenizer_fingerprint` of the tokenizer.
    - ``bmc_masks``: compute the BMC difference masks (:func:`unipo.data.bmc_align.diff_masks`) on the
      full responses, then truncate them alongside; ``bmc_alignment`` (``levenshtein``: the paper's,
      ``difflib``: the released code's) and ``bmc_exempt`` (``stopwords``, ``stopwords_punctuation`` or
      ``none``) say how (docs/bridge.md).
    - ``pair_weight_column``: a numeric column whose value (finite, ≥ 0) multiplies the pair's loss; a row
      without it, or with another value, is invalid (``on_invalid`` applies).
    - ``score_columns``: the two numeric columns (chosen, rejected) holding each response's score (finite in
      float32; e.g. UltraFeedback's ``score_chosen`` / ``score_rejected``), read by the parts that need a score
      per response (Uni-DPO's quality weight); a row without them is invalid (``on_invalid`` applies).
    - ``gold_column``: the column holding a third, gold response per pair (TPO), tokenised like chosen with the
      shared prompt and truncated alongside (``TokenizedPair.gold_ids``); a row without it is invalid
      (``on_invalid`` applies). None: no gold response is read.
    - ``limit``: read at most this many rows; ``split``: the split of a hub dataset.
    - ``invalid_counted_in``: the file in which the calling command counts skipped rows; the invalid-row
      error ends with the way out (:func:`unipo.errors.skip_invalid_hint`).
    - ``num_proc``: worker processes for the tokenisation (None: the cores available; 1: none), used from
      :data:`unipo.data.prepare.MIN_ROWS_FOR_WORKERS` rows on; the result is the same for every value.
    """

    max_length: int = 512
    max_prompt_length: int | None = 256
    truncation_mode: str = "keep_end"
    bmc_masks: bool = False
    bmc_alignment: str = "levenshtein"
    bmc_exempt: str = "stopwords"
    weights_columns: tuple[str, str] | None = None
    limit: int | None = None
    on_too_long: str = "truncate"
    on_invalid: str = "error"
    split: str = "train"
    pair_weight_column: str | None = None
    score_columns: tuple[str, str] | None = None
    #: the column holding a third, gold response per pair (TPO; TRL's ``reference``), tokenised with the shared prompt
    #: like chosen and truncated alongside; None: not read (only an objective with a gold NLL term reads it)
    gold_column: str | None = None
    #: where the command that reads the pairs counts skipped rows (named in the invalid-row error's way out)
    invalid_counted_in: str = "data_summary.json"
    #: worker processes that tokenise (None: the cores available; 1: this process); never changes the result
    num_proc: int | None = None

    def validate(self) -> None:
        for key, allowed in (("truncation_mode", TRUNCATION_MODES), ("on_too_long", ON_TOO_LONG),
                             ("on_invalid", ON_INVALID), ("bmc_alignment", ALIGNMENTS),
                             ("bmc_exempt", EXEMPTIONS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, not {self.max_length}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ConfigError(f"max_prompt_length must be positive (or None), not {self.max_prompt_length}")
        cols = self.weights_columns
        if cols is not None and (isinstance(cols, str) or len(cols) != 2):
            raise ConfigError(f"weights_columns must be two column names (chosen, rejected), not {cols!r}")
        scores = self.score_columns
        if scores is not None and (isinstance(scores, str) or len(scores) != 2):
            raise ConfigError(f"score_columns must be two column names (chosen, rejected), not {scores!r}")
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"limit must be non-negative (or None), not {self.limit}")
        if self.num_proc is not None and self.num_proc < 1:
            raise ConfigError(f"num_proc must be at least 1 (or None: the cores available), not {self.num_proc}")


def prepare_pairs(source: str | os.PathLike | Sequence[dict], tokenizer: Any, options: PrepOptions | None = None,
                  **overrides: Any) -> tuple[list[TokenizedPair], PrepSummary]:
    """Read, normalise, tokenise and truncate preference pairs; return them with a :class:`PrepSummary`.

    ``source``: a path / Hub name (see :func:`unipo.data.formats.iter_rows`) or a list of row dicts;
    ``options`` (:class:`PrepOptions`) says how; keyword ``overrides`` replace its fields
    (``prepare_pairs(rows, tok, max_length=64)``). The rows are prepared in chunks with batched tokenizer
    calls, in ``options.num_proc`` worker processes (:mod:`unipo.data.prepare`), with the result of preparing
    them one at a time. :func:`unipo.data.cache.prepared_table` stores the result for reuse.
    """
    from unipo.data.prepare import prepared_chunks

    opts = replace(options or PrepOptions(), **overrides)
    opts.validate()
    name, rows = source_rows(source, opts.split)
    summary = new_summary(name, opts)
    pairs: list[TokenizedPair] = []
    for chunk in prepared_chunks(rows, tokenizer, opts, summary):
        pairs.extend(chunk)
    return pairs, summary


def new_summary(name: str, opts: PrepOptions) -> PrepSummary:
    """The empty summary of preparing ``name`` with ``opts``."""
    return PrepSummary(source=name, max_length=opts.max_length, max_prompt_length=opts.max_prompt_length,
                       truncation_mode=opts.truncation_mode)


class _PairReader:
    """One row at a time: validate, tokenise, read weights, truncate; counts go to the summary."""

    def __init__(self, tokenizer: Any, opts: PrepOptions, summary: PrepSummary):
        self.tokenizer, self.tok, self.opts, self.summary = tokenizer, _Tok(tokenizer), opts, summary
        self.stops = (StopTokens(tokenizer, punctuation=opts.bmc_exempt == "stopwords_punctuation")
                      if opts.bmc_exempt != "none" else frozenset())
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else getattr(tokenizer, "eos_token_id", None)
        self.fingerprint: str | None = None

    def read(self, rec: SourceRow, pre: tuple[PreferencePair, tuple[list, list[list]]] | None = None
             ) -> TokenizedPair | None:
        """One row; ``pre``: its normalised pair and its ids already computed (the batched path,
        :mod:`unipo.data.prepare`), else normalised and tokenised here."""
        file, rown, summary = rec.file, rec.row, self.summary
        try:
            pair = pre[0] if pre is not None else normalized_row(rec, self.opts.gold_column)
            if pair.more_rejected and (self.opts.weights_columns or self.opts.bmc_masks or self.opts.score_columns):
                raise DataError("per-token weights, BMC masks and scores are for one rejected response; this row has "
                                f"{len(pair.all_rejected)} (listwise rows work with sequence-level variants)",
                                file=file, row=rown, field="rejected")
            if len(pair.all_rejected) > MAX_REJECTED:
                raise DataError(f"{len(pair.all_rejected)} rejected responses; at most {MAX_REJECTED} are "
                                "supported", file=file, row=rown, field="rejected")
            prompt_ids, responses = pre[1] if pre is not None else \
                tokenize_responses(pair, self.tok, file=file, row=rown)
            pair_weight = self._pair_weight(pair, file, rown)
            scores = self._scores(pair, file, rown)
        except TemplateError:
            raise
        except DataError as exc:
            if self.opts.on_invalid == "error":
                raise exc.with_way_out(skip_invalid_hint(self.opts.invalid_counted_in)) from None
            summary._drop("invalid", rown)
            if len(summary.invalid_messages) < 5:
                summary.invalid_messages.append(str(exc))
            return None
        gold = responses[-1] if pair.gold is not None else None
        responses = responses[:-1] if gold is not None else responses
        summary.conversational += pair.conversational
        summary.text += not pair.conversational
        weights = self._weights(pair, responses[0], responses[1], file, rown)
        summary.prompt_tokens_total += len(prompt_ids)
        summary.response_tokens_total += len(responses[0]) + len(responses[1])
        summary.prompt_tokens_max = max(summary.prompt_tokens_max, len(prompt_ids))
        summary.response_tokens_max = max(summary.response_tokens_max, *map(len, responses))
        out = self._truncated(prompt_ids, responses, weights, file, rown, gold)
        if out is not None:
            out.pair_weight = pair_weight
            out.chosen_score, out.rejected_score = scores
            if len(responses) > 2:
                summary.listwise += 1
                summary.listwise_rejected += len(responses) - 1
        return out

    def _pair_weight(self, pair: PreferencePair, file: str, rown: int) -> float | None:
        column = self.opts.pair_weight_column
        if column is None:
            return None
        value = pair.extras.get(column)
        # finite in float32, where the loss is computed: 1e308 is finite here and inf there (issue 23, item 8)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0 \
                or value > FLOAT32_MAX:
            got = "missing" if value is None else repr(value)
            raise DataError(f"the pair weight must be a finite number >= 0, got {got} (finite in float32, where "
                            f"the loss is computed: at most {FLOAT32_MAX:.4g})", file=file, row=rown, field=column)
        return float(value)

    def _scores(self, pair: PreferencePair, file: str, rown: int) -> tuple[float | None, float | None]:
        if self.opts.score_columns is None:
            return None, None
        out = []
        for column in self.opts.score_columns:
            value = pair.extras.get(column)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or abs(value) > FLOAT32_MAX:
                got = "missing" if value is None else repr(value)
                raise DataError(f"the response's score must be a finite number, got {got} (finite in float32, where "
                                f"the loss is computed)", file=file, row=rown, field=column)
            out.append(float(value))
        return out[0], out[1]

    def _weights(self, pair: PreferencePair, chosen_ids: list[int], rejected_ids: list[int], file: str,
                 rown: int) -> list[list[float] | None]:
        columns = self.opts.weights_columns
        if columns is None:
            return [None, None]
        fp_value = pair.extras.get(FINGERPRINT_COLUMN)
        if isinstance(fp_value, str) and fp_value:
            self.fingerprint = self.fingerprint or tokenizer_fingerprint(self.tokenizer)
            if fp_value != self.fingerprint:
                raise DataError(
                    f"the weights were computed with another tokenizer (fingerprint {fp_value}, this "
                    f"tokenizer's is {self.fingerprint}); recompute them with this tokenizer", file=file,
                    row=rown, field=FINGERPRINT_COLUMN)
        return [_read_weights(pair.extras.get(col), col, len(ids), file, rown)
                for col, ids in zip(columns, (chosen_ids, rejected_ids), strict=True)]

    def _truncated(self, prompt_ids: list[int], responses: list[list[int]], weights: list[list[float] | None],
                   file: str, rown: int, gold: list[int] | None = None) -> TokenizedPair | None:
        """``responses``: the chosen, then every rejected response; ``gold``: the gold response (TPO) or None; each
        keeps its start to fit max_length."""
        opts, summary = self.opts, self.summary
        prompt_cut = opts.max_prompt_length is not None and len(prompt_ids) > opts.max_prompt_length
        if prompt_cut:
            prompt_ids = _truncate(prompt_ids, opts.max_prompt_length, opts.truncation_mode)  # type: ignore[arg-type]
        room = opts.max_length - len(prompt_ids)
        every = responses if gold is None else [*responses, gold]
        response_cut = any(len(ids) > room for ids in every)
        if opts.on_too_long == "drop" and (prompt_cut or response_cut):
            summary._drop("too_long", rown)
            return None
        if room <= 0:
            if opts.on_too_long == "error":
                raise DataError(f"the prompt has {len(prompt_ids)} tokens (after truncation to "
                                f"max_prompt_length={opts.max_prompt_length}), leaving no room for a response "
                                f"within max_length={opts.max_length}", file=file, row=rown, field="prompt")
            summary._drop("prompt_too_long", rown)
            return None
        if not all(ids[:room] for ids in every):
            summary._drop("empty_response", rown)
            return None
        chosen_ids, rejected_ids = responses[0], responses[1]
        masks: list[list[int] | None] = [None, None]
        if opts.bmc_masks:  # aligned on the full responses, so a cut at the end does not look like an edit
            masks[0], masks[1] = diff_masks(chosen_ids, rejected_ids, stopword_ids=self.stops,
                                            alignment=opts.bmc_alignment, prompt_ids=prompt_ids,
                                            pad_id=-1 if self.pad_id is None else self.pad_id)
        weights = [w[:room] if w is not None else None for w in weights]
        masks = [m[:room] if m is not None else None for m in masks]
        summary.truncated_prompt += prompt_cut
        summary.truncated_response += response_cut
        more = [ids[:room] for ids in responses[2:]] or None
        return TokenizedPair(prompt_ids, chosen_ids[:room], rejected_ids[:room], rown, weights[0], weights[1],
                             masks[0], masks[1], more_rejected_ids=more,
                             gold_ids=None if gold is None else gold[:room])
