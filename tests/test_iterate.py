"""``unipo iterate``: pairing, DICE's α, replay, nucleus sampling and labellers by hand (unit); the command on
the tiny model with each labeller, replay, both reference modes and resume (integration)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import naive_logps, read_jsonl, write_jsonl
from unipo.errors import ConfigError, DataError

# -- unit: pairing -----------------------------------------------------------------------------------


def _s(prompt: int, sample: int, score, response: str = "x") -> dict:
    return {"prompt_index": prompt, "sample": sample, "prompt": f"p{prompt}", "response": response, "score": score}


@pytest.mark.unit
def test_best_vs_worst_skips_no_signal_margin_and_failed():
    from unipo.iterate.pairs import select_pairs

    samples = [_s(0, 0, 0.0), _s(0, 1, 1.0), _s(0, 2, 0.5), _s(0, 3, 1.0),  # best: the first 1.0 (sample 1)
               _s(1, 0, 1.0), _s(1, 1, 1.0),  # all equal: no signal
               _s(2, 0, 0.2), _s(2, 1, 0.25),  # gap 0.05 < margin 0.1
               _s(3, 0, None), _s(3, 1, 3.0),  # one scored sample: cannot pair
               _s(4, 0, None), _s(4, 1, 2.0), _s(4, 2, -1.0)]  # the failed sample is left out
    pairs, stats = select_pairs(samples, min_margin=0.1)
    assert [(c["prompt_index"], c["sample"], r["sample"]) for c, r in pairs] == [(0, 1, 0), (4, 1, 2)]
    assert (stats.prompts, stats.pairs, stats.no_signal, stats.below_margin, stats.too_few_scored,
            stats.failed_samples) == (5, 2, 1, 1, 1, 2)
    assert stats.share_without_signal == pytest.approx(1 / 5)


@pytest.mark.unit
def test_dice_alpha_matches_the_hand_computed_sweep():
    """Prompt A: (1.0, 10 chars) vs (0.0, 2 chars) flips at α > 1/8; prompt C: (0.2, 4) vs (0.0, 1) flips at
    α > 0.2/3. Mean chosen − rejected length: 5.5 for α ≤ 0.0667, (8 − 3)/2 = 2.5 up to 0.125. DICE
    keeps the first α of the smallest |difference|: 0.067 (the first grid point past 0.2/3)."""
    from unipo.iterate.pairs import dice_alpha

    samples = [_s(0, 0, 1.0, "a" * 10), _s(0, 1, 0.0, "a" * 2), _s(1, 0, 0.2, "a" * 4), _s(1, 1, 0.0, "a")]
    alpha, sweep = dice_alpha(samples)
    assert alpha == pytest.approx(0.067)
    diffs = dict(sweep)
    assert diffs[0.0] == pytest.approx((8 + 3) / 2)
    assert diffs[sweep[67][0]] == pytest.approx((8 - 3) / 2)
    # at α = 0.125 exactly A's two samples tie (no signal, no pair): C alone gives −3, worse than 2.5: stop
    assert sweep[-1][0] == pytest.approx(0.125) and sweep[-1][1] == pytest.approx(-3.0)


@pytest.mark.unit
def test_replay_mix_takes_gamma_share_of_unseen_offline_prompts():
    from unipo.iterate.pairs import replay_mix

    gen = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": "a", "rejected": "b"} for i in range(6)]
    off = [{"prompt": f"q{i}", "chosen": "c", "rejected": "d"} for i in range(4, 30)]  # q4, q5 already generated
    rows, n_off = replay_mix(gen, off, 0.5, seed=0)
    assert n_off == 6 and len(rows) == 12  # ⌊0.5·6/0.5⌋
    assert not {r["prompt"] for r in rows if r.get("source") == "offline"} & {"q4", "q5"}
    assert replay_mix(gen, off, 0.25, seed=0)[1] == 2  # ⌊0.25·6/0.75⌋
    assert replay_mix(gen, off[:3], 0.5, seed=0)[1] == 1  # q4, q5 excluded: one left
    assert replay_mix(gen, off, 0.0, seed=0)[1] == 0


@pytest.mark.unit
def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    from unipo.eval.generation import _nucleus

    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    assert torch.allclose(_nucleus(probs, 0.7), torch.tensor([[0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]]))
    assert torch.allclose(_nucleus(probs, 0.5), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(_nucleus(probs, 1.0), probs)


@pytest.mark.unit
def test_verifier_records_a_raising_call_as_failed_with_its_reason():
    from unipo.iterate.labels import LabelBatch, VerifierLabeller

    lab = VerifierLabeller(None, "tests.helpers:fails_on_undecodable")
    out = lab.label(LabelBatch(["p", "p"], [[], []], ["ok text", "bad \ufffd"], [[], []]))
    assert out[0].score == 7.0 and out[0].reason is None
    assert out[1].score is None and "ValueError: undecodable byte" in out[1].reason
    task = VerifierLabeller("arithmetic", None).label(LabelBatch(
        ["What is 2 + 3? Reply with only the number.", "hello"], [[], []], ["5", "5"], [[], []]))
    assert task[0].score == 1.0 and task[1].score is None and "not an arithmetic prompt" in task[1].reason
    with pytest.raises(ConfigError, match="cannot import"):
        VerifierLabeller(None, "tests.helpers:no_such_function")


@pytest.mark.unit
def test_judge_rating_parse():
    from unipo.iterate.judge import parse_rating

    assert parse_rating("7") == 7.0 and parse_rating("Rating: 8/10") == 8.0 and parse_rating(" 9.5\n") == 9.5
    assert parse_rating("eleven") is None and parse_rating("0") is None and parse_rating("42") is None


@pytest.mark.unit
def test_prompts_file_without_a_usable_prompt_is_an_error_naming_it(tmp_path):
    from unipo.iterate.prompts import read_prompts

    bad = write_jsonl(tmp_path / "p.jsonl", [{"prompt": ""}, {"text": "no prompt"}, {"prompt": [
        {"role": "assistant", "content": "not a user turn last"}]}])
    with pytest.raises(DataError, match=r"p\.jsonl.*no usable prompt in 3 rows"):
        read_prompts(str(bad))
    good = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "hi"}, {"prompt": ""}, {
        "prompt": "What?", "chosen": "a", "rejected": "b"}])
    assert read_prompts(str(good)) == (["hi", "What?"], 1)


@pytest.mark.unit
def test_bad_combinations_fail_before_any_work(tmp_path):
    from unipo.iterate.config import IterateConfig
    from unipo.iterate.pipeline import check_config

    for kwargs, msg in (({}, "exactly one of --task"), ({"task": "arithmetic", "samples": 1}, "at least 2"),
                        ({"task": "arithmetic", "replay_ratio": 1.0}, r"\[0, 1\)"),
                        ({"task": "arithmetic", "label": "implicit"}, "--label-reference")):
        with pytest.raises(ConfigError, match=msg):
            check_config(IterateConfig(out=str(tmp_path), **kwargs))


# -- integration: the command on the tiny model --------------------------------------------------------

SMALL = ["--rounds", "1", "--samples", "3", "--prompts-per-round", "3", "--heldout", "2", "--max-new-tokens", "4",
         "--steps", "2", "--batch-size", "2", "--eval-samples", "1", "--no-progress", "--set", "learning_rate=1e-2",
         "--set", "warmup_ratio=0"]


def _iterate(model, out, *extra) -> int:
    from unipo.cli import main

    return main(["iterate", "--model", str(model), "--out", str(out), *SMALL, *extra])


def _hand_pairs(samples: list[dict]) -> list[tuple[int, int, int]]:
    """Best vs worst per prompt, written out again: highest score (first of equals) vs lowest."""
    by: dict[int, list[dict]] = {}
    for s in samples:
        if s["score"] is not None:
            by.setdefault(s["prompt_index"], []).append(s)
    out = []
    for p, group in sorted(by.items()):
        group.sort(key=lambda s: s["sample"])
        hi = max(s["score"] for s in group)
        lo = min(s["score"] for s in group)
        if hi > lo:
            out.append((p, next(s["sample"] for s in group if s["score"] == hi),
                        next(s["sample"] for s in group if s["score"] == lo)))
    return out


@pytest.mark.integration
def test_two_rounds_fixed_reference_replay_baseline_and_resume(tiny_model_dir, tmp_path):
    from unipo.tasks.arithmetic import preference_rows, problems

    offline = write_jsonl(tmp_path / "off.jsonl", preference_rows(problems(12, 3), 3))
    out = tmp_path / "run"
    args = ("--task", "arithmetic", "--verifier", "tests.helpers:text_length", "--rounds", "2", "--reference",
            "fixed", "--data", str(offline), "--replay-ratio", "0.5")
    assert _iterate(tiny_model_dir, out, *args) == 0
    for t in (1, 2):
        rd = out / f"round-{t}"
        samples = read_jsonl(rd / "samples.jsonl")
        assert len(samples) == 3 * 3 and all(s["score"] == float(len(s["response"])) for s in samples)
        pairs = read_jsonl(rd / "pairs.jsonl")
        assert [(p["prompt_index"], p["chosen_sample"], p["rejected_sample"]) for p in pairs] == _hand_pairs(samples)
        train_rows = read_jsonl(rd / "train.jsonl")
        assert len(train_rows) == len(pairs) + int(0.5 * len(pairs) / 0.5)
        ev = json.loads((rd / "eval.json").read_text())
        assert ev["pairs"] == len(pairs) and ev["kl"] != 0 and math.isfinite(ev["greedy_reward"])
    import yaml

    cfg2 = yaml.safe_load((out / "round-2" / "model" / "unipo_config.yaml").read_text())
    assert cfg2["model"] == str(out / "round-1" / "model") and cfg2["ref_model_path"] == str(tiny_model_dir)
    assert (out / "baseline" / "eval.json").exists()
    report = (out / "report.md").read_text()
    assert "| round 2 |" in report and "offline only (baseline)" in report and (out / "report.png").exists()
    # interrupted in round 2's sampling: its last samples and everything after are gone, a line is torn
    rd = out / "round-2"
    kept = (rd / "samples.jsonl").read_text().splitlines()
    for name in ("round.json", "eval.json", "pairs.jsonl", "train.jsonl"):
        (rd / name).unlink()
    (rd / "samples.jsonl").write_text("\n".join(kept[:4]) + "\n" + kept[4][:10])
    (out / "report.md").unlink()
    assert _iterate(tiny_model_dir, out, *args) == 0
    assert (rd / "samples.jsonl").read_text().splitlines() == kept[:4] + [
        line for line in kept[4:]]  # the missing samples drawn again, identically; the first four not redrawn
    assert (out / "report.md").exists()
    # other settings: refused, naming them
    assert _iterate(tiny_model_dir, out, *args, "--samples", "4") == 2


@pytest.mark.integration
def test_reset_reference_and_failed_samples(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert _iterate(tiny_model_dir, out, "--task", "arithmetic", "--verifier",
                    "tests.helpers:fails_on_undecodable", "--samples", "6") == 0
    samples = read_jsonl(out / "round-1" / "samples.jsonl")
    failed = [s for s in samples if s["status"] == "failed"]
    assert failed and all("undecodable byte" in s["reason"] and s["score"] is None for s in failed)
    import yaml

    cfg = yaml.safe_load((out / "round-1" / "model" / "unipo_config.yaml").read_text())
    assert cfg["reference"] == "copy" and cfg["ref_model"] is None  # reset: the round's own start


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from unipo.testing import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("rm") / "rm"
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.integration
def test_reward_model_labels_match_the_model_scored_by_hand(tiny_model_dir, reward_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "run"
    assert _iterate(tiny_model_dir, out, "--task", "arithmetic", "--label", "reward-model",
                    "--reward-model", str(reward_model)) == 0
    samples = read_jsonl(out / "round-1" / "samples.jsonl")
    rm = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    tok = AutoTokenizer.from_pretrained(reward_model)
    for s in samples[:2]:  # one sequence at a time, no padding
        text = tok.apply_chat_template([{"role": "user", "content": s["prompt"]},
                                        {"role": "assistant", "content": s["response"]}], tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        assert s["score"] == pytest.approx(rm(**ids).logits[0, 0].item(), abs=1e-5)
    assert _iterate(tiny_model_dir, tmp_path / "bad", "--task", "arithmetic", "--label", "reward-model",
                    "--reward-model", str(tiny_model_dir)) == 2  # a causal LM: refused before any sampling
    assert not (tmp_path / "bad" / "round-1").exists()


@pytest.mark.integration
def test_judge_labels_come_from_the_server_and_an_unreachable_judge_stops_first(tiny_model_dir, tmp_path):
    from tests.chat_server import ChatServer

    server = ChatServer(tiny_model_dir, max_tokens_cap=4).start()
    try:
        out = tmp_path / "run"
        code = _iterate(tiny_model_dir, out, "--task", "arithmetic", "--label", "judge", "--judge-url",
                        server.url, "--judge-model", "tiny")
        samples = read_jsonl(out / "round-1" / "samples.jsonl")
        assert len(samples) == 9
        assert all((s["score"] is not None and 1 <= s["score"] <= 10) or "judge reply" in s["reason"]
                   for s in samples)
        assert server.stats["requests"] >= 1 + 9  # the reachability check, then one per sample
        assert code in (0, 2)  # a random tiny judge may rate nothing: then no pair, a clear error
    finally:
        server.stop()
    assert _iterate(tiny_model_dir, tmp_path / "down", "--task", "arithmetic", "--label", "judge", "--judge-url",
                    "http://127.0.0.1:9/v1", "--judge-model", "tiny") == 2
    assert not (tmp_path / "down" / "round-1").exists()


@pytest.mark.integration
def test_implicit_reward_is_beta_log_ratio_and_alpha_recorded(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unipo.testing import make_tiny_model

    ref_dir = make_tiny_model(tmp_path / "ref", seed=1)
    out = tmp_path / "run"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"What is {i} + {i}?"} for i in range(5)])
    assert _iterate(tiny_model_dir, out, "--prompts", str(prompts), "--label", "implicit", "--label-reference",
                    str(ref_dir), "--implicit-beta", "0.5") == 0
    samples = read_jsonl(out / "round-1" / "samples.jsonl")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pol = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(ref_dir).eval()
    s = samples[0]
    prompt = tok(tok.apply_chat_template([{"role": "user", "content": s["prompt"]}], tokenize=False,
                                         add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    response = s["token_ids"]  # as sampled (the end-of-turn token included when the model stopped)
    with torch.no_grad():
        want = 0.5 * (naive_logps(pol, prompt, response).sum() - naive_logps(ref, prompt, response).sum())
    assert s["score"] == pytest.approx(want.item(), abs=1e-4)
    ev = json.loads((out / "round-1" / "eval.json").read_text())
    assert ev["alpha"] is not None and ev["alpha"] >= 0 and ev.get("greedy_reward") is None
    assert isinstance(Path(out / "report.md").read_text(), str)

