"""``unipo bridge``: synthesise BMC's pseudo-winning responses (Jiang et al., ICLR 2025, §3.1).

Examples::

    # a local editor (a built-in name or a checkpoint directory), batched generation
    unipo bridge --data pairs.jsonl --out bridged.jsonl --editor smollm2-135m-instruct --style instruct

    # any OpenAI-compatible server; the key is read from the named environment variable
    unipo bridge --data pairs.jsonl --out bridged.jsonl --style qa \\
        --editor-url http://localhost:8000/v1 --editor-model my-70b --api-key-env MY_API_KEY

Rerunning the same command resumes; see docs/bridge.md. The options are the fields of
:mod:`unipo.bridge.config`; the flags are generated from them (:mod:`unipo.cli.args`).
"""

from __future__ import annotations

import argparse
import json
import os

from unipo.bridge.config import (
    BRIDGE_OPTIONS,
    BridgeArguments,
    BridgeRunArguments,
    EditorArguments,
    GenerationArguments,
    PromptArguments,
    ServerArguments,
)
from unipo.cli.args import add_command, to_dataclass
from unipo.errors import UnipoError


def register(subparsers) -> None:
    p = add_command(
        subparsers, "bridge", *BRIDGE_OPTIONS,
        help="BMC phase 1: an editor LLM minimally edits each losing response into a pseudo-winning one",
        description=(
            "BMC bridging (Jiang et al., ICLR 2025): for each pair (x, y_w, y_l) an editor LLM makes the "
            "minimal edit of y_l that fixes it, with y_w as the reference, giving (x, ~y_w, y_l). Pairs "
            "the editor answers 'None' are dropped. Results are appended as they complete; rerunning "
            "the same command resumes. Train with `unipo train --data OUT --variant bmc` (DPO-BMC) or "
            "`--variant dpo` (DPO-BC)."
        ),
    )
    p.set_defaults(func=run_bridge_command)


def _build_editor(ed: EditorArguments, gen: GenerationArguments, net: ServerArguments):
    from unipo.bridge.editors import LocalEditor, OpenAICompatEditor

    server = ed.editor_url or (None if ed.editor else os.environ.get("OPENAI_BASE_URL"))
    if bool(ed.editor) == bool(ed.editor_url) and not server:
        raise UnipoError("give exactly one of --editor (local model) or --editor-url (server; default: "
                         "OPENAI_BASE_URL)")
    if server:
        if not ed.editor_model:
            raise UnipoError("a server editor (--editor-url or OPENAI_BASE_URL) needs --editor-model (the model "
                             "name the server expects)")
        extra = None
        if net.extra_body:
            try:
                extra = json.loads(net.extra_body)
            except json.JSONDecodeError as exc:
                raise UnipoError(f"--extra-body is not valid JSON: {exc.msg}") from None
            if not isinstance(extra, dict):
                raise UnipoError("--extra-body must be a JSON object")
        return OpenAICompatEditor(
            server, ed.editor_model, api_key_env=ed.api_key_env, concurrency=net.concurrency,
            timeout=net.timeout, max_retries=net.max_retries, temperature=gen.temperature, extra_body=extra,
            max_consecutive_transport_failures=net.max_consecutive_failures,
        )
    return LocalEditor(ed.editor, batch_size=gen.batch_size, device=gen.device, dtype=gen.dtype,
                       temperature=gen.temperature)


def _load_tokenizer(name: str | None):
    if name is None:
        return None
    from unipo.bridge.editors import resolve_model_path
    from unipo.models.loading import load_tokenizer

    return load_tokenizer(str(resolve_model_path(name)))  # its files checked first: one line if damaged


def run_bridge_command(args: argparse.Namespace) -> int:
    """Entry point of ``unipo bridge``; returns the exit code (1 when some rows failed)."""
    from unipo.bridge.config import BridgeConfig, BridgeOptions
    from unipo.bridge.pipeline import run_bridge
    from unipo.bridge.prompts import get_template

    io = to_dataclass(args, BridgeArguments)
    ed, prompt = to_dataclass(args, EditorArguments), to_dataclass(args, PromptArguments)
    gen, net = to_dataclass(args, GenerationArguments), to_dataclass(args, ServerArguments)
    run = to_dataclass(args, BridgeRunArguments)
    template = get_template(prompt.style, prompt.template)
    for flag, value in (("limit", run.limit), ("max_new_tokens", gen.max_new_tokens),
                        ("batch_size", gen.batch_size), ("concurrency", net.concurrency)):
        if value is not None and value < 1:
            raise UnipoError(f"--{flag.replace('_', '-')} must be at least 1")
    editor = _build_editor(ed, gen, net)
    options = BridgeOptions(limit=run.limit, retry_failed=run.retry_failed, overwrite=run.overwrite,
                            on_invalid=run.on_invalid,
                            keep_truncated=gen.keep_truncated, max_new_tokens=gen.max_new_tokens, plot=run.plot)
    summary = run_bridge(BridgeConfig(io.data, io.out, editor, template, options=options,
                                      tokenizer=_load_tokenizer(run.tokenizer)))
    return 1 if summary["failed"] or summary["pending"] else 0
