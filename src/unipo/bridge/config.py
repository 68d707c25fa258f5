"""Options of ``unipo bridge``, as dataclasses; the flags and their help are generated from the fields.

One dataclass per group of the help. The CLI (:mod:`unipo.cli.bridge`) maps them to the editor
(:class:`~unipo.bridge.editors.LocalEditor` or :class:`~unipo.bridge.editors.OpenAICompatEditor`), the
template (:func:`~unipo.bridge.prompts.get_template`) and :class:`BridgeOptions`, and calls
:func:`~unipo.bridge.pipeline.run_bridge` with the :class:`BridgeConfig` holding them; the defaults are theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipo.bridge.prompts import STYLES, EditTemplate

if TYPE_CHECKING:
    from unipo.bridge.editors import Editor

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class BridgeArguments:
    """Input pairs and output file."""

    data: str = field(metadata={
        "help": "input preference pairs, JSONL(.gz): prompt/chosen/rejected text, conversational messages, or "
                "Anthropic HH raw transcripts"})
    out: str = field(metadata={
        "help": "output JSONL; sidecars OUT.failed.jsonl, OUT.meta.json, OUT.summary.json, OUT.edit_distance.png "
                "sit next to it"})


@dataclass
class EditorArguments:
    """The editor LLM: a local model or an OpenAI-compatible server."""

    _argument_group_name = "editor (one of --editor or --editor-url)"

    editor: str | None = field(default=None, metadata={
        "help": "local editor: a built-in model name (smollm2-135m-instruct) or a checkpoint directory"})
    editor_url: str | None = field(default=None, metadata={
        "help": "base URL of an OpenAI-compatible API, e.g. http://host:8000/v1 (without --editor: "
                "OPENAI_BASE_URL if set)"})
    editor_model: str | None = field(default=None, metadata={"help": "model name to send to --editor-url"})
    api_key_env: str | None = field(default=None, metadata={
        "help": "environment variable holding the API key (never logged or written; default OPENAI_API_KEY if "
                "set)", "metavar": "VAR"})


@dataclass
class PromptArguments:
    """The editing prompt."""

    _argument_group_name = "prompt"

    style: str = field(default="instruct", metadata={
        "help": "the paper's prompt: qa (QA/math: correct the prediction, or 'None') or instruct (minimally "
                "revise response 2 toward response 1)", "choices": tuple(STYLES)})
    template: str | None = field(default=None, metadata={
        "help": "your own user-message template with {prompt}, {chosen}, {rejected}; a first line 'system: ...' "
                "sets the system message (overrides --style)", "metavar": "FILE"})


@dataclass
class GenerationArguments:
    """How each edit is generated."""

    _argument_group_name = "generation"

    max_new_tokens: int | None = field(default=None, metadata={
        "help": "new-token limit per edit (null: 1.5 x the longer response + 64, at most 2048)"})
    keep_truncated: bool = field(default=False, metadata={
        "help": "keep edits that hit the token limit (false: record them as failed)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature; 0 = greedy"})
    batch_size: int = field(default=8, metadata={"help": "local editor: prompts per generate call"})
    device: str | None = field(default=None, metadata={
        "help": "local editor: cpu, cuda, ... (null: cuda if present)"})
    dtype: str | None = field(default=None, metadata={
        "help": "local editor dtype (null: bfloat16 on GPU, float32 on CPU)", "choices": DTYPES})


@dataclass
class ServerArguments:
    """Robustness against a server editor."""

    _argument_group_name = "server robustness (--editor-url)"

    concurrency: int = field(default=4, metadata={"help": "requests in flight at most"})
    timeout: float = field(default=120.0, metadata={"help": "seconds per request (the openai SDK's timeout)"})
    max_retries: int = field(default=5, metadata={
        "help": "the openai SDK's retries on timeouts, connection errors, 408, 409, 429 and 5xx (backoff 0.5 s "
                "doubling to 8 s, or the server's Retry-After up to 2 min)"})
    max_consecutive_failures: int = field(default=8, metadata={
        "help": "stop the run when this many rows in a row could not reach the server (0: never)"})
    extra_body: str | None = field(default=None, metadata={
        "help": "extra JSON fields for each request, e.g. '{\"top_p\": 1}'", "metavar": "JSON"})


@dataclass
class BridgeRunArguments:
    """What this run covers and writes."""

    _argument_group_name = "run"

    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer for the edit distance (null: the local editor's; whitespace words for a server "
                "editor)"})
    limit: int | None = field(default=None, metadata={"help": "only the first N rows"})
    on_invalid: str = field(default="error", metadata={
        "help": "a row that fails validation (e.g. a blank response, as real HH-RLHF has): error (stop, naming "
                "file, row and field) or skip (counted in OUT.summary.json: invalid, invalid_messages)",
        "choices": ("error", "skip")})
    retry_failed: bool = field(default=False, metadata={"help": "redo rows recorded as failed"})
    overwrite: bool = field(default=False, metadata={"help": "delete OUT and its sidecars and start again"})
    plot: bool = field(default=True, metadata={"help": "write the edit-distance histogram PNG"})


#: every option of ``unipo bridge``, in the order of the help
BRIDGE_OPTIONS = (BridgeArguments, EditorArguments, PromptArguments, GenerationArguments, ServerArguments,
                  BridgeRunArguments)


@dataclass(frozen=True)
class BridgeOptions:
    """How a bridging run goes (the run's knobs besides its input, output, editor and template)."""

    limit: int | None = None
    retry_failed: bool = False
    overwrite: bool = False
    keep_truncated: bool = False
    max_new_tokens: int | None = None  # None: 1.5 × the longer response + 64, capped at max_new_tokens_cap
    max_new_tokens_cap: int = 2048
    progress_every: float = 10.0  # seconds between progress lines (0: none)
    plot: bool = True
    on_invalid: str = "error"  # a row that fails validation: error | skip (counted in the summary)


@dataclass(frozen=True)
class BridgeConfig:
    """One bridging run (:func:`unipo.bridge.pipeline.run_bridge`): the input pairs ``data``, the output JSONL
    ``out`` (its sidecars beside it), the ``editor`` LLM, the editing prompt ``template``, the run's
    ``options`` and the ``tokenizer`` of the edit distance (None: the editor's own, else whitespace words)."""

    data: str | Path
    out: str | Path
    editor: Editor
    template: EditTemplate
    options: BridgeOptions = field(default_factory=BridgeOptions)
    tokenizer: Any | None = None
