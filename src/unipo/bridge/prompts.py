"""Editor prompts for BMC's bridging phase.

BMC (Jiang et al., ICLR 2025, "Bridging and Modeling Correlations in Pairwise Data for Direct Preference
Optimization", §3.1 and Appendix) synthesises a pseudo-winning response ỹ_w for each pair (x, y_w, y_l):
an editor LLM makes a *targeted modification* of the losing response y_l, using the winning response
y_w as the reference, so that ỹ_w and y_l differ only where y_l was wrong. The paper uses two prompt
styles, reproduced here in paraphrase:

* ``qa`` (question answering and math): correct the prediction (y_l) to align with the correct answer
  (y_w) with minimal changes and output only the corrected prediction, or ``None`` when the prediction
  is already correct. Pairs answered ``None`` are dropped (31% of QA and 43% of math pairs in the paper).
* ``instruct`` (instruction following): minimally revise response 2 (y_l) toward response 1 (y_w),
  keeping its correct parts, and output only the revision.

A user template is a UTF-8 text file holding the user message, with the placeholders ``{prompt}``,
``{chosen}`` (y_w) and ``{rejected}`` (y_l); only these three names are substituted, so other braces
(JSON, LaTeX) stay as written. A first line ``system: ...`` (optional) becomes the system message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from unipo.errors import UnipoError

QA_TEMPLATE = """\
You are given a question, its correct answer, and a prediction.

Question:
{prompt}

Correct answer:
{chosen}

Prediction:
{rejected}

Correct the prediction so that it aligns with the correct answer, making as few changes as possible \
and keeping everything in the prediction that is already right. Output only the corrected prediction, \
with no explanation. If the prediction is already correct, output only the word None."""

INSTRUCT_TEMPLATE = """\
You are given an instruction and two responses to it. Response 1 is better than response 2.

Instruction:
{prompt}

Response 1:
{chosen}

Response 2:
{rejected}

Revise response 2 toward response 1 with minimal changes: keep the parts of response 2 that are \
already good and change only what makes it worse than response 1. Output only the revised response 2, \
with no explanation or preamble."""

SYSTEM_PROMPT = "You are a careful editor who makes minimal, targeted edits."

STYLES = {"qa": QA_TEMPLATE, "instruct": INSTRUCT_TEMPLATE}
PLACEHOLDERS = ("prompt", "chosen", "rejected")
_PLACEHOLDER_RE = re.compile(r"\{(prompt|chosen|rejected)\}")

# labels an editor sometimes puts before its answer despite being told not to
_LABEL_RE = re.compile(
    r"^\s*(?:\*\*)?(?:corrected prediction|revised response(?: 2)?|response 2|revision|corrected answer)"
    r"\s*:?\s*(?:\*\*)?\s*:?\s*",
    re.IGNORECASE,
)
_FENCE_RE = re.compile(r"^```[\w-]*\n(.*)\n```$", re.DOTALL)


@dataclass(frozen=True)
class EditTemplate:
    """A chat prompt for the editor: an optional system message and a user message with placeholders."""

    name: str
    user: str
    system: str | None = SYSTEM_PROMPT

    def messages(self, prompt: str, chosen: str, rejected: str) -> list[dict[str, str]]:
        """The chat messages asking the editor to turn ``rejected`` (y_l) into ỹ_w, guided by ``chosen``."""
        values = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        text = _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], self.user)
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.append({"role": "user", "content": text})
        return out


def get_template(style: str | None = None, template_file: str | Path | None = None) -> EditTemplate:
    """The paper's template for ``style`` (``qa`` or ``instruct``), or a user template from a file."""
    if template_file is not None:
        path = Path(template_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UnipoError(f"cannot read template file {path}: {exc.strerror or exc}") from exc
        system = None
        first, _, rest = text.partition("\n")
        if first.lower().startswith("system:"):
            system = first[len("system:"):].strip() or None
            text = rest
        if "{rejected}" not in text:
            raise UnipoError(
                f"template {path} must contain the placeholder {{rejected}} (the losing response to edit);"
                " the others are {prompt} and {chosen}"
            )
        return EditTemplate(name=f"file:{path}", user=text.strip("\n"), system=system)
    style = style or "instruct"
    if style not in STYLES:
        raise UnipoError(f"unknown prompt style {style!r}; choose one of {', '.join(STYLES)}")
    return EditTemplate(name=style, user=STYLES[style])


def clean_output(text: str | None) -> str | None:
    """The editor's answer, stripped; ``None`` when it declined (answered 'None' or nothing).

    Strips surrounding whitespace, one enclosing code fence and a leading label such as
    "Corrected prediction:". The paper drops the pairs the editor answers 'None' (§3.1).
    """
    if text is None:
        return None
    out = text.strip()
    fence = _FENCE_RE.match(out)
    if fence:
        out = fence.group(1).strip()
    out = _LABEL_RE.sub("", out, count=1).strip()
    if not out or out.strip("\"'`*.! \n").lower() in ("none", ""):  # noqa: B005 - a set of characters
        return None
    return out


def render_context(prompt: object) -> str:
    """The prompt x as plain text for the editor: HH transcripts stripped, chat messages as a dialogue."""
    if isinstance(prompt, list):
        lines = []
        for msg in prompt:
            role = str(msg.get("role", "user")).capitalize()
            lines.append(f"{role}: {msg.get('content', '')}")
        return "\n\n".join(lines)
    text = str(prompt).strip()
    if text.endswith("Assistant:"):  # HH-style transcript ending in the open assistant turn
        text = text[: -len("Assistant:")].rstrip()
    return text
