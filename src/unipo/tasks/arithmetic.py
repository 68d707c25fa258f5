"""The built-in task: two-number addition answered in an exact format, with a programmatic verifier.

"What is 7 + 9? Reply with only the number." — the answer passes only if the reply is exactly the
number. On small operands (1–12) SmolLM2-135M-Instruct gets the sum right most of the time (81% of 32
greedy answers for operands 1–9; 28% for 1–20) but never in the exact format: it answers "7 + 9 = 16".
Preference pairs that prefer the bare correct number over the model's habits teach the format, and the
contrast with wrong bare sums keeps the arithmetic honest.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

PROMPT = "What is {a} + {b}? Reply with only the number."


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return PROMPT.format(a=self.a, b=self.b)

    @property
    def answer(self) -> int:
        return self.a + self.b


def verify(problem: Problem, reply: str) -> bool:
    """Exact format: the reply, stripped of whitespace, is exactly the decimal sum."""
    return reply.strip() == str(problem.answer)


def graded_score(problem: Problem, reply: str) -> float:
    """Partial credit for on-policy rounds (``unipo iterate --task arithmetic``): 1 for the exact format
    (:func:`verify`); 0.5 when the first number of the reply is the sum ("16. This is…", "The answer is 16");
    0.25 when the sum appears later (the model's habit "7 + 9 = 16"); 0 otherwise. SmolLM2-135M-Instruct
    almost never samples the exact format (0 of 128 samples at temperature 1 on held-out problems), so a
    0/1 reward leaves nearly every prompt without a pair; the steps reward moving the sum to the front, then
    stopping after it (a format reward beside the correctness reward, as in DeepSeek-R1, arXiv:2501.12948,
    §2.2.2)."""
    if verify(problem, reply):
        return 1.0
    numbers = [int(n) for n in re.findall(r"\d+", reply)]
    if numbers and numbers[0] == problem.answer:
        return 0.5
    return 0.25 if problem.answer in numbers else 0.0


def parse_problem(prompt: str) -> Problem | None:
    m = re.search(r"What is (\d+) \+ (\d+)\?", prompt)
    return Problem(int(m.group(1)), int(m.group(2))) if m else None


def problems(n: int, seed: int, lo: int = 1, hi: int = 12) -> list[Problem]:
    """``n`` distinct problems with operands in [lo, hi] (at most (hi − lo + 1)² exist). Held-out problems
    are disjoint from training ones when both come from one call, split."""
    if n > (hi - lo + 1) ** 2:
        raise ValueError(f"only {(hi - lo + 1) ** 2} distinct problems with operands in [{lo}, {hi}]")
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    out = []
    while len(out) < n:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if (a, b) not in seen:
            seen.add((a, b))
            out.append(Problem(a, b))
    return out


def _wrong(p: Problem, rng: random.Random) -> int:
    off = rng.choice([-3, -2, -1, 1, 2, 3, 10])
    return max(0, p.answer + off)  # off != 0 and answers are >= 2, so never the right sum


REJECTED_TEMPLATES = (
    lambda p, w: f"{p.a} + {p.b} = {p.answer}",  # the model's habit: right sum, wrong format
    lambda p, w: f"{p.a} + {p.b} = {w}",  # habit and a wrong sum
    lambda p, w: f"{w}",  # right format, wrong sum
    lambda p, w: f"The answer is {p.answer}.",  # chatty
    lambda p, w: f"{p.answer}.",  # right sum, a stray period
    lambda p, w: f"{p.answer}\n\nThis is a simple addition: {p.a} plus {p.b} equals {p.answer}.",  # no stop
)


def preference_rows(probs: list[Problem], seed: int) -> list[dict]:
    """Conversational preference rows: chosen = the bare correct sum; rejected = one of the habits above."""
    rng = random.Random(seed)
    rows = []
    for i, p in enumerate(probs):
        rejected = REJECTED_TEMPLATES[i % len(REJECTED_TEMPLATES)](p, _wrong(p, rng))
        rows.append({
            "prompt": [{"role": "user", "content": p.prompt}],
            "chosen": [{"role": "assistant", "content": str(p.answer)}],
            "rejected": [{"role": "assistant", "content": rejected}],
        })
    return rows
