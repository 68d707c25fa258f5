"""Editors for BMC bridging: a local transformers model, or an OpenAI-compatible chat-completions server.

BMC (Jiang et al., ICLR 2025, §3.1) asks an editor LLM for the minimal edit of the losing response; the
paper uses a strong API model and reports that a 70B open model gives nearly the same results. Both
editors here take :class:`EditJob` s and yield ``(key, EditResult)`` as results complete, so that the
pipeline (:mod:`unipo.bridge.pipeline`) can append each row the moment it is ready.

:class:`OpenAICompatEditor` drives any OpenAI-compatible chat-completions server through
:class:`unipo.io.chat_client.ChatClient` (the openai SDK's timeouts, retries and ``Retry-After`` handling,
bounded concurrency; the API key comes from an environment variable and is never logged or written).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from unipo.errors import UnipoError
from unipo.io.chat_client import ChatClient, ChatFatalError, ChatJob, ChatResult, ChatStopped, ClientLabels

#: the editor cannot work at all (bad credentials, unknown model, unreachable server): stop the run
EditorFatalError = ChatFatalError
#: raised inside a worker when the run is being stopped
EditorStopped = ChatStopped
#: one request to the editor: ``key`` is the input row number
EditJob = ChatJob
#: the editor's raw answer (``text``) or, when every attempt failed, an ``error``
EditResult = ChatResult


class Editor:
    """Base class: ``edit_stream`` yields ``(key, EditResult)`` in completion order."""

    name: str = "editor"

    def __init__(self) -> None:
        self._stop = threading.Event()

    def edit_stream(self, jobs: Iterable[EditJob]) -> Iterator[tuple[int, EditResult]]:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask workers to give up promptly (used on abort and Ctrl-C)."""
        self._stop.set()

    def describe(self) -> dict[str, Any]:
        """What to record in the run's metadata (never secrets)."""
        return {"type": type(self).__name__, "name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ----------------------------------------------------------------------------------------------------
# local transformers model


def resolve_model_path(name_or_path: str) -> Path:
    """A built-in model name (e.g. ``smollm2-135m-instruct``) or a local checkpoint directory."""
    from unipo.models.builtin import is_builtin, resolve_builtin

    if is_builtin(name_or_path):
        return resolve_builtin(name_or_path)
    path = Path(name_or_path)
    from unipo.models.checks import check_path_is_usable

    check_path_is_usable(path)  # a symlink loop: one line, not a hub message
    if not (path / "config.json").exists():
        raise UnipoError(
            f"editor {name_or_path!r} is neither a built-in model (smollm2-135m-instruct) nor a local "
            "checkpoint directory with a config.json (the hub is not used)"
        )
    return path


class LocalEditor(Editor):
    """A local causal LM driven through its chat template with batched greedy generation."""

    def __init__(self, name_or_path: str, *, batch_size: int = 8, device: str | None = None,
                 dtype: str | None = None, temperature: float = 0.0) -> None:
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from unipo.models.checks import check_model_dir

        self.name = name_or_path
        path = resolve_model_path(name_or_path)
        check_model_dir(path, tokenizer=True)  # damaged weights, config or tokenizer: one line naming what
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:  # bf16 matmuls are slow on most CPUs
            torch_dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(self.device).eval()
        self.batch_size = max(1, int(batch_size))
        self.temperature = float(temperature)
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    def describe(self) -> dict[str, Any]:
        return {"type": "local", "name": self.name, "device": self.device,
                "dtype": str(self.model.dtype).replace("torch.", ""), "batch_size": self.batch_size}

    def _render(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def edit_stream(self, jobs: Iterable[EditJob]) -> Iterator[tuple[int, EditResult]]:
        batch: list[EditJob] = []
        for job in jobs:
            batch.append(job)
            if len(batch) >= self.batch_size:
                yield from self._run_batch(batch)
                batch = []
        if batch:
            yield from self._run_batch(batch)

    def _run_batch(self, jobs: list[EditJob]) -> list[tuple[int, EditResult]]:
        import torch

        if self._stop.is_set():
            return []
        texts = [self._render(j.messages) for j in jobs]
        lengths = [len(self.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        results: list[tuple[int, EditResult]] = []
        runnable: list[tuple[EditJob, str]] = []
        for job, text, n in zip(jobs, texts, lengths, strict=True):
            if self.max_context and n + job.max_tokens > self.max_context:
                results.append((job.key, EditResult(
                    error=f"input too long: {n} prompt tokens + {job.max_tokens} new tokens exceed the "
                          f"editor's context of {self.max_context}")))
            else:
                runnable.append((job, text))
        if not runnable:
            return results
        enc = self.tokenizer([t for _, t in runnable], return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.device)
        max_new = max(j.max_tokens for j, _ in runnable)
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.tokenizer.pad_token_id}
        if self.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen_kwargs)
        new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
        for (job, _), toks in zip(runnable, new_tokens, strict=True):
            stop_at = next((i for i, t in enumerate(toks) if t in self.eos_ids), None)
            finish = "stop" if stop_at is not None and stop_at <= job.max_tokens else "length"
            toks = toks[: stop_at if stop_at is not None else len(toks)][: job.max_tokens]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            results.append((job.key, EditResult(text=text, finish_reason=finish)))
        return results


# ----------------------------------------------------------------------------------------------------
# OpenAI-compatible chat-completions server (the transport is unipo.io.chat_client)

#: how the client's messages name the editor and ``unipo bridge``'s options
EDITOR_LABELS = ClientLabels(
    server="the editor", url_option="--editor-url", model_option="--editor-model", key_option="--api-key-env",
    when_down="Finished rows are saved: rerun the same command with --retry-failed once the server is back",
    thread_prefix="unipo-bridge")


class OpenAICompatEditor(Editor):
    """Any server that implements ``POST /v1/chat/completions`` (OpenAI, vLLM, llama.cpp, TGI, ...).

    ``options`` are :class:`~unipo.io.chat_client.ChatClient`'s (``api_key_env``, ``concurrency``,
    ``timeout``, ``max_retries``, ...); ``base_url`` None means ``OPENAI_BASE_URL``.
    """

    def __init__(self, base_url: str | None, model: str, **options: Any) -> None:
        super().__init__()
        self.client = ChatClient(base_url, model, labels=EDITOR_LABELS, **options)
        self.name = model
        self.model = model

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def stats(self) -> dict[str, int]:
        return self.client.stats

    def describe(self) -> dict[str, Any]:
        return {"type": "openai-compatible", **self.client.describe()}

    def stop(self) -> None:
        super().stop()
        self.client.stop()

    def edit_stream(self, jobs: Iterable[EditJob]) -> Iterator[tuple[int, EditResult]]:
        """Run ``jobs`` with bounded concurrency; yield results as they complete.

        Raises :class:`EditorFatalError` on 401/403/404, or when ``max_consecutive_transport_failures``
        rows in a row failed to reach the server (it is down: stop rather than mark every row failed).
        """
        return self.client.stream(jobs)
