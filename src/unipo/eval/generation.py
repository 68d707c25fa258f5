"""Sampling from a causal LM, teacher-forced scoring, and generation metrics (KL, diversity, entropy).

Prompts arrive as token-id lists that are already chat-templated (the caller applied the template
with ``add_generation_prompt=True``). Responses are token-id lists that end with an end-of-sequence
token when the model stopped by itself (the eos is part of the response: its probability is part of
log π(y|x)), and without one when ``max_new_tokens`` cut them off.

Sampling is a plain ancestral sampling loop written here (not ``model.generate``) so that nothing in a
checkpoint's ``generation_config.json`` (top-k, top-p, repetition penalty, ...) silently changes the
sampling distribution: the KL estimators in :mod:`unipo.eval.metrics` need samples from π itself.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from unipo.eval.metrics import distinct_n, kl_estimate, mean_entropy, self_bleu

__all__ = ["ResponseScores", "sample_responses", "score_responses", "generation_metrics", "eos_token_ids"]


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """All end-of-sequence ids: the tokenizer's eos and those of the model's generation config."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return ids


def _pad_id(tokenizer: Any, eos_ids: set[int]) -> int:
    if getattr(tokenizer, "pad_token_id", None) is not None:
        return int(tokenizer.pad_token_id)
    return min(eos_ids) if eos_ids else 0


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _forward_params(model: Any) -> set[str]:
    """Keyword names of the underlying model's forward (looking through a PEFT wrapper)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(inner.forward).parameters)


def _cache_kwarg(params: set[str]) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated)."""
    return "cache" if "cache" in params else "past_key_values"


def _row_generator(seed: int, prompt_index: int, sample_index: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    # A distinct, deterministic stream per (seed, prompt, sample): results do not depend on batching.
    g.manual_seed((seed * 1_000_003 + prompt_index) * 1_000_003 + sample_index)
    return g


@torch.no_grad()
def sample_responses(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], n_samples: int, max_new_tokens: int,
    temperature: float = 1.0, batch_size: int = 8, seed: int = 0, top_p: float = 1.0,
    prompt_ids: Sequence[int] | None = None,
) -> list[list[list[int]]]:
    """Sample ``n_samples`` responses per prompt by ancestral sampling; ``result[i][s]`` is a token list.

    Batched with left padding (position ids follow the attention mask, so a padded row computes what
    it would alone) and a KV cache. Each row stops at its first eos token (which is kept); the batch
    stops when all rows have stopped or after ``max_new_tokens``. ``temperature`` scales the logits
    (0 means greedy); only temperature 1 samples from π itself. Each (prompt, sample) has its own
    random stream derived from ``seed``, so the result is reproducible and does not depend on
    ``batch_size`` (up to floating-point differences between batch shapes). The global RNG is untouched.
    ``top_p`` < 1 samples from the nucleus: the smallest set of most likely tokens whose probability reaches
    ``top_p``, renormalised (Holtzman et al., "The Curious Case of Neural Text Degeneration", arXiv:1904.09751,
    §3.1). ``prompt_ids``: the index of each prompt in its random stream (default 0, 1, ...), so a caller that
    samples a subset of its prompts (a resumed run) draws what the full run would have.
    """
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    if n_samples < 1 or max_new_tokens < 0:
        raise ValueError("n_samples must be >= 1 and max_new_tokens >= 0")
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    was_training = getattr(model, "training", False)
    model.eval()
    device = _device(model)
    eos = eos_token_ids(model, tokenizer)
    pad = _pad_id(tokenizer, eos)
    params = _forward_params(model)
    cache_kw = _cache_kwarg(params)
    keep_kw = "logits_to_keep" in params
    jobs = [(i, s) for i in range(len(prompts)) for s in range(n_samples)]
    out: list[list[list[int]]] = [[[] for _ in range(n_samples)] for _ in prompts]
    try:
        for start in tqdm(range(0, len(jobs), batch_size), desc="sampling", leave=False, disable=None):
            chunk = jobs[start:start + batch_size]
            # each distinct prompt of the chunk is prefilled once; its KV cache is copied to its samples' rows
            uniq = list(dict.fromkeys(i for i, _ in chunk))
            rows = [list(prompts[i]) for i in uniq]
            if any(len(r) == 0 for r in rows):
                raise ValueError("empty prompt: a prompt needs at least one token")
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for b, r in enumerate(rows):
                ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[b, width - len(r):] = 1
            ids, mask = ids.to(device), mask.to(device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            gens = [_row_generator(seed, prompt_ids[i] if prompt_ids is not None else i, s, device) for i, s in chunk]
            kwargs: dict[str, Any] = {"use_cache": True}
            if keep_kw:
                kwargs["logits_to_keep"] = 1
            outputs = model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
            expand = torch.tensor([uniq.index(i) for i, _ in chunk], dtype=torch.long, device=device)
            cache = _cache_of(outputs)
            if len(uniq) < len(chunk):
                cache.reorder_cache(expand)
            mask, positions = mask[expand], positions[expand]
            logits = outputs.logits[:, -1, :][expand]
            _decode(model, chunk, logits, cache, mask, positions, gens, out, eos=eos, pad=pad, cache_kw=cache_kw,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    finally:
        if was_training:
            model.train()
    return out


def _cache_of(outputs: Any) -> Any:
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else getattr(outputs, "past_key_values", None)


def _decode(model: Any, chunk: list[tuple[int, int]], logits: torch.Tensor, cache: Any, mask: torch.Tensor,
            positions: torch.Tensor, gens: list[torch.Generator], out: list[list[list[int]]], *, eos: set[int],
            pad: int, cache_kw: str, max_new_tokens: int, temperature: float, top_p: float) -> None:
    """The token-by-token loop of :func:`sample_responses` for one chunk of (prompt, sample) rows, from the
    prefilled ``cache`` and the next-token ``logits`` [rows, V]; appends each row's tokens to ``out``."""
    device = logits.device
    n = len(chunk)
    done = [False] * n
    for step in range(max_new_tokens):
        logits = logits.float()
        next_tok = torch.empty(n, dtype=torch.long, device=device)
        if temperature == 0:
            next_tok = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            if top_p < 1:
                probs = _nucleus(probs, top_p)
            for b in range(n):
                next_tok[b] = torch.multinomial(probs[b], 1, generator=gens[b])[0]
        for b, t in enumerate(next_tok.tolist()):
            if not done[b]:
                out[chunk[b][0]][chunk[b][1]].append(int(t))
                if t in eos:
                    done[b] = True
        if all(done) or step == max_new_tokens - 1:
            break
        finished = torch.tensor(done, device=device)
        step_ids = torch.where(finished, torch.full_like(next_tok, pad), next_tok)
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        outputs = model(input_ids=step_ids[:, None], attention_mask=mask, position_ids=positions,
                        **{"use_cache": True, cache_kw: cache})
        logits = outputs.logits[:, -1, :]
        cache = _cache_of(outputs)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` [B, V] restricted to each row's nucleus (the most likely tokens, in order, until their total
    reaches ``top_p``; the token that crosses it is kept) and renormalised."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each one
    sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


@dataclass
class ResponseScores:
    """Teacher-forced per-token scores of N responses, right-padded to the longest response.

    ``logps[n, t]`` = log π(y_t | x, y_<t) of response n's token t; ``entropies[n, t]`` the entropy
    (nats) of the full next-token distribution at that position; ``mask[n, t]`` 1 on response tokens,
    0 on padding. All float32 on the CPU.
    """

    logps: torch.Tensor
    entropies: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Number of tokens of each response."""
        return self.mask.sum(-1)

    def sequence_logps(self) -> torch.Tensor:
        """log π(y | x) of each response: the sum of its token log-probabilities."""
        return (self.logps * self.mask).sum(-1)


@torch.no_grad()
def score_responses(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
    batch_size: int = 8, shared_prompt: bool = True,
) -> ResponseScores:
    """Teacher-forced log-probabilities and predictive entropies of ``responses[n]`` given ``prompts[n]``.

    ``shared_prompt`` (the default, where :func:`unipo.models.shared_prompt.is_supported`): the responses of
    one prompt share one sequence ``[prompt | y_1 | … | y_K]`` and the prompt is computed once
    (:mod:`unipo.models.shared_prompt`); a forward holds at most ``batch_size`` responses. Otherwise one forward
    pass per batch of prompt+response sequences of similar length, right-padded (causal attention: real tokens
    never see the padding). Log-softmax is taken in float32, only at response positions, so the full (batch,
    length, vocabulary) float32 tensor is never materialised. Both give the same values up to float rounding.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(p) == 0 for p, r in zip(prompts, responses, strict=True) if len(r)):
        raise ValueError("empty prompt: a prompt needs at least one token")
    was_training = getattr(model, "training", False)
    model.eval()
    n = len(responses)
    t_max = max((len(r) for r in responses), default=0)
    out = ResponseScores(*(torch.zeros((n, t_max), dtype=torch.float32) for _ in range(3)))
    from unipo.models.shared_prompt import is_supported

    score = _score_shared if shared_prompt and is_supported(model) else _score_rows
    try:
        score(model, _pad_id(tokenizer, eos_token_ids(model, tokenizer)), prompts, responses, batch_size, out)
    finally:
        if was_training:
            model.train()
    return out


def _score_shared(model: Any, pad: int, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                  batch_size: int, out: ResponseScores) -> None:
    """:func:`score_responses` with one sequence per prompt: groups (longest first) into forwards of at most
    ``batch_size`` responses."""
    from unipo.models.shared_prompt import group_by_prompt, score_groups

    groups = group_by_prompt(prompts, responses, batch_size)
    groups.sort(key=lambda g: -(len(g.prompt) + sum(len(responses[k]) for k in g.members)))
    chunks: list[list[Any]] = []
    for g in groups:
        if not chunks or sum(len(c.members) for c in chunks[-1]) + len(g.members) > batch_size:
            chunks.append([])
        chunks[-1].append(g)
    device = _device(model)
    for chunk in tqdm(chunks, desc="scoring samples", leave=False, disable=None):
        members = [k for g in chunk for k in g.members]
        for k, (lp, ent) in zip(members, score_groups(model, chunk, responses, pad, device), strict=True):
            out.logps[k, :len(lp)], out.entropies[k, :len(lp)], out.mask[k, :len(lp)] = lp, ent, 1.0


def _score_rows(model: Any, pad: int, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                batch_size: int, out: ResponseScores) -> None:
    """:func:`score_responses` with one ``[prompt | response]`` row per response (the prompt K times)."""
    device = _device(model)
    n = len(responses)
    logps, ents, mask = out.logps, out.entropies, out.mask
    # batches of similar total length (longest first), so little of each forward pass is padding
    order = sorted(range(n), key=lambda k: -(len(prompts[k]) + len(responses[k])))
    for start in tqdm(range(0, n, batch_size), desc="scoring samples", leave=False, disable=None):
        idx = [k for k in order[start:start + batch_size] if len(responses[k]) > 0]
        if not idx:
            continue
        seqs = [list(prompts[k]) + list(responses[k]) for k in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
            att[b, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device), use_cache=False).logits
        for b, k in enumerate(idx):
            p_len, r_len = len(prompts[k]), len(responses[k])
            row = torch.log_softmax(logits[b, p_len - 1:p_len + r_len - 1].float(), dim=-1)
            target = torch.tensor(list(responses[k]), dtype=torch.long, device=row.device)
            logps[k, :r_len] = row.gather(-1, target[:, None])[:, 0].cpu()
            ents[k, :r_len] = (-(row.exp() * row).sum(-1)).cpu()
            mask[k, :r_len] = 1.0
        del logits


def _strip_eos(tokens: Sequence[int], eos: set[int]) -> list[int]:
    return [t for t in tokens if t not in eos]


def generation_metrics(
    policy: Any, reference: Any | None, tokenizer: Any, prompts: Sequence[Sequence[int]],
    n_samples: int = 4, max_new_tokens: int = 64, verifier: Callable[[int, str], bool] | None = None,
    *, temperature: float = 1.0, batch_size: int = 8, seed: int = 0, diversity_unit: str = "words",
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Sample from ``policy`` and measure KL to ``reference``, diversity, entropy, length, pass rate.

    Returned keys (floats; NaN where undefined):

    - ``kl``, ``kl_k3``, ``kl_std_err``, ``kl_per_token``: KL(π ‖ π_ref) per response from the
      policy's own samples (see :func:`unipo.eval.metrics.kl_estimate`); omitted when ``reference`` is
      None. Only meaningful at ``temperature=1``.
    - ``distinct_1``, ``distinct_2``: distinct-n over the ``n_samples`` responses of each prompt, averaged
      over prompts (within-prompt diversity: what mode collapse reduces).
    - ``self_bleu``: self-BLEU over each prompt's samples, averaged over prompts (NaN if n_samples < 2).
    - ``entropy``: mean per-token predictive entropy (nats) of the policy on its own samples.
    - ``response_length``: mean response length in tokens (eos included).
    - ``pass_rate``: mean of ``verifier(prompt_index, text)`` over all samples (a bool, or a score in [0, 1]);
      ``pass_per_prompt``: the same mean per prompt, in prompt order (only if a verifier is given).
    - ``distinct_2_per_prompt``, ``entropy_per_prompt``: those two per prompt, in prompt order (for paired
      comparisons between runs on the same prompts).
    - ``n_prompts``, ``n_samples``; and ``samples`` (decoded texts, ``[prompt][sample]``) if
      ``keep_samples``.

    ``diversity_unit``: ``"words"`` (whitespace-split decoded text, the usual choice for distinct-n
    and self-BLEU) or ``"tokens"`` (token ids, eos removed).
    """
    if diversity_unit not in ("words", "tokens"):
        raise ValueError("diversity_unit must be 'words' or 'tokens'")
    samples = sample_responses(policy, tokenizer, prompts, n_samples, max_new_tokens,
                               temperature=temperature, batch_size=batch_size, seed=seed)
    flat_prompts = [prompts[i] for i in range(len(prompts)) for _ in range(n_samples)]
    flat_resp = [r for per_prompt in samples for r in per_prompt]
    eos = eos_token_ids(policy, tokenizer)
    texts = [[tokenizer.decode(_strip_eos(r, eos), skip_special_tokens=True) for r in per_prompt]
             for per_prompt in samples]
    result: dict[str, Any] = {}
    pol = score_responses(policy, tokenizer, flat_prompts, flat_resp, batch_size=batch_size)
    if reference is not None:
        ref_logps = pol.logps if reference is policy else score_responses(
            reference, tokenizer, flat_prompts, flat_resp, batch_size=batch_size).logps
        result.update(kl_estimate(pol.logps, ref_logps, pol.mask))
    units: list[list[Any]] = texts if diversity_unit == "words" else [
        [_strip_eos(r, eos) for r in per_prompt] for per_prompt in samples]

    def per_prompt_mean(fn: Callable[[list[Any]], float]) -> float:
        vals = [fn(u) for u in units]
        vals = [v for v in vals if not math.isnan(v)]
        return float(sum(vals) / len(vals)) if vals else math.nan

    result["distinct_1"] = per_prompt_mean(lambda u: distinct_n(u, 1))
    result["distinct_2"] = per_prompt_mean(lambda u: distinct_n(u, 2))
    result["distinct_2_per_prompt"] = [distinct_n(u, 2) for u in units]
    result["entropy_per_prompt"] = [  # tokens of one prompt's samples pooled, as ``entropy`` pools all
        mean_entropy(pol.entropies[i * n_samples:(i + 1) * n_samples], pol.mask[i * n_samples:(i + 1) * n_samples])
        for i in range(len(prompts))] if flat_resp else []
    result["self_bleu"] = per_prompt_mean(self_bleu) if n_samples >= 2 else math.nan
    result["entropy"] = mean_entropy(pol.entropies, pol.mask)
    result["response_length"] = float(pol.mask.sum(-1).mean()) if flat_resp else math.nan
    if verifier is not None:
        per_prompt = [[float(verifier(i, t)) for t in answers] for i, answers in enumerate(texts)]
        passed = [v for scores in per_prompt for v in scores]
        result["pass_rate"] = float(sum(passed) / len(passed)) if passed else math.nan
        result["pass_per_prompt"] = [sum(scores) / len(scores) if scores else math.nan for scores in per_prompt]
    result["n_prompts"] = float(len(prompts))
    result["n_samples"] = float(n_samples)
    if keep_samples:
        result["samples"] = texts
    return result

