"""The resumable-pipeline skeleton (unipo.io.resumable) on a toy pipeline: resume with each row once,
an interruption still writes the summary, settings are checked only when there are results, overwrite."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from unipo.errors import UnipoError
from unipo.io.chat_client import ChatClient
from unipo.io.files import read_jsonl_repairing
from unipo.io.resumable import ResumablePipeline, RunFiles

pytestmark = pytest.mark.unit


@dataclass
class Item:
    row: int


class Squares(ResumablePipeline[Item]):
    """Squares rows 1..n into OUT; odd multiples of 5 go to OUT.skipped.jsonl."""

    command = "squares"

    def __init__(self, out: Path, n: int, *, setting: str = "a", fail_at: int | None = None,
                 overwrite: bool = False) -> None:
        self.paths = {"out": out, "skipped": out.with_suffix(".skipped.jsonl"), "meta": out.with_suffix(".meta.json"),
                      "summary": out.with_suffix(".summary.json"), "lock": out.with_suffix(".lock")}
        files = RunFiles(lock=self.paths["lock"], meta=self.paths["meta"],
                         appended={"out": out, "skipped": self.paths["skipped"]},
                         outputs=[self.paths[k] for k in ("out", "skipped", "meta", "summary")])
        self.messages: list[str] = []
        super().__init__(files, overwrite=overwrite, log=self.messages.append)
        self.n, self.setting, self.fail_at = n, setting, fail_at
        self.requested: list[int] = []
        self.stopped = self.prepared = False

    def load(self):
        return [Item(i) for i in range(1, self.n + 1)]

    def settings(self, items):
        return {"setting": self.setting}

    def check_resume(self, old, new):
        if old.get("setting") != new["setting"]:
            raise UnipoError("other settings")

    def done_rows(self):
        return {r["row"] for name in ("out", "skipped") for r in self._read(name)}

    def start_message(self, total, pending):
        return f"{total} rows, {pending} to do"

    def prepare(self, pending, meta):
        self.prepared = True
        meta["prepared_for"] = len(pending)

    def results(self, pending):
        for item in pending:
            self.requested.append(item.row)
            yield ("skipped" if item.row % 10 == 5 else "out"), {"row": item.row, "square": item.row ** 2}

    def written(self, name, record, progress):
        assert progress.done <= progress.total
        if record["row"] == self.fail_at:
            raise KeyboardInterrupt

    def stop(self):
        self.stopped = True

    def summarize(self, items, meta, elapsed):
        summary = {"out": len(self._read("out")), "skipped": len(self._read("skipped")), "rows": len(items)}
        self.paths["summary"].write_text(json.dumps(summary))
        return summary

    def format_summary(self, summary):
        return f"summary {summary}"

    def _read(self, name):
        return read_jsonl_repairing(self.paths[name], invalid_hint="", log=self.messages.append)


def test_interrupted_run_writes_its_summary_and_resumes_each_row_once(tmp_path):
    out = tmp_path / "o.jsonl"
    first = Squares(out, 20, fail_at=7)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert first.stopped and first.requested == list(range(1, 8))
    assert json.loads(first.paths["summary"].read_text()) == {"out": 6, "skipped": 1, "rows": 20}
    assert json.loads(first.paths["meta"].read_text()) == {"setting": "a", "prepared_for": 20}
    with open(out, "a") as fh:  # a line cut short by a kill
        fh.write('{"row": 8, "squ')

    second = Squares(out, 20)
    assert second.run() == {"out": 18, "skipped": 2, "rows": 20}
    assert second.requested == list(range(8, 21)) and "20 rows, 13 to do" in second.messages
    rows = [r["row"] for r in second._read("out")] + [r["row"] for r in second._read("skipped")]
    assert sorted(rows) == list(range(1, 21))

    third = Squares(out, 20)  # nothing to do: no preparation, the meta file stays as it was
    third.run()
    assert third.requested == [] and not third.prepared
    assert json.loads(third.paths["meta"].read_text())["prepared_for"] == 13


def test_settings_are_checked_only_against_results_and_overwrite_starts_again(tmp_path):
    out = tmp_path / "o.jsonl"
    Squares(out, 3).run()
    with pytest.raises(UnipoError, match="other settings"):
        Squares(out, 3, setting="b").run()
    again = Squares(out, 3, setting="b", overwrite=True)
    assert again.run()["out"] == 3 and again.requested == [1, 2, 3]
    # a meta file without results (a run killed before its first row) does not block other settings
    for name in ("out", "skipped"):
        again.paths[name].unlink(missing_ok=True)
    assert Squares(out, 3, setting="c").run()["out"] == 3
    # results without a meta file: resumed by row number, with a warning
    again.paths["meta"].unlink()
    warned = Squares(out, 4)
    warned.run()
    assert warned.requested == [4] and any("without o.meta.json" in m for m in warned.messages)


def test_lock_refuses_a_second_run(tmp_path):
    out = tmp_path / "o.jsonl"

    class Nested(Squares):
        def results(self, pending):
            with pytest.raises(UnipoError, match=r"another `squares` \(pid [0-9]+ on .*\) is writing"):
                Squares(out, 1).run()
            yield from super().results(pending)

    assert Nested(out, 2).run()["out"] == 2


def test_chat_client_messages_name_the_callers_options(monkeypatch):
    from unipo.bridge.editors import OpenAICompatEditor
    from unipo.eval.judge import JUDGE_LABELS

    with pytest.raises(UnipoError, match="--judge-url must start with http"):
        ChatClient("ftp://host/v1", "m", labels=JUDGE_LABELS)
    with pytest.raises(UnipoError, match="--editor-url must start with http"):
        OpenAICompatEditor("host/v1", "m")
    monkeypatch.delenv("UNIPO_TEST_UNSET_KEY", raising=False)
    with pytest.raises(UnipoError, match="UNIPO_TEST_UNSET_KEY \\(given by --api-key-env\\) is not set"):
        ChatClient("http://127.0.0.1:9/v1", "m", api_key_env="UNIPO_TEST_UNSET_KEY")
    monkeypatch.setenv("UNIPO_TEST_KEY", "sk-secret-value")
    client = ChatClient("http://127.0.0.1:9/v1/", "m", api_key_env="UNIPO_TEST_KEY")
    assert client.url == "http://127.0.0.1:9/v1/chat/completions"
    assert "sk-secret-value" not in repr(client) + repr(client.__dict__) + json.dumps(client.describe())


def test_chat_client_falls_back_to_the_openai_environment(monkeypatch):
    """OPENAI_BASE_URL / OPENAI_API_KEY serve when no URL / key variable is given; an explicit one wins."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UnipoError, match="no server: give --url or set OPENAI_BASE_URL"):
        ChatClient(None, "m")
    assert ChatClient("http://h/v1", "m")._api_key is None
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env-host:8000/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("UNIPO_TEST_KEY", "sk-explicit")
    client = ChatClient(None, "m")
    assert client.url == "http://env-host:8000/v1/chat/completions" and client._api_key.reveal() == "sk-from-env"
    assert client.describe()["api_key_env"] == "OPENAI_API_KEY"
    assert "sk-from-env" not in repr(client.__dict__) + json.dumps(client.describe())
    explicit = ChatClient("http://other/v1", "m", api_key_env="UNIPO_TEST_KEY")
    assert explicit.url == "http://other/v1/chat/completions" and explicit._api_key.reveal() == "sk-explicit"
