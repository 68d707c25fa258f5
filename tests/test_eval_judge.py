"""The judge: win rate of the policy's greedy answers against the reference's, under a reward model
(scores recomputed independently here) or an OpenAI-compatible endpoint (a stub editor)."""

from __future__ import annotations

import pytest
import torch

from unipo.eval.judge import endpoint_verdicts, judge_win_rate, win_rate_from_scores


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from unipo.testing import make_tiny_tokenizer

    out = tmp_path_factory.mktemp("rm")
    tok = make_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.unit
def test_win_rate_counts_ties_half():
    assert win_rate_from_scores([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx(2.5 / 4)


@pytest.mark.integration
def test_identical_models_tie(tiny_model_dir, reward_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": f"What is {i} + 1?"}], tokenize=False,
                                     add_generation_prompt=True) for i in range(4)]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    res = judge_win_rate(m, m, tok, prompts, judge=str(reward_model), max_new_tokens=5)
    assert res["win_rate"] == 0.5 and res["judge_reward_policy"] == pytest.approx(res["judge_reward_reference"])


@pytest.mark.integration
def test_reward_model_win_rate_matches_independent_scores(tiny_model_dir, reward_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from unipo.eval.judge import greedy_texts

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pol = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(2)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(0.3 * torch.randn_like(p))
    prompts = [tok(f"Say {w}.")["input_ids"] for w in ("hi", "bye", "yes", "no", "ok", "fine")]
    res = judge_win_rate(pol, ref, tok, prompts, judge=str(reward_model), max_new_tokens=6)
    rm = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    rtok = AutoTokenizer.from_pretrained(reward_model)

    def score(prompt, text):
        with torch.no_grad():
            return rm(**rtok(tok.decode(prompt, skip_special_tokens=True) + text, return_tensors="pt")).logits[0, 0]

    a = greedy_texts(pol, tok, prompts, 6, 8)
    b = greedy_texts(ref, tok, prompts, 6, 8)
    wins = [1.0 if score(p, x) > score(p, y) else 0.5 if score(p, x) == score(p, y) else 0.0
            for p, x, y in zip(prompts, a, b, strict=True)]
    assert res["win_rate"] == pytest.approx(sum(wins) / len(wins))


@pytest.mark.unit
def test_endpoint_verdicts_undo_the_alternating_order():
    from unipo.bridge.editors import Editor, EditResult

    class AlwaysPolicy(Editor):  # a judge that always picks the answer containing "POLICY"
        def edit_stream(self, jobs):
            for job in jobs:
                text = job.messages[0]["content"]
                a = text.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
                yield job.key, EditResult(text="A" if "POLICY" in a else "B")

    v = endpoint_verdicts(AlwaysPolicy(), ["p1", "p2", "p3"], ["POLICY 1", "POLICY 2", "POLICY 3"],
                          ["ref 1", "ref 2", "ref 3"])
    assert v == [1.0, 1.0, 1.0]
