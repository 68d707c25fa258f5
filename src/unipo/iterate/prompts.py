"""The prompts of ``unipo iterate``: a built-in task's problems or a prompts file, rendered to token ids.

A prompt is text or a list of chat messages (the conversation so far, ending with a user turn). A prompts
file is any file :mod:`unipo.data.formats` reads; each row gives its prompt as a ``prompt`` field (text or
messages), or is a preference row whose prompt :func:`~unipo.data.formats.normalize_row` finds (explicit,
implicit, or an Anthropic HH raw transcript). Rows without a usable prompt are skipped and counted; a file
with none is an error before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unipo.errors import DataError, UnipoError

TASKS = ("arithmetic",)


@dataclass(frozen=True)
class Prompt:
    """One prompt: ``index`` is its place in the run's prompt list (its random stream when sampling)."""

    index: int
    prompt: str | list[dict[str, Any]]

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": self.prompt}] if isinstance(self.prompt, str) else list(self.prompt)

    def text(self) -> str:
        """The prompt as plain text (the last user turn), for verifiers and judges."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m.get("content", "") for m in self.prompt if m.get("role") == "user"]
        return users[-1] if users else ""


def _row_prompt(raw: dict, file: str, n: int) -> str | list[dict[str, Any]] | None:
    from unipo.data.formats import normalize_row

    value = raw.get("prompt")
    if value is None:
        try:
            value = normalize_row(raw, file=file, row_number=n).prompt
        except DataError:
            return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                 for m in value) and value[-1].get("role") == "user":
        return value
    return None


def read_prompts(source: str, limit: int | None = None) -> tuple[list[str | list[dict[str, Any]]], int]:
    """The usable prompts of ``source`` (first ``limit``) and the number of rows skipped as unusable."""
    from unipo.data.formats import load_rows

    prompts: list[str | list[dict[str, Any]]] = []
    skipped = 0
    try:
        for n, raw in load_rows(source):
            p = _row_prompt(raw, source, n) if isinstance(raw, dict) else None
            if p is None:
                skipped += 1
                continue
            prompts.append(p)
            if limit is not None and len(prompts) >= limit:
                break
    except FileNotFoundError:
        raise DataError("prompts file not found", file=source) from None
    if not prompts:
        raise DataError(f"no usable prompt in {skipped} rows: each row needs a non-empty `prompt` (text, or chat "
                        f"messages ending with a user turn) or a preference row with one", file=source)
    return prompts, skipped


def task_prompts(task: str, seed: int) -> list[str]:
    """Every distinct problem of a built-in task (arithmetic: the 144 sums of operands 1–12), in a seeded
    random order."""
    if task != "arithmetic":
        raise UnipoError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")
    from unipo.tasks.arithmetic import problems

    return [p.prompt for p in problems(144, seed)]


def task_pairs(task: str, seed: int, heldout: int) -> list[dict[str, Any]]:
    """A built-in task's offline preference pairs for its training prompts (every prompt of
    :func:`task_prompts` after the first ``heldout``, never the held-out ones): for arithmetic, the demo's
    pairs (:func:`unipo.tasks.arithmetic.preference_rows`: the bare sum chosen over one of the model's habits
    or a wrong sum), the offline data that ``unipo iterate --task`` replays unless ``--data`` or
    ``--no-task-pairs`` says otherwise."""
    if task != "arithmetic":
        raise UnipoError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")
    from unipo.tasks.arithmetic import preference_rows, problems

    return preference_rows(problems(144, seed)[heldout:], seed)


def render(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of ``prompt`` as the model sees it before answering: the chat template with the generation
    prompt where the tokenizer has one, else the text itself."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(prompt.messages(), tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str):
            text = text[0]
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt.text())["input_ids"]
