"""unipo.tisdpo: the TIS-DPO weights pipeline (Liu et al., ICLR 2025, Eq. 19): `unipo weights estimate` / `show` on a
tiny model.

The weights are checked against log-probabilities computed here independently (plain transformers
forward + log_softmax over each full sequence, token ids built with the chat template directly).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

import unipo.training.train as train_module
from tests.helpers import ROWS
from unipo.cli import main
from unipo.data.formats import normalize_row
from unipo.errors import ConfigError, DataError, UnipoError
from unipo.tisdpo import contrastive
from unipo.tisdpo.estimate import EstimateOptions, estimate_weights
from unipo.tisdpo.prompts import system_prompts
from unipo.tisdpo.transform import paper_weights, rank_weights

N_CONV = 6


def _rows() -> list[dict]:
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
             "chosen": [{"role": "assistant", "content": f"{2 * i}"}],
             "rejected": [{"role": "assistant", "content": f"{2 * i + 1}, I cannot help with that."}]}
            for i in range(N_CONV)]
    rows += [{"prompt": f"Human: How do I bake bread {i}? Assistant:", "chosen": " Mix flour, water and yeast.",
              "rejected": " The quick brown fox."} for i in range(3)]
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _estimate(model: Path, data: Path, out: Path, method: str, models: Path, *extra: str) -> int:
    return main(["weights", "estimate", "--method", method, "--model", str(model), "--data", str(data),
                 "--out", str(out), "--models-dir", str(models), "--train-set", "max_steps=2",
                 "--train-set", "per_device_batch_size=4", "--batch-size", "4", "--no-progress", *extra])


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    data = _write(d / "pairs.jsonl", _rows())
    before = contrastive.TRAINING_RUNS
    assert _estimate(tiny_model_dir, data, d / "w_prompt.jsonl", "prompt", d / "models") == 0
    assert contrastive.TRAINING_RUNS == before  # (P) trains nothing
    assert _estimate(tiny_model_dir, data, d / "w_dpo.jsonl", "dpo", d / "models") == 0
    assert contrastive.TRAINING_RUNS == before + 2  # π+ and π−
    return {"dir": d, "data": data, "model": tiny_model_dir}


# ------------------------------------------------------------------------------------------- independent


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _independent_ids(tok, row: dict, system: str | None) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids with the system message, chosen ids, rejected ids) from the chat template directly."""
    prompt = row["prompt"]
    p_text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    sys_prompt = ([{"role": "system", "content": system}] if system else []) + prompt
    prompt_ids = _ids(tok, tok.apply_chat_template(sys_prompt, tokenize=False, add_generation_prompt=True))
    responses = []
    for side in ("chosen", "rejected"):
        full = tok.apply_chat_template(prompt + row[side], tokenize=False)
        assert full.startswith(p_text) and full.endswith("<|im_end|>\n")
        responses.append(_ids(tok, full[len(p_text):-1]))  # without the newline after <|im_end|>
    return prompt_ids, responses[0], responses[1]


def _logps(model, prompt_ids: list[int], resp: list[int]) -> list[float]:
    import torch

    x = torch.tensor([prompt_ids + resp])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    n = len(prompt_ids)
    return [lp[n - 1 + j, t].item() for j, t in enumerate(resp)]


def _formula(d: list[float], mu: float, lo=-0.5, hi=1.5, k=1.0) -> list[float]:
    return [k * math.exp(mu * min(max(x, lo), hi)) for x in d]


def _check_against(rows_out: list[dict], rows_in: list[dict], tok, pos, neg, systems=(None, None)):
    for out, row in zip(rows_out[:N_CONV], rows_in[:N_CONV], strict=True):
        p_pos, c, r = _independent_ids(tok, row, systems[0])
        p_neg, _, _ = _independent_ids(tok, row, systems[1])
        for side, resp, mu in (("chosen", c, 1.0), ("rejected", r, -1.0)):
            d = [a - b for a, b in zip(_logps(pos, p_pos, resp), _logps(neg, p_neg, resp), strict=True)]
            assert out[f"{side}_weights"] == pytest.approx(_formula(d, mu), rel=1e-4, abs=1e-5)


@pytest.mark.integration
def test_prompt_method_weights_equal_formula_on_independent_logprobs(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(runs["model"])
    model = AutoModelForCausalLM.from_pretrained(runs["model"], dtype="float32").eval()
    out = _read(runs["dir"] / "w_prompt.jsonl")
    assert [r["source_row"] for r in out] == list(range(1, len(_rows()) + 1))
    _check_against(out, _rows(), tok, model, model, system_prompts("harmless"))
    d = [w for r in out for w in r["chosen_weights"]]
    assert len(set(d)) > 1  # the prompts do change the log-probs


def _contrastive_pair(base_model: Path, meta_file: Path) -> list:
    """π+ and π− as the estimate saved them: LoRA adapters loaded on fresh copies of the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    pair_dir = Path(json.loads(meta_file.read_text())["contrastive_models"])
    return [PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model, dtype="float32"),
                                      str(pair_dir / role)).eval() for role in ("positive", "negative")]


@pytest.mark.integration
def test_dpo_method_weights_equal_formula_on_independent_logprobs(runs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(runs["model"])
    models = _contrastive_pair(runs["model"], runs["dir"] / "w_dpo.meta.json")
    out = _read(runs["dir"] / "w_dpo.jsonl")
    _check_against(out, _rows(), tok, *models)
    assert any(abs(w - 1) > 1e-3 for r in out for w in r["chosen_weights"])  # π+ and π− do differ


@pytest.mark.integration
def test_second_estimate_reuses_the_contrastive_models(runs):
    d = runs["dir"]
    pair_dir = Path(json.loads((d / "w_dpo.meta.json").read_text())["contrastive_models"])
    stamps = {p: p.stat().st_mtime_ns for p in pair_dir.rglob("*") if p.is_file()}
    before = contrastive.TRAINING_RUNS
    assert _estimate(runs["model"], runs["data"], d / "w_dpo_narrow.jsonl", "dpo", d / "models",
                     "--lower", "-0.1", "--upper", "0.1") == 0
    assert contrastive.TRAINING_RUNS == before
    assert {p: p.stat().st_mtime_ns for p in pair_dir.rglob("*") if p.is_file()} == stamps
    wide, narrow = _read(d / "w_dpo.jsonl"), _read(d / "w_dpo_narrow.jsonl")
    for a, b in zip(wide, narrow, strict=True):
        assert all(math.exp(-0.1) - 1e-6 <= w <= math.exp(0.1) + 1e-6 for w in b["chosen_weights"])
        # same models: the same log-ratios, clamped more tightly
        assert [math.log(w) for w in b["chosen_weights"]] == pytest.approx(
            [min(max(math.log(w), -0.1), 0.1) for w in a["chosen_weights"]], abs=1e-5)


@pytest.mark.integration
def test_output_aligns_with_training_tokenisation_and_train_consumes_it(runs, capsys):
    from transformers import AutoTokenizer

    from unipo.data.tokenize import prepare_pairs

    tok = AutoTokenizer.from_pretrained(runs["model"])
    out = runs["dir"] / "w_dpo.jsonl"
    plain, _ = prepare_pairs(str(runs["data"]), tok, max_length=10**6, max_prompt_length=None)
    weighted, _ = prepare_pairs(str(out), tok, max_length=10**6, max_prompt_length=None,
                                weights_columns=("chosen_weights", "rejected_weights"))
    for a, b in zip(plain, weighted, strict=True):
        assert (a.prompt_ids, a.chosen_ids, a.rejected_ids) == (b.prompt_ids, b.chosen_ids, b.rejected_ids)
        assert len(b.chosen_weights) == len(b.chosen_ids) and len(b.rejected_weights) == len(b.rejected_ids)
    rc = main(["train", "--model", str(runs["model"]), "--data", str(out), "--variant", "tisdpo",
               "--output-dir", str(runs["dir"] / "run"), "--max-steps", "2", "--per-device-batch-size", "4",
               "--no-progress", "--set", "plots=false"])
    assert rc == 0
    assert (runs["dir"] / "run" / "metrics.jsonl").exists()


@pytest.mark.integration
def test_wrong_length_weights_give_the_data_layer_error(runs, capsys):
    from transformers import AutoTokenizer

    from unipo.data.tokenize import prepare_pairs

    rows = _read(runs["dir"] / "w_dpo.jsonl")
    rows[1]["chosen_weights"] = rows[1]["chosen_weights"][:-1]
    bad = _write(runs["dir"] / "bad.jsonl", rows)
    tok = AutoTokenizer.from_pretrained(runs["model"])
    with pytest.raises(DataError, match=r"row 2, field 'chosen_weights'.*weights for .* response tokens"):
        prepare_pairs(str(bad), tok, weights_columns=("chosen_weights", "rejected_weights"))
    rc = main(["train", "--model", str(runs["model"]), "--data", str(bad), "--variant", "tisdpo",
               "--output-dir", str(runs["dir"] / "bad_run"), "--max-steps", "1", "--no-progress"])
    assert rc == 2
    assert "weights for" in capsys.readouterr().err


@pytest.mark.integration
def test_show_writes_html_and_pngs(runs):
    out = runs["dir"] / "show"
    assert main(["weights", "show", str(runs["dir"] / "w_dpo.jsonl"), "--n", "5", "--out", str(out)]) == 0
    page = (out / "weights.html").read_text()
    assert page.count("<tr><td class=resp>") == 5 and 'title="w = ' in page
    for name in ("weights_tokens.png", "weights_hist.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000


# ------------------------------------------------------------------------------------------- resume


@pytest.mark.integration
def test_interrupted_scoring_resumes_with_each_row_once(runs, tmp_path):
    out = tmp_path / "w.jsonl"
    opts = EstimateOptions(method="prompt", batch_size=4, progress=False, models_dir=str(tmp_path / "m"))
    seen = []

    def interrupt(row):  # stop in the middle of the second batch, as a kill would
        seen.append(row["source_row"])
        if len(seen) == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        estimate_weights(str(runs["data"]), out, str(runs["model"]), opts, on_row=interrupt)
    with open(out, "a") as fh:  # a line cut short by the kill
        fh.write('{"prompt": "trunc')
    assert len(_read_lines_ok(out)) == 6
    summary = estimate_weights(str(runs["data"]), out, str(runs["model"]), opts)
    rows = _read(out)
    assert summary["complete"] and [r["source_row"] for r in rows] == list(range(1, len(_rows()) + 1))
    reference = _read(runs["dir"] / "w_prompt.jsonl")
    assert [r["chosen_weights"] for r in rows] == [r["chosen_weights"] for r in reference]
    # a third run has nothing to do
    assert estimate_weights(str(runs["data"]), out, str(runs["model"]), opts)["pairs"] == len(rows)
    assert len(_read(out)) == len(rows)
    # resuming with other settings is refused
    with pytest.raises(UnipoError, match="other settings"):
        estimate_weights(str(runs["data"]), out, str(runs["model"]),
                         EstimateOptions(method="prompt", lower=-0.2, progress=False))


def _read_lines_ok(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


# ------------------------------------------------------------------------------------------- transforms


@pytest.mark.unit
def test_paper_transform_clamps_and_signs():
    d = [-2.0, -0.5, 0.0, 0.7, 1.5, 3.0]
    assert paper_weights(d, "chosen") == pytest.approx([math.exp(x) for x in (-0.5, -0.5, 0, 0.7, 1.5, 1.5)])
    assert paper_weights(d, "rejected", k=2.0) == pytest.approx(
        [2 * math.exp(-x) for x in (-0.5, -0.5, 0, 0.7, 1.5, 1.5)])


@pytest.mark.unit
def test_rank_transform_maps_to_range_with_eos_zero():
    d = [0.3, -1.0, 2.0, 0.0, 5.0]  # the last token is the end-of-sequence token
    w = rank_weights(d, "chosen")
    assert w[-1] == 0.0
    assert w[:-1] == pytest.approx([1.1, 0.7, 1.3, 0.9])  # ranked by d on the chosen side
    assert rank_weights(d, "rejected")[:-1] == pytest.approx([0.9, 1.3, 0.7, 1.1])  # by −d
    assert all(0.7 <= x <= 1.3 for x in w[:-1])
    assert rank_weights([1.0, 1.0, 0.0, 9.0], "chosen") == pytest.approx([1.15, 1.15, 0.7, 0.0])  # ties
    assert rank_weights([0.4, 9.0], "chosen") == pytest.approx([1.0, 0.0])  # one rankable token
    assert rank_weights([0.4, 0.1], "chosen", ends_with_eos=False) == pytest.approx([1.3, 0.7])


def released_rank_based_transform(nums, min_scale=0.7, max_scale=1.3):
    """The authors' released code, written out here from its description in exlaw/TIS-DPO
    (preference_datasets.py::rank_based_transform over weights rounded to 2 decimals in
    token_weight_estimation.py; the EOS weight 0 appended by the data loader)."""
    nums = [round(x, 2) for x in nums]
    order = sorted(range(len(nums)), key=lambda k: nums[k])  # stable: ties keep token order
    ranks = [0] * len(nums)
    for r, i in enumerate(order):
        ranks[i] = r
    if len(nums) == 1:
        return [1.0]
    return [min_scale + r / (len(nums) - 1) * (max_scale - min_scale) for r in ranks]


@pytest.mark.unit
def test_released_rank_ties_and_eos_options():
    import random

    rng = random.Random(0)
    for _ in range(200):  # ties by token order after rounding, as the released code; EOS 0
        d = [round(rng.uniform(-1, 1), rng.choice([1, 2, 3])) for _ in range(rng.randint(2, 12))]
        for side, mu in (("chosen", 1), ("rejected", -1)):
            got = rank_weights(d, side, ties="released")
            assert got == pytest.approx(released_rank_based_transform([mu * x for x in d[:-1]]) + [0.0])
    # mean ranks (the default) differ exactly where tokens tie
    assert rank_weights([0.5, 0.5, 0.0, 9.0], "chosen") == pytest.approx([1.15, 1.15, 0.7, 0.0])
    assert rank_weights([0.5, 0.5, 0.0, 9.0], "chosen", ties="released") == pytest.approx([1.0, 1.3, 0.7, 0.0])
    with pytest.raises(ConfigError, match="ties"):
        rank_weights([0.1, 0.2], "chosen", ties="random")


@pytest.mark.unit
def test_eos_option_of_the_paper_transform():
    from unipo.tisdpo.estimate import EstimateOptions, to_weights

    d, ids, eos = [0.2, -0.3, 0.4], [5, 6, 2], {2}
    weighted = paper_weights(d, "chosen")
    assert to_weights(d, "chosen", ids, eos, EstimateOptions()) == pytest.approx(weighted)  # auto: weighted
    assert to_weights(d, "chosen", ids, eos, EstimateOptions(eos="zero")) == pytest.approx(weighted[:2] + [0.0])
    assert to_weights(d, "chosen", [5, 6, 7], eos, EstimateOptions(eos="zero")) == pytest.approx(weighted)  # no EOS
    rank = EstimateOptions(transform="rank", eos="weight")
    assert to_weights(d, "chosen", ids, eos, rank) == pytest.approx(rank_weights(d, "chosen", ends_with_eos=False))


@pytest.mark.integration
def test_rank_option_end_to_end(runs, tmp_path):
    out = tmp_path / "rank.jsonl"
    assert _estimate(runs["model"], runs["data"], out, "prompt", tmp_path / "m", "--transform", "rank") == 0
    for row in _read(out):
        for side in ("chosen", "rejected"):
            w = row[f"{side}_weights"]
            assert w[-1] == 0.0 and all(0.7 - 1e-9 <= x <= 1.3 + 1e-9 for x in w[:-1])
            if len(w) > 2:
                assert min(w[:-1]) == pytest.approx(0.7) and max(w[:-1]) == pytest.approx(1.3)


@pytest.mark.integration
def test_user_errors_are_clear(runs, tmp_path, capsys):
    assert _estimate(runs["model"], runs["data"], tmp_path / "x.jsonl", "prompt", tmp_path / "m",
                     "--lower", "2", "--upper", "1") == 2
    assert "lower < upper" in capsys.readouterr().err
    assert _estimate(runs["model"], runs["data"], tmp_path / "x.jsonl", "dpo", tmp_path / "m",
                     "--train-set", "nope=1") == 2
    assert "unknown training key" in capsys.readouterr().err


@pytest.mark.integration
def test_sft_method_trains_two_models_and_weights_equal_formula(runs, tmp_path):
    """(S): π+ fine-tuned on the chosen responses, π− on the rejected ones (NLL only), then scored."""
    from transformers import AutoTokenizer

    before = contrastive.TRAINING_RUNS
    out_path = tmp_path / "w_sft.jsonl"
    assert _estimate(runs["model"], runs["data"], out_path, "sft", tmp_path / "models") == 0
    assert contrastive.TRAINING_RUNS == before + 2
    tok = AutoTokenizer.from_pretrained(runs["model"])
    _check_against(_read(out_path), _rows(), tok, *_contrastive_pair(runs["model"], tmp_path / "w_sft.meta.json"))


# ---- a stopped estimate keeps its finished contrastive model (issue 23, item 6; docs/faults.md;
# was tests/test_faults_weights.py) ----

OVERRIDES = {"max_steps": 2, "per_device_batch_size": 4}


@pytest.mark.integration
def test_a_kill_while_training_the_negative_model_keeps_the_positive(tiny_model_dir, tmp_path, monkeypatch):
    pairs = [normalize_row(r, file="rows", row_number=i + 1) for i, r in enumerate(ROWS[:8])]
    real, trained, killed = train_module.train, [], []

    def killed_on_the_second(cfg, *args, **kwargs):
        trained.append(cfg.output_dir)
        if len(trained) == 2 and not killed:  # the kill lands while π− trains: its .partial is half-written
            killed.append(cfg.output_dir)
            Path(cfg.output_dir, "checkpoint-1").mkdir(parents=True)
            raise KeyboardInterrupt
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(train_module, "train", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        contrastive.ensure_pair("dpo", str(tiny_model_dir), pairs, models_dir=tmp_path, overrides=OVERRIDES,
                                progress=False)
    (positive,) = tmp_path.glob("dpo-*/positive")
    files = sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in positive.iterdir())
    assert any(name.endswith(".safetensors") for name, _, _ in files)

    trained.clear()
    pair = contrastive.ensure_pair("dpo", str(tiny_model_dir), pairs, models_dir=tmp_path, overrides=OVERRIDES,
                                   progress=False)
    assert [d.rsplit("/", 1)[-1] for d in trained] == ["negative.partial"]  # π− alone
    assert sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in positive.iterdir()) == files
    assert pair.positive == positive and pair.negative.is_dir() and pair.trained
    assert (pair.directory / contrastive.MANIFEST).exists() and not (pair.directory / "negative.partial").exists()


@pytest.mark.unit
def test_a_damaged_finished_model_is_trained_again(tmp_path):
    """What counts as finished: a directory that passes the model-directory check (no training here)."""
    done = tmp_path / "positive"
    done.mkdir()
    (done / "adapter_config.json").write_text("{}")
    (done / "adapter_model.safetensors").write_bytes(b"\x00" * 10)  # truncated
    assert not contrastive._finished(done) and not contrastive._finished(tmp_path / "negative")


# ---- the slow tier: end to end on smollm2-135m-instruct and real HH-RLHF pairs, (P) and (D) estimates on
# 16 pairs, the picture, and `unipo train --variant tisdpo` on the output (was tests/test_weights_slow.py) ----

N_PAIRS = 16


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prompt", "dpo"])
def test_smollm2_hh_weights_show_and_train(method, hh_file, tmp_path):
    from unipo.models.builtin import resolve_builtin

    model = str(resolve_builtin("smollm2-135m-instruct"))
    out = tmp_path / f"w_{method}.jsonl"
    t0 = time.time()
    rc = main(["weights", "estimate", "--method", method, "--model", model, "--data", str(hh_file),
               "--out", str(out), "--limit", str(N_PAIRS), "--models-dir", str(tmp_path / "models"),
               "--batch-size", "4", "--no-progress", "--train-set", "per_device_batch_size=4",
               "--train-set", "max_length=384", "--train-set", "max_prompt_length=256"])
    t_estimate = time.time() - t0
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == N_PAIRS and len({r["source_row"] for r in rows}) == N_PAIRS
    summary = json.loads((tmp_path / f"w_{method}.summary.json").read_text())
    mean_c, mean_r = summary["chosen"]["mean"], summary["rejected"]["mean"]
    print(f"\n[{method}] {N_PAIRS} pairs in {t_estimate:.0f}s: chosen mean {mean_c:.4f} "
          f"(std {summary['chosen']['std']:.4f}), rejected mean {mean_r:.4f} (std {summary['rejected']['std']:.4f})")
    assert summary["chosen"]["std"] > 0 and summary["rejected"]["std"] > 0
    assert abs(mean_c - mean_r) > 1e-3  # the two sides are weighted differently

    show = tmp_path / "show"
    assert main(["weights", "show", str(out), "--n", "4", "--out", str(show)]) == 0
    for name in ("weights.html", "weights_tokens.png", "weights_hist.png"):
        assert (show / name).stat().st_size > 5000

    t0 = time.time()
    rc = main(["train", "--model", model, "--data", str(out), "--variant", "tisdpo", "--output-dir",
               str(tmp_path / "run"), "--max-steps", "2", "--per-device-batch-size", "2", "--max-length", "384",
               "--no-progress", "--lora", "--set", "plots=false"])
    assert rc == 0
    print(f"[{method}] tisdpo training, 2 steps: {time.time() - t0:.0f}s")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("weights/chosen_mean" in m for m in metrics)
