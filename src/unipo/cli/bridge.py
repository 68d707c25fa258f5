"""``unipo bridge``: synthesise BMC's pseudo-winning responses (Jiang et al., ICLR 2025, §3.1).

Examples::

    # a local editor (a built-in name or a checkpoint directory), batched generation
    unipo bridge --data pairs.jsonl --out bridged.jsonl --editor smollm2-135m-instruct --style instruct

    # any OpenAI-compatible server; the key is read from the named environment variable
    unipo bridge --data pairs.jsonl --out bridged.jsonl --style qa \\
        --editor-url http://localhost:8000/v1 --editor-model my-70b --api-key-env MY_API_KEY

Rerunning the same command resumes; see docs/bridge.md.
"""

from __future__ import annotations

import argparse
import json

from unipo.errors import UnipoError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bridge",
        help="BMC phase 1: an editor LLM minimally edits each losing response into a pseudo-winning one",
        description=(
            "BMC bridging (Jiang et al., ICLR 2025): for each pair (x, y_w, y_l) an editor LLM makes the "
            "minimal edit of y_l that fixes it, with y_w as the reference, giving (x, ~y_w, y_l). Pairs "
            "the editor answers 'None' are dropped. Results are appended as they complete; rerunning "
            "the same command resumes. Train with `unipo train --data OUT --variant bmc` (DPO-BMC) or "
            "`--variant dpo` (DPO-BC)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="input preference pairs, JSONL(.gz): prompt/chosen/rejected "
                   "text, conversational messages, or Anthropic HH raw transcripts")
    p.add_argument("--out", required=True, help="output JSONL; sidecars OUT.failed.jsonl, OUT.meta.json, "
                   "OUT.summary.json, OUT.edit_distance.png sit next to it")
    ed = p.add_argument_group("editor (one of --editor or --editor-url)")
    ed.add_argument("--editor", help="local editor: a built-in model name (smollm2-135m-instruct) or a "
                    "checkpoint directory")
    ed.add_argument("--editor-url", help="base URL of an OpenAI-compatible API, e.g. http://host:8000/v1")
    ed.add_argument("--editor-model", help="model name to send to --editor-url")
    ed.add_argument("--api-key-env", default=None, metavar="VAR",
                    help="environment variable holding the API key (never logged or written)")
    pr = p.add_argument_group("prompt")
    pr.add_argument("--style", choices=["qa", "instruct"], default="instruct",
                    help="the paper's prompt: qa (QA/math: correct the prediction, or 'None') or instruct "
                         "(minimally revise response 2 toward response 1)")
    pr.add_argument("--template", default=None, metavar="FILE",
                    help="your own user-message template with {prompt}, {chosen}, {rejected}; a first line "
                         "'system: ...' sets the system message (overrides --style)")
    gen = p.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=None,
                     help="new-token limit per edit (default: 1.5 x the longer response + 64, at most 2048)")
    gen.add_argument("--keep-truncated", action="store_true",
                     help="keep edits that hit the token limit (default: record them as failed)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--batch-size", type=int, default=8, help="local editor: prompts per generate call")
    gen.add_argument("--device", default=None, help="local editor: cpu, cuda, ... (default: cuda if present)")
    gen.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                     help="local editor dtype (default: bfloat16 on GPU, float32 on CPU)")
    net = p.add_argument_group("server robustness (--editor-url)")
    net.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    net.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    net.add_argument("--max-retries", type=int, default=5,
                     help="retries on timeouts, connection errors and 5xx (429s are waited out separately)")
    net.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    net.add_argument("--max-backoff", type=float, default=60.0, help="longest delay between retries")
    net.add_argument("--max-consecutive-failures", type=int, default=8,
                     help="stop the run when this many rows in a row could not reach the server (0: never)")
    net.add_argument("--extra-body", default=None, metavar="JSON",
                     help="extra JSON fields for each request, e.g. '{\"top_p\": 1}'")
    run = p.add_argument_group("run")
    run.add_argument("--tokenizer", default=None,
                     help="tokenizer for the edit distance (default: the local editor's; whitespace words "
                          "for a server editor)")
    run.add_argument("--limit", type=int, default=None, help="only the first N rows")
    run.add_argument("--retry-failed", action="store_true", help="redo rows recorded as failed")
    run.add_argument("--overwrite", action="store_true", help="delete OUT and its sidecars and start again")
    run.add_argument("--no-plot", action="store_true", help="skip the histogram PNG")
    p.set_defaults(func=run_bridge_command)


def _build_editor(args):
    from unipo.bridge.editors import LocalEditor, OpenAICompatEditor

    if bool(args.editor) == bool(args.editor_url):
        raise UnipoError("give exactly one of --editor (local model) or --editor-url (server)")
    if args.editor_url:
        if not args.editor_model:
            raise UnipoError("--editor-url needs --editor-model (the model name the server expects)")
        extra = None
        if args.extra_body:
            try:
                extra = json.loads(args.extra_body)
            except json.JSONDecodeError as exc:
                raise UnipoError(f"--extra-body is not valid JSON: {exc.msg}") from None
            if not isinstance(extra, dict):
                raise UnipoError("--extra-body must be a JSON object")
        return OpenAICompatEditor(
            args.editor_url, args.editor_model, api_key_env=args.api_key_env, concurrency=args.concurrency,
            timeout=args.timeout, max_retries=args.max_retries, backoff=args.backoff,
            max_backoff=args.max_backoff, temperature=args.temperature, extra_body=extra,
            max_consecutive_transport_failures=args.max_consecutive_failures,
        )
    return LocalEditor(args.editor, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                       temperature=args.temperature)


def _load_tokenizer(name: str | None):
    if name is None:
        return None
    from transformers import AutoTokenizer

    from unipo.bridge.editors import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(name))


def run_bridge_command(args) -> int:
    """Entry point of ``unipo bridge``; returns the exit code (1 when some rows failed)."""
    from unipo.bridge.pipeline import BridgeOptions, run_bridge
    from unipo.bridge.prompts import get_template

    template = get_template(args.style, args.template)
    for flag in ("limit", "max_new_tokens", "batch_size", "concurrency"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UnipoError(f"--{flag.replace('_', '-')} must be at least 1")
    editor = _build_editor(args)
    options = BridgeOptions(limit=args.limit, retry_failed=args.retry_failed, overwrite=args.overwrite,
                            keep_truncated=args.keep_truncated, max_new_tokens=args.max_new_tokens,
                            plot=not args.no_plot)
    summary = run_bridge(args.data, args.out, editor, template, options=options,
                         tokenizer=_load_tokenizer(args.tokenizer))
    return 1 if summary["failed"] or summary["pending"] else 0
