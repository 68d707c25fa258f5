"""Sampling K responses per prompt from the current policy, and the per-round evaluation.

Generation is :func:`unipo.eval.generation.sample_responses`: batched, left-padded, with the KV cache, each
row stopping at its end-of-turn token, each (prompt, sample) on its own random stream derived from the seed
and the prompt's index in the run, so a resumed run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unipo.eval.generation import eos_token_ids, generation_metrics, sample_responses
from unipo.iterate.labels import LabelBatch
from unipo.iterate.prompts import Prompt


@dataclass
class Sampled:
    """One sampled response: its tokens (the end-of-turn token included when the model stopped)."""

    prompt: Prompt
    sample: int
    tokens: list[int]
    text: str
    stopped: bool


@dataclass
class GenerationClock:
    """Generated tokens and seconds spent generating, over a round."""

    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.nan


def sample_prompts(model: Any, tokenizer: Any, prompts: list[Prompt], ids: list[list[int]], k: int, *,
                   max_new_tokens: int, temperature: float, top_p: float, batch_size: int, seed: int,
                   clock: GenerationClock) -> list[Sampled]:
    """K responses for each of ``prompts`` (their rendered ``ids``), timed into ``clock``."""
    eos = eos_token_ids(model, tokenizer)
    start = time.perf_counter()
    out = sample_responses(model, tokenizer, ids, k, max_new_tokens, temperature=temperature, top_p=top_p,
                           batch_size=batch_size, seed=seed, prompt_ids=[p.index for p in prompts])
    clock.seconds += time.perf_counter() - start
    result = []
    for p, per_prompt in zip(prompts, out, strict=True):
        for s, toks in enumerate(per_prompt):
            clock.tokens += len(toks)
            text = tokenizer.decode([t for t in toks if t not in eos], skip_special_tokens=True)
            result.append(Sampled(p, s, toks, text, bool(toks) and toks[-1] in eos))
    return result


def label_batch(samples: list[Sampled], ids_of: Callable[[Prompt], list[int]]) -> LabelBatch:
    return LabelBatch(prompt_texts=[s.prompt.text() for s in samples], prompt_ids=[ids_of(s.prompt) for s in samples],
                      response_texts=[s.text for s in samples], response_ids=[s.tokens for s in samples])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate_policy(policy: Any, original: Any, tokenizer: Any, prompts: list[Prompt], ids: list[list[int]],
                    labeller: Any | None, *, n_samples: int, max_new_tokens: int, batch_size: int, seed: int,
                    passes: Callable[[str, str], float] | None = None) -> dict[str, Any]:
    """Held-out metrics of ``policy``: mean label (the pass rate under a verifier) of its greedy answer and of
    ``n_samples`` samples at temperature 1, KL(π ‖ π_original) and the mean response length from those
    samples (:func:`unipo.eval.generation.generation_metrics`). ``labeller`` None (DICE's implicit reward,
    which needs a round's reference): no reward columns. ``passes`` (a built-in task's exact verdict): also
    the pass rate, ``greedy_pass_rate`` and ``sampled_pass_rate``. ``greedy_answers``: every greedy answer,
    in the order of ``prompts``, to check any figure by hand."""
    result: dict[str, Any] = {}
    for name, k, temperature, ref in (("greedy", 1, 0.0, None), ("sampled", n_samples, 1.0, original)):
        if k < 1:
            continue
        if ref is None:  # greedy: the answers only (generation_metrics would also score them)
            eos = eos_token_ids(policy, tokenizer)
            out = sample_responses(policy, tokenizer, ids, 1, max_new_tokens, temperature=0.0, batch_size=batch_size)
            gen = {"samples": [[tokenizer.decode([x for x in o[0] if x not in eos], skip_special_tokens=True)]
                               for o in out]}
        else:
            gen = generation_metrics(policy, ref, tokenizer, ids, n_samples=k, max_new_tokens=max_new_tokens,
                                     temperature=temperature, batch_size=batch_size, seed=seed, keep_samples=True)
        if ref is not None:
            result.update(kl=gen.get("kl"), kl_std_err=gen.get("kl_std_err"),
                          response_length=gen["response_length"], entropy=gen["entropy"],
                          distinct_2=gen["distinct_2"])
        if labeller is not None:
            texts = gen["samples"]
            batch = LabelBatch(prompt_texts=[p.text() for p, t in zip(prompts, texts, strict=True) for _ in t],
                               prompt_ids=[i for i, t in zip(ids, texts, strict=True) for _ in t],
                               response_texts=[x for t in texts for x in t], response_ids=[])
            labels = labeller.label(batch)
            result[f"{name}_reward"] = _mean([lab.score for lab in labels if lab.score is not None])
            result[f"{name}_failed"] = sum(lab.score is None for lab in labels)
        if passes is not None:
            verdicts = [passes(p.text(), x) for p, t in zip(prompts, gen["samples"], strict=True) for x in t]
            result[f"{name}_pass_rate"] = _mean(verdicts)
        if name == "greedy":
            result["greedy_answers"] = [t[0] for t in gen["samples"]]  # every held-out prompt's, in order
    return result
