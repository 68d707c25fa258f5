"""A loopback OpenAI-compatible chat-completions server answering from a tiny local model (tests only).

``POST /v1/chat/completions`` renders the messages with the model's chat template and answers with
``generate`` (sampling seeded by the prompt: a random model's greedy output is blank). Knobs for
robustness tests:

* ``fail_rate`` / ``fail_statuses``: answer that fraction of requests with one of these statuses
  (429 responses carry ``Retry-After: retry_after``, 5xx ones ``Retry-After: retry_after_5xx`` unless it
  is None, so that the client's retries do not wait out its own backoff);
* ``delay_rate`` / ``delay_s``: sleep before answering (to trip client timeouts);
* ``die_after``: from the N-th request on, behave as a dead server: in a subprocess (``exit_on_die``) exit
  abruptly (``os._exit``) on receiving it; in-process, drop every connection unanswered (the client sees
  the connection closed, a transport failure) until ``die_after`` is set back to ``None``;
* markers in the user message: ``[[none]]`` answers "None", ``[[empty]]`` answers "",
  ``[[always-500]]`` always fails with 500, ``[[bad-request]]`` answers 400, ``[[judge]]`` answers "A" if
  the text between "Answer A:" and "Answer B:" contains "POLICY", else "B" (a judge that always prefers
  the policy);
* ``truncate_every``: answer every N-th request with status 200 and a body cut short mid-JSON
  (``TRUNCATED_BODY``, as a proxy or a server that died mid-write sends); the marker ``[[truncated]]``
  in the user message does the same for that request;
* ``api_key``: require ``Authorization: Bearer <api_key>`` (401 otherwise);
* ``GET /stats``: request counts and the largest number of requests in flight at once.

Use in-process (``ChatServer(...).start()``, a thread) or as a subprocess::

    python tests/chat_server.py --model DIR [--port 0] [--fail-rate 0.3] [--die-after 10]

which prints ``LISTENING http://127.0.0.1:PORT/v1`` once it serves.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: a 200 answer cut short: valid HTTP, invalid JSON (the SDK's own parsing raises JSONDecodeError)
TRUNCATED_BODY = b'{"choices": [{"message": '


class ChatServer:
    def __init__(self, model_dir: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                 fail_rate: float = 0.0, fail_statuses: tuple[int, ...] = (500,), retry_after: float = 0.2,
                 retry_after_5xx: float | None = 0.02,
                 delay_rate: float = 0.0, delay_s: float = 0.0, die_after: int | None = None,
                 exit_on_die: bool = False, api_key: str | None = None, seed: int = 0, work_s: float = 0.02,
                 max_tokens_cap: int = 24, truncate_every: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.fail_rate, self.fail_statuses, self.retry_after = fail_rate, tuple(fail_statuses), retry_after
        self.retry_after_5xx = retry_after_5xx
        self.delay_rate, self.delay_s, self.die_after, self.exit_on_die = delay_rate, delay_s, die_after, exit_on_die
        self.api_key, self.work_s, self.max_tokens_cap = api_key, work_s, max_tokens_cap
        self.truncate_every = truncate_every
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.gen_lock = threading.Lock()
        self.stats = {"requests": 0, "ok": 0, "failed": 0, "in_flight": 0, "max_in_flight": 0,
                      "statuses": {}, "auth_headers": []}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: dict | bytes, headers: dict | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/stats"):
                    with server.lock:
                        self._send(200, dict(server.stats))
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.stats["requests"] += 1
                    n = server.stats["requests"]
                    server.stats["in_flight"] += 1
                    server.stats["max_in_flight"] = max(server.stats["max_in_flight"],
                                                        server.stats["in_flight"])
                    server.stats["auth_headers"].append(self.headers.get("Authorization"))
                status: int | None = None
                try:
                    if server.die_after is not None and n >= server.die_after:
                        if server.exit_on_die:
                            os._exit(3)  # killed mid-run: no response, connection dropped
                        self.close_connection = True  # in-process: a thread cannot die; answer nothing
                        return
                    status, payload, headers = server.answer(self.path, body, self.headers, n)
                finally:
                    with server.lock:
                        server.stats["in_flight"] -= 1
                        codes = server.stats["statuses"]
                        codes[str(status)] = codes.get(str(status), 0) + 1
                        server.stats["ok" if status == 200 else "failed"] += 1
                self._send(status, payload, headers)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def answer(self, path: str, body: dict, headers, n: int = 0) -> tuple[int, dict | bytes, dict]:
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, {"error": {"message": f"unknown path {path}"}}, {}
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "invalid api key"}}, {}
        messages = body.get("messages") or []
        text = "\n".join(str(m.get("content", "")) for m in messages)
        with self.lock:
            roll, delay_roll = self.rng.random(), self.rng.random()
            status = self.rng.choice(self.fail_statuses) if self.fail_statuses else 500
        again = {} if self.retry_after_5xx is None else {"Retry-After": f"{self.retry_after_5xx:g}"}
        if "[[always-500]]" in text:
            return 500, {"error": {"message": "internal error (always)"}}, again
        if "[[bad-request]]" in text:
            return 400, {"error": {"message": "bad request"}}, {}
        if "[[truncated]]" in text or (self.truncate_every and n % self.truncate_every == 0):
            return 200, TRUNCATED_BODY, {}
        if roll < self.fail_rate:
            extra = {"Retry-After": f"{self.retry_after:g}"} if status == 429 else again if status >= 500 else {}
            return status, {"error": {"message": f"injected {status}"}}, extra
        if delay_roll < self.delay_rate:
            time.sleep(self.delay_s)
        time.sleep(self.work_s)  # so that concurrent requests overlap
        if "[[judge]]" in text:
            first = text.split("Answer A:", 1)[-1].split("Answer B:", 1)[0]
            content, finish = ("A" if "POLICY" in first else "B"), "stop"
        elif "[[none]]" in text:
            content, finish = "None", "stop"
        elif "[[empty]]" in text:
            content, finish = "", "stop"
        else:
            content, finish = self.generate(messages, int(body.get("max_tokens") or 16))
        return 200, {
            "id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model", "tiny"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish}],
        }, {}

    def generate(self, messages: list[dict], max_tokens: int) -> tuple[str, str]:
        import torch

        max_tokens = max(1, min(max_tokens, self.max_tokens_cap))
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids[:, -256:]
        # a random tiny model's greedy output is all newlines; sample instead, seeded by the prompt so
        # that the same request gets the same answer
        with self.gen_lock, torch.inference_mode():
            torch.manual_seed(zlib.crc32(prompt.encode("utf-8")))
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      do_sample=True, top_k=0, pad_token_id=self.tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "stop" if eos in new else "length"
        if eos in new:
            new = new[: new.index(eos)]
        return self.tokenizer.decode(new, skip_special_tokens=True), finish

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-statuses", default="500")
    p.add_argument("--retry-after", type=float, default=0.2)
    p.add_argument("--die-after", type=int, default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--work-s", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncate-every", type=int, default=None)
    a = p.parse_args(argv)
    server = ChatServer(a.model, port=a.port, fail_rate=a.fail_rate,
                        fail_statuses=tuple(int(s) for s in a.fail_statuses.split(",")),
                        retry_after=a.retry_after, die_after=a.die_after, exit_on_die=True, api_key=a.api_key,
                        work_s=a.work_s, seed=a.seed, truncate_every=a.truncate_every)
    print(f"LISTENING {server.url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
