"""Judges: the policy's win rate against the reference model's responses on held-out prompts.

Both models answer each prompt greedily; a judge decides which answer is better:

- a local reward model (a sequence-classification checkpoint with one output, as trained by TRL's
  RewardTrainer): the higher score wins, equal scores count half;
- any OpenAI-compatible chat-completions endpoint (through :class:`unipo.io.chat_client.ChatClient`, on the
  openai SDK; ``judge_url`` defaults to ``OPENAI_BASE_URL``, the key to ``OPENAI_API_KEY``): asked
  which of two answers, shown in an order that alternates between prompts to cancel position bias, is
  better; an unparseable verdict counts half and is reported.

The prompt text given to a judge is the chat-templated prompt decoded without special tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from unipo.eval.generation import eos_token_ids, sample_responses
from unipo.io.chat_client import ChatClient, ChatJob, ClientLabels

JUDGE_PROMPT = (
    "You are comparing two answers to the same request. Pick the answer that is more helpful, correct and "
    "harmless.\n\nRequest:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "Reply with exactly one letter: A or B."
)

#: how the client's messages name the judge and ``unipo eval``'s options
JUDGE_LABELS = ClientLabels(server="the judge", url_option="--judge-url", model_option="--judge-model",
                            key_option="--api-key-env", thread_prefix="unipo-judge")


def greedy_texts(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 batch_size: int) -> list[str]:
    eos = eos_token_ids(model, tokenizer)
    out = sample_responses(model, tokenizer, prompts, 1, max_new_tokens, temperature=0.0, batch_size=batch_size)
    return [tokenizer.decode([t for t in r[0] if t not in eos], skip_special_tokens=True) for r in out]


@torch.no_grad()
def reward_model_scores(path: str, prompts: list[str], responses: list[str], batch_size: int = 8) -> list[float]:
    """Scores of ``prompt + response`` texts under a local sequence-classification reward model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from unipo.models.checks import check_model_dir

    check_model_dir(path, tokenizer=True)  # a damaged directory: one line naming what is wrong
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rm = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = tok.pad_token_id
    scores: list[float] = []
    texts = [p + r for p, r in zip(prompts, responses, strict=True)]
    for s in range(0, len(texts), batch_size):
        enc = tok(texts[s:s + batch_size], return_tensors="pt", padding=True, truncation=True)
        scores.extend(rm(**enc).logits[:, 0].float().tolist())
    return scores


def win_rate_from_scores(policy_scores: Sequence[float], reference_scores: Sequence[float]) -> float:
    """Share of prompts where the policy's answer scores higher; ties count half."""
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(policy_scores, reference_scores, strict=True)]
    return sum(wins) / len(wins)


def endpoint_verdicts(client, prompts: list[str], policy: list[str], reference: list[str]) -> list[float]:
    """1 / 0 / 0.5 per prompt from an OpenAI-compatible judge (a :class:`~unipo.io.chat_client.ChatClient`,
    or anything with its ``stream(jobs)``)."""
    jobs, swapped = [], {}
    for i, (p, a, b) in enumerate(zip(prompts, policy, reference, strict=True)):
        swapped[i] = i % 2 == 1  # alternate which side is shown first
        first, second = (b, a) if swapped[i] else (a, b)
        jobs.append(ChatJob(key=i, messages=[{"role": "user", "content": JUDGE_PROMPT.format(
            prompt=p, a=first, b=second)}], max_tokens=4))
    verdicts = [0.5] * len(prompts)
    for key, result in client.stream(jobs):
        m = re.search(r"\b([AB])\b", (result.text or "").strip().upper())
        if m:
            policy_is_a = not swapped[key]
            verdicts[key] = 1.0 if (m.group(1) == "A") == policy_is_a else 0.0
    return verdicts


def judge_win_rate(policy, reference, tokenizer, prompts: Sequence[Sequence[int]], *, judge: str | None = None,
                   judge_url: str | None = None, judge_model: str | None = None, api_key_env: str | None = None,
                   max_new_tokens: int = 64, batch_size: int = 8) -> dict[str, Any]:
    """Win rate of ``policy`` against ``reference`` under a local reward model (``judge``) or an endpoint."""
    pol = greedy_texts(policy, tokenizer, prompts, max_new_tokens, batch_size)
    ref = greedy_texts(reference, tokenizer, prompts, max_new_tokens, batch_size)
    prompt_texts = [tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
    if judge:
        a = reward_model_scores(judge, prompt_texts, pol, batch_size)
        b = reward_model_scores(judge, prompt_texts, ref, batch_size)
        return {"win_rate": win_rate_from_scores(a, b), "judge_reward_policy": sum(a) / len(a),
                "judge_reward_reference": sum(b) / len(b)}
    client = ChatClient(judge_url, judge_model, api_key_env=api_key_env, labels=JUDGE_LABELS)
    verdicts = endpoint_verdicts(client, prompt_texts, pol, ref)
    return {"win_rate": sum(verdicts) / len(verdicts),
            "judge_undecided": sum(v == 0.5 for v in verdicts) / len(verdicts)}
