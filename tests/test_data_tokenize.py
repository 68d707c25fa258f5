"""Tokenisation, truncation, TIS-DPO weights, BMC masks and the summary (unipo.data.tokenize)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import BLANK, GOOD, WAY_OUT, write_jsonl
from unipo.data.bmc_align import diff_masks
from unipo.data.tokenize import (
    PrepSummary,
    TemplateError,
    TokenizedPair,
    prepare_pairs,
    tokenizer_fingerprint,
)
from unipo.errors import ConfigError, DataError
from unipo.testing import make_tiny_tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def plain_tok():
    return make_tiny_tokenizer(chat_template=False)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


CONV = {"prompt": [{"role": "user", "content": "What is 12 + 35?"}],
        "chosen": [{"role": "assistant", "content": "47"}],
        "rejected": [{"role": "assistant", "content": "The answer is 46"}]}
TEXT = {"prompt": "What is 12 + 35?", "chosen": " 47", "rejected": " 46"}


def one(rows, tokenizer, **kw) -> tuple[TokenizedPair, PrepSummary]:
    pairs, summary = prepare_pairs(rows, tokenizer, **kw)
    assert len(pairs) == 1, summary.format()
    return pairs[0], summary


# ----------------------------------------------------------------------------------------- ids


def test_text_pair(tok):
    pair, _ = one([TEXT], tok)
    assert pair.prompt_ids == ids(tok, TEXT["prompt"])
    assert pair.chosen_ids == ids(tok, TEXT["prompt"] + " 47")[len(pair.prompt_ids):] + [tok.eos_token_id]
    assert tok.decode(pair.prompt_ids + pair.chosen_ids) == "What is 12 + 35? 47<|im_end|>"
    assert pair.rejected_ids[-1] == tok.eos_token_id and pair.row == 1


def test_text_pair_without_a_prompt_gets_a_start_token(tok):
    pair, _ = one([{"chosen": "Hello world", "rejected": "Goodbye"}], tok)
    assert pair.prompt_ids == [tok.bos_token_id]
    assert pair.chosen_ids == ids(tok, "Hello world") + [tok.eos_token_id]
    assert pair.to_dict()["prompt_ids"] == [tok.bos_token_id] and pair.to_dict()["row"] == 1


def test_text_pair_boundary_merge_falls_back_to_separate_response(tok):
    # "bro" + "wn fox" tokenises differently together than apart: the response is tokenised on its own.
    row = {"prompt": "The quick bro", "chosen": "wn fox", "rejected": "wn dog"}
    pair, _ = one([row], tok)
    assert pair.prompt_ids == ids(tok, "The quick bro")
    assert pair.chosen_ids == ids(tok, "wn fox") + [tok.eos_token_id]


def test_text_pair_with_a_bos_adding_tokenizer():
    from tokenizers import processors

    t = make_tiny_tokenizer(chat_template=False)
    t.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", pair="<|im_start|> $A $B", special_tokens=[("<|im_start|>", 1)])
    pair, _ = one([TEXT], t)
    assert pair.prompt_ids == [t.bos_token_id] + ids(t, TEXT["prompt"])
    assert t.bos_token_id not in pair.chosen_ids


def test_conversational_pair(tok):
    pair, summary = one([CONV], tok)
    prompt_text = tok.apply_chat_template(CONV["prompt"], tokenize=False, add_generation_prompt=True)
    assert pair.prompt_ids == ids(tok, prompt_text)
    assert tok.decode(pair.prompt_ids).endswith("<|im_start|>assistant\n")
    # the response ends at the end-of-turn token: the template's trailing newline is removed
    assert pair.chosen_ids[-1] == tok.eos_token_id
    assert tok.decode(pair.chosen_ids) == "47<|im_end|>"
    full = tok.apply_chat_template(CONV["prompt"] + CONV["chosen"], tokenize=False)
    assert tok.decode(pair.prompt_ids + pair.chosen_ids) + "\n" == full
    assert summary.conversational == 1 and summary.text == 0


def test_conversational_row_without_chat_template(plain_tok, tmp_path):
    path = tmp_path / "conv.jsonl"
    path.write_text(json.dumps(TEXT) + "\n" + json.dumps(CONV) + "\n")
    with pytest.raises(DataError) as exc:
        prepare_pairs(str(path), plain_tok, on_invalid="skip")  # not a row problem: raised anyway
    msg = str(exc.value)
    assert "conv.jsonl" in msg and "row 2" in msg and "chat template" in msg and "text rows" in msg


def test_template_not_prefix_consistent():
    t = make_tiny_tokenizer()
    # the generation prompt says "bot" but the rendered assistant turn says "assistant"
    t.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>bot\n' }}{% endif %}")
    with pytest.raises(TemplateError) as exc:
        prepare_pairs([CONV], t, on_invalid="skip")
    assert "row 1" in str(exc.value) and "prefix-consistent" in str(exc.value)


def test_template_render_error_is_a_row_error(tok):
    t = make_tiny_tokenizer()
    t.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
                       + t.chat_template)
    bad = {**CONV, "prompt": [{"role": "system", "content": "x"}] + CONV["prompt"]}
    with pytest.raises(DataError, match="row 2, field 'prompt': the chat template cannot render"):
        prepare_pairs([CONV, bad], t)
    pairs, summary = prepare_pairs([CONV, bad], t, on_invalid="skip")
    assert len(pairs) == 1 and summary.dropped == {"invalid": 1}


# ----------------------------------------------------------------------------------------- truncation


def _long_rows(tok) -> list[dict]:
    long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)
    return [
        {"prompt": "Hi.", "chosen": " yes", "rejected": " no"},                        # fits
        {"prompt": long_prompt, "chosen": " yes", "rejected": " no"},                  # prompt cut
        {"prompt": "Hi.", "chosen": " " + long_prompt, "rejected": " no"},             # response cut
    ]


def test_truncation_counts_and_modes(tok):
    rows = _long_rows(tok)
    long_ids = ids(tok, rows[1]["prompt"])
    pairs, s = prepare_pairs(rows, tok, max_length=40, max_prompt_length=20)
    assert [p.row for p in pairs] == [1, 2, 3]
    assert s.rows_read == 3 and s.pairs_kept == 3 and s.rows_dropped == 0
    assert s.truncated_prompt == 1 and s.truncated_response == 1
    assert pairs[1].prompt_ids == long_ids[-20:]
    assert len(pairs[2].prompt_ids) + len(pairs[2].chosen_ids) == 40
    assert pairs[2].rejected_ids[-1] == tok.eos_token_id
    pairs, _ = prepare_pairs(rows, tok, max_length=40, max_prompt_length=20, truncation_mode="keep_start")
    assert pairs[1].prompt_ids == long_ids[:20]
    text = s.format()
    assert "rows read:  3" in text and "pairs kept: 3" in text and "1 prompts" in text


def test_prompt_filling_max_length_is_dropped_or_an_error(tok):
    rows = _long_rows(tok)
    pairs, s = prepare_pairs(rows, tok, max_length=30, max_prompt_length=None)
    assert [p.row for p in pairs] == [1, 3]
    assert s.dropped == {"prompt_too_long": 1} and s.dropped_rows == {"prompt_too_long": [2]}
    assert "prompt_too_long: 1" in s.format() and "rows 2" in s.format()
    with pytest.raises(DataError) as exc:
        prepare_pairs(rows, tok, max_length=30, max_prompt_length=None, on_too_long="error")
    assert "<rows>, row 2, field 'prompt'" in str(exc.value) and "no room" in str(exc.value)


def test_on_too_long_drop(tok):
    pairs, s = prepare_pairs(_long_rows(tok), tok, max_length=40, max_prompt_length=20, on_too_long="drop")
    assert [p.row for p in pairs] == [1] and s.dropped == {"too_long": 2}
    assert s.truncated_prompt == 0 and s.truncated_response == 0


def test_limit_and_bad_settings(tok):
    _, s = prepare_pairs(_long_rows(tok), tok, limit=2)
    assert s.rows_read == 2
    for kw in ({"truncation_mode": "middle"}, {"on_too_long": "explode"}, {"max_length": 0},
               {"on_invalid": "ignore"}, {"weights_columns": ("w",)}):
        with pytest.raises(ConfigError):
            prepare_pairs([TEXT], tok, **kw)


def test_invalid_rows_error_by_default_and_skip_counts(tok, tmp_path):
    path = tmp_path / "mixed.jsonl"
    bad = {"prompt": "p", "chosen": "", "rejected": " x"}
    path.write_text("\n".join(json.dumps(r) for r in [TEXT, bad, TEXT]) + "\n")
    with pytest.raises(DataError) as exc:
        prepare_pairs(path, tok)
    assert "mixed.jsonl, row 2, field 'chosen'" in str(exc.value)
    pairs, s = prepare_pairs(path, tok, on_invalid="skip")
    assert [p.row for p in pairs] == [1, 3] and s.dropped == {"invalid": 1}
    assert "mixed.jsonl, row 2" in s.format()
    assert s.to_dict()["rows_dropped"] == 1


# ----------------------------------------------------------------------------------------- weights


def _weighted(tok, row: dict) -> dict:
    pair, _ = one([row], tok)
    return {**row, "chosen_weights": [0.5] * len(pair.chosen_ids),
            "rejected_weights": [1.5] * len(pair.rejected_ids)}


def test_weights_read_and_truncated_alongside(tok):
    row = _weighted(tok, {"prompt": "Hi.", "chosen": " The quick brown fox jumps over the lazy dog.",
                          "rejected": " no"})
    row["rejected_weights"] = json.dumps(row["rejected_weights"])  # a JSON string (CSV) is accepted
    cols = ("chosen_weights", "rejected_weights")
    pair, _ = one([row], tok, weights_columns=cols)
    assert pair.chosen_weights == [0.5] * len(pair.chosen_ids)
    assert pair.rejected_weights == [1.5] * len(pair.rejected_ids)
    n_prompt = len(pair.prompt_ids)
    pair, s = one([row], tok, weights_columns=cols, max_length=n_prompt + 4)
    assert len(pair.chosen_ids) == len(pair.chosen_weights) == 4 and s.truncated_response == 1


def test_weights_length_mismatch(tok, tmp_path):
    row = _weighted(tok, TEXT)
    row["chosen_weights"] = row["chosen_weights"][:-1]
    path = tmp_path / "weights.jsonl"
    path.write_text(json.dumps(TEXT) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as exc:
        prepare_pairs(path, tok, weights_columns=("chosen_weights", "rejected_weights"), on_invalid="skip")
    msg = str(exc.value)  # row 1 has no weights at all (always an error, even with on_invalid="skip")
    assert "weights.jsonl, row 1, field 'chosen_weights'" in msg and "missing" in msg
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as exc:
        prepare_pairs(path, tok, weights_columns=("chosen_weights", "rejected_weights"))
    msg = str(exc.value)
    assert "weights.jsonl, row 1, field 'chosen_weights'" in msg and "different tokenisation" in msg


@pytest.mark.parametrize("bad, words", [(["a", "b"], "numbers"), ([float("nan")], "NaN"), (3, "list")])
def test_weights_bad_values(tok, bad, words):
    row = {**_weighted(tok, TEXT), "rejected_weights": bad}
    with pytest.raises(DataError, match=words) as exc:
        prepare_pairs([row], tok, weights_columns=("chosen_weights", "rejected_weights"))
    assert "field 'rejected_weights'" in str(exc.value)


def test_tokenizer_fingerprint(tok, plain_tok):
    fp = tokenizer_fingerprint(tok)
    assert len(fp) == 16 and fp == tokenizer_fingerprint(make_tiny_tokenizer())
    assert fp != tokenizer_fingerprint(plain_tok)  # the chat template is part of it
    cols = ("chosen_weights", "rejected_weights")
    row = {**_weighted(tok, TEXT), "tokenizer": fp}
    one([row], tok, weights_columns=cols)
    with pytest.raises(DataError) as exc:
        prepare_pairs([{**row, "tokenizer": "0123456789abcdef"}], tok, weights_columns=cols)
    assert "row 1, field 'tokenizer'" in str(exc.value) and "another tokenizer" in str(exc.value)


# ----------------------------------------------------------------------------------------- BMC masks


def test_bmc_masks_computed_once_and_aligned(tok):
    row = {"prompt": "Q:", "chosen": " The quick brown fox jumps over the lazy dog.",
           "rejected": " The quick red fox jumps over the lazy cat."}
    pair, _ = one([row], tok, bmc_masks=True)
    assert len(pair.chosen_diff_mask) == len(pair.chosen_ids)
    assert len(pair.rejected_diff_mask) == len(pair.rejected_ids)
    marked = tok.decode([t for t, m in zip(pair.chosen_ids, pair.chosen_diff_mask, strict=True) if m])
    # " brown" is " br" + "own" here, and "own" is an NLTK stop-word: only " br" is marked
    assert "br" in marked and "dog" in marked
    assert "fox" not in marked and "quick" not in marked
    assert pair.chosen_diff_mask[-1] == 0  # the shared EOS is matched
    plain, _ = one([row], tok)
    assert plain.chosen_diff_mask is None
    cut, _ = one([row], tok, bmc_masks=True, max_length=len(pair.prompt_ids) + 3)
    assert cut.chosen_diff_mask == pair.chosen_diff_mask[:3]



def test_bmc_alignment_and_exemption_options(tok):
    """The punctuation exemption is off by default (neither the paper nor the released code has it);
    bmc_alignment: difflib gives the released code's alignment over prompt + response."""
    row = {"prompt": "Q:", "chosen": " The dog barked.", "rejected": " The cat barked!"}

    def marked(**kw) -> str:
        p, _ = one([row], tok, bmc_masks=True, **kw)
        return tok.decode([t for t, m in zip(p.chosen_ids, p.chosen_diff_mask, strict=True) if m])

    assert "dog" in marked() and "." in marked()
    assert "dog" in marked(bmc_exempt="stopwords_punctuation") and "." not in marked(bmc_exempt="stopwords_punctuation")
    the = {"prompt": "Q:", "chosen": " the dog", "rejected": " a dog"}
    p, _ = one([the], tok, bmc_masks=True, bmc_exempt="none")
    assert "the" in tok.decode([t for t, m in zip(p.chosen_ids, p.chosen_diff_mask, strict=True) if m])
    p, _ = one([row], tok, bmc_masks=True, bmc_alignment="difflib", bmc_exempt="none")
    want = diff_masks(p.chosen_ids, p.rejected_ids, alignment="difflib", prompt_ids=p.prompt_ids,
                      pad_id=tok.pad_token_id, stopword_ids=frozenset())
    assert (p.chosen_diff_mask, p.rejected_diff_mask) == want
    with pytest.raises(ConfigError, match="bmc_exempt must be one of stopwords, stopwords_punctuation, none"):
        one([row], tok, bmc_masks=True, bmc_exempt="punct")

# ----------------------------------------------------------------------------------------- real data


def test_real_hh_rows(hh_file: Path):
    t = make_tiny_tokenizer()
    pairs, s = prepare_pairs(hh_file, t, max_length=4096, max_prompt_length=None, limit=50)
    assert s.rows_read == 50 and s.pairs_kept == 50 and s.conversational == 50
    header = ids(t, "<|im_start|>assistant\n")
    for p in pairs:
        assert p.prompt_ids[:1] == [t.convert_tokens_to_ids("<|im_start|>")]
        assert p.prompt_ids[-len(header):] == header
        assert p.chosen_ids[-1] == p.rejected_ids[-1] == t.eos_token_id
        assert t.eos_token_id not in p.chosen_ids[:-1]


# ---- the way out of an invalid row (issue 17, item 4; was tests/test_first_contact.py) ----

@pytest.mark.unit
def test_invalid_row_error_names_row_and_field_and_ends_with_the_way_out(tmp_path):
    from unipo.data.tokenize import prepare_pairs
    from unipo.testing import make_tiny_tokenizer

    path = write_jsonl(tmp_path / "p.jsonl", [GOOD[0], BLANK, GOOD[1]])
    tok = make_tiny_tokenizer()
    with pytest.raises(DataError) as exc:
        prepare_pairs(str(path), tok)
    msg = str(exc.value)
    assert msg.startswith(f"{path}, row 2, field 'chosen': ")
    assert msg.endswith(f"; {WAY_OUT} data_summary.json")
    assert (exc.value.row, exc.value.field) == (2, "chosen")
    with pytest.raises(DataError, match=r"counted in eval.json \(data_summary\)$"):
        prepare_pairs(str(path), tok, invalid_counted_in="eval.json (data_summary)")
    pairs, summary = prepare_pairs(str(path), tok, on_invalid="skip")  # the way out works
    assert len(pairs) == 2 and summary.dropped == {"invalid": 1}
