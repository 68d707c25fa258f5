"""Plain helpers shared by several test modules (fixtures live in conftest.py).

Test modules import from here, never from one another: a test module is collected by pytest, and
importing it elsewhere would collect and run its tests twice under two names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

#: 12 arithmetic preference pairs: the training data of the end-to-end tests
ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1} maybe"} for i in range(12)]


def write_jsonl(path: Path, rows) -> Path:
    """One line per row: a dict is written as JSON, a str as it is (to write malformed lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Every non-blank line as JSON; an absent file reads as no rows."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_args(model, data, out, *extra) -> list[str]:
    """``unipo train`` arguments for a 2-step run on the tiny model (``extra`` overrides, last one wins)."""
    return ["train", "--model", str(model), "--data", str(data), "--output-dir", str(out), "--max-steps", "2",
            "--per-device-batch-size", "4", "--learning-rate", "1e-3", "--no-progress", *extra]


def examples() -> list[dict]:
    """Four tokenised pairs of different lengths (14, 12, 10 and 4 tokens), random ids from a fixed seed."""
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=g).tolist()

    return [
        {"prompt_ids": ids(5), "chosen_ids": ids(3), "rejected_ids": ids(6)},
        {"prompt_ids": ids(9), "chosen_ids": ids(1), "rejected_ids": ids(2)},
        {"prompt_ids": ids(2), "chosen_ids": ids(7), "rejected_ids": ids(1)},
        {"prompt_ids": ids(1), "chosen_ids": ids(2), "rejected_ids": ids(1)},  # short: packs beside another
    ]


def naive_logps(model, prompt, response):
    """Ground truth: one unpadded sequence, full logits, log_softmax, gather."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].float()
    logp = F.log_softmax(logits, -1)
    return torch.stack([logp[len(prompt) - 1 + j, t] for j, t in enumerate(response)])



def text_length(prompt: str, response: str) -> float:
    """A ``unipo iterate --verifier`` for the tiny random model: the response's length in characters (its
    samples differ in it, so every prompt has a signal)."""
    return float(len(response))


def fails_on_undecodable(prompt: str, response: str) -> float:
    """A verifier that raises on a response holding an undecodable byte (U+FFFD; the tiny model writes many),
    recorded as a failed sample, and scores the others by a checksum of their characters (varied)."""
    if "\ufffd" in response:
        raise ValueError("undecodable byte")
    return float(sum(map(ord, response)) % 7)


def short_hh_pairs(out: Path, n: int) -> Path:
    """The first ``n`` short real HH-RLHF pairs (both responses under 600 characters, the chosen one ending a
    sentence) of the committed slice (tests/data), written to ``out`` as JSONL: the slow tier's real data."""
    import gzip

    from tests.conftest import HH_FILE

    rows = []
    with gzip.open(HH_FILE, "rt") as f:
        for line in f:
            row = json.loads(line)
            if len(row["chosen"]) < 600 and len(row["rejected"]) < 600 and row["chosen"].strip().endswith(
                    tuple(".!?")):
                rows.append(row)
            if len(rows) == n:
                break
    assert len(rows) == n, f"{HH_FILE}: fewer than {n} short pairs"
    return write_jsonl(out, rows)


def train_two_steps_on_smollm2(data: Path, out: Path, variant: str, *extra: str) -> list[dict]:
    """``unipo train`` for 2 steps of 4 pairs on the built-in SmolLM2 (the slow tier's per-variant check):
    asserts it exits 0 with two finite logged losses and returns the logged records."""
    import math

    from unipo.cli import main

    rc = main(["train", "--data", str(data), "--output-dir", str(out), "--variant", variant, "--max-steps", "2",
               "--per-device-batch-size", "4", "--max-length", "256", "--max-prompt-length", "192",
               "--learning-rate", "1e-5", "--no-progress", "--set", "plots=false", *extra])
    assert rc == 0
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    return history


class CPUAccelerator:
    """The few accelerator methods TRL's loss code calls, for one CPU process (TRL parity tests)."""

    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    @staticmethod
    def gather_for_metrics(x):
        return x

    @staticmethod
    def unwrap_model(m):
        return m

    @staticmethod
    def autocast():
        import contextlib

        return contextlib.nullcontext()


def moved_policy_and_batch(model_dir: Path, rows: list[dict], *, seed: int, scale: float):
    """(the tiny policy moved away from its reference by ``scale``·N(0, 1) noise, so that pairs' losses differ; the
    reference, a frozen copy; a packed batch of ``rows``), for step-level tests of a variant on a model."""
    from unipo.data.tokenize import prepare_pairs
    from unipo.layout import PackedBatch
    from unipo.models.loading import load_model
    from unipo.testing import make_tiny_tokenizer
    from unipo.training.collate import collate_for
    from unipo.training.reference import Reference

    tok = make_tiny_tokenizer()
    policy = load_model(str(model_dir), trainable=False)
    reference = Reference("copy", load_model(str(model_dir), trainable=False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    batch = PackedBatch.from_dict(collate_for(policy, tok.pad_token_id)(
        [p.to_dict() for p in prepare_pairs(rows, tok)[0]]))
    return policy, reference, batch


#: the end of every invalid-row error: the way out (issue 17, item 4)
WAY_OUT = "pass --on-invalid skip to drop such rows; they are counted in"
#: real HH-RLHF has pairs whose last assistant turn is blank
BLANK = {"prompt": "What is 1 + 1?", "chosen": "", "rejected": "3"}
GOOD = [{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
        {"prompt": "What is 3 + 3?", "chosen": "6", "rejected": "7"}]

#: what the tokenizers library raises on a full disk: its Rust I/O error as a plain Exception, not an OSError
DISK_FULL = "No space left on device (os error 28)"


def tokenizer_save_fails_in(monkeypatch, where):
    """The tokenizer's save into a directory for which ``where(dir)`` is true writes half a tokenizer.json,
    then raises the tokenizers library's plain Exception."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    real = TokenizersBackend._save_pretrained

    def save(self, save_directory, *args, **kwargs):
        if where(Path(save_directory)):
            Path(save_directory, "tokenizer.json").write_text('{"version": "1.0", "trunc')
            raise Exception(DISK_FULL)  # noqa: TRY002 - what the tokenizers library raises
        return real(self, save_directory, *args, **kwargs)

    monkeypatch.setattr(TokenizersBackend, "_save_pretrained", save)


def one_error_line(err: str, *needles: str) -> None:
    """``err`` holds exactly one ``: error:`` line, no traceback, and that line holds every one of ``needles``."""
    lines = [ln for ln in err.splitlines() if ": error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], err


def train_error_line(capsys) -> str:
    """The last ``unipo train: error:`` line on stderr (and no traceback there)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.startswith("unipo train: error:")][-1]
