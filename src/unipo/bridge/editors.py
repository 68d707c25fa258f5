"""Editors for BMC bridging: a local transformers model, or an OpenAI-compatible chat-completions server.

BMC (Jiang et al., ICLR 2025, §3.1) asks an editor LLM for the minimal edit of the losing response; the
paper uses a strong API model and reports that a 70B open model gives nearly the same results. Both
editors here take :class:`EditJob` s and yield ``(key, EditResult)`` as results complete, so that the
pipeline (:mod:`unipo.bridge.pipeline`) can append each row the moment it is ready.

:class:`OpenAICompatEditor` speaks ``POST {base_url}/chat/completions`` with the standard library only
(``urllib``), with a bounded number of concurrent requests (a thread pool), retries with exponential
backoff and jitter on timeouts, connection errors and 5xx, and honours ``429`` + ``Retry-After`` by
pausing every worker. The API key is read from an environment variable, sent only in the
``Authorization`` header, and never appears in a repr, a log line, an error message or an output file.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipo.errors import UnipoError


class EditorFatalError(UnipoError):
    """The editor cannot work at all (bad credentials, unknown model, unreachable server): stop the run."""


class EditorStopped(Exception):
    """Raised inside a worker when the run is being stopped."""


@dataclass(frozen=True)
class EditJob:
    """One request to the editor: ``key`` is the input row number."""

    key: int
    messages: list[dict[str, str]]
    max_tokens: int


@dataclass
class EditResult:
    """The editor's raw answer (``text``) or, when every attempt failed, an ``error``."""

    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    attempts: int = 1
    #: True for transport failures (timeouts, refused connections, 5xx): evidence the server is down
    transport_error: bool = False


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

        self.name = name_or_path
        path = resolve_model_path(name_or_path)
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
# OpenAI-compatible chat-completions server

_RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}
_FATAL_STATUSES = {401, 403, 404}


class _Secret:
    """Holds the API key; its repr and str hide the value, so a dumped object never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class _RetryableError(Exception):
    def __init__(self, message: str, *, retry_after: float | None = None, rate_limited: bool = False,
                 transport: bool = True) -> None:
        super().__init__(message)
        self.retry_after, self.rate_limited, self.transport = retry_after, rate_limited, transport


class _PermanentError(Exception):
    """This request cannot succeed (e.g. 400): record the row as failed and go on."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class OpenAICompatEditor(Editor):
    """Any server that implements ``POST /v1/chat/completions`` (OpenAI, vLLM, llama.cpp, TGI, ...)."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None,
                 concurrency: int = 4, timeout: float = 120.0, max_retries: int = 5,
                 backoff: float = 1.0, max_backoff: float = 60.0, max_rate_limited: int = 30,
                 temperature: float = 0.0, extra_body: dict[str, Any] | None = None,
                 max_consecutive_transport_failures: int = 8) -> None:
        super().__init__()
        url = base_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise UnipoError(f"--editor-url must start with http:// or https://, got {base_url!r}")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.name = model
        self.model = model
        self.api_key_env = api_key_env
        self._api_key: _Secret | None = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if key is None:
                raise UnipoError(f"environment variable {api_key_env} (given by --api-key-env) is not set")
            self._api_key = _Secret(key) if key else None
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_rate_limited = int(max_rate_limited)
        self.temperature = float(temperature)
        self.extra_body = dict(extra_body or {})
        self.max_consecutive_transport_failures = int(max_consecutive_transport_failures)
        self._pause_until = 0.0
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.stats = {"requests": 0, "retries": 0, "rate_limited": 0}

    def describe(self) -> dict[str, Any]:
        return {"type": "openai-compatible", "url": self.url, "model": self.model,
                "api_key_env": self.api_key_env, "concurrency": self.concurrency}

    # -- one HTTP exchange ------------------------------------------------------------------------
    def _post(self, job: EditJob) -> EditResult:
        body = {"model": self.model, "messages": job.messages, "max_tokens": job.max_tokens,
                "temperature": self.temperature, **self.extra_body}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers,
                                     method="POST")
        with self._lock:
            self.stats["requests"] += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                detail = exc.read()[:300].decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the body is only for the message
                detail = ""
            detail = self._redact(detail).strip()
            msg = f"HTTP {status} from {self.url}" + (f": {detail}" if detail else "")
            if status == 429:
                raise _RetryableError(msg, retry_after=parse_retry_after(exc.headers.get("Retry-After")),
                                      rate_limited=True, transport=False) from None
            if status in _FATAL_STATUSES:
                raise EditorFatalError(msg + (" (check --api-key-env)" if status in (401, 403) else
                                              " (check --editor-url and --editor-model)")) from None
            if status in _RETRY_STATUSES or status >= 500:
                raise _RetryableError(msg, retry_after=parse_retry_after(exc.headers.get("Retry-After")),
                                      transport=status >= 500) from None
            raise _PermanentError(msg) from None
        except TimeoutError as exc:
            raise _RetryableError(f"timed out after {self.timeout:g}s ({self.url})") from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise _RetryableError(f"timed out after {self.timeout:g}s ({self.url})") from None
            raise _RetryableError(f"cannot reach {self.url}: {reason}") from None
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise _RetryableError(f"connection to {self.url} failed: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content")
            if text is None:
                text = choice.get("text")  # a completions-style answer
            return EditResult(text=text if text is not None else "",
                              finish_reason=choice.get("finish_reason"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _RetryableError(f"malformed response from {self.url}: {raw[:200]!r}",
                                  transport=False) from None

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key.reveal(), "***") if self._api_key else text

    # -- one job with retries -----------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(max(0.0, seconds)):
            raise EditorStopped()

    def _wait_for_pause(self) -> None:
        while True:
            with self._lock:
                delay = self._pause_until - time.monotonic()
            if delay <= 0:
                return
            self._sleep(delay)

    def _backoff_delay(self, attempt: int) -> float:
        # exponential backoff with "full jitter" in [cap/2, cap]
        cap = min(self.max_backoff, self.backoff * (2 ** attempt))
        return cap * (0.5 + 0.5 * self._rng.random())

    def run_job(self, job: EditJob) -> EditResult:
        """One request with retries; returns an error result when it keeps failing (never raises for that)."""
        failures = rate_limited = attempts = 0
        while True:
            if self._stop.is_set():
                raise EditorStopped()
            self._wait_for_pause()
            attempts += 1
            try:
                result = self._post(job)
                result.attempts = attempts
                return result
            except _PermanentError as exc:
                return EditResult(error=str(exc), attempts=attempts)
            except _RetryableError as exc:
                if exc.rate_limited:
                    rate_limited += 1
                    with self._lock:
                        self.stats["rate_limited"] += 1
                    if rate_limited > self.max_rate_limited:
                        return EditResult(error=f"still rate-limited after {rate_limited} tries: {exc}",
                                          attempts=attempts)
                    delay = exc.retry_after if exc.retry_after is not None else self._backoff_delay(
                        min(rate_limited, 10))
                    delay = min(delay, max(self.max_backoff, 1.0))
                    with self._lock:  # every worker waits: the server asked us to slow down
                        self._pause_until = max(self._pause_until, time.monotonic() + delay)
                    continue
                failures += 1
                if failures > self.max_retries:
                    return EditResult(error=f"failed after {attempts} attempts: {exc}", attempts=attempts,
                                      transport_error=exc.transport)
                with self._lock:
                    self.stats["retries"] += 1
                delay = exc.retry_after if exc.retry_after is not None else self._backoff_delay(failures - 1)
                self._sleep(min(delay, self.max_backoff))

    # -- many jobs, bounded concurrency -------------------------------------------------------------
    def edit_stream(self, jobs: Iterable[EditJob]) -> Iterator[tuple[int, EditResult]]:
        """Run ``jobs`` with at most ``concurrency`` requests in flight; yield results as they complete.

        Raises :class:`EditorFatalError` on 401/403/404, or when ``max_consecutive_transport_failures``
        rows in a row failed to reach the server (it is down: stop rather than mark every row failed).
        """
        self._stop.clear()
        it = iter(jobs)
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="unipo-bridge")
        pending: dict[Future, int] = {}
        consecutive = 0
        window = 2 * self.concurrency
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    job = next(it, None)
                    if job is None:
                        exhausted = True
                        break
                    pending[pool.submit(self.run_job, job)] = job.key
                if not pending:
                    return
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    key = pending.pop(fut)
                    result = fut.result()  # EditorFatalError / EditorStopped propagate
                    if result.error and result.transport_error:
                        consecutive += 1
                        if consecutive >= self.max_consecutive_transport_failures > 0:
                            yield key, result
                            raise EditorFatalError(
                                f"{consecutive} requests in a row could not reach the editor "
                                f"({result.error}); stopping. Finished rows are saved: rerun the same "
                                "command with --retry-failed once the server is back")
                    else:
                        consecutive = 0
                    yield key, result
        finally:
            self.stop()
            pool.shutdown(wait=True, cancel_futures=True)
