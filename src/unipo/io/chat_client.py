"""One client for OpenAI-compatible chat-completions servers, shared by ``unipo bridge`` (the editor) and
``unipo eval`` (the judge), on the official ``openai`` SDK.

The SDK does the HTTP: its timeouts (``timeout``), its retries (``max_retries``: timeouts, connection errors,
408, 409, 429 and 5xx, exponential backoff 0.5 s doubling to 8 s with jitter) and its ``Retry-After`` /
``retry-after-ms`` handling (a server-given delay up to 2 minutes is waited out before the retry). This module
adds what a run over many rows needs: at most ``concurrency`` requests in flight (a thread pool; the SDK's
sync client is thread-safe), per-job results instead of exceptions, a stop on 401/403/404 and when
``max_consecutive_transport_failures`` jobs in a row could not reach the server, and counts of requests,
retries and 429s (from httpx event hooks).

Where the server and key come from: ``base_url`` (the caller's ``--...-url``), else ``OPENAI_BASE_URL``; the key
from the environment variable the caller names (``--api-key-env``), else ``OPENAI_API_KEY``, else none (the
placeholder ``EMPTY`` is sent, as vLLM's docs do). The key is held in an object whose repr hides it, given
only to the SDK (which sends it in the ``Authorization`` header), and never appears in a repr, a log line, an
error message or an output file. Credentials inside the URL (``http://user:SECRET@host/v1``) are sent as
given but stored and logged with the user info removed (:mod:`unipo.io.urls`).

Every exception a request can raise ends as that job's failed :class:`ChatResult` with its reason (the
SDK's status and connection errors, a body that is not JSON or not a chat completion — the SDK raises
``json.JSONDecodeError`` or a validation error from its own parsing —, httpx's errors, anything else),
never the run; only 401/403/404 and a server that is down stop it (:class:`ChatFatalError`).

:class:`ChatJob` is one request, :class:`ChatResult` its answer (or the reason it failed);
:meth:`ChatClient.stream` yields ``(key, ChatResult)`` as results complete. :class:`ClientLabels` says how
error messages name the server and the command-line options that configure it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from unipo.errors import UnipoError
from unipo.io.urls import redact_url, url_secrets

__all__ = ["ChatClient", "ChatFatalError", "ChatJob", "ChatResult", "ChatStopped", "ClientLabels"]

#: what the SDK is given when no key is configured (it refuses an empty one); servers without auth ignore it
NO_KEY = "EMPTY"


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


def _api_key(env_name: str | None, option: str) -> _Secret | None:
    """The key held by ``env_name`` (unset: an error naming ``option``), else by ``OPENAI_API_KEY``."""
    if env_name:
        key = os.environ.get(env_name)
        if key is None:
            raise UnipoError(f"environment variable {env_name} (given by {option}) is not set")
    else:
        key = os.environ.get("OPENAI_API_KEY")
    return _Secret(key) if key else None


def _base_url(base_url: str | None, option: str) -> str:
    """``base_url``, else ``OPENAI_BASE_URL``, without a trailing ``/chat/completions``."""
    url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").strip().rstrip("/")
    if not url:
        raise UnipoError(f"no server: give {option} or set OPENAI_BASE_URL")
    if not url.startswith(("http://", "https://")):
        raise UnipoError(f"{option} must start with http:// or https://, got {url!r}")
    return url.removesuffix("/chat/completions")


class _Counter(threading.local):
    requests = 0


class ChatClient:
    """Any server that implements ``POST /v1/chat/completions`` (OpenAI, vLLM, llama.cpp, TGI, ...)."""

    def __init__(self, base_url: str | None, model: str, *, api_key_env: str | None = None,
                 concurrency: int = 4, timeout: float = 120.0, max_retries: int = 5, temperature: float = 0.0,
                 extra_body: dict[str, Any] | None = None, max_consecutive_transport_failures: int = 8,
                 labels: ClientLabels | None = None) -> None:
        self.labels = labels or ClientLabels()
        self._base_url = _base_url(base_url, self.labels.url_option)  # may hold credentials: only for the SDK
        self.base_url = redact_url(self._base_url)
        self.url = self.base_url + "/chat/completions"
        self._url_secrets = url_secrets(self._base_url)
        self.model = model
        self.api_key_env = api_key_env or ("OPENAI_API_KEY" if os.environ.get("OPENAI_API_KEY") else None)
        self._api_key = _api_key(api_key_env, self.labels.key_option)
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.temperature = float(temperature)
        self.extra_body = dict(extra_body or {})
        self.max_consecutive_transport_failures = int(max_consecutive_transport_failures)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._attempts = _Counter()
        self.stats = {"requests": 0, "retries": 0, "rate_limited": 0}

    def describe(self) -> dict[str, Any]:
        """What to record in a run's metadata (never the key)."""
        return {"url": self.url, "model": self.model, "api_key_env": self.api_key_env,
                "concurrency": self.concurrency}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, {self.model!r})"

    def stop(self) -> None:
        """Ask workers to give up promptly (used on abort and Ctrl-C): jobs not yet started are not sent."""
        self._stop.set()

    # -- the SDK client -----------------------------------------------------------------------------
    def _on_request(self, request: Any) -> None:
        self._attempts.requests += 1
        with self._lock:
            self.stats["requests"] += 1

    def _on_response(self, response: Any) -> None:
        if response.status_code == 429:
            with self._lock:
                self.stats["rate_limited"] += 1

    def _sdk(self) -> Any:
        """A fresh ``openai.OpenAI`` for one :meth:`stream` (closed at its end); the hooks count attempts."""
        import openai

        http = openai.DefaultHttpxClient(event_hooks={"request": [self._on_request],
                                                      "response": [self._on_response]})
        key = self._api_key.reveal() if self._api_key else NO_KEY
        return openai.OpenAI(base_url=self._base_url, api_key=key, timeout=self.timeout,
                             max_retries=self.max_retries, http_client=http)

    def _redact(self, text: str) -> str:
        """``text`` without the API key and the URL's credentials (an exception may quote either)."""
        for secret in ([self._api_key.reveal()] if self._api_key else []) + self._url_secrets:
            text = text.replace(secret, "***")
        return text

    # -- one job ------------------------------------------------------------------------------------
    def run_job(self, sdk: Any, job: ChatJob) -> ChatResult:
        """One request, retried by the SDK; an error result when it keeps failing (never raises for that).

        Raises :class:`ChatFatalError` on 401/403/404 and :class:`ChatStopped` when the run is stopping."""
        if self._stop.is_set():
            raise ChatStopped()
        self._attempts.requests = 0
        try:
            resp = sdk.chat.completions.create(model=self.model, messages=job.messages, max_tokens=job.max_tokens,
                                               temperature=self.temperature, extra_body=self.extra_body or None)
            result = self._answer(resp)
        except Exception as exc:  # noqa: BLE001 - sorted by _failure
            result = self._failure(exc)
        result.attempts = max(1, self._attempts.requests)
        with self._lock:
            self.stats["retries"] += result.attempts - 1
        if result.error and result.attempts > 1:
            result.error = f"failed after {result.attempts} attempts: {result.error}"
        return result

    def _answer(self, resp: Any) -> ChatResult:
        try:
            choice = resp.choices[0]
            text = choice.message.content
            return ChatResult(text=text if text is not None else "", finish_reason=choice.finish_reason)
        except (AttributeError, IndexError, TypeError, KeyError):
            return ChatResult(error=f"malformed response from {self.url}: {str(resp)[:200]!r}")

    def _failure(self, exc: Exception) -> ChatResult:
        """The result for an exception the SDK raised after its retries, or :class:`ChatFatalError`."""
        import openai

        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = self._redact(str(getattr(exc, "message", "") or "")[:300]).strip()
            msg = f"HTTP {status} from {self.url}" + (f": {detail}" if detail else "")
            if status in _FATAL_STATUSES:
                labels = self.labels
                hint = (f" (check {labels.key_option})" if status in (401, 403) else
                        f" (check {labels.url_option} and {labels.model_option})")
                raise ChatFatalError(msg + hint) from None
            return ChatResult(error=msg, transport_error=status >= 500)
        if isinstance(exc, openai.APITimeoutError):
            return ChatResult(error=f"timed out after {self.timeout:g}s ({self.url})", transport_error=True)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return ChatResult(error=f"cannot reach {self.url}: {self._redact(str(cause))[:200]}",
                              transport_error=True)
        return self._other_failure(exc, openai)

    def _other_failure(self, exc: Exception, openai: Any) -> ChatResult:
        """Any other exception: a body the SDK could not parse (``JSONDecodeError``, a validation error),
        httpx's own errors, or anything else: the job's failure, named by the exception's type."""
        import httpx

        detail = self._redact(f"{type(exc).__name__}: {exc}")[:200]
        if isinstance(exc, httpx.TransportError):
            return ChatResult(error=f"cannot reach {self.url}: {detail}", transport_error=True)
        if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError, openai.OpenAIError)):
            # json.JSONDecodeError and pydantic's ValidationError are ValueErrors
            return ChatResult(error=f"malformed response from {self.url}: {detail}")
        return ChatResult(error=f"request to {self.url} failed: {detail}")

    # -- many jobs, bounded concurrency -------------------------------------------------------------
    def stream(self, jobs: Iterable[ChatJob]) -> Iterator[tuple[int, ChatResult]]:
        """Run ``jobs`` with at most ``concurrency`` requests in flight; yield results as they complete.

        Raises :class:`ChatFatalError` on 401/403/404, or when ``max_consecutive_transport_failures``
        jobs in a row failed to reach the server (it is down: stop rather than fail every job).
        """
        self._stop.clear()
        it = iter(jobs)
        sdk = self._sdk()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=self.labels.thread_prefix)
        pending: dict[Future, int] = {}
        consecutive = 0
        try:
            while True:
                self._fill(pool, pending, it, sdk)
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
            sdk.close()

    def _fill(self, pool: ThreadPoolExecutor, pending: dict[Future, int], jobs: Iterator[ChatJob], sdk: Any) -> None:
        """Submit jobs until ``2 × concurrency`` are queued or in flight (or none are left)."""
        while len(pending) < 2 * self.concurrency:
            job = next(jobs, None)
            if job is None:
                return
            pending[pool.submit(self.run_job, sdk, job)] = job.key

    def _check_reachable(self, consecutive: int, result: ChatResult) -> None:
        if consecutive >= self.max_consecutive_transport_failures > 0:
            when_down = f" {self.labels.when_down}" if self.labels.when_down else ""
            raise ChatFatalError(f"{consecutive} requests in a row could not reach {self.labels.server} "
                                 f"({result.error}); stopping.{when_down}")
