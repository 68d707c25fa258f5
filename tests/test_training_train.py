"""unipo.training.train: end-to-end training on a tiny random model built in the test (no download), and (slow
tier) a few real steps on SmolLM2-135M-Instruct per variant family."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml

from tests.helpers import (
    ROWS,
    one_error_line,
    short_hh_pairs,
    tokenizer_save_fails_in,
    train_args,
    train_error_line,
    train_two_steps_on_smollm2,
    write_jsonl,
)
from unipo.cli import main
from unipo.data.formats import normalize_row
from unipo.objective import Objective
from unipo.objective.presets import PRESETS

SEQUENCE_LEVEL = [name for name, p in PRESETS.items()
                  if p.parts.get("weights", "none") == "none" and p.parts.get("kl", "none") == "none"
                  and p.parts.get("prior") != "learned"
                  and "score" not in Objective(name).requirements.inputs  # scores: tests/test_training_scores.py
                  and not Objective(name).requirements.gold]  # a gold response (tpo, tpo_l): tests/test_training_tpo.py
#: one preset per way the objective composes (logit loss, per-side loss, batch-level loss, mean aggregation
#: with a margin, a one-sided transform, a link, an auxiliary term) trains in the fast tier; all of them in
#: the slow tier (each is a tiny-model run of ~0.5 s; their losses are unit-tested against formulas)
REPRESENTATIVE = {"dpo", "nca_pair", "aot", "simpo", "minordpo", "fdpo_js", "rpo"}


@pytest.mark.parametrize("variant", [
    pytest.param(v, marks=pytest.mark.integration if v in REPRESENTATIVE else pytest.mark.slow)
    for v in SEQUENCE_LEVEL])
def test_every_sequence_level_preset_trains(tiny_model_dir, data, tmp_path, variant, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--variant", variant, "--set", "plots=false")) == 0
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen"} <= set(
        history[0])


@pytest.mark.integration
def test_outputs_of_a_run(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--variant", "tdpo2", "--beta", "0.2")) == 0
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl", "training_curves.png",
                 "README.md", "unipo_config.yaml", "data_summary.json"):
        assert (out / name).exists(), name
    cfg = yaml.safe_load((out / "unipo_config.yaml").read_text())
    assert cfg["objective"]["preset"] == "tdpo2" and cfg["objective"]["beta"] == 0.2
    assert cfg["objective"]["kl"] == "tdpo"
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert "kl/chosen" in history[0]
    assert "tdpo2" in (out / "README.md").read_text()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # a loadable Hugging Face model directory


@pytest.mark.integration
def test_first_step_loss_is_log2_and_training_moves_margins(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--max-steps", "6", "--learning-rate", "5e-3")) == 0
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if "loss" in ln]
    steps = [h for h in history if "loss" in h]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 0
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]


@pytest.mark.integration
def test_seed_makes_runs_repeatable(tiny_model_dir, data, tmp_path):
    from safetensors.torch import load_file

    weights = []
    for name in ("a", "b"):
        assert main(train_args(tiny_model_dir, data, tmp_path / name, "--seed", "7")) == 0
        weights.append(load_file(tmp_path / name / "model.safetensors"))
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k])


@pytest.mark.slow  # 7 s of CPU: moved out of the README's 90-s tier (docs/testing.md)
def test_a_split_batch_gives_the_steps_of_the_whole_batch(tiny_model_dir, data, tmp_path):
    """Each step's batch of 4 pairs taken as 2 micro-batches of 2 (gradient accumulation) gives the losses and
    metrics of the whole batch: the loss is a mean per example, the logged metrics are means over the micro-
    batches. (The same batch split over two processes, DDP under torchrun, is the slow-tier
    test_distributed.py.)"""
    def steps(name, *extra):
        assert main(train_args(tiny_model_dir, data, tmp_path / name, "--max-steps", "3", "--set", "plots=false",
                               *extra)) == 0
        return [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in ln]

    whole = steps("whole", "--per-device-batch-size", "4")
    split = steps("split", "--per-device-batch-size", "2", "--set", "gradient_accumulation_steps=2")
    assert len(whole) == len(split) == 3
    for a, b in zip(whole, split, strict=True):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "logps/rejected",
                    "num_input_tokens_seen"):  # every micro-batch's tokens counted once
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=5e-4), key  # float reduction order differs


@pytest.mark.integration
def test_lora_uses_adapter_disabled_reference(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--lora", "--max-steps", "2")) == 0
    cfg = yaml.safe_load((out / "unipo_config.yaml").read_text())
    assert cfg["reference"] == "adapter"
    assert (out / "adapter_config.json").exists()
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)


@pytest.mark.slow  # 7 s of CPU: moved out of the README's 90-s tier (docs/testing.md)
def test_precomputed_reference_equals_copy_and_is_cached(tiny_model_dir, data, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIPO_CACHE", str(tmp_path / "cache"))
    hist = {}
    for mode in ("copy", "precomputed"):
        out = tmp_path / mode
        assert main(train_args(tiny_model_dir, data, out, "--reference", mode, "--max-steps", "3",
                               "--set", "ref_dtype=float32")) == 0
        hist[mode] = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    for a, b in zip(hist["copy"], hist["precomputed"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    caches = list((tmp_path / "cache" / "reflogps").glob("*.pt"))
    assert len(caches) == 1
    # other data → another key: a stale cache is never used
    write_jsonl(tmp_path / "other.jsonl", ROWS[:8])
    assert main(train_args(tiny_model_dir, tmp_path / "other.jsonl", tmp_path / "p2", "--reference",
                           "precomputed", "--set", "ref_dtype=float32")) == 0
    assert len(list((tmp_path / "cache" / "reflogps").glob("*.pt"))) == 2


@pytest.mark.integration
def test_precomputed_reference_refused_for_kl_variants(tiny_model_dir, data, tmp_path, capsys):
    rc = main(train_args(tiny_model_dir, data, tmp_path / "r", "--variant", "tdpo2", "--reference", "precomputed"))
    assert rc == 2
    assert "precomputed reference log-probs cannot serve it" in capsys.readouterr().err


@pytest.mark.integration
def test_yaml_config_with_overrides(tiny_model_dir, data, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "data": str(data), "max_steps": 1,
                                   "variant": {"preset": "simpo", "link": "js"}, "per_device_batch_size": 2,
                                   "output_dir": str(tmp_path / "x")}))
    assert main(["train", "--config", str(cfg), "--max-steps", "2", "--no-progress"]) == 0
    saved = yaml.safe_load((tmp_path / "x" / "unipo_config.yaml").read_text())
    assert saved["max_steps"] == 2 and saved["objective"]["link"] == "js" and saved["reference"] == "none"


# ---- bad input: clear errors naming file, row and field ----

@pytest.mark.integration
@pytest.mark.parametrize("lines, needle", [
    (['{"prompt": "a", "chosen": "b", "rejected": "c"}', '{"prompt": "a", "chosen": "b"'], "row 2"),
    (['{"prompt": "a", "chosen": "b"}'], "field 'rejected'"),
    (['{"prompt": "a", "chosen": 5, "rejected": "c"}'], "field 'chosen'"),
    (['{"prompt": "a", "chosen": "   ", "rejected": "c"}'], "field 'chosen'"),
])
def test_bad_rows_name_file_row_field(tiny_model_dir, tmp_path, capsys, lines, needle):
    bad = write_jsonl(tmp_path / "bad.jsonl", lines)
    rc = main(train_args(tiny_model_dir, bad, tmp_path / "r"))
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl" in err and needle in err and "Traceback" not in err


@pytest.mark.integration
def test_unknown_config_key(tiny_model_dir, data, tmp_path, capsys):
    rc = main(train_args(tiny_model_dir, data, tmp_path / "r", "--set", "learning_rat=1e-4"))
    err = capsys.readouterr().err
    assert rc == 2 and "unknown key 'learning_rat'" in err and "did you mean 'learning_rate'" in err


@pytest.mark.integration
def test_conversational_rows_need_a_chat_template(tmp_path, capsys):
    from unipo.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "m", chat_template=False)
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}]
    data = write_jsonl(tmp_path / "conv.jsonl", rows)
    rc = main(train_args(model, data, tmp_path / "r"))
    err = capsys.readouterr().err
    assert rc == 2 and "conv.jsonl" in err and "chat template" in err


@pytest.mark.integration
def test_prompt_longer_than_max_length_is_a_counted_skip(tiny_model_dir, tmp_path, capsys):
    rows = ROWS[:6] + [{"prompt": "word " * 400, "chosen": "a", "rejected": "b"}]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    rc = main(train_args(tiny_model_dir, data, tmp_path / "r", "--max-length", "64", "--max-prompt-length", "32"))
    assert rc == 0
    summary = json.loads((tmp_path / "r" / "data_summary.json").read_text())
    assert summary["pairs_kept"] == 7 and summary["truncated_prompt"] == 1


# ---- resume after a kill ----

@pytest.mark.integration
def test_resume_after_a_kill_matches_uninterrupted(tiny_model_dir, tmp_path, capsys):
    """In this process, what a kill while checkpoint-4 was being written leaves behind: checkpoint-2 complete,
    checkpoint-4 without its trainer_state.json, another half-written checkpoint, metrics.jsonl already past
    step 2, no final model. ``--resume`` goes on from checkpoint-2 to the weights of the uninterrupted run,
    every step logged once. (The real SIGKILL of a training process is the slow-tier test below.)"""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", ROWS * 2)

    def args(out, *extra):
        return train_args(tiny_model_dir, data, out, "--max-steps", "4", "--save-steps", "2",
                          "--per-device-batch-size", "2", "--set", "plots=false", *extra)

    assert main(args(tmp_path / "full")) == 0
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "full", killed)
    for f in killed.iterdir():  # the final outputs were never written ...
        if f.is_file() and f.name != "metrics.jsonl":
            f.unlink()
    (killed / "checkpoint-4" / "trainer_state.json").unlink()  # ... nor checkpoint-4 finished
    (killed / "checkpoint-99").mkdir()
    assert len([ln for ln in (killed / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]) == 4
    capsys.readouterr()
    assert main(args(killed, "--resume")) == 0
    err = capsys.readouterr().err
    assert f"resuming from {killed / 'checkpoint-2'}" in err
    assert "checkpoint-4 is incomplete" in err and "checkpoint-99 is incomplete" in err
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(killed / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    logged = [json.loads(ln) for ln in (killed / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert [h["step"] for h in logged] == list(range(1, 5)), "every step logged exactly once"
    full = [json.loads(ln) for ln in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert [h["num_input_tokens_seen"] for h in logged] == [h["num_input_tokens_seen"] for h in full], (
        "the token count continues from the checkpoint")


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", ROWS * 4)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def cmd(out, *extra):
        return [sys.executable, "-m", "unipo", *train_args(tiny_model_dir, data, out, "--max-steps", "12",
                                                           "--save-steps", "3", "--per-device-batch-size", "2",
                                                           *extra)]

    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "checkpoint-6" / "trainer_state.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run finished before it was killed"
    # a checkpoint half-written when the kill came is skipped on resume
    (tmp_path / "killed" / "checkpoint-99").mkdir(exist_ok=True)
    subprocess.run(cmd(tmp_path / "killed", "--resume"), check=True, env=env, capture_output=True)
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in ln]
    assert steps == list(range(1, 13)), "every step logged exactly once"


@pytest.mark.unit
def test_auto_precision_never_picks_slow_bf16():
    """On a CPU without native bf16 instructions, bf16 matmul is far slower: auto must choose fp32."""
    from unipo.models import loading

    flags = loading._cpu_flags()
    if flags is None or {"avx512_bf16", "amx_bf16"} & flags:
        pytest.skip("this CPU has native bf16 (or no /proc/cpuinfo)")
    assert loading.choose_precision("auto") == "fp32"
    assert loading.resolve_dtype("auto", "fp32") == torch.float32


@pytest.mark.slow
def test_sampo_resumed_run_draws_what_the_uninterrupted_run_drew(tiny_model_dir, tmp_path, capsys):
    """SamPO's subsets are keyed by the objective's batch count, saved with each checkpoint: a run resumed from
    checkpoint-2 logs the uninterrupted run's losses for steps 3–4 and ends at its weights; resumed without the
    saved count, step 3 draws other subsets (another loss). Slow tier: three 2–4 step runs of the tiny model."""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", ROWS * 2)

    def args(out, *extra):
        return train_args(tiny_model_dir, data, out, "--variant", "sampo", "--max-steps", "4", "--save-steps", "2",
                          "--per-device-batch-size", "2", "--set", "plots=false", *extra)

    def losses(out):
        return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]

    full = tmp_path / "full"
    assert main(args(full)) == 0
    assert json.loads((full / "unipo_objective_state.json").read_text()) == {"weights": {"steps": 4.0}}
    assert json.loads((full / "checkpoint-2" / "unipo_objective_state.json").read_text()) == {
        "weights": {"steps": 2.0}}
    runs = {}
    for name, keep_state in (("resumed", True), ("stateless", False)):
        out = tmp_path / name
        shutil.copytree(full, out)
        for f in out.iterdir():
            if f.is_file() and f.name != "metrics.jsonl":
                f.unlink()
        shutil.rmtree(out / "checkpoint-4")
        (out / "metrics.jsonl").write_text("".join(ln + "\n" for ln in (out / "metrics.jsonl").read_text()
                                                   .splitlines()[:2]))
        if not keep_state:
            (out / "checkpoint-2" / "unipo_objective_state.json").unlink()
        capsys.readouterr()
        assert main(args(out, "--resume")) == 0
        runs[name] = losses(out)
    assert runs["resumed"][-2:] == pytest.approx(losses(full)[-2:], rel=1e-6)
    a, b = load_file(full / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert abs(runs["stateless"][-2] - losses(full)[-2]) > 1e-6  # the count matters: another draw at step 3


# ---- the slow tier: a few real training steps on SmolLM2-135M-Instruct (built-in source, converted once) and
# real HH-RLHF pairs (the committed slice), through `unipo train` (were tests/test_slow_smollm2.py,
# test_slow_family_more.py (issue 14), test_slow_family_trl.py and test_slow_listwise.py) ----

SMOLLM2_VARIANTS = ["dpo", "simpo", "tdpo2", "tisdpo_nokl", "tisdpo", "bmc", "sparsepo", "sparsepo_activation",
                    "learned_prior", "fdpo_js"]
#: the rest of the family (issue 14)
MORE_VARIANTS = ["hdpo", "beta_dpo", "sampo", "alpha_dpo", "simper"]
#: WPO, LD-DPO, AlphaPO, CPO and ORPO: a finite loss
TRL_VARIANTS = ["wpo", "ld_dpo", "alphapo", "cpo", "orpo"]


@pytest.fixture(scope="module")
def hh16_file(tmp_path_factory):
    """16 short real HH-RLHF pairs from the committed slice (tests/data)."""
    return short_hh_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 16)


@pytest.fixture(scope="module")
def hh8_file(tmp_path_factory):
    """8 short real HH-RLHF pairs from the committed slice (tests/data)."""
    return short_hh_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 8)


@pytest.mark.slow
@pytest.mark.parametrize("variant", SMOLLM2_VARIANTS)
def test_variant_trains_on_smollm2(hh16_file, tmp_path, variant):
    out = tmp_path / variant
    extra = []
    if variant == "sparsepo_activation":
        variant, extra = "sparsepo", ["--set", "token_signal={type: activation_masks}"]
    if variant.startswith("tisdpo"):  # uniform importance weights: exercises the weights path end to end
        rows = [json.loads(ln) for ln in hh16_file.read_text().splitlines()]
        from unipo.data.tokenize import prepare_pairs, tokenizer_fingerprint
        from unipo.models.builtin import resolve_builtin
        from unipo.models.loading import load_tokenizer

        tok = load_tokenizer(str(resolve_builtin("smollm2-135m-instruct")))
        pairs, _ = prepare_pairs(rows, tok, max_length=100000, max_prompt_length=99999)
        for r, p in zip(rows, pairs, strict=True):
            r["chosen_weights"] = [1.0] * len(p.chosen_ids)
            r["rejected_weights"] = [1.0] * len(p.rejected_ids)
            r["tokenizer"] = tokenizer_fingerprint(tok)
        weighted = tmp_path / "weighted.jsonl"
        weighted.write_text("".join(json.dumps(r) + "\n" for r in rows))
        extra = ["--data", str(weighted)]
        if variant == "tisdpo":  # random weights in [0.5, 1.5]: the KL term is weighted for real
            import random

            rng = random.Random(0)
            for r in rows:
                r["chosen_weights"] = [rng.uniform(0.5, 1.5) for _ in r["chosen_weights"]]
                r["rejected_weights"] = [rng.uniform(0.5, 1.5) for _ in r["rejected_weights"]]
            weighted.write_text("".join(json.dumps(r) + "\n" for r in rows))
    history = train_two_steps_on_smollm2(hh16_file, out, variant, *extra)
    if variant == "tisdpo":
        assert math.isfinite(history[1]["kl/chosen"]) and history[0]["weights/chosen_std"] > 0.1
    if variant == "tdpo2":
        assert history[0]["kl/chosen"] == pytest.approx(0.0, abs=1e-3)  # policy == reference at step 0
        assert math.isfinite(history[1]["kl/rejected"])
    if variant == "bmc":
        assert history[0]["weights/chosen_mean"] >= 1.0
    if variant == "sparsepo":
        assert "mask/mean" in history[0]


@pytest.mark.slow
@pytest.mark.parametrize("variant", MORE_VARIANTS)
def test_more_variant_trains_on_smollm2(hh8_file, tmp_path, variant):
    out = tmp_path / variant
    history = train_two_steps_on_smollm2(hh8_file, out, variant)
    if variant in ("beta_dpo", "alpha_dpo"):  # the moving statistics are saved with the model, after 2 updates
        state = json.loads((out / "unipo_objective_state.json").read_text())
        assert [s["steps"] for s in state.values()] == [2.0]
        assert all(math.isfinite(v) for s in state.values() for v in s.values())
        key = "beta_dpo/beta" if variant == "beta_dpo" else "alpha_dpo/margin_std"
        assert all(math.isfinite(h[key]) for h in history)
    if variant == "beta_dpo":
        assert history[0]["beta_dpo/kept"] == pytest.approx(0.75)  # 3 of 4 pairs (ρ = 0.2)
    if variant == "sampo":
        assert 0 < history[0]["weights/chosen_mean"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("variant", TRL_VARIANTS)
def test_variant_trains_on_smollm2_and_hh_pairs(hh16_file, tmp_path, variant):
    out = tmp_path / variant
    history = train_two_steps_on_smollm2(hh16_file, out, variant)
    if variant == "wpo":  # the policy's own probabilities of HH responses: weights well below 1, positive
        assert 0 < history[0]["pair_weighting/mean"] < 1
    if variant in ("cpo", "orpo"):
        assert math.isfinite(history[0]["nll"]) and history[0]["nll"] > 0
    if variant == "ld_dpo":
        assert history[0]["weights/chosen_mean"] <= 1.0


@pytest.fixture(scope="module")
def listwise_file(tmp_path_factory):
    """16 short HH-RLHF rows as explicit-prompt conversational rows with K = 2 rejected responses."""
    from tests.conftest import HH_FILE

    out = tmp_path_factory.mktemp("data") / "listwise.jsonl"
    rows = []
    with gzip.open(HH_FILE, "rt") as f:
        for n, line in enumerate(f, start=1):
            raw = json.loads(line)
            if len(raw["chosen"]) > 600 or len(raw["rejected"]) > 600:
                continue
            pair = normalize_row(raw, file=str(HH_FILE), row_number=n)
            words = pair.chosen[-1]["content"].split()
            if len(pair.chosen) != 1 or len(words) < 6:
                continue
            truncated = [{"role": "assistant", "content": " ".join(words[: len(words) // 2])}]
            rows.append({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": [pair.rejected, truncated]})
            if len(rows) == 16:
                break
    assert len(rows) == 16, f"{HH_FILE}: fewer than 16 usable rows"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.mark.slow
def test_listwise_dpo_trains_on_smollm2(listwise_file, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(listwise_file), "--output-dir", str(out), "--variant", "listwise_dpo",
               "--max-steps", "2", "--per-device-batch-size", "4", "--max-length", "256", "--max-prompt-length",
               "192", "--learning-rate", "1e-5", "--no-progress", "--set", "plots=false", "--set", "eval_fraction=0.25",
               "--set", "precision=fp32"])
    assert rc == 0
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train = [h for h in history if "loss" in h]
    assert len(train) == 2 and all(math.isfinite(h["loss"]) for h in train)
    # step 1: the policy is the reference, every z_k = 0, so the loss is log(1 + K) = log 3 for K = 2
    assert train[0]["loss"] == pytest.approx(math.log(3), abs=1e-3)
    assert math.isfinite(train[1]["rewards/rejected_all"])
    evals = [h for h in history if "eval_loss" in h]
    assert evals and math.isfinite(evals[-1]["eval_loss"])
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["listwise"] == 16 and summary["listwise_rejected"] == 32


# ---- a full disk while a checkpoint or the final model is saved (issue 23, item 3; docs/faults.md;
# was tests/test_faults_save.py) ----

@pytest.mark.integration
def test_disk_full_in_a_checkpoint_then_in_the_final_save_then_resume(tiny_model_dir, data, tmp_path, capsys,
                                                                      monkeypatch):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    args = train_args(tiny_model_dir, data, out, "--save-steps", "1", "--set", "plots=false")
    # 1. the disk fills while checkpoint-2's tokenizer is saved
    tokenizer_save_fails_in(monkeypatch, lambda d: d.name == "checkpoint-2")
    assert main(args) == 2
    one_error_line(capsys.readouterr().err, "no space left on the device", "--resume")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # the torn one is removed
    assert not (out / "model.safetensors").exists()
    # 2. resumed; now the disk fills while the final model's tokenizer is saved
    monkeypatch.undo()
    tokenizer_save_fails_in(monkeypatch, lambda d: d == out)
    assert main([*args, "--resume"]) == 2
    one_error_line(capsys.readouterr().err, "no space left on the device")
    left = {p.name for p in out.iterdir()}
    assert {"checkpoint-1", "checkpoint-2", "metrics.jsonl"} <= left
    assert not left & {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.json",
                       "unipo_config.yaml"}, left  # the half-written final model is gone
    # 3. resumed with room on the disk: the final model is checkpoint-2's weights
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    final, ckpt = load_file(out / "model.safetensors"), load_file(out / "checkpoint-2" / "model.safetensors")
    assert final.keys() == ckpt.keys() and all(final[k].equal(ckpt[k]) for k in final)
    assert (out / "trainer_state.json").exists() and (out / "unipo_config.yaml").exists()  # marked finished


# ---- refused before any model loads, naming the key, file and row; a refused run leaves no directory it
# created (issue 23, items 2, 7, 8 and 10; was tests/test_faults_train.py) ----

@pytest.mark.integration
@pytest.mark.parametrize("how,key", [
    (["--beta=nan"], "beta"), (["--beta=inf"], "beta"), (["--set", "beta=.nan"], "beta"),
    ("beta: .nan", "beta"), ("learning_rate: .nan", "learning_rate"), ("warmup_ratio: .nan", "warmup_ratio"),
    ("variant: {preset: simpo, gamma: .inf}", "gamma"), (["--set", "variant={preset: dpo, beta: -.inf}"], "beta"),
    ('packing: "no"', "packing"), (["--set", 'share_prompt="false"'], "share_prompt"),
    (["--learning-rate", "1e39"], "learning_rate"),
])
def test_bad_numbers_and_booleans_are_refused_naming_the_key(tiny_model_dir, data, tmp_path, capsys, how, key):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, data, out)
    if isinstance(how, str):  # a YAML file (without the flag of the same key, which would override it)
        (tmp_path / "run.yaml").write_text(how + "\n")
        flag = "--" + key.replace("_", "-")
        if flag in args:
            i = args.index(flag)
            del args[i:i + 2]
        how = ["--config", str(tmp_path / "run.yaml")]
    assert main([*args, *how]) == 2
    line = train_error_line(capsys)
    assert f"{key} " in line or f"'{key}'" in line
    assert any(w in line for w in ("finite", "true or false", "out of range")), line
    assert not out.exists()


@pytest.mark.integration
def test_a_pair_weight_beyond_float32_is_refused_naming_file_and_row(tiny_model_dir, tmp_path, capsys):
    rows = [{**r, "w": 1.0} for r in ROWS]
    rows[2]["w"] = 1e308  # finite in Python (float64), inf in the float32 loss
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--weight-column", "w")) == 2
    line = train_error_line(capsys)
    assert f"{data}, row 3, field 'w': the pair weight must be a finite number >= 0, got 1e+308" in line
    assert not out.exists()


@pytest.mark.integration
def test_a_refused_run_leaves_no_directory_it_created(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", [ROWS[0], {**ROWS[1], "chosen": ""}])
    out = tmp_path / "new" / "run"
    assert main(train_args(tiny_model_dir, data, out)) == 2
    assert "row 2, field 'chosen'" in train_error_line(capsys)
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "mine"  # a directory the user made is left where it was
    existing.mkdir()
    assert main(train_args(tiny_model_dir, data, existing)) == 2
    assert existing.is_dir()


@pytest.mark.integration
def test_max_length_above_the_models_positions_is_refused(tiny_model_dir, data, tmp_path, capsys):
    limit = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--max-length", str(limit + 1))) == 2
    line = train_error_line(capsys)
    assert f"max_length {limit + 1} is above the position limit" in line and f"at most {limit}" in line
    assert not out.exists()
