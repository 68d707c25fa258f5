"""BMC bridging (Jiang et al., ICLR 2025, §3.1): prompts, edit distance, resume state, local editor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import BLANK, GOOD, WAY_OUT, read_jsonl, write_jsonl
from unipo.bridge.config import BridgeConfig
from unipo.bridge.editors import LocalEditor
from unipo.bridge.pipeline import (
    BridgeOptions,
    BridgePaths,
    load_state,
    read_pairs,
    run_bridge,
)
from unipo.bridge.prompts import clean_output, get_template, render_context
from unipo.cli import main as cli_main
from unipo.data.bmc_align import edit_distance
from unipo.errors import DataError, UnipoError
from unipo.io.files import RunLock

QA_ROWS = [
    {"prompt": "What is 12 + 35?", "chosen": "12 + 35 = 47.", "rejected": "12 + 35 = 46."},
    {"prompt": "What colour is the sky?", "chosen": "The sky is blue.", "rejected": "The sky is green."},
    {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A carrot."},
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
]


# ---------------------------------------------------------------------------------------------- prompts


@pytest.mark.unit
def test_paper_templates_fill_placeholders_and_keep_other_braces():
    qa = get_template("qa").messages("Q {x}?", "right", "wrong")
    assert qa[0]["role"] == "system" and qa[-1]["role"] == "user"
    user = qa[-1]["content"]
    assert "Q {x}?" in user and "right" in user and "wrong" in user and "None" in user
    assert "{prompt}" not in user and "{rejected}" not in user
    ins = get_template("instruct").messages("Do it", "R1", "R2")[-1]["content"]
    assert "Response 1:\nR1" in ins and "Response 2:\nR2" in ins and "minimal" in ins
    with pytest.raises(UnipoError, match="unknown prompt style"):
        get_template("chat")


@pytest.mark.unit
def test_user_template_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("system: Be terse.\nFix {rejected} using {chosen} for {prompt}. JSON: {\"a\": 1}\n")
    msgs = get_template(None, f).messages("P", "C", "R")
    assert msgs == [{"role": "system", "content": "Be terse."},
                    {"role": "user", "content": "Fix R using C for P. JSON: {\"a\": 1}"}]
    f.write_text("no placeholder here")
    with pytest.raises(UnipoError, match=r"\{rejected\}"):
        get_template(None, f)


@pytest.mark.unit
@pytest.mark.parametrize("raw,expected", [
    ("None", None), ("none.", None), ("'None'", None), ("**None**", None), ("", None), ("  \n", None),
    (None, None), ("The sky is blue.", "The sky is blue."),
    ("Corrected prediction: 12 + 35 = 47.", "12 + 35 = 47."),
    ("```\nfixed text\n```", "fixed text"), ("None of these apply.", "None of these apply."),
])
def test_clean_output(raw, expected):
    assert clean_output(raw) == expected


@pytest.mark.unit
def test_render_context():
    assert render_context("\n\nHuman: hi\n\nAssistant:") == "Human: hi"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "more"}]
    assert render_context(msgs) == "User: hi\n\nAssistant: yo\n\nUser: more"


# ---------------------------------------------------------------------------------------- edit distance


@pytest.mark.unit
@pytest.mark.parametrize("a,b,d", [
    ("", "", 0), ("abc", "abc", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3),
    ("flaw", "lawn", 2), ("intention", "execution", 5), ("abcdef", "abXdef", 1),
])
def test_edit_distance(a, b, d):
    assert edit_distance(list(a), list(b)) == d
    assert edit_distance(list(b), list(a)) == d


# ------------------------------------------------------------------------------------- input and resume


@pytest.mark.unit
def test_read_pairs_text_conversational_and_hh(tmp_path):
    f = write_jsonl(tmp_path / "in.jsonl", [
        QA_ROWS[0],
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello!", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}]},
    ])
    pairs = list(read_pairs(f))
    assert [p.row for p in pairs] == [1, 2, 3]
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ("What is 12 + 35?", "12 + 35 = 47.",
                                                                     "12 + 35 = 46.")
    assert pairs[1].conversational and pairs[1].rejected.strip() == "go away"
    assert pairs[1].prompt[-1]["content"].strip() == "hi"
    assert pairs[2].conversational and (pairs[2].chosen, pairs[2].rejected) == ("a", "b")


@pytest.mark.unit
def test_torn_last_line_is_trimmed_and_state_counts(tmp_path):
    paths = BridgePaths.for_output(tmp_path / "o.jsonl")
    assert paths.failed.name == "o.failed.jsonl" and paths.histogram.name == "o.edit_distance.png"
    paths.out.write_text('{"row": 1}\n{"row": 2}\n{"row": 3, "chos')  # killed mid-write
    paths.failed.write_text('{"row": 4, "status": "failed"}\n{"row": 5, "status": "dropped"}\n'
                            '{"row": 6, "status": "failed"}')  # complete but no newline yet
    state = load_state(paths)
    assert set(state.edited) == {1, 2}
    assert paths.out.read_text() == '{"row": 1}\n{"row": 2}\n'
    assert paths.failed.read_text().endswith('{"row": 6, "status": "failed"}\n')
    assert state.done(retry_failed=False) == {1, 2, 4, 5, 6}
    assert state.done(retry_failed=True) == {1, 2, 5}
    paths.out.write_text('{"row": 1}\nnot json\n{"row": 2}\n')
    with pytest.raises(DataError, match="line 2"):
        load_state(paths)


# ------------------------------------------------------------------------------------------ local editor


@pytest.fixture(scope="module")
def tiny_editor(tiny_model_dir):
    # a random model's greedy output is blank (dropped as empty); sample to get text to keep
    return LocalEditor(str(tiny_model_dir), batch_size=3, temperature=1.0)


@pytest.mark.integration
def test_local_editor_bridges_resumes_and_summarises(tmp_path, tiny_editor):
    data = write_jsonl(tmp_path / "in.jsonl", QA_ROWS + [
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Go away."}])
    out = tmp_path / "out.jsonl"
    opts = BridgeOptions(keep_truncated=True, max_new_tokens=12)
    s = run_bridge(BridgeConfig(data, out, tiny_editor, get_template("qa"), options=opts), log=lambda m: None)
    assert s["rows_read"] == 5 and s["edited"] + s["dropped_none"] + s["failed"] == 5 and s["pending"] == 0
    assert s["edited"] >= 1
    rows = read_jsonl(out)
    assert sorted(r["row"] for r in rows) == sorted({r["row"] for r in rows})
    src = {i + 1: r for i, r in enumerate(QA_ROWS + [{"rejected": "Go away.", "chosen": "Hi!"}])}
    for r in rows:
        assert set(r) >= {"row", "prompt", "chosen", "rejected", "original_chosen", "edit_distance"}
        assert r["rejected"] == src[r["row"]]["rejected"]
        assert r["original_chosen"] == src[r["row"]]["chosen"]
        assert isinstance(r["edit_distance"], int) and r["edit_distance"] >= 0
    on_disk = json.loads((tmp_path / "out.summary.json").read_text())
    assert on_disk["edited"] == s["edited"] and on_disk["edit_distance"]["unit"].startswith("tokenizer:")
    assert (tmp_path / "out.edit_distance.png").stat().st_size > 1000

    # a second run has nothing to do and changes nothing
    before = out.read_text()
    s2 = run_bridge(BridgeConfig(data, out, tiny_editor, get_template("qa"), options=opts), log=lambda m: None)
    assert s2["this_run"]["edited"] == 0 and s2["this_run"]["failed"] == 0
    assert out.read_text() == before and s2["edited"] == s["edited"]

    # a second run on the same output while one is writing is refused
    with RunLock(BridgePaths.for_output(out).lock, "unipo bridge"):
        with pytest.raises(UnipoError, match="another `unipo bridge`"):
            run_bridge(BridgeConfig(data, out, tiny_editor, get_template("qa"), options=opts), log=lambda m: None)

    # the same output on other data is refused
    other = write_jsonl(tmp_path / "other.jsonl", QA_ROWS[:2])
    with pytest.raises(DataError, match="different input"):
        run_bridge(BridgeConfig(other, out, tiny_editor, get_template("qa"), options=opts), log=lambda m: None)


@pytest.mark.integration
def test_truncated_edits_are_failed_unless_kept(tmp_path, tiny_editor):
    data = write_jsonl(tmp_path / "in.jsonl", QA_ROWS[:2])
    s = run_bridge(BridgeConfig(data, tmp_path / "o.jsonl", tiny_editor, get_template("instruct"),
                                options=BridgeOptions(max_new_tokens=4)),
                   log=lambda m: None)
    # a sampled random model never stops within 4 tokens
    assert s["failed"] == 2 and s["this_run"]["truncated"] == 2
    fails = read_jsonl(tmp_path / "o.failed.jsonl")
    assert all("truncated" in f["reason"] for f in fails)


# ----------------------------------------------------------------------------------------------- the CLI


@pytest.mark.unit
def test_cli_user_errors(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "in.jsonl", QA_ROWS)
    out = str(tmp_path / "o.jsonl")
    assert cli_main(["bridge", "--data", str(data), "--out", out]) == 2
    assert "exactly one of --editor" in capsys.readouterr().err
    assert cli_main(["bridge", "--data", str(data), "--out", out, "--editor-url", "http://127.0.0.1:9/v1"]) == 2
    assert "--editor-model" in capsys.readouterr().err
    monkeypatch.delenv("UNIPO_TEST_NO_SUCH_KEY", raising=False)
    assert cli_main(["bridge", "--data", str(data), "--out", out, "--editor-url", "http://127.0.0.1:9/v1",
                     "--editor-model", "m", "--api-key-env", "UNIPO_TEST_NO_SUCH_KEY"]) == 2
    assert "UNIPO_TEST_NO_SUCH_KEY" in capsys.readouterr().err
    assert cli_main(["bridge", "--data", str(data), "--out", out, "--editor", str(tmp_path / "nope")]) == 2
    assert "neither a built-in model" in capsys.readouterr().err
    assert cli_main(["bridge", "--data", str(tmp_path / "missing.jsonl"), "--out", out,
                     "--editor-url", "http://127.0.0.1:9/v1", "--editor-model", "m"]) == 2


@pytest.mark.integration
def test_cli_local_editor(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", QA_ROWS[:3])
    out = tmp_path / "o.jsonl"
    rc = cli_main(["bridge", "--data", str(data), "--out", str(out), "--editor", str(tiny_model_dir),
                   "--style", "qa", "--max-new-tokens", "6", "--keep-truncated", "--temperature", "1.0",
                   "--batch-size", "2", "--no-plot"])
    err = capsys.readouterr().err
    assert "rows read 3" in err
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    assert summary["edited"] + summary["dropped_none"] == 3 and rc == 0
    assert not (tmp_path / "o.edit_distance.png").exists()


# ---------------------------------------------------------------------------------- slow: a real editor


@pytest.mark.slow
def test_bridge_hh_slice_with_smollm2(tmp_path, hh_file):
    """Bridge a small slice of HH-RLHF harmless with SmolLM2-135M-Instruct as a local editor."""
    import time

    from unipo.data.formats import load_rows, normalize_row

    rows = []
    for _, raw in load_rows(hh_file):  # short single-turn pairs keep CPU generation quick
        if raw["chosen"].count("Human:") == 1 and len(raw["chosen"]) + len(raw["rejected"]) < 500:
            rows.append(raw)
        if len(rows) == 6:
            break
    data = write_jsonl(tmp_path / "hh6.jsonl", rows)
    out = tmp_path / "bridged.jsonl"
    t0 = time.time()
    rc = cli_main(["bridge", "--data", str(data), "--out", str(out), "--editor", "smollm2-135m-instruct",
                   "--style", "instruct", "--batch-size", "6", "--max-new-tokens", "96"])
    seconds = time.time() - t0
    s = json.loads((tmp_path / "bridged.summary.json").read_text())
    print(f"\nsmollm2 bridge: {s['rows_read']} rows, {s['edited']} edited, {s['dropped_none']} None, "
          f"{s['failed']} failed, {seconds:.1f}s; edit distance {s['edit_distance']}")
    assert rc in (0, 1)
    assert s["rows_read"] == 6 and s["pending"] == 0
    assert s["edited"] + s["dropped_none"] + s["failed"] == 6
    assert s["edited"] >= 1, "a real instruct model should produce at least one revision"
    out_rows = read_jsonl(out)
    assert len({r["row"] for r in out_rows}) == len(out_rows) == s["edited"]
    for r in out_rows:  # trainable: the other helper's reader accepts every output row
        pair = normalize_row(r, file=str(out), row_number=r["row"])
        assert pair.conversational and pair.chosen[0]["content"].strip()
    assert (tmp_path / "bridged.edit_distance.png").exists()


# ---- invalid rows: skipped and counted (issue 17, item 4; was tests/test_first_contact.py) ----

class _EchoEditor:
    """An editor that answers every job with the same text (no model, no server)."""

    name = "echo"

    def edit_stream(self, jobs):
        from unipo.bridge.editors import EditResult

        for job in jobs:
            yield job.key, EditResult(text="edited answer", finish_reason="stop")

    def stop(self) -> None:
        pass

    def describe(self) -> dict:
        return {"type": "echo"}


@pytest.mark.unit
def test_bridge_skips_invalid_rows_and_counts_them(tmp_path):
    from unipo.bridge.config import BridgeConfig, BridgeOptions
    from unipo.bridge.pipeline import run_bridge
    from unipo.bridge.prompts import get_template

    data = write_jsonl(tmp_path / "hh.jsonl", [GOOD[0], BLANK, GOOD[1]])
    out = tmp_path / "bridged.jsonl"
    template = get_template("instruct", None)
    with pytest.raises(DataError) as exc:
        run_bridge(BridgeConfig(data, out, _EchoEditor(), template,
                                options=BridgeOptions(plot=False, progress_every=0)))
    assert "row 2, field 'chosen'" in str(exc.value) and str(exc.value).endswith(
        f"{WAY_OUT} OUT.summary.json (invalid)")
    summary = run_bridge(BridgeConfig(data, out, _EchoEditor(), template, options=BridgeOptions(
        plot=False, progress_every=0, on_invalid="skip", overwrite=True)))
    assert (summary["rows_read"], summary["edited"], summary["invalid"]) == (2, 2, 1)
    saved = json.loads(Path(str(out).removesuffix(".jsonl") + ".summary.json").read_text())
    assert saved["invalid"] == 1 and "row 2, field 'chosen'" in saved["invalid_messages"][0]
    assert [json.loads(ln)["row"] for ln in out.read_text().splitlines()] == [1, 3]
