"""``--label judge``: each sampled response rated 1–10 by an OpenAI-compatible chat endpoint.

The only module of ``unipo iterate`` that talks to a server; it uses the client that ``unipo bridge`` and
``unipo eval`` use (:mod:`unipo.io.chat_client`: ``ChatClient(url, model, api_key_env=...)``, ``ChatJob``,
``client.stream(jobs)``), with its retries, rate-limit handling and key hygiene (the key is read from the
environment variable ``--api-key-env`` names and never written). Pointwise rating with a 1–10 scale, as in
MT-Bench's single-answer grading (Zheng et al., "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena",
arXiv:2306.05685, §3.1). A reply without a number in range records the sample as failed with the reply.
"""

from __future__ import annotations

import re
from typing import Any

from unipo.errors import UnipoError
from unipo.io.chat_client import ChatClient, ChatJob, ClientLabels
from unipo.iterate.labels import LabelBatch, Labelled

RATING_PROMPT = (
    "Rate how good the answer to the request is, from 1 (useless or harmful) to 10 (excellent: helpful, "
    "correct and harmless).\n\nRequest:\n{prompt}\n\nAnswer:\n{response}\n\nReply with only the number."
)

LABELS = ClientLabels(server="the judge", url_option="--judge-url", model_option="--judge-model",
                      key_option="--api-key-env", thread_prefix="unipo-iterate-judge")


def parse_rating(text: str | None) -> float | None:
    """The first number in ``text`` if it lies in [1, 10], else None."""
    m = re.search(r"-?\d+(?:\.\d+)?", text or "")
    if not m:
        return None
    value = float(m.group(0))
    return value if 1 <= value <= 10 else None


class JudgeLabeller:
    name = "judge"

    def __init__(self, url: str, model: str, api_key_env: str | None = None, concurrency: int = 4,
                 timeout: float = 60.0, max_tokens: int = 8, max_retries: int = 5) -> None:
        self.client = ChatClient(url, model, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout,
                                 max_retries=max_retries, labels=LABELS)
        self.max_tokens = max_tokens

    def describe(self) -> dict[str, Any]:
        return {"label": self.name, **self.client.describe()}

    def check(self) -> None:
        """One request before any work: an unreachable judge or a refused key stops the run here."""
        jobs = [ChatJob(key=0, messages=[{"role": "user", "content": "Reply with only the number 5."}],
                        max_tokens=self.max_tokens)]
        for _, result in self.client.stream(jobs):
            if result.error:
                raise UnipoError(f"the judge at {self.client.url} cannot be used: {result.error}; check "
                                 f"--judge-url, --judge-model and --api-key-env")

    def label(self, batch: LabelBatch) -> list[Labelled]:
        jobs = [ChatJob(key=i, messages=[{"role": "user", "content": RATING_PROMPT.format(prompt=p, response=r)}],
                        max_tokens=self.max_tokens)
                for i, (p, r) in enumerate(zip(batch.prompt_texts, batch.response_texts, strict=True))]
        out: list[Labelled] = [Labelled(None, "no answer from the judge")] * len(jobs)
        for key, result in self.client.stream(jobs):
            if result.error:
                out[key] = Labelled(None, f"judge request failed: {result.error}")
                continue
            rating = parse_rating(result.text)
            out[key] = Labelled(rating) if rating is not None else Labelled(
                None, f"judge reply is not a rating in 1-10: {(result.text or '')[:80]!r}")
        return out
