"""``unipo iterate``: pairing, DICE's α, replay, nucleus sampling and labellers by hand (unit); the command on
the tiny model with each labeller, replay, both reference modes and resume (integration)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import naive_logps, write_jsonl
from unipo.errors import ConfigError, DataError, UnipoError

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
    assert out[0].score == float(sum(map(ord, "ok text")) % 7) and out[0].reason is None
    assert out[1].score is None and "ValueError: undecodable byte" in out[1].reason
    task = VerifierLabeller("arithmetic", None).label(LabelBatch(
        ["What is 2 + 3? Reply with only the number.", "hello"], [[], []], ["5", "5"], [[], []]))
    assert task[0].score == 1.0 and task[1].score is None and "not an arithmetic prompt" in task[1].reason
    with pytest.raises(ConfigError, match="cannot import"):
        VerifierLabeller(None, "tests.helpers:no_such_function")


@pytest.mark.unit
def test_arithmetic_partial_credit_by_hand():
    from unipo.tasks.arithmetic import Problem, graded_score

    p = Problem(7, 9)
    cases = {"16": 1.0, " 16\n": 1.0, "16.": 0.5, "The answer is 16, since 7 + 9 = 16": 0.5,
             "7 + 9 = 16": 0.25, "7 + 9 = 15": 0.0, "sixteen": 0.0, "160": 0.0}
    assert {reply: graded_score(p, reply) for reply in cases} == cases


@pytest.mark.unit
def test_task_pairs_cover_the_training_prompts_only_with_the_bare_sum_chosen():
    from unipo.iterate.prompts import task_pairs, task_prompts
    from unipo.tasks.arithmetic import parse_problem

    prompts = task_prompts("arithmetic", seed=3)
    rows = task_pairs("arithmetic", seed=3, heldout=20)
    assert [r["prompt"][0]["content"] for r in rows] == prompts[20:]  # the training prompts, in their order
    for r in rows:
        p = parse_problem(r["prompt"][0]["content"])
        assert r["chosen"][0]["content"] == str(p.a + p.b)  # written out again: the bare sum
        assert r["rejected"][0]["content"] != r["chosen"][0]["content"]
    with pytest.raises(UnipoError, match="unknown task"):
        task_pairs("chess", seed=0, heldout=1)


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


# -- integration: the labellers and the sampler on the tiny model (the command itself: test_iterate_pipeline.py) --


@pytest.mark.integration
def test_reward_model_labels_match_the_model_scored_by_hand(tiny_reward_model_dir, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from unipo.iterate.labels import LabelBatch, RewardModelLabeller

    lab = RewardModelLabeller(str(tiny_reward_model_dir), batch_size=3)
    prompts, responses = ["What is 1 + 1?", "hi", "What is 2 + 2?"], ["2", "hello there friend", "4 maybe"]
    got = lab.label(LabelBatch(prompts, [[]] * 3, responses, [[]] * 3))  # batched, padded
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_reward_model_dir)
    for p, r, g in zip(prompts, responses, got, strict=True):  # one sequence at a time, no padding
        text = tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                       tokenize=False)
        with torch.no_grad():
            want = rm(**tok(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()
        assert g.score == pytest.approx(want, abs=1e-5)
    with pytest.raises(ConfigError, match="not a sequence classifier"):
        RewardModelLabeller(str(tiny_model_dir)).check()


@pytest.mark.integration
def test_implicit_reward_is_beta_times_the_log_ratio_by_hand(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from unipo.iterate.labels import ImplicitLabeller, LabelBatch
    from unipo.testing import make_tiny_model

    pol = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "ref", seed=1)).eval()
    lab = ImplicitLabeller(beta=0.5, batch_size=2)
    lab.set_models(pol, ref, tokenizer=None)
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14, 15]]
    got = lab.label(LabelBatch(["a", "b"], prompts, ["", ""], responses))
    with torch.no_grad():
        for p, r, g in zip(prompts, responses, got, strict=True):
            want = 0.5 * (naive_logps(pol, p, r).sum() - naive_logps(ref, p, r).sum())
            assert g.score == pytest.approx(want.item(), abs=1e-4)


def _count_tokens(model) -> tuple[list[int], object]:
    """A counter of the token positions that enter ``model`` (a pre-hook on its input embeddings)."""
    seen = [0]
    handle = model.get_input_embeddings().register_forward_pre_hook(lambda mod, args: seen.__setitem__(
        0, seen[0] + args[0].numel()))
    return seen, handle


@pytest.mark.integration
def test_implicit_labels_with_shared_prompts_equal_per_sample_scores_and_compute_each_prompt_once(
        tiny_model_dir, tmp_path):
    """K = 3 samples of 2 prompts in float64: DICE's β·(log π − log π_ref) of every sample equals the one-row-
    per-sample ground truth (:func:`tests.helpers.naive_logps`), and the tokens through each model are
    Σ_i P_i + Σ R (each prompt once) where the per-sample path feeds K·Σ_i P_i + Σ R (counted by a hook)."""
    from transformers import AutoModelForCausalLM

    from unipo.eval.generation import score_responses
    from unipo.iterate.labels import ImplicitLabeller, LabelBatch
    from unipo.testing import make_tiny_model

    pol = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    ref = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "ref", seed=1), dtype=torch.float64).eval()
    k, prompts = 3, [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16]]
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(20, 60, (4,), generator=g).tolist() for _ in range(k * len(prompts))]
    flat_p = [p for p in prompts for _ in range(k)]
    lab = ImplicitLabeller(beta=0.5, batch_size=k)
    lab.set_models(pol, ref, tokenizer=None)
    counters = [_count_tokens(m) for m in (pol, ref)]
    got = lab.label(LabelBatch(["a"] * len(flat_p), flat_p, [""] * len(flat_p), responses))
    shared = [c[0][0] for c in counters]
    for seen, _ in counters:
        seen[0] = 0
    score_responses(pol, None, flat_p, responses, batch_size=1, shared_prompt=False)
    per_sample = counters[0][0][0]
    for _, handle in counters:
        handle.remove()
    n_resp, n_prompt = sum(map(len, responses)), sum(map(len, prompts))
    assert shared == [n_prompt + n_resp] * 2
    assert per_sample == k * n_prompt + n_resp
    with torch.no_grad():
        for p, r, lab_ in zip(flat_p, responses, got, strict=True):
            want = 0.5 * (naive_logps(pol, p, r).sum() - naive_logps(ref, p, r).sum())
            assert lab_.score == pytest.approx(want.item(), abs=1e-6)


@pytest.mark.integration
def test_judge_ratings_come_from_the_server_and_an_unreachable_judge_fails_the_check(tiny_model_dir):
    from tests.chat_server import ChatServer
    from unipo.iterate.judge import JudgeLabeller, parse_rating
    from unipo.iterate.labels import LabelBatch

    server = ChatServer(tiny_model_dir, max_tokens_cap=4).start()
    try:
        lab = JudgeLabeller(server.url, "tiny", concurrency=2)
        lab.check()
        got = lab.label(LabelBatch(["q1", "q2", "q3"], [[]] * 3, ["a", "b", "c"], [[]] * 3))
        assert server.stats["requests"] == 1 + 3  # the check, then one request per sample
        for g in got:  # a rating in range, or failed with the server's reply quoted
            assert (g.score is not None and 1 <= g.score <= 10) or "judge reply is not a rating" in g.reason
            if g.score is None:
                assert parse_rating(g.reason.split(": ", 1)[1].strip("'\"")) is None
    finally:
        server.stop()
    with pytest.raises(UnipoError, match="cannot be used"):
        JudgeLabeller("http://127.0.0.1:9/v1", "tiny", timeout=2, max_retries=0).check()


@pytest.mark.integration
def test_sampling_a_subset_of_prompts_draws_what_the_full_run_drew(tiny_model_dir):
    """What a resumed round relies on: each (prompt, sample) has its own stream, so sampling prompts 2 and 3
    alone (a resume) gives the responses the run over prompts 0–3 gave them; the prefix shared by a prompt's
    samples is computed once and copied, which must not change them."""
    from unipo.eval.generation import sample_responses
    from unipo.models.loading import load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir), trainable=False), load_tokenizer(str(tiny_model_dir))
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    full = sample_responses(model, tok, prompts, 3, 5, batch_size=5, seed=3, top_p=0.9)
    part = sample_responses(model, tok, prompts[2:], 3, 5, batch_size=2, seed=3, top_p=0.9, prompt_ids=[2, 3])
    assert part == full[2:]
    one_by_one = [sample_responses(model, tok, [p], 1, 5, batch_size=1, seed=3, top_p=0.9, prompt_ids=[i])[0][0]
                  for i, p in enumerate(prompts)]  # sample 0 of each prompt, unbatched
    assert one_by_one == [f[0] for f in full]


@pytest.mark.unit
def test_offline_rows_that_fail_validation_stop_with_the_way_out_or_are_skipped_and_counted(tmp_path):
    """--data with a blank chosen response (as real HH-RLHF has): error names file, row, field and the way out;
    --on-invalid skip keeps the valid rows and counts the dropped one."""
    from unipo.iterate.config import IterateConfig
    from unipo.iterate.pipeline import _IterateRun

    good = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
    data = write_jsonl(tmp_path / "offline.jsonl", [good, {**good, "chosen": "  "}, good])
    run = _IterateRun.__new__(_IterateRun)  # only the offline reader: no model, no prompts
    logged: list[str] = []
    run.log = logged.append
    run.heldout, run.out = [], tmp_path
    run.cfg = IterateConfig(data=str(data))
    with pytest.raises(DataError, match=r"offline.jsonl, row 2, field 'chosen'.*pass --on-invalid skip"):
        run._load_offline()
    run.cfg = IterateConfig(data=str(data), on_invalid="skip")
    rows = run._load_offline()
    assert [r["chosen"] for r in rows] == ["4", "4"] and run.offline_invalid == 1
    assert "skipped 1 invalid rows" in logged[-1]
