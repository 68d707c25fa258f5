"""Labellers of ``unipo iterate``: a score per sampled response, or the reason it could not be scored.

- ``verifier``: a built-in task's checker (``--task arithmetic``: 1 when the reply is exactly the sum) or a
  user function ``--verifier module:function`` called as ``function(prompt_text, response_text)`` and
  returning a bool or a number; a call that raises records that sample as failed with the reason;
- ``implicit`` (DICE): the DPO implicit reward β·log(π_t/π_ref,t)(y) of the round's policy against its
  reference, from teacher-forced log-probabilities (Chen et al., "Bootstrapping Language Models with DPO
  Implicit Rewards", ICLR 2025, arXiv:2406.09760, §3; sail-sg/dice
  ``scripts/data_script/generate_dpo_scores.py``: score = logps_pi − logps_pi_ref). The length term
  −α·|y| is applied when pairing (:func:`unipo.iterate.pairs.dice_alpha`);
- ``reward-model``: a local sequence-classification checkpoint with one output;
- ``judge``: an OpenAI-compatible endpoint (:mod:`unipo.iterate.judge`).

Each labeller has ``check()`` (run before any sampling: a missing function, a model that is not a sequence
classifier, an unreachable judge fail there) and ``label(batch)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from unipo.errors import ConfigError, UnipoError

LABELS = ("verifier", "implicit", "reward-model", "judge")


@dataclass
class Labelled:
    """A sample's label: ``score`` (None when it failed) and the ``reason`` it failed."""

    score: float | None
    reason: str | None = None


@dataclass
class LabelBatch:
    """Samples to label: parallel lists (one entry per sample)."""

    prompt_texts: list[str]
    prompt_ids: list[list[int]]
    response_texts: list[str]
    response_ids: list[list[int]]


def _as_score(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"returned {value!r}, not a finite number")
    return score


class VerifierLabeller:
    """A built-in task's checker or a user's ``module:function``."""

    name = "verifier"

    def __init__(self, task: str | None, verifier: str | None) -> None:
        if not task and not verifier:
            raise ConfigError("--label verifier needs --task arithmetic or --verifier module:function")
        self.spec = verifier or f"task:{task}"
        self.fn = _import_function(verifier) if verifier else _task_verifier(task or "")

    def check(self) -> None:
        """The function was imported in the constructor."""

    def describe(self) -> dict[str, Any]:
        return {"label": self.name, "verifier": self.spec}

    def label(self, batch: LabelBatch) -> list[Labelled]:
        out = []
        for prompt, response in zip(batch.prompt_texts, batch.response_texts, strict=True):
            try:
                out.append(Labelled(_as_score(self.fn(prompt, response))))
            except Exception as exc:  # the user's code: any failure is this sample's, recorded with its reason
                out.append(Labelled(None, f"verifier {self.spec} raised {type(exc).__name__}: {exc}"))
        return out


def _import_function(spec: str) -> Callable[[str, str], Any]:
    from unipo.io.plugins import import_function

    return import_function(spec, "--verifier")


def _task_verifier(task: str, graded: bool = True) -> Callable[[str, str], float]:
    """The task's checker: its graded score for labelling (:func:`unipo.tasks.arithmetic.graded_score`), or
    the exact 0/1 verdict (``graded=False``) for the pass rate."""
    if task != "arithmetic":
        raise ConfigError(f"unknown task {task!r}; built-in tasks: arithmetic")
    from unipo.tasks.arithmetic import graded_score, parse_problem, verify

    def check(prompt: str, response: str) -> float:
        problem = parse_problem(prompt)
        if problem is None:
            raise ValueError("not an arithmetic prompt ('What is A + B?')")
        return graded_score(problem, response) if graded else float(verify(problem, response))

    return check


def task_pass(task: str) -> Callable[[str, str], float]:
    """The exact 0/1 verdict of a built-in task (what "pass rate" means in the report)."""
    return _task_verifier(task, graded=False)


class ImplicitLabeller:
    """DICE's implicit reward β·[log π(y|x) − log π_ref(y|x)]; ``set_models`` gives the round's pair."""

    name = "implicit"

    def __init__(self, beta: float, batch_size: int = 8) -> None:
        if beta <= 0:
            raise ConfigError("--implicit-beta must be positive")
        self.beta, self.batch_size = beta, batch_size
        self.policy = self.reference = self.tokenizer = None

    def set_models(self, policy: Any, reference: Any, tokenizer: Any) -> None:
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer

    def check(self) -> None:
        """Nothing to reach: the models come with each round."""

    def describe(self) -> dict[str, Any]:
        return {"label": self.name, "beta": self.beta}

    def label(self, batch: LabelBatch) -> list[Labelled]:
        from unipo.eval.generation import score_responses

        if self.policy is None:
            raise UnipoError("implicit labeller used before its models were set")
        pol = score_responses(self.policy, self.tokenizer, batch.prompt_ids, batch.response_ids,
                              batch_size=self.batch_size).sequence_logps()
        ref = score_responses(self.reference, self.tokenizer, batch.prompt_ids, batch.response_ids,
                              batch_size=self.batch_size).sequence_logps()
        return [Labelled(self.beta * float(p - r)) for p, r in zip(pol.tolist(), ref.tolist(), strict=True)]


class RewardModelLabeller:
    """A local sequence-classification reward model (one output, as TRL's RewardTrainer writes): the score of
    the conversation [user: prompt, assistant: response] under its tokenizer's chat template (or the
    prompt and response texts joined by a newline when it has none)."""

    name = "reward-model"

    def __init__(self, path: str, batch_size: int = 8) -> None:
        self.path, self.batch_size = path, batch_size
        self.model = self.tokenizer = None

    def describe(self) -> dict[str, Any]:
        return {"label": self.name, "reward_model": self.path}

    def check(self) -> None:
        """Load the model, refusing one that is not a sequence classifier with a single output."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        try:
            cfg = AutoConfig.from_pretrained(self.path)
        except OSError as exc:
            raise ConfigError(f"--reward-model {self.path!r}: cannot read its config ({exc})") from None
        archs = getattr(cfg, "architectures", None) or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ConfigError(f"--reward-model {self.path!r} is not a sequence classifier (architectures: "
                              f"{', '.join(archs) or 'none'}); give a checkpoint saved from "
                              f"AutoModelForSequenceClassification with one label (e.g. TRL's RewardTrainer)")
        if getattr(cfg, "num_labels", 1) != 1:
            raise ConfigError(f"--reward-model {self.path!r} has {cfg.num_labels} labels; a reward model has one")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def text(self, prompt: str, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(msgs, tokenize=False)
        return f"{prompt}\n{response}"

    @torch.no_grad()
    def label(self, batch: LabelBatch) -> list[Labelled]:
        if self.model is None:
            self.check()
        texts = [self.text(p, r) for p, r in zip(batch.prompt_texts, batch.response_texts, strict=True)]
        scores: list[float] = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[s:s + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                                 add_special_tokens=False)
            scores.extend(self.model(**enc).logits[:, 0].float().tolist())
        return [Labelled(s) for s in scores]


def make_labeller(label: str, *, task: str | None, verifier: str | None, reward_model: str | None,
                  implicit_beta: float, judge: dict[str, Any] | None, batch_size: int):
    """The labeller ``--label`` names, configured; unchecked (call ``check()``)."""
    if label == "verifier":
        return VerifierLabeller(task, verifier)
    if label == "implicit":
        return ImplicitLabeller(implicit_beta, batch_size)
    if label == "reward-model":
        if not reward_model:
            raise ConfigError("--label reward-model needs --reward-model DIR (a sequence-classification checkpoint)")
        return RewardModelLabeller(reward_model, batch_size)
    if label == "judge":
        from unipo.iterate.judge import JudgeLabeller

        if not judge or not judge.get("url") or not judge.get("model"):
            raise ConfigError("--label judge needs --judge-url URL and --judge-model NAME")
        return JudgeLabeller(**judge)
    raise ConfigError(f"--label must be one of {', '.join(LABELS)}, got {label!r}")
