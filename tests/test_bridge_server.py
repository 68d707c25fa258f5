"""``unipo bridge`` against a real chat-completions server on the loopback interface.

The server (tests/chat_server.py) answers from a tiny local model; knobs make it fail requests (500, 503,
429 + Retry-After), stall past the client's timeout, or die mid-run. Whatever happens, the output must
hold every row exactly once after the run is resumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chat_server import ChatServer
from tests.helpers import read_jsonl, write_jsonl
from unipo.bridge.config import BridgeConfig, BridgeOptions
from unipo.bridge.editors import EditorFatalError, OpenAICompatEditor
from unipo.bridge.pipeline import run_bridge
from unipo.bridge.prompts import get_template
from unipo.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-unipo-test-4f9c2b7e-do-not-log"


def make_rows(n: int, *, none: tuple[int, ...] = (), bad: tuple[int, ...] = (),
              always_500: tuple[int, ...] = ()) -> list[dict]:
    rows = []
    for i in range(1, n + 1):
        marker = ("[[none]]" if i in none else "[[bad-request]]" if i in bad
                  else "[[always-500]]" if i in always_500 else "")
        rows.append({"prompt": f"What is {i} + {i}?", "chosen": f"{i} + {i} = {2 * i}.",
                     "rejected": f"{i} + {i} = {2 * i + 1}. {marker}".strip()})
    return rows


def assert_each_row_once(out: Path, failed: Path, n: int, *, allow_failed: set[int] = frozenset()) -> None:
    """Every input row is in the output exactly once, or (only the allowed ones) recorded as not edited."""
    edited = [r["row"] for r in read_jsonl(out)]
    assert len(edited) == len(set(edited)), "a row was written twice"
    side = {}
    for rec in read_jsonl(failed):
        side[rec["row"]] = rec
    accounted = set(edited) | {r for r in side if r not in edited}
    assert accounted == set(range(1, n + 1)), f"lost rows: {set(range(1, n + 1)) - accounted}"
    for row, rec in side.items():
        if row not in edited and rec["status"] == "failed":
            assert row in allow_failed, f"row {row} failed: {rec['reason']}"


def editor_for(server_url: str, **kw) -> OpenAICompatEditor:
    return OpenAICompatEditor(server_url, "tiny", **kw)


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """A well-behaved server that requires an API key."""
    with ChatServer(tiny_model_dir, api_key=SECRET, work_s=0.05) as srv:
        yield srv


@pytest.mark.integration
def test_bounded_concurrency_none_and_bad_requests_key_never_written(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setenv("UNIPO_TEST_KEY", SECRET)
    rows = make_rows(14, none=(3, 9), bad=(5,))
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o.jsonl"
    before = dict(server.stats)
    rc = cli_main(["bridge", "--data", str(data), "--out", str(out), "--editor-url", server.url,
                   "--editor-model", "tiny", "--api-key-env", "UNIPO_TEST_KEY", "--style", "qa",
                   "--concurrency", "3", "--max-new-tokens", "8", "--keep-truncated"])
    captured = capsys.readouterr()
    assert rc == 1  # one row failed (400)
    s = json.loads((tmp_path / "o.summary.json").read_text())
    assert (s["rows_read"], s["dropped_none"], s["failed"], s["pending"]) == (14, 2, 1, 0)
    assert s["edited"] == 11 and s["edit_distance"]["unit"] == "whitespace"
    assert_each_row_once(out, tmp_path / "o.failed.jsonl", 14, allow_failed={5})
    side = {r["row"]: r for r in read_jsonl(tmp_path / "o.failed.jsonl")}
    assert side[3]["status"] == side[9]["status"] == "dropped"
    assert "HTTP 400" in side[5]["reason"] and side[5]["attempts"] == 1  # a 400 is not retried
    for r in read_jsonl(out):
        assert r["rejected"] == rows[r["row"] - 1]["rejected"]
        assert r["original_chosen"] == rows[r["row"] - 1]["chosen"]
    # the bound on requests in flight held, and requests did overlap
    assert 2 <= server.stats["max_in_flight"] <= 3
    assert server.stats["requests"] - before["requests"] == 14
    assert server.stats["auth_headers"][-1] == f"Bearer {SECRET}"
    # the key reached the server but appears in no output, sidecar, log or message
    for f in tmp_path.iterdir():
        if f.suffix in (".jsonl", ".json"):
            assert SECRET not in f.read_text(), f.name
    assert SECRET not in captured.out + captured.err
    assert SECRET not in repr(editor_for(server.url, api_key_env="UNIPO_TEST_KEY").__dict__)


@pytest.mark.integration
def test_wrong_key_stops_the_run_without_recording_rows(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setenv("UNIPO_TEST_KEY", "wrong-key")
    data = write_jsonl(tmp_path / "in.jsonl", make_rows(4))
    rc = cli_main(["bridge", "--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--editor-url",
                   server.url, "--editor-model", "tiny", "--api-key-env", "UNIPO_TEST_KEY"])
    err = capsys.readouterr().err
    assert rc == 2 and "HTTP 401" in err and "wrong-key" not in err
    assert read_jsonl(tmp_path / "o.jsonl") == [] and read_jsonl(tmp_path / "o.failed.jsonl") == []


@pytest.mark.slow  # waits out stalls, Retry-After and backoffs by design (5–7 s of wall time, mostly idle)
def test_flaky_server_retries_5xx_timeouts_and_honours_429(tmp_path, tiny_model_dir):
    n = 16
    data = write_jsonl(tmp_path / "in.jsonl", make_rows(n, always_500=(7,)))
    out = tmp_path / "o.jsonl"
    with ChatServer(tiny_model_dir, fail_rate=0.35, fail_statuses=(500, 503, 429), retry_after=0.3,
                    delay_rate=0.1, delay_s=3.0, seed=1) as srv:
        # timeout 2 s against 3 s stalls: tripped by the stalls, not by a loaded machine's slow answers
        ed = editor_for(srv.url, concurrency=4, timeout=2.0, max_retries=8)
        t0 = time.monotonic()
        s = run_bridge(BridgeConfig(data, out, ed, get_template("qa"),
                                    options=BridgeOptions(max_new_tokens=8, keep_truncated=True)),
                       log=quiet)
        elapsed = time.monotonic() - t0
        codes = srv.stats["statuses"]
        assert codes.get("500", 0) + codes.get("503", 0) > 0 and codes.get("429", 0) > 0
        assert ed.stats["rate_limited"] > 0 and ed.stats["retries"] > 0
        assert elapsed >= 0.3  # at least one Retry-After was waited out
        # the row that always fails is recorded after max_retries + 1 attempts; all others are edited
        assert (s["edited"], s["failed"], s["pending"]) == (n - 1, 1, 0)
        side = read_jsonl(tmp_path / "o.failed.jsonl")
        assert side[0]["row"] == 7 and side[0]["attempts"] == 9 and "HTTP 500" in side[0]["reason"]
        assert_each_row_once(out, tmp_path / "o.failed.jsonl", n, allow_failed={7})

        # --retry-failed redoes exactly that row (still failing) and nothing else
        requests_before = srv.stats["requests"]
        s2 = run_bridge(BridgeConfig(data, out, editor_for(srv.url, max_retries=1), get_template("qa"),
                                     options=BridgeOptions(max_new_tokens=8, keep_truncated=True, retry_failed=True)),
                        log=quiet)
        assert s2["this_run"]["failed"] == 1 and s2["this_run"]["edited"] == 0
        assert srv.stats["requests"] - requests_before >= 2  # 1 + 1 retry (+ injected failures)
        assert_each_row_once(out, tmp_path / "o.failed.jsonl", n, allow_failed={7})


@pytest.mark.slow  # waits out stalls, Retry-After and backoffs by design (5–7 s of wall time, mostly idle)
def test_server_gone_mid_run_stops_the_run_then_resume_completes(tmp_path, tiny_model_dir):
    """In this process: from its 9th request on the server drops every connection unanswered; the run stops
    with a clear error after 3 transport failures in a row, keeping what was answered before; once the
    server answers again a rerun (--retry-failed) edits exactly the rest. (A server PROCESS that dies is the
    slow-tier test_server_killed_mid_run_then_resumed.)"""
    n = 16
    data = write_jsonl(tmp_path / "in.jsonl", make_rows(n))
    out = tmp_path / "o.jsonl"
    with ChatServer(tiny_model_dir, die_after=9) as srv:
        with pytest.raises(EditorFatalError, match="could not reach the editor"):
            run_bridge(BridgeConfig(data, out, editor_for(srv.url, concurrency=2, max_retries=2,
                                                          max_consecutive_transport_failures=3), get_template("qa"),
                                    options=BridgeOptions(max_new_tokens=8, keep_truncated=True)),
                       log=quiet)
        edited_before = {r["row"] for r in read_jsonl(out)}
        assert 4 <= len(edited_before) <= 8  # requests 1-8 were answered
        summary = json.loads((tmp_path / "o.summary.json").read_text())
        assert summary["pending"] > 0 and summary["edited"] == len(edited_before)

        srv.die_after = None  # the server is back
        served_before = srv.stats["requests"]
        s = run_bridge(BridgeConfig(data, out, editor_for(srv.url, concurrency=2), get_template("qa"),
                                    options=BridgeOptions(max_new_tokens=8, keep_truncated=True, retry_failed=True)),
                       log=quiet)
        assert srv.stats["requests"] - served_before == n - len(edited_before)  # nothing asked twice
    assert (s["edited"], s["failed"], s["pending"]) == (n, 0, 0)
    assert s["this_run"]["edited"] == n - len(edited_before)
    assert_each_row_once(out, tmp_path / "o.failed.jsonl", n)


class InterruptedEditor(OpenAICompatEditor):
    """Interrupted (Ctrl-C) once ``after`` results have come back, with more requests in flight."""

    def __init__(self, *args, after: int, **kw):
        super().__init__(*args, **kw)
        self.after = after

    def edit_stream(self, jobs):
        for i, item in enumerate(super().edit_stream(jobs)):
            if i == self.after:
                raise KeyboardInterrupt
            yield item


@pytest.mark.integration
def test_interrupted_run_with_a_torn_last_line_resumes_each_row_once(tmp_path, tiny_model_dir):
    """In this process: the run is interrupted after 5 rows came back (2 more in flight) and its output ends in
    a torn line, as a kill mid-write leaves it; the same call then edits exactly the rows not written. (The
    SIGKILL of a `unipo bridge` process is the slow-tier test_bridge_process_killed_mid_run_resumes.)"""
    n = 12
    data = write_jsonl(tmp_path / "in.jsonl", make_rows(n))
    out = tmp_path / "o.jsonl"
    opts = BridgeOptions(max_new_tokens=8, keep_truncated=True)
    with ChatServer(tiny_model_dir) as srv:
        ed = InterruptedEditor(srv.url, "tiny", concurrency=2, after=5)
        with pytest.raises(KeyboardInterrupt):
            run_bridge(BridgeConfig(data, out, ed, get_template("qa"), options=opts), log=quiet)
        done_before = len(read_jsonl(out))
        assert done_before == 5
        first = out.read_text(encoding="utf-8").splitlines()[0]
        with out.open("a", encoding="utf-8") as f:
            f.write(first[: len(first) // 2])  # killed while writing a row: no newline
        time.sleep(0.3)  # let the requests in flight at the interruption reach the server
        served_before = srv.stats["requests"]
        messages: list[str] = []
        s = run_bridge(BridgeConfig(data, out, editor_for(srv.url, concurrency=2), get_template("qa"),
                                    options=opts),
                       log=messages.append)
        assert f"{n} rows read, {done_before} already done, {n - done_before} to edit" in messages[0]
        assert srv.stats["requests"] - served_before == n - done_before
    assert (s["edited"], s["pending"]) == (n, 0)
    assert_each_row_once(out, tmp_path / "o.failed.jsonl", n)
    assert len(read_jsonl(out)) == n


def _start_server_process(model_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "chat_server.py"), "--model", str(model_dir), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, line.split()[1]


@pytest.mark.slow
def test_server_killed_mid_run_then_resumed(tmp_path, tiny_model_dir):
    """The server process dies on its 9th request; the run stops; rerun resumes and completes."""
    n = 24
    data = write_jsonl(tmp_path / "in.jsonl", make_rows(n))
    out = tmp_path / "o.jsonl"
    opts = BridgeOptions(max_new_tokens=8, keep_truncated=True)
    proc, url = _start_server_process(tiny_model_dir, "--die-after", "9")
    try:
        with pytest.raises(EditorFatalError, match="could not reach the editor"):
            run_bridge(BridgeConfig(data, out, editor_for(url, concurrency=2, max_retries=2,
                                                          max_consecutive_transport_failures=3), get_template("qa"),
                                    options=opts),
                       log=quiet)
        assert proc.wait(timeout=10) == 3  # it died
    finally:
        proc.kill()
    edited_before = {r["row"] for r in read_jsonl(out)}
    assert 4 <= len(edited_before) <= 8
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    assert summary["pending"] > 0 and summary["edited"] == len(edited_before)

    # the server comes back on the same port; rerun with --retry-failed
    port = url.rsplit(":", 1)[1].split("/")[0]
    proc2, url2 = _start_server_process(tiny_model_dir, "--port", port)
    try:
        s = run_bridge(BridgeConfig(data, out, editor_for(url2, concurrency=2), get_template("qa"),
                                    options=BridgeOptions(max_new_tokens=8, keep_truncated=True, retry_failed=True)),
                       log=quiet)
    finally:
        proc2.kill()
        proc2.wait()
    assert (s["edited"], s["failed"], s["pending"]) == (n, 0, 0)
    assert s["this_run"]["edited"] == n - len(edited_before)  # nothing done twice
    assert_each_row_once(out, tmp_path / "o.failed.jsonl", n)


@pytest.mark.slow
def test_bridge_process_killed_mid_run_resumes(tmp_path, tiny_model_dir):
    """``unipo bridge`` is SIGKILLed mid-run; the same command finishes the job, every row exactly once."""
    n = 20
    data = write_jsonl(tmp_path / "in.jsonl", make_rows(n))
    out = tmp_path / "o.jsonl"
    with ChatServer(tiny_model_dir, work_s=0.25) as srv:
        cmd = [sys.executable, "-m", "unipo", "bridge", "--data", str(data), "--out", str(out),
               "--editor-url", srv.url, "--editor-model", "tiny", "--concurrency", "2",
               "--max-new-tokens", "8", "--keep-truncated", "--no-plot"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while len(read_jsonl(out)) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = len(read_jsonl(out))
        assert 5 <= done_before < n
        time.sleep(0.5)  # let the server count any request the client sent just before it died
        served_before = srv.stats["requests"]

        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
                            timeout=120)
        assert rc.returncode == 0, rc.stderr
        assert f"{n} rows read, {done_before} already done, {n - done_before} to edit" in rc.stderr
        # only the rows not written before the kill were requested again (at most the 2 in flight
        # at the kill were answered but lost, and are redone)
        assert srv.stats["requests"] - served_before == n - done_before
    assert_each_row_once(out, tmp_path / "o.failed.jsonl", n)
    assert len(read_jsonl(out)) == n
