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


def word_judge(out, tok, good: str, bad: str):
    """A reward model whose score is fixed by construction: no transformer layers, so the score reads the
    embedding of the LAST token alone; the single-token word ``good`` scores +√hidden, ``bad`` −√hidden, every
    other token exactly 0."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    (g,), (b,) = (tok(w, add_special_tokens=False)["input_ids"] for w in (good, bad))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=0,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    rm = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        emb = rm.model.embed_tokens.weight
        emb[:, 0] = 0.0
        emb[g], emb[b] = 0.0, 0.0
        emb[g, 0], emb[b, 0] = 1.0, -1.0
        rm.score.weight.zero_()
        rm.score.weight[0, 0] = 1.0
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def always_says(model_dir, tok, word: str):
    """The tiny model with a head bias that makes ``word`` (one token) its greedy answer to every prompt."""
    from transformers import AutoModelForCausalLM

    (t,) = tok(word, add_special_tokens=False)["input_ids"]
    m = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    head = torch.nn.Linear(m.lm_head.in_features, m.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(m.lm_head.weight)
        head.bias.zero_()
        head.bias[t] = 1e3
    m.lm_head = head
    return m


@pytest.mark.integration
def test_judge_prefers_the_side_its_reward_model_scores_higher(tiny_model_dir, tmp_path):
    """A policy that always answers " fox" against a reference that always answers " dog", judged by a reward
    model that scores an answer ending in " fox" above one ending in " dog" by construction: the policy wins
    every prompt; with the roles swapped it loses every prompt."""
    from transformers import AutoTokenizer

    from unipo.eval.judge import greedy_texts

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    judge = str(word_judge(tmp_path / "rm", tok, good=" fox", bad=" dog"))
    fox, dog = always_says(tiny_model_dir, tok, " fox"), always_says(tiny_model_dir, tok, " dog")
    texts = [tok.apply_chat_template([{"role": "user", "content": f"What is {i} + 1?"}], tokenize=False,
                                     add_generation_prompt=True) for i in range(5)]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert set(greedy_texts(fox, tok, prompts, 3, 8)) == {" fox fox fox"}  # the construction holds
    assert set(greedy_texts(dog, tok, prompts, 3, 8)) == {" dog dog dog"}

    win = judge_win_rate(fox, dog, tok, prompts, judge=judge, max_new_tokens=3)
    assert win["win_rate"] == 1.0
    # RMSNorm of a one-hot embedding: ±√16 = ±4 (up to its epsilon)
    assert win["judge_reward_policy"] == pytest.approx(4.0, rel=1e-4)
    assert win["judge_reward_reference"] == pytest.approx(-4.0, rel=1e-4)
    loss = judge_win_rate(dog, fox, tok, prompts, judge=judge, max_new_tokens=3)
    assert loss["win_rate"] == 0.0


@pytest.mark.unit
def test_endpoint_verdicts_undo_the_alternating_order():
    from unipo.io.chat_client import ChatResult

    class AlwaysPolicy:  # a judge that always picks the answer containing "POLICY"
        def stream(self, jobs):
            for job in jobs:
                text = job.messages[0]["content"]
                a = text.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
                yield job.key, ChatResult(text="A" if "POLICY" in a else "B")

    v = endpoint_verdicts(AlwaysPolicy(), ["p1", "p2", "p3"], ["POLICY 1", "POLICY 2", "POLICY 3"],
                          ["ref 1", "ref 2", "ref 3"])
    assert v == [1.0, 1.0, 1.0]


@pytest.mark.integration
def test_endpoint_judge_through_a_flaky_server_with_the_openai_environment(tiny_model_dir, monkeypatch):
    """The judge's client on a real loopback server that fails a third of its requests (500, 503, 429 +
    Retry-After) and requires a key: the URL and key come from OPENAI_BASE_URL / OPENAI_API_KEY, every
    verdict arrives (the server prefers the answer marked POLICY, whichever side it is shown on), and the
    key is sent only in the Authorization header."""
    from tests.chat_server import ChatServer
    from unipo.eval.judge import JUDGE_LABELS
    from unipo.io.chat_client import ChatClient

    secret = "sk-judge-test-2b9d-do-not-log"
    with ChatServer(tiny_model_dir, api_key=secret, fail_rate=0.35, fail_statuses=(500, 503, 429),
                    retry_after=0.05, seed=3) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", secret)
        client = ChatClient(None, "tiny", labels=JUDGE_LABELS, max_retries=8)
        prompts = [f"q{i} [[judge]]" for i in range(6)]
        v = endpoint_verdicts(client, prompts, [f"POLICY {i}" for i in range(6)], [f"ref {i}" for i in range(6)])
        assert v == [1.0] * 6
        codes = srv.stats["statuses"]
        assert sum(codes.get(c, 0) for c in ("500", "503", "429")) > 0 and client.stats["retries"] > 0
        assert set(srv.stats["auth_headers"]) == {f"Bearer {secret}"}
        assert secret not in repr(client.__dict__) + repr(client.describe())
