"""From labelled samples to preference pairs: best vs worst of K, DICE's length correction, replay.

- :func:`make_pairs`: per prompt, the highest-scored sample is chosen and the lowest rejected (the first
  of equals, in sample order); a prompt whose scored samples are all equal has no signal and is skipped
  (counted), one whose best − worst is below ``min_margin`` too (counted apart); failed samples are left out.
- :func:`dice_alpha`: DICE's length-regularised reward r − α·|y| with α swept over 0, 0.001, … until the
  mean length difference (chosen − rejected, in characters) stops shrinking, keeping the α where it is
  smallest in magnitude (sail-sg/dice ``scripts/data_script/generate_lc_paired_set.py``: ``add_lc_score``,
  ``optimize_alpha``; Chen et al., ICLR 2025, arXiv:2406.09760, §3.2 "length-regularized reward shaping").
- :func:`replay_mix`: DICE's experience replay (``create_mix_paired_set`` there; §3.2): offline pairs make
  up a share γ of the round's data, n_offline = ⌊γ·n_generated / (1 − γ)⌋, drawn without replacement from
  offline pairs whose prompt is not among the generated ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PairStats:
    prompts: int = 0
    pairs: int = 0
    no_signal: int = 0
    below_margin: int = 0
    too_few_scored: int = 0
    failed_samples: int = 0
    alpha: float | None = None
    length_gap_chars: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def share_without_signal(self) -> float:
        return self.no_signal / self.prompts if self.prompts else float("nan")


def _groups(samples: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault(int(s["prompt_index"]), []).append(s)
    return {k: sorted(v, key=lambda s: int(s["sample"])) for k, v in sorted(groups.items())}


def _best_worst(group: list[dict[str, Any]], score: Callable[[dict[str, Any]], float]
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    best = max(group, key=score)  # max/min return the first of equals
    worst = min(group, key=score)
    return best, worst


def select_pairs(samples: Sequence[dict[str, Any]], *, alpha: float = 0.0, min_margin: float = 0.0
                 ) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], PairStats]:
    """Best vs worst per prompt under score − α·len(text); with the counts of what was skipped."""
    stats = PairStats(alpha=alpha)
    chosen_rejected = []
    for group in _groups(samples).values():
        stats.prompts += 1
        scored = [s for s in group if s.get("score") is not None]
        stats.failed_samples += len(group) - len(scored)
        if len(scored) < 2:
            stats.too_few_scored += 1
            continue

        def score(s: dict[str, Any]) -> float:
            return float(s["score"]) - alpha * len(s["response"])

        best, worst = _best_worst(scored, score)
        gap = score(best) - score(worst)
        if gap <= 0:
            stats.no_signal += 1
        elif gap < min_margin:
            stats.below_margin += 1
        else:
            chosen_rejected.append((best, worst))
    stats.pairs = len(chosen_rejected)
    if chosen_rejected:
        stats.length_gap_chars = sum(len(c["response"]) - len(r["response"])
                                     for c, r in chosen_rejected) / len(chosen_rejected)
    return chosen_rejected, stats


def dice_alpha(samples: Sequence[dict[str, Any]], *, step: float = 0.001, upper: float = 1.0,
               min_margin: float = 0.0) -> tuple[float, list[tuple[float, float]]]:
    """DICE's α: sweep α = 0, step, 2·step, … < upper; stop at the first α whose |mean length difference|
    is larger than the smallest so far; return the α of the smallest and the sweep [(α, mean diff)]."""
    sweep: list[tuple[float, float]] = []
    n = int(round(upper / step))
    for k in range(n):
        a = k * step
        pairs, _ = select_pairs(samples, alpha=a, min_margin=min_margin)
        diff = (sum(len(c["response"]) - len(r["response"]) for c, r in pairs) / len(pairs)) if pairs else 0.0
        sweep.append((a, diff))
        if abs(diff) > min(abs(d) for _, d in sweep):
            break
    best = min(range(len(sweep)), key=lambda i: abs(sweep[i][1]))
    return sweep[best][0], sweep


def pair_rows(chosen_rejected: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Conversational preference rows (``unipo train`` reads them) with the scores and sample ids."""
    rows = []
    for c, r in chosen_rejected:
        rows.append({"prompt": c["prompt"] if isinstance(c["prompt"], list) else [
                        {"role": "user", "content": c["prompt"]}],
                     "chosen": [{"role": "assistant", "content": c["response"]}],
                     "rejected": [{"role": "assistant", "content": r["response"]}],
                     "prompt_index": c["prompt_index"], "chosen_sample": c["sample"], "rejected_sample": r["sample"],
                     "chosen_score": c["score"], "rejected_score": r["score"], "source": "generated"})
    return rows


def prompt_key(prompt: Any) -> str:
    """A prompt (text or chat messages) as one string, to compare prompts across files."""
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt)
    return str(prompt)


def replay_mix(generated: list[dict[str, Any]], offline: list[dict[str, Any]], gamma: float, seed: int
               ) -> tuple[list[dict[str, Any]], int]:
    """``generated`` plus ⌊γ·n/(1 − γ)⌋ offline rows (fewer when the offline pool is smaller, never a prompt
    already generated), shuffled with ``seed``; returns the rows and the number of offline rows."""
    if not 0 <= gamma < 1:
        raise ValueError("the replay ratio must be in [0, 1)")
    want = int(gamma * len(generated) / (1 - gamma)) if gamma > 0 else 0
    seen = {prompt_key(g["prompt"]) for g in generated}
    pool = [dict(o, source="offline") for o in offline if prompt_key(o.get("prompt")) not in seen]
    rng = random.Random(seed)
    picked = rng.sample(pool, min(want, len(pool)))
    rows = generated + picked
    rng.shuffle(rows)
    return rows, len(picked)
