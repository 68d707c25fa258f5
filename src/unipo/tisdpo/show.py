"""``unipo weights show``: look at TIS-DPO token weights (Liu et al., ICLR 2025, Eq. 19).

Writes, into ``--out DIR``:

- ``weights.html``: for the first ``n`` pairs, the prompt and the chosen / rejected responses side by
  side, each token's background coloured by its weight (diverging colormap centred at 1: red above 1,
  blue below, white at 1; hover a token for its weight);
- ``weights_tokens.png``: the same as a picture (at most ``max_tokens`` tokens per response);
- ``weights_hist.png``: the histogram of all weights per side, with their means.

Tokens come from re-tokenising the rows with the tokenizer recorded in ``WEIGHTED.meta.json`` (or
``--tokenizer``) through :func:`unipo.data.tokenize.prepare_pairs`, which also checks the alignment.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipo.errors import UnipoError
from unipo.io.atomic import atomic_path, atomic_write_text

WEIGHT_COLUMNS = ("chosen_weights", "rejected_weights")


@dataclass
class Shown:
    """One pair ready to draw: the prompt's text and per side a list of (token text, weight)."""

    row: int
    prompt: str
    chosen: list[tuple[str, float]]
    rejected: list[tuple[str, float]]


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        turns = [m for m in prompt if m.get("role") != "system"] or prompt
        return str(turns[-1].get("content", "")) if turns else ""
    return str(prompt)


def _tokenizer_for(weighted: Path, tokenizer: str | None):
    from unipo.models.loading import load_tokenizer, resolve_model_path

    if tokenizer is None:
        stem = weighted.with_suffix("") if weighted.suffix in (".jsonl", ".json") else weighted
        meta = Path(f"{stem}.meta.json")
        if not meta.exists():
            raise UnipoError(f"{meta} not found: give --tokenizer (the model the weights were computed with)")
        tokenizer = json.loads(meta.read_text()).get("model_path")
    return load_tokenizer(resolve_model_path(str(tokenizer)))


def load_examples(weighted: str | Path, n: int, tokenizer: str | None = None) -> list[Shown]:
    """The first ``n`` pairs of a weights file as token texts with their weights."""
    from unipo.data.formats import iter_rows, normalize_row
    from unipo.data.tokenize import prepare_pairs

    weighted = Path(weighted)
    tok = _tokenizer_for(weighted, tokenizer)
    pairs, _ = prepare_pairs(str(weighted), tok, max_length=10**9, max_prompt_length=None,
                             weights_columns=WEIGHT_COLUMNS, limit=n)
    raw = {rec.row: rec.data for _, rec in zip(range(n), iter_rows(str(weighted)), strict=False)}
    shown = []
    for p in pairs:
        pair = normalize_row(raw[p.row], file=str(weighted), row_number=p.row)
        sides = [[(tok.decode([i]), float(w)) for i, w in zip(ids, ws, strict=True)]
                 for ids, ws in ((p.chosen_ids, p.chosen_weights), (p.rejected_ids, p.rejected_weights))]
        shown.append(Shown(p.row, _prompt_text(pair.prompt), sides[0], sides[1]))
    return shown


def all_weights(weighted: str | Path) -> dict[str, list[float]]:
    """Every weight of the file, per side."""
    out: dict[str, list[float]] = {"chosen": [], "rejected": []}
    with open(weighted, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                for side in out:
                    out[side].extend(float(w) for w in row.get(f"{side}_weights") or [])
    return out


def _norm(values: list[float]):
    from matplotlib.colors import TwoSlopeNorm

    lo = min([*values, 1.0]) if values else 0.5
    hi = max([*values, 1.0]) if values else 1.5
    return TwoSlopeNorm(vmin=min(lo, 1 - 1e-6), vcenter=1.0, vmax=max(hi, 1 + 1e-6))


def _colour(cmap, norm, w: float) -> tuple[float, float, float]:
    r, g, b, _ = cmap(float(norm(w)))
    return r, g, b


def write_html(examples: list[Shown], path: Path, norm, cmap, source: str) -> None:
    def spans(tokens: list[tuple[str, float]]) -> str:
        parts = []
        for text, w in tokens:
            r, g, b = _colour(cmap, norm, w)
            shown = html.escape(text).replace("\n", "↵<br>") or "&#8203;"
            parts.append(f'<span style="background:rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f})" '
                         f'title="w = {w:.4f}">{shown}</span>')
        return "".join(parts)

    stops = [norm.vmin, (norm.vmin + 1) / 2, 1.0, (1 + norm.vmax) / 2, norm.vmax]
    legend = " ".join(
        '<span style="background:rgb({:.0f},{:.0f},{:.0f});padding:2px 8px">{:.2f}</span>'.format(
            *(c * 255 for c in _colour(cmap, norm, v)), v) for v in stops)
    rows = []
    for ex in examples:
        rows.append(f"<tr><td colspan=2 class=prompt><b>row {ex.row}</b> · prompt: "
                    f"{html.escape(ex.prompt[-400:])}</td></tr>"
                    f"<tr><td class=resp>{spans(ex.chosen)}</td><td class=resp>{spans(ex.rejected)}</td></tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>TIS-DPO token weights</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; width: 100%; table-layout: fixed; }}
td {{ vertical-align: top; border: 1px solid #ccc; padding: 6px; }}
td.resp {{ font-family: monospace; white-space: pre-wrap; word-wrap: break-word; line-height: 1.6; }}
td.prompt {{ background: #f4f4f4; font-size: 90%; }}
th {{ text-align: left; padding: 6px; }}
</style></head><body>
<h2>TIS-DPO token weights</h2>
<p>{html.escape(source)} · weights w<sub>t</sub> (Liu et al., ICLR 2025, Eq. 19): red above 1, blue below,
white at 1. Hover a token for its weight.</p>
<p>scale: {legend}</p>
<table><tr><th>chosen</th><th>rejected</th></tr>
{''.join(rows)}
</table></body></html>
"""
    atomic_write_text(path, page)


def _wrap(tokens: list[tuple[str, float]], width: int, max_tokens: int) -> list[list[tuple[int, str, float]]]:
    """Tokens laid out into lines of at most ``width`` characters: per line (column, text, weight)."""
    lines: list[list[tuple[int, str, float]]] = [[]]
    col = 0
    extra = max(0, len(tokens) - max_tokens)
    for text, w in tokens[:max_tokens]:
        pieces = text.split("\n")
        for j, piece in enumerate(pieces):
            s = piece.replace("\t", "  ") + ("↵" if j < len(pieces) - 1 else "")
            s = s or ("·" if len(pieces) == 1 else "")
            while s:
                if col + len(s) > width and col > 0:
                    lines.append([])
                    col = 0
                chunk, s = s[:width], s[width:]
                lines[-1].append((col, chunk, w))
                col += len(chunk)
            if j < len(pieces) - 1:
                lines.append([])
                col = 0
    if extra:
        lines.append([(0, f"… (+{extra} tokens)", float("nan"))])
    return lines


def write_png(examples: list[Shown], path: Path, norm, cmap, width: int = 64, max_tokens: int = 160) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.patches import Rectangle

    fs, gap = 8.0, 4
    cw, lh = 0.6 * fs / 72, 1.55 * fs / 72  # monospace character width and line height, inches
    total_cols = 2 * width + gap
    blocks = []
    n_lines = 1
    for ex in examples:
        c, r = _wrap(ex.chosen, width, max_tokens), _wrap(ex.rejected, width, max_tokens)
        blocks.append((ex, c, r))
        n_lines += 2 + max(len(c), len(r))
    fig_w, fig_h = total_cols * cw + 0.4, n_lines * lh + 1.1
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=130)
    ax = fig.add_axes((0.2 / fig_w, 0.95 / fig_h, total_cols * cw / fig_w, n_lines * lh / fig_h))
    ax.set_xlim(0, total_cols)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    ax.text(0, 0.5, "chosen", fontsize=fs + 2, weight="bold", va="center", family="DejaVu Sans Mono")
    ax.text(width + gap, 0.5, "rejected", fontsize=fs + 2, weight="bold", va="center", family="DejaVu Sans Mono")
    y = 1
    for ex, c, r in blocks:
        prompt = " ".join(ex.prompt.split())
        prompt = prompt if len(prompt) <= total_cols - 16 else "…" + prompt[-(total_cols - 17):]
        ax.text(0, y + 0.5, f"row {ex.row}: {prompt}", fontsize=fs, va="center", style="italic",
                color="#444", family="DejaVu Sans Mono")
        ax.axhline(y + 1.05, color="#bbb", lw=0.5)
        for x0, lines in ((0, c), (width + gap, r)):
            for li, line in enumerate(lines):
                for col, text, w in line:
                    yy = y + 1 + li
                    if w == w:  # not NaN
                        ax.add_patch(Rectangle((x0 + col + 0.04, yy + 0.08), len(text) - 0.08, 0.9, lw=0,
                                               color=_colour(cmap, norm, w)))
                    ax.text(x0 + col, yy + 0.55, text, fontsize=fs, va="center", family="DejaVu Sans Mono")
        y += 2 + max(len(c), len(r))
    cax = fig.add_axes((0.25, 0.5 / fig_h, 0.5, 0.15 / fig_h))
    sm = ScalarMappable(norm=norm, cmap=cmap)
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_ticks([norm.vmin, (norm.vmin + 1) / 2, 1.0, (1 + norm.vmax) / 2, norm.vmax])
    cb.ax.xaxis.set_major_formatter("{x:.4g}")
    cb.set_label("token weight (centred at 1)", fontsize=fs)
    cb.ax.tick_params(labelsize=fs - 1)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def write_histogram(weights: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    values = [w for ws in weights.values() for w in ws]
    bins = np.linspace(min(values), max(values), 50) if values and min(values) < max(values) else 20
    for side, colour in (("chosen", "tab:green"), ("rejected", "tab:red")):
        ws = weights[side]
        if ws:
            ax.hist(ws, bins=bins, histtype="step", lw=1.6, color=colour,
                    label=f"{side}: mean {np.mean(ws):.3f}, {len(ws)} tokens")
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    ax.set_xlabel("token weight w_t")
    ax.set_ylabel("tokens")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def show_weights(weighted: str | Path, out_dir: str | Path, *, n: int = 8, tokenizer: str | None = None,
                 max_tokens: int = 160, width: int = 64) -> dict[str, Path]:
    """Render a weights file: ``weights.html``, ``weights_tokens.png`` and ``weights_hist.png`` in ``out_dir``."""
    import matplotlib

    if n < 1:
        raise UnipoError("--n must be at least 1")
    weighted = Path(weighted)
    if not weighted.exists():
        raise UnipoError(f"{weighted} not found")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = load_examples(weighted, n, tokenizer)
    if not examples:
        raise UnipoError(f"{weighted}: no rows to show")
    weights = all_weights(weighted)
    norm = _norm([w for ex in examples for _, w in ex.chosen + ex.rejected])
    import numpy as np
    from matplotlib.colors import ListedColormap

    # RdBu_r without its darkest 10% at either end, so that black text stays readable
    cmap = ListedColormap(matplotlib.colormaps["RdBu_r"](np.linspace(0.1, 0.9, 256)), name="weights")
    files = {"html": out / "weights.html", "tokens": out / "weights_tokens.png", "hist": out / "weights_hist.png"}
    write_html(examples, files["html"], norm, cmap, str(weighted))
    write_png(examples, files["tokens"], norm, cmap, width=width, max_tokens=max_tokens)
    write_histogram(weights, files["hist"], f"TIS-DPO token weights · {weighted.name}")
    return files
