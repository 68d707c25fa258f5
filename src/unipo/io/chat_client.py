"""A robust client for OpenAI-compatible chat-completions servers, shared by ``unipo bridge`` (the editor)
and ``unipo eval`` (the judge).

:class:`ChatClient` speaks ``POST {base_url}/chat/completions`` with the standard library only
(``urllib``), with a bounded number of concurrent requests (a thread pool), retries with exponential
backoff and jitter on timeouts, connection errors and 5xx, and honours ``429`` + ``Retry-After`` by
pausing every worker. The API key is read from an environment variable, sent only in the
``Authorization`` header, and never appears in a repr, a log line, an error message or an output file.

:class:`ChatJob` is one request, :class:`ChatResult` its answer (or the reason it failed);
:meth:`ChatClient.stream` yields ``(key, ChatResult)`` as results complete. :class:`ClientLabels` says
how error messages name the server and the command-line options that configure it.
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
from typing import Any

from unipo.errors import UnipoError

__all__ = ["ChatClient", "ChatFatalError", "ChatJob", "ChatResult", "ChatStopped", "ClientLabels",
           "parse_retry_after"]


class ChatFatalError(UnipoError):
    """The server cannot be used at all (bad credentials, unknown model, unreachable): stop the run."""


class ChatStopped(Exception):
    """Raised inside a worker when the run is being stopped."""


@dataclass(frozen=True)
class ChatJob:
    """One request: ``key`` identifies it in the results (e.g. the input row number)."""

    key: int
    messages: list[dict[str, str]]
    max_tokens: int


@dataclass
class ChatResult:
    """The server's raw answer (``text``) or, when every attempt failed, an ``error``."""

    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    attempts: int = 1
    #: True for transport failures (timeouts, refused connections, 5xx): evidence the server is down
    transport_error: bool = False


@dataclass(frozen=True)
class ClientLabels:
    """How messages name the server, the options that configure it, and what to do once it is down."""

    server: str = "the server"
    url_option: str = "--url"
    model_option: str = "--model"
    key_option: str = "--api-key-env"
    #: appended to the error raised when requests in a row cannot reach the server
    when_down: str = ""
    thread_prefix: str = "unipo-chat"


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
    """This request cannot succeed (e.g. 400): record it as failed and go on."""


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


def _api_key_from_env(env_name: str | None, option: str) -> _Secret | None:
    """The key held by ``env_name`` (unset: an error naming ``option``; empty: no key)."""
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if key is None:
        raise UnipoError(f"environment variable {env_name} (given by {option}) is not set")
    return _Secret(key) if key else None


def _chat_url(base_url: str, option: str) -> str:
    url = base_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UnipoError(f"{option} must start with http:// or https://, got {base_url!r}")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def _parse_answer(raw: bytes, url: str) -> ChatResult:
    try:
        data = json.loads(raw)
        choice = data["choices"][0]
        text = (choice.get("message") or {}).get("content")
        if text is None:
            text = choice.get("text")  # a completions-style answer
        return ChatResult(text=text if text is not None else "", finish_reason=choice.get("finish_reason"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _RetryableError(f"malformed response from {url}: {raw[:200]!r}", transport=False) from None


class ChatClient:
    """Any server that implements ``POST /v1/chat/completions`` (OpenAI, vLLM, llama.cpp, TGI, ...)."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None,
                 concurrency: int = 4, timeout: float = 120.0, max_retries: int = 5,
                 backoff: float = 1.0, max_backoff: float = 60.0, max_rate_limited: int = 30,
                 temperature: float = 0.0, extra_body: dict[str, Any] | None = None,
                 max_consecutive_transport_failures: int = 8, labels: ClientLabels | None = None) -> None:
        self.labels = labels or ClientLabels()
        self.url = _chat_url(base_url, self.labels.url_option)
        self.model = model
        self.api_key_env = api_key_env
        self._api_key = _api_key_from_env(api_key_env, self.labels.key_option)
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_rate_limited = int(max_rate_limited)
        self.temperature = float(temperature)
        self.extra_body = dict(extra_body or {})
        self.max_consecutive_transport_failures = int(max_consecutive_transport_failures)
        self._stop = threading.Event()
        self._pause_until = 0.0
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.stats = {"requests": 0, "retries": 0, "rate_limited": 0}

    def describe(self) -> dict[str, Any]:
        """What to record in a run's metadata (never the key)."""
        return {"url": self.url, "model": self.model, "api_key_env": self.api_key_env,
                "concurrency": self.concurrency}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, {self.model!r})"

    def stop(self) -> None:
        """Ask workers to give up promptly (used on abort and Ctrl-C)."""
        self._stop.set()

    # -- one HTTP exchange ------------------------------------------------------------------------
    def _request(self, job: ChatJob) -> urllib.request.Request:
        body = {"model": self.model, "messages": job.messages, "max_tokens": job.max_tokens,
                "temperature": self.temperature, **self.extra_body}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers,
                                      method="POST")

    def _post(self, job: ChatJob) -> ChatResult:
        req = self._request(job)
        with self._lock:
            self.stats["requests"] += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except TimeoutError as exc:
            raise _RetryableError(f"timed out after {self.timeout:g}s ({self.url})") from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise _RetryableError(f"timed out after {self.timeout:g}s ({self.url})") from None
            raise _RetryableError(f"cannot reach {self.url}: {reason}") from None
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise _RetryableError(f"connection to {self.url} failed: {type(exc).__name__}: {exc}") from None
        return _parse_answer(raw, self.url)

    def _http_error(self, exc: urllib.error.HTTPError) -> Exception:
        """The exception to raise for an error status: retry, give up on this job, or stop the run."""
        status = exc.code
        try:
            detail = exc.read()[:300].decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - the body is only for the message
            detail = ""
        detail = self._redact(detail).strip()
        msg = f"HTTP {status} from {self.url}" + (f": {detail}" if detail else "")
        retry_after = parse_retry_after(exc.headers.get("Retry-After"))
        if status == 429:
            return _RetryableError(msg, retry_after=retry_after, rate_limited=True, transport=False)
        if status in _FATAL_STATUSES:
            labels = self.labels
            hint = (f" (check {labels.key_option})" if status in (401, 403) else
                    f" (check {labels.url_option} and {labels.model_option})")
            return ChatFatalError(msg + hint)
        if status in _RETRY_STATUSES or status >= 500:
            return _RetryableError(msg, retry_after=retry_after, transport=status >= 500)
        return _PermanentError(msg)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key.reveal(), "***") if self._api_key else text

    # -- one job with retries -----------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(max(0.0, seconds)):
            raise ChatStopped()

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

    def _pause_everyone(self, exc: _RetryableError, rate_limited: int) -> None:
        """The server asked us to slow down: every worker waits (``Retry-After``, else backoff)."""
        delay = exc.retry_after if exc.retry_after is not None else self._backoff_delay(min(rate_limited, 10))
        delay = min(delay, max(self.max_backoff, 1.0))
        with self._lock:
            self._pause_until = max(self._pause_until, time.monotonic() + delay)

    def run_job(self, job: ChatJob) -> ChatResult:
        """One request with retries; returns an error result when it keeps failing (never raises for that)."""
        failures = rate_limited = attempts = 0
        while True:
            if self._stop.is_set():
                raise ChatStopped()
            self._wait_for_pause()
            attempts += 1
            try:
                result = self._post(job)
                result.attempts = attempts
                return result
            except _PermanentError as exc:
                return ChatResult(error=str(exc), attempts=attempts)
            except _RetryableError as exc:
                if exc.rate_limited:
                    rate_limited += 1
                    with self._lock:
                        self.stats["rate_limited"] += 1
                    if rate_limited > self.max_rate_limited:
                        return ChatResult(error=f"still rate-limited after {rate_limited} tries: {exc}",
                                          attempts=attempts)
                    self._pause_everyone(exc, rate_limited)
                    continue
                failures += 1
                if failures > self.max_retries:
                    return ChatResult(error=f"failed after {attempts} attempts: {exc}", attempts=attempts,
                                      transport_error=exc.transport)
                with self._lock:
                    self.stats["retries"] += 1
                delay = exc.retry_after if exc.retry_after is not None else self._backoff_delay(failures - 1)
                self._sleep(min(delay, self.max_backoff))

    # -- many jobs, bounded concurrency -------------------------------------------------------------
    def stream(self, jobs: Iterable[ChatJob]) -> Iterator[tuple[int, ChatResult]]:
        """Run ``jobs`` with at most ``concurrency`` requests in flight; yield results as they complete.

        Raises :class:`ChatFatalError` on 401/403/404, or when ``max_consecutive_transport_failures``
        jobs in a row failed to reach the server (it is down: stop rather than fail every job).
        """
        self._stop.clear()
        it = iter(jobs)
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=self.labels.thread_prefix)
        pending: dict[Future, int] = {}
        consecutive = 0
        try:
            while True:
                self._fill(pool, pending, it)
                if not pending:
                    return
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    key = pending.pop(fut)
                    result = fut.result()  # ChatFatalError / ChatStopped propagate
                    consecutive = consecutive + 1 if result.error and result.transport_error else 0
                    yield key, result
                    self._check_reachable(consecutive, result)
        finally:
            self.stop()
            pool.shutdown(wait=True, cancel_futures=True)

    def _fill(self, pool: ThreadPoolExecutor, pending: dict[Future, int], jobs: Iterator[ChatJob]) -> None:
        """Submit jobs until ``2 × concurrency`` are queued or in flight (or none are left)."""
        while len(pending) < 2 * self.concurrency:
            job = next(jobs, None)
            if job is None:
                return
            pending[pool.submit(self.run_job, job)] = job.key

    def _check_reachable(self, consecutive: int, result: ChatResult) -> None:
        if consecutive >= self.max_consecutive_transport_failures > 0:
            when_down = f" {self.labels.when_down}" if self.labels.when_down else ""
            raise ChatFatalError(f"{consecutive} requests in a row could not reach {self.labels.server} "
                                 f"({result.error}); stopping.{when_down}")
