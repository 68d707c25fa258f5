"""Teacher-forced scoring of K responses per prompt with the prompt computed once: one sequence per prompt.

The on-policy loop scores K samples of every prompt (DICE's implicit reward, Chen et al., "Bootstrapping
Language Models with DPO Implicit Rewards", ICLR 2025, arXiv:2406.09760, §3, in the policy and the reference;
the KL and entropy of an evaluation round). Scored one ``[prompt | response]`` row per sample, the prompt goes
through the model K times. Here the K responses of a prompt share ONE sequence
``[prompt | y_1 | y_2 | … | y_K]``, the layout of a listwise training row (:mod:`unipo.data.batching`): response
k has its own segment id, positions that restart at the end of the prompt, and sees only the prompt and itself
(:func:`unipo.layout.attention_mask_4d`, or segment attention where the model has it,
:mod:`unipo.models.segment_attention`), so it computes exactly what its own row would, and the prompt's tokens
go through the model once per prompt instead of K times.

The forward is :func:`unipo.models.forward.hidden_states` (the training path: no full-sequence logits); the LM
head is applied to the response positions only, in chunks, with log-softmax in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unipo.layout import CHOSEN, MAX_REJECTED, PAD_SEGMENT, PROMPT, PackedBatch, SideLayout, gather_side, pad_rows
from unipo.models.forward import hidden_states, unwrap

#: the most responses one sequence holds (segment ids are int8; the rest go to another sequence)
MAX_GROUP = MAX_REJECTED + 1


@dataclass(frozen=True)
class Group:
    """One prompt and the indices (into the caller's flat response list) of the responses scored with it."""

    prompt: tuple[int, ...]
    members: tuple[int, ...]


def group_by_prompt(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], max_members: int
                    ) -> list[Group]:
    """The non-empty responses grouped by identical prompt (first-occurrence order), at most ``max_members``
    (and :data:`MAX_GROUP`) per group; an empty response is in no group (its log-probability is 0)."""
    cap = max(1, min(max_members, MAX_GROUP))
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for n, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if len(r):
            by_prompt.setdefault(tuple(p), []).append(n)
    return [Group(p, tuple(ns[s:s + cap])) for p, ns in by_prompt.items() for s in range(0, len(ns), cap)]


def is_supported(model: torch.nn.Module) -> bool:
    """Whether the shared-prompt path is exact for ``model``: a decoder to hook and an LM head applied as is
    (no final logit soft-capping, which this path does not apply)."""
    base = unwrap(model)
    config = getattr(base, "config", None)
    return (hasattr(base, "get_decoder") and base.get_output_embeddings() is not None
            and not getattr(config, "final_logit_softcapping", None))


def group_batch(groups: Sequence[Group], responses: Sequence[Sequence[int]], pad: int) -> PackedBatch:
    """One row ``[prompt | y_1 | … | y_K]`` per group, right-padded; every response is a row of the ``chosen``
    side (in group order), ``rejected`` is empty."""
    rows, segs, poss, srcs, labels = [], [], [], [], []
    width = max(len(g.prompt) + sum(len(responses[n]) for n in g.members) for g in groups)
    for r, g in enumerate(groups):
        n_p = len(g.prompt)
        ids, seg, pos = list(g.prompt), [PROMPT] * n_p, list(range(n_p))
        for k, n in enumerate(g.members):
            resp = list(responses[n])
            start = len(ids)
            srcs.append([r * width + (n_p - 1 if j == 0 else start + j - 1) for j in range(len(resp))])
            labels.append(resp)
            ids += resp
            seg += [CHOSEN + k] * len(resp)
            pos += list(range(n_p, n_p + len(resp)))
        rows.append(ids)
        segs.append(seg)
        poss.append(pos)
    t = max(len(x) for x in labels)
    chosen = SideLayout(pad_rows(srcs, t, 0, torch.long), pad_rows(labels, t, 0, torch.long),
                        pad_rows([[1] * len(x) for x in labels], t, 0, torch.bool))
    empty = SideLayout(torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long),
                       torch.zeros(0, 0, dtype=torch.bool))
    return PackedBatch(pad_rows(rows, width, pad, torch.long), pad_rows(poss, width, 0, torch.long),
                       pad_rows(segs, width, PAD_SEGMENT, torch.int8), chosen, empty)



@torch.no_grad()
def head_scores(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, chunk_size: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, entropies)`` [N] of ``labels`` under ``head(hidden)`` ([N, H]), log-softmax in float32, in
    chunks of ``chunk_size`` rows (never N × vocabulary at once)."""
    logps = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    ents = torch.empty_like(logps)
    for s in range(0, hidden.shape[0], chunk_size):
        logp = torch.log_softmax(head(hidden[s:s + chunk_size]).float(), dim=-1)
        logps[s:s + chunk_size] = logp.gather(-1, labels[s:s + chunk_size, None])[:, 0]
        ents[s:s + chunk_size] = -(logp.exp() * logp).sum(-1)
    return logps, ents


@torch.no_grad()
def score_groups(model: torch.nn.Module, groups: Sequence[Group], responses: Sequence[Sequence[int]], pad: int,
                 device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(logps, entropies)`` of every member of ``groups`` (in group order, each ``[len(y)]`` on the CPU) from
    ONE forward over the rows of :func:`group_batch`."""
    batch = group_batch(groups, responses, pad).to(device)
    hidden, _ = hidden_states(model, batch)
    layout = batch.chosen
    lp, ent = head_scores(gather_side(hidden, layout), unwrap(model).get_output_embeddings(),
                          layout.labels[layout.mask])
    sizes = layout.mask.sum(-1).tolist()
    return list(zip(lp.cpu().split(sizes), ent.cpu().split(sizes), strict=True))
