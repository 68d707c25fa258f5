"""``unipo eval``: measure a trained run against its reference model on held-out data.

Pairwise metrics (implicit-reward accuracy and margin per the variant's own score and per the plain DPO
log-ratio, the ECE of σ(margin)), and generation metrics on held-out prompts (KL(π‖π_ref) from sampled
responses, distinct-1/2, self-BLEU, predictive entropy, and a verifier's pass rate where the task has one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unipo.errors import UnipoError
from unipo.eval.config import EvalOptions, JudgeOptions
from unipo.eval.generation import generation_metrics
from unipo.eval.metrics import fdpo_calibration, pairwise_calibration, reward_accuracy_and_margin
from unipo.objective import Objective
from unipo.training.rundir import RunConfig, RunDir, write_json


def load_policy(run_dir: str | Path, dtype: torch.dtype = torch.float32):
    """A run's trained model: a full checkpoint, or LoRA adapters on their base model. A damaged directory
    or non-finite weights are refused with one line (:mod:`unipo.models.checks`; issue 23, items 4 and 5)."""
    from unipo.models.checks import check_model_dir, check_weights_finite
    from unipo.models.loading import load_model

    run = Path(run_dir)
    check_model_dir(run)
    if RunDir(run).is_adapter:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(run), dtype=dtype).eval()
    else:
        model = load_model(str(run), dtype=dtype, trainable=False)
    check_weights_finite(model, run, use="evaluated or sampled from")
    return model


def run_config(run_dir: str | Path) -> RunConfig:
    """The configuration a run saved, typed (:meth:`RunDir.config`; refused in one line when there is none)."""
    return RunDir(run_dir).config()


@torch.no_grad()
def pair_scores(policy, reference, objective: Objective, pairs: list[dict], collate, *, batch_size: int,
                chunk_size: int = 1024) -> dict[str, list[float]]:
    """Per pair: the variant's own reward margin (β-scaled, as the loss sees it; ``None`` where the variant
    needs inputs that evaluation does not have, such as a token signal that exists only during training),
    the plain DPO log-ratio margin Δ and the policy's mean token log-prob of each response. Scored by
    :func:`unipo.training.step.preference_step`, the trainer's own step; the reference's log-probs come from the
    pairs when they carry them (the reference cache)."""
    from unipo.layout import PackedBatch
    from unipo.training.reference import Reference
    from unipo.training.step import preference_step

    variant, dpo, mean_w, mean_l = [], [], [], []
    device = next(policy.parameters()).device
    ref = Reference("copy", reference) if reference is not None else Reference("adapter")
    # the plain DPO objective scores the variants whose inputs evaluation cannot supply (a token signal that
    # exists only during training): found on the first batch, then used for every batch (one pass each)
    scorer: Objective | None = objective
    plain = Objective("listwise_dpo")  # plain DPO on pairs; it also scores pairs with several rejected responses
    for start in tqdm(range(0, len(pairs), batch_size), desc="scoring held-out pairs", leave=False, disable=None):
        batch = PackedBatch.from_dict(collate(pairs[start:start + batch_size])).to(device)
        out = None
        if scorer is not None:
            try:
                out = preference_step(policy, ref, batch, scorer, chunk_size=chunk_size)
            except UnipoError:
                scorer = None
        if out is None or out.log_ratio_margins is None:
            variant.extend([None] * batch.num_pairs if out is None else
                           (out.chosen_rewards - out.rejected_rewards).float().tolist())
            out = preference_step(policy, ref, batch, plain, chunk_size=chunk_size)
        else:
            variant.extend((out.chosen_rewards - out.rejected_rewards).float().tolist())
        dpo.extend(out.log_ratio_margins.float().tolist())
        mean_w.extend(out.extras["mean_logps/chosen"].double().tolist())
        mean_l.extend(out.extras["mean_logps/rejected"].double().tolist())
    return {"variant_margins": variant, "dpo_margins": dpo, "mean_logps_chosen": mean_w, "mean_logps_rejected": mean_l}


def evaluate_models(policy, reference, tokenizer, objective: Objective, pairs: list[dict], *,
                    share_prompt: bool = True, packing: bool = True, batch_size: int = 8, n_prompts: int = 32,
                    n_samples: int = 4, max_new_tokens: int = 64, verifier: Callable[[int, str], float] | None = None,
                    seed: int = 0, beta_for_dpo: float = 0.1, judge: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """All metrics for one policy against one reference on tokenized held-out ``pairs``.

    ``dpo_*`` metrics use the plain DPO reward β·Δ with ONE β for every variant (default 0.1, DPO's), so
    they compare across variants whose own β differ (SimPO's is 2.0)."""
    from unipo.training.collate import collate_for

    collate = collate_for(policy, tokenizer.pad_token_id, share_prompt=share_prompt, packing=packing)
    scores = pair_scores(policy, reference, objective, pairs, collate, batch_size=batch_size)
    metrics: dict[str, Any] = {}
    beta = float(beta_for_dpo)
    keys = ("reward_accuracy", "margin", "reward_accuracy_se", "margin_se")
    dpo_margins = [beta * d for d in scores["dpo_margins"]]
    dpo = reward_accuracy_and_margin(dpo_margins)
    metrics.update({f"dpo_{k}": dpo[k] for k in keys})
    bins = None
    if all(v is not None for v in scores["variant_margins"]):
        own = reward_accuracy_and_margin(scores["variant_margins"])
        metrics.update({k: own[k] for k in keys})
        metrics["ece"], bins = pairwise_calibration(scores["variant_margins"])
    else:
        metrics.update({k: dpo[k] for k in keys})
        metrics["ece"], bins = pairwise_calibration(dpo_margins)
    # the f-DPO authors' calibration (cali/cali_plot.py), beside unipo's pairwise ECE
    metrics["ece_fdpo"], _ = fdpo_calibration(scores["mean_logps_chosen"], scores["mean_logps_rejected"])
    prompts = [p["prompt_ids"] for p in pairs[:n_prompts]]
    items: dict[str, Any] = {}  # per held-out prompt, in order: what paired comparisons between runs need
    if n_samples > 0 and prompts:
        gen = generation_metrics(policy, reference, tokenizer, prompts, n_samples=n_samples,
                                 max_new_tokens=max_new_tokens, verifier=verifier, batch_size=batch_size, seed=seed)
        metrics.update({k: v for k, v in gen.items() if isinstance(v, int | float)})
        if verifier is not None:  # the verifier's pass rate at greedy decoding, the number a user quotes
            greedy = generation_metrics(policy, None, tokenizer, prompts, n_samples=1, temperature=0.0,
                                        max_new_tokens=max_new_tokens, verifier=verifier, batch_size=batch_size,
                                        keep_samples=True)
            metrics["greedy_pass_rate"] = greedy["pass_rate"]
            items = {"sampled_pass": gen["pass_per_prompt"], "greedy_pass": greedy["pass_per_prompt"],
                     "greedy_answers": [s[0] for s in greedy["samples"]]}
        items.update(entropy=gen["entropy_per_prompt"], distinct_2=gen["distinct_2_per_prompt"])
    items["chosen_logp"] = scores["mean_logps_chosen"]  # per held-out pair: the policy's mean token log-prob
    if judge and prompts:
        from unipo.eval.judge import judge_win_rate

        metrics.update(judge_win_rate(policy, reference, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                      batch_size=batch_size, **judge))
    metrics["n_pairs"] = len(pairs)
    # per pair, in held-out order: for paired comparisons between runs scored on the same pairs
    pair_margins = {"variant": scores["variant_margins"], "dpo": dpo_margins}
    return {"metrics": metrics, "calibration_bins": bins, "pair_margins": pair_margins, "items": items}


def prompt_verifier(tokenizer, pairs: list[dict], task: str | None,
                    verifier: str | None = None) -> Callable[[int, str], float] | None:
    """The scorer of a held-out prompt's answer: a built-in task's verifier (1.0 / 0.0) or a user's
    ``module:function`` (``verifier``), called as ``function(prompt_text, response_text)`` on the decoded
    held-out prompt and returning a bool or a score in [0, 1] (as ``unipo iterate --verifier``). A function that
    raises or returns anything else stops the evaluation with one line naming it and the prompt."""
    if verifier:
        from unipo.io.plugins import import_function

        fn = import_function(verifier, "--verifier")
        texts = [tokenizer.decode(p["prompt_ids"], skip_special_tokens=True) for p in pairs]

        def user_check(i: int, text: str) -> float:
            try:
                score = fn(texts[i], text)
            except Exception as exc:  # the user's code: one line naming it and the prompt
                raise UnipoError(f"--verifier {verifier} raised {type(exc).__name__} on held-out prompt {i}: "
                                 f"{exc}") from None
            if isinstance(score, bool) or (isinstance(score, int | float) and 0.0 <= float(score) <= 1.0):
                return float(score)
            raise UnipoError(f"--verifier {verifier} returned {score!r} on held-out prompt {i}: expected a bool or "
                             f"a number in [0, 1]")

        return user_check
    if task in (None, "none"):
        return None
    if task != "arithmetic":
        raise UnipoError(f"unknown task {task!r}; built-in tasks: arithmetic")
    from unipo.tasks.arithmetic import parse_problem, verify

    problems = [parse_problem(tokenizer.decode(p["prompt_ids"])) for p in pairs]

    def check(i: int, text: str) -> float:
        return float(problems[i] is not None and verify(problems[i], text))

    return check


def with_reference_logps(ref_model, ref_path: str, tokenizer, pairs: list[dict], *, share_prompt: bool,
                         packing: bool, batch_size: int, chunk_size: int = 1024) -> list[dict]:
    """Add the reference's per-token log-probs to ``pairs``, from the on-disk cache that training's
    ``reference: precomputed`` uses (keyed by model files, tokenizer and every token id), so evaluating
    several runs of one comparison on the same held-out pairs runs the reference over them once."""
    from unipo.training.collate import collate_for
    from unipo.training.reference import precompute_cached

    collate = collate_for(ref_model, tokenizer.pad_token_id, share_prompt=share_prompt, packing=packing)
    precompute_cached(ref_model, ref_path, tokenizer, pairs, collate, ref_dtype=torch.float32,
                      share_prompt=share_prompt, batch_size=batch_size, chunk_size=chunk_size,
                      device=next(ref_model.parameters()).device, progress=False)
    return pairs


def evaluate_run(run_dir: str | Path, data: str, options: EvalOptions | None = None,
                 judge: JudgeOptions | None = None) -> dict[str, Any]:
    """Evaluate a run directory on held-out ``data`` against its reference model as ``options`` say
    (:class:`~unipo.eval.config.EvalOptions`; default: its defaults); write ``eval.json``; return the result.

    ``judge``: a win rate of the policy's greedy answers against the reference's
    (:class:`~unipo.eval.config.JudgeOptions`; None, or one naming no judge: none). With
    ``options.reference_cache`` the reference's log-probs of the held-out pairs come from (or go to) the
    reference cache (:func:`with_reference_logps`) for variants without a per-position KL term.
    ``options.max_length`` / ``max_prompt_length``: truncation of the held-out pairs (None: the run's training
    truncation); what was truncated is printed and recorded in ``eval.json`` (``truncation``).
    ``options.on_invalid``: error | skip for held-out rows that fail validation (None: the run's setting); what
    was dropped is recorded in ``eval.json`` (``data_summary``). ``options.verifier``: a user's
    ``module:function`` that scores each held-out prompt's answers (:func:`prompt_verifier`), instead of a
    built-in ``task``'s."""
    options = options or EvalOptions()
    options.check()
    endpoint = judge.endpoint() if judge is not None else None
    out_path = Path(options.out) if options.out else RunDir(run_dir).eval_file
    with RunDir(out_path.parent).lock("unipo eval"):
        result = _evaluate(run_dir, data, options, endpoint)
        write_json(out_path, result)
    return result


def _evaluate(run_dir: str | Path, data: str, options: EvalOptions,
              judge: dict[str, Any] | None) -> dict[str, Any]:
    from dataclasses import replace

    from unipo.io.console import log
    from unipo.models.checks import check_model_dir, check_weights_finite
    from unipo.models.loading import load_model, load_tokenizer, resolve_model_path
    from unipo.training.plan import DataSettings, check_listwise_rows, data_needs, prepare_data

    saved = RunDir(run_dir).config()
    check_model_dir(run_dir, tokenizer=True)  # before the data is read
    objective = Objective(saved.objective)
    lengths = {k: v for k, v in (("max_length", options.max_length),
                                 ("max_prompt_length", options.max_prompt_length)) if v}
    # held-out pairs are scored unweighted: the training data's pair-weight column does not apply to them
    settings = replace(DataSettings.saved(saved.training), **lengths, weight_column=None,
                       **({"on_invalid": options.on_invalid} if options.on_invalid else {}))
    settings.check()
    needs = data_needs(objective, saved.training.get("weights_columns"), saved.token_signal,
                       saved.training.get("score_columns"), saved.training.get("gold_column"))
    tokenizer = load_tokenizer(str(run_dir))
    weights_columns = needs.weights_columns if _has_columns(data, needs.weights_columns) else None
    if needs.weights_columns and weights_columns is None:
        log(f"eval: {data} has no {' / '.join(needs.weights_columns)} columns: the variant's own margin needs its "
            f"token weights, so the pair metrics use the plain DPO margin (reward_accuracy = dpo_reward_accuracy)")
    pairs, summary = prepare_data(settings, tokenizer, data, options.limit,
                                  needs=replace(needs, weights_columns=weights_columns),
                                  counted_in=f"{RunDir.EVAL} (data_summary)")
    check_listwise_rows(objective, pairs, data)
    source = "given" if lengths else "the run's training truncation; --max-length / --max-prompt-length change it"
    log(f"eval truncation: max_length {settings.max_length}, max_prompt_length {settings.max_prompt_length} "
        f"({source}); {summary.truncated_prompt} prompts and {summary.truncated_response} pairs' responses truncated")
    policy = load_policy(run_dir)
    ref_path = resolve_model_path(options.reference) if options.reference else saved.ref_model_path
    ref_model = load_model(ref_path, dtype=torch.float32, trainable=False)
    check_weights_finite(ref_model, ref_path, use="the reference")
    if options.reference_cache and not objective.requirements.live_reference:
        with_reference_logps(ref_model, ref_path, tokenizer, pairs, share_prompt=saved.share_prompt,
                             packing=saved.packing, batch_size=options.batch_size, chunk_size=saved.chunk_size)
    verifier = prompt_verifier(tokenizer, pairs, options.task, options.verifier)
    result = evaluate_models(policy, ref_model, tokenizer, objective, pairs, share_prompt=saved.share_prompt,
                             packing=saved.packing, batch_size=options.batch_size, n_prompts=options.n_prompts,
                             n_samples=options.n_samples, max_new_tokens=options.max_new_tokens, verifier=verifier,
                             seed=options.seed, judge=judge)
    result["run"] = str(run_dir)
    result["data"] = str(data)
    result["truncation"] = {"max_length": settings.max_length, "max_prompt_length": settings.max_prompt_length,
                            "truncated_prompts": summary.truncated_prompt,
                            "truncated_responses": summary.truncated_response}
    result["data_summary"] = summary.to_dict()
    return result


def _has_columns(data: str, columns: tuple[str, str] | None) -> bool:
    """Whether the first row of ``data`` carries every one of ``columns`` (per-token weights of a held-out file)."""
    if not columns:
        return False
    from unipo.data.formats import load_rows

    first = next(load_rows(data), None)
    return first is not None and all(c in first[1] for c in columns)


def format_metrics(metrics: dict[str, Any]) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}"
                     for k, v in metrics.items())
