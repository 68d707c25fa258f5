"""unipo.io.chat_client: the faults of the chat client that ``unipo bridge``, ``unipo eval``'s judge and
``unipo iterate``'s judge share (issue 23, items 0 and 9; docs/faults.md; was tests/test_faults_chat.py).

* A server answering status 200 with a body cut short mid-JSON (``{"choices": [{"message": ``): the openai
  SDK raises ``json.decoder.JSONDecodeError`` from its own response parsing. Every exception a request can
  raise must end as that row's recorded failure with its reason, never the run.
* Credentials inside a URL (``http://user:SECRET@host/v1``) reach the server but are written to no output,
  sidecar, summary, metadata or log line.
"""

from __future__ import annotations

import json

import pytest

from tests.chat_server import ChatServer
from tests.helpers import read_jsonl, write_jsonl
from unipo.cli import main as cli_main

PASSWORD = "pw-unipo-url-secret-7c1e"


def rows(n: int, truncated: tuple[int, ...] = ()) -> list[dict]:
    return [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}",
             "rejected": f"{2 * i + 1} maybe" + (" [[truncated]]" if i in truncated else "")}
            for i in range(1, n + 1)]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with ChatServer(tiny_model_dir, work_s=0.0, max_tokens_cap=4, truncate_every=4) as srv:
        yield srv


@pytest.mark.integration
def test_truncated_200_bodies_are_recorded_failures_not_a_crash(tmp_path, server, capsys):
    """Every 4th request is answered with a truncated 200 body: those rows are recorded as failed with the
    reason, the others are edited, the run ends with exit status 1 (some rows failed), and
    ``--retry-failed`` goes on from there (no traceback either time)."""
    data = write_jsonl(tmp_path / "in.jsonl", rows(8))
    out = tmp_path / "o.jsonl"
    args = ["bridge", "--data", str(data), "--out", str(out), "--editor-url", server.url, "--editor-model", "tiny",
            "--concurrency", "1", "--max-new-tokens", "4", "--keep-truncated", "--max-retries", "0", "--no-plot"]
    assert cli_main(args) == 1
    failed = [r for r in read_jsonl(tmp_path / "o.failed.jsonl") if r["status"] == "failed"]
    assert len(failed) == 2  # requests 4 and 8 of 8
    for rec in failed:
        assert "malformed response" in rec["reason"] and "JSON" in rec["reason"], rec
    assert len(read_jsonl(out)) == 6
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    assert (summary["edited"], summary["failed"], summary["pending"]) == (6, 2, 0)
    assert cli_main([*args, "--retry-failed"]) in (0, 1)  # the rerun asks again, whatever the server says
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.integration
def test_eval_judge_counts_a_truncated_answer_as_undecided(server):
    from unipo.eval.judge import JUDGE_LABELS, endpoint_verdicts
    from unipo.io.chat_client import ChatClient

    client = ChatClient(server.url, "tiny", labels=JUDGE_LABELS, max_retries=0, concurrency=1)
    prompts = ["q0 [[judge]]", "q1 [[judge]] [[truncated]]", "q2 [[judge]]"]
    v = endpoint_verdicts(client, prompts, ["POLICY 0", "POLICY 1", "POLICY 2"], ["r0", "r1", "r2"])
    assert v[1] == 0.5 and v[0] == v[2] == 1.0


@pytest.mark.integration
def test_iterate_judge_records_a_truncated_answer_as_that_sample_failing(server):
    from unipo.iterate.judge import JudgeLabeller
    from unipo.iterate.labels import LabelBatch

    lab = JudgeLabeller(server.url, "tiny", concurrency=1, max_retries=0)
    got = lab.label(LabelBatch(["q1", "q2 [[truncated]]"], [[]] * 2, ["a", "b"], [[]] * 2))
    assert got[1].score is None and "judge request failed: malformed response" in got[1].reason


@pytest.mark.integration
def test_sdk_validation_and_unexpected_exceptions_become_failures(server, monkeypatch):
    """Whatever the SDK call raises (here: a pydantic-style ValueError, httpx's own transport error, a
    RuntimeError) is the job's failure with the exception's type and message (httpx's counted as a
    transport failure: evidence the server is down)."""
    import httpx

    from unipo.io.chat_client import ChatClient, ChatJob

    client = ChatClient(server.url, "tiny", max_retries=0)
    sdk = client._sdk()
    try:
        for exc in (ValueError("1 validation error for ChatCompletion"), RuntimeError("boom inside the SDK"),
                    httpx.RemoteProtocolError("peer closed connection without sending complete message body")):
            def create(*_a, _exc=exc, **_k):
                raise _exc
            monkeypatch.setattr(sdk.chat.completions, "create", create)
            result = client.run_job(sdk, ChatJob(1, [{"role": "user", "content": "x"}], 4))
            assert result.error and type(exc).__name__ in result.error and str(exc) in result.error
            assert result.transport_error == isinstance(exc, httpx.TransportError)
    finally:
        sdk.close()


@pytest.mark.integration
def test_credentials_in_the_url_are_never_written_or_logged(tmp_path, tiny_model_dir, capsys):
    """``--editor-url http://user:SECRET@host/v1``: the request goes out, and the password is in no file the
    run writes and in nothing it prints; the stored URL keeps the host with the user info replaced."""
    with ChatServer(tiny_model_dir, work_s=0.0, max_tokens_cap=4) as srv:
        url = srv.url.replace("http://", f"http://alice:{PASSWORD}@")
        data = write_jsonl(tmp_path / "in.jsonl", rows(3, truncated=(2,)))
        cli_main(["bridge", "--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--editor-url", url,
                  "--editor-model", "tiny", "--max-new-tokens", "4", "--keep-truncated", "--max-retries", "0",
                  "--no-plot"])
        assert srv.stats["requests"] == 3
    captured = capsys.readouterr()
    written = {f.name: f.read_text() for f in tmp_path.iterdir() if f.is_file()}
    assert {"o.failed.jsonl", "o.meta.json", "o.summary.json"} <= set(written)
    for name, text in written.items():
        assert PASSWORD not in text, name
    assert PASSWORD not in captured.out + captured.err
    assert "http://***@127.0.0.1" in written["o.meta.json"]


@pytest.mark.unit
def test_credentials_in_a_url_are_redacted_in_errors_and_descriptions():
    from unipo.io.chat_client import ChatClient
    from unipo.io.urls import redact_url, url_secrets

    assert redact_url(f"https://bob:{PASSWORD}@api.example.com:8443/v1?x=1") == "https://***@api.example.com:8443/v1?x=1"
    assert redact_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert redact_url(f"http://{PASSWORD}@h/v1") == "http://***@h/v1"
    assert url_secrets(f"http://a:{PASSWORD}@h/v1")[-1] == PASSWORD  # the user "a" alone is not scrubbed
    assert "a" not in url_secrets("http://a:b@h/v1") and "a:b@" in url_secrets("http://a:b@h/v1")
    client = ChatClient(f"http://bob:{PASSWORD}@127.0.0.1:9/v1", "m", timeout=1, max_retries=0)
    assert PASSWORD not in repr(client) + json.dumps(client.describe()) + client.url
    from unipo.io.chat_client import ChatJob

    sdk = client._sdk()
    try:
        result = client.run_job(sdk, ChatJob(1, [{"role": "user", "content": "x"}], 4))
    finally:
        sdk.close()
    assert result.error and PASSWORD not in result.error and "cannot reach" in result.error


@pytest.mark.unit
def test_iterate_stores_the_judge_url_without_credentials():
    from unipo.iterate.config import IterateConfig

    cfg = IterateConfig(model="m", out="o", task="arithmetic", label="judge",
                        judge_url=f"http://u:{PASSWORD}@127.0.0.1:9/v1", judge_model="j")
    assert cfg.to_dict()["judge_url"] == "http://***@127.0.0.1:9/v1"


@pytest.mark.slow  # waits out 3-s stalls, Retry-After and backoffs by design
def test_the_issue_server_every_11th_answer_truncated_among_5xx_429_stalls_and_a_key(tmp_path, tiny_model_dir,
                                                                                   monkeypatch, capsys):
    """Issue 23's server: every 11th request answered 200 with a truncated body, besides 500s, 429s with
    Retry-After, 3-s stalls and a required key. Each run ends (no traceback), the truncated answers are
    recorded failures, and ``--retry-failed`` reruns end with every row edited exactly once."""
    key = "sk-issue-23-do-not-log"
    monkeypatch.setenv("UNIPO_TEST_KEY", key)
    n = 24
    data = write_jsonl(tmp_path / "in.jsonl", rows(n))
    out = tmp_path / "o.jsonl"
    args = ["bridge", "--data", str(data), "--out", str(out), "--editor-model", "tiny", "--api-key-env",
            "UNIPO_TEST_KEY", "--concurrency", "4", "--timeout", "2", "--max-retries", "8", "--max-new-tokens",
            "4", "--keep-truncated", "--no-plot"]
    with ChatServer(tiny_model_dir, api_key=key, fail_rate=0.2, fail_statuses=(500, 429), retry_after=0.2,
                    delay_rate=0.05, delay_s=3.0, truncate_every=11, max_tokens_cap=4, seed=5) as srv:
        args += ["--editor-url", srv.url]
        codes = [cli_main(args)]
        failed = [r for r in read_jsonl(tmp_path / "o.failed.jsonl") if r["status"] == "failed"]
        assert failed and all("malformed response" in r["reason"] for r in failed), failed
        while codes[-1] == 1 and len(codes) < 6:
            codes.append(cli_main([*args, "--retry-failed"]))
        assert codes[-1] == 0, codes
    edited = [r["row"] for r in read_jsonl(out)]
    assert sorted(edited) == list(range(1, n + 1))  # each row once
    err = capsys.readouterr().err  # (the test server's own threads may print tracebacks of dropped sockets)
    assert "src/unipo" not in err and "json.decoder" not in err and key not in err
