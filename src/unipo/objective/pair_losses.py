"""Pair loss shapes (part 8 of the unifying view).

Every loss receives :class:`PairTerms`: the combined logit ``z = β(h_w − h_l − D) − γ − α_len(|y_w| − |y_l|)``
and, for the losses that treat the sides separately, the per-side scores. All are stable for |z| in the
tens of thousands (log-sigmoids via softplus, exponentials capped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from unipo.errors import ConfigError, UnipoError
from unipo.objective.links import capped_exp
from unipo.objective.moving import MovingStats
from unipo.objective.protocols import Params
from unipo.objective.registry import Needs, Param, PresetSpec, StatefulPart, get_part, register
from unipo.objective.sides import PairLossOut, PairTerms


def _eps(default: float, hi: float, **open_ends: bool) -> Param:
    """The label-smoothing parameter ε of a pair loss, valid in [0, hi] (ends open as given)."""
    return Param(default, "ε: the probability that a preference label is flipped", lo=0, hi=hi, **open_ends)


def nls(z: torch.Tensor) -> torch.Tensor:
    """−log σ(z), computed as softplus(−z)."""
    return F.softplus(-z)


@register("pair_loss", "sigmoid", formula="−log σ(z)", source="DPO (Rafailov et al. 2023) Eq. 7")
def sigmoid_loss(t: PairTerms, params: Params) -> PairLossOut:
    """The Bradley–Terry log-sigmoid loss."""
    return PairLossOut(nls(t.logits))


@register("pair_loss", "cdpo", params={"label_smoothing": _eps(0.1, 1)},
          formula="−(1−ε) log σ(z) − ε log σ(−z)", source="conservative DPO (Mitchell 2023)")
def conservative_loss(t: PairTerms, params: Params) -> PairLossOut:
    """Label smoothing: the preference label is flipped with probability ε."""
    eps = float(params["label_smoothing"])
    return PairLossOut((1 - eps) * nls(t.logits) + eps * nls(-t.logits))


@register("pair_loss", "robust", params={"label_smoothing": _eps(0.1, 0.5, hi_open=True)},
          formula="[−(1−ε) log σ(z) + ε log σ(−z)] / (1 − 2ε)", source="rDPO (Chowdhury et al. 2024) Eq. 8")
def robust_loss(t: PairTerms, params: Params) -> PairLossOut:
    """Unbiased loss under label noise of rate ε ∈ [0, 0.5)."""
    eps = float(params["label_smoothing"])
    return PairLossOut(((1 - eps) * nls(t.logits) - eps * nls(-t.logits)) / (1 - 2 * eps))


@register("pair_loss", "hinge", formula="max(0, 1 − z)", source="SLiC (Zhao et al. 2023) Eq. 2")
def hinge_loss(t: PairTerms, params: Params) -> PairLossOut:
    """The hinge loss on the scaled log-ratio difference."""
    return PairLossOut(torch.relu(1.0 - t.logits))


@register("pair_loss", "ipo", formula="(z/β − 1/(2β))²", source="IPO (Azar et al. 2023) Eq. 17")
def ipo_loss(t: PairTerms, params: Params) -> PairLossOut:
    """IPO's squared loss with τ = β; with the ``ipo`` preset's mean aggregation z/β is the difference of
    length-normalised log-ratios, as agreed with the authors (and as TRL does)."""
    return PairLossOut((t.logits / t.beta - 1.0 / (2.0 * t.beta)) ** 2)


@register("pair_loss", "exo_pair", params={"label_smoothing": _eps(0.001, 0.5, lo_open=True, hi_open=True)},
          formula="σ(z)(log σ(z) − log(1−ε)) + σ(−z)(log σ(−z) − log ε)",
          source="EXO (Ji et al. 2024) Eq. 16, pairwise")
def exo_pair_loss(t: PairTerms, params: Params) -> PairLossOut:
    """Reverse KL between the model's pairwise preference distribution and the smoothed label [1−ε, ε]."""
    eps = float(params["label_smoothing"])
    z = t.logits
    return PairLossOut(torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
                       + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))


@register("pair_loss", "nca_pair", formula="−log σ(βh_w) − ½ log σ(−βh_w) − ½ log σ(−βh_l)",
          source="NCA (Chen et al. 2024) Eq. 11, pairwise", uses_logit=False)
def nca_pair_loss(t: PairTerms, params: Params) -> PairLossOut:
    """Noise-contrastive alignment: absolute rewards per side rather than their difference."""
    rw, rl = t.beta * t.chosen, t.beta * t.rejected
    return PairLossOut(nls(rw) + 0.5 * nls(-rw) + 0.5 * nls(-rl))


@register("pair_loss", "bco_pair", formula="−log σ(βh_w) − log σ(−βh_l)",
          source="BCO (Jung et al. 2024), pairwise form as in TRL (no running reward shift)", uses_logit=False)
def bco_pair_loss(t: PairTerms, params: Params) -> PairLossOut:
    """Binary classifier optimisation on the pair: chosen classified as good, rejected as bad."""
    return PairLossOut(nls(t.beta * t.chosen) + nls(-t.beta * t.rejected))


@register("pair_loss", "sppo_hard", formula="(h_w − 1/(2β))² + (h_l + 1/(2β))²",
          source="SPPO (Wu et al. 2024) Eq. 4.7 with hard probabilities", uses_logit=False)
def sppo_hard_loss(t: PairTerms, params: Params) -> PairLossOut:
    """SPPO with P = 1 for the winner and 0 for the loser."""
    return PairLossOut((t.chosen - 0.5 / t.beta) ** 2 + (t.rejected + 0.5 / t.beta) ** 2)


@register("pair_loss", "aot", params={"label_smoothing": _eps(0.0, 1)},
          formula="−(1−ε) log σ(βδ) − ε log σ(−βδ),  δ = sort(π_w − π_l) − sort(ζ_w − ζ_l) over the batch",
          source="AOT (Melnyk et al. 2024), paired", uses_logit=False, uses_scores=False)
def aot_loss(t: PairTerms, params: Params) -> PairLossOut:
    """Alignment via optimal transport: compares the SORTED batch distributions of the policy's and the
    prior's log-probability differences (a batch-level loss: examples interact)."""
    eps = float(params["label_smoothing"])
    pol, _ = torch.sort(t.policy_chosen - t.policy_rejected, dim=0)
    ref, _ = torch.sort(t.prior_chosen - t.prior_rejected, dim=0)
    z = t.beta * (pol - ref)
    return PairLossOut((1 - eps) * nls(z) + eps * nls(-z))


@register("pair_loss", "aot_pair", params={"label_smoothing": _eps(0.0, 1)},
          formula="−(1−ε) log σ(βδ) − ε log σ(−βδ),  δ = sort(h_w) − sort(h_l) over the batch",
          source="AOT (Melnyk et al. 2024), unpaired", uses_logit=False)
def aot_unpaired_loss(t: PairTerms, params: Params) -> PairLossOut:
    """AOT on the sorted chosen and rejected log-ratios separately (TRL's ``aot_unpaired``)."""
    eps = float(params["label_smoothing"])
    w, _ = torch.sort(t.chosen, dim=0)
    l, _ = torch.sort(t.rejected, dim=0)
    z = t.beta * (w - l)
    return PairLossOut((1 - eps) * nls(z) + eps * nls(-z))


@register("pair_loss", "apo_zero", formula="1 − σ(βh_w) + σ(βh_l)",
          source="APO (D'Oosterlinck et al. 2024) Eq. 7", uses_logit=False)
def apo_zero_loss(t: PairTerms, params: Params) -> PairLossOut:
    """Anchored preference optimisation: raise the chosen, lower the rejected likelihood."""
    return PairLossOut(1 - torch.sigmoid(t.beta * t.chosen) + torch.sigmoid(t.beta * t.rejected))


@register("pair_loss", "apo_down", formula="σ(βh_w) + 1 − σ(β(h_w − h_l))",
          source="APO (D'Oosterlinck et al. 2024) Eq. 8", uses_logit=False)
def apo_down_loss(t: PairTerms, params: Params) -> PairLossOut:
    """APO-down: lower the chosen likelihood, and the rejected one more."""
    return PairLossOut(torch.sigmoid(t.beta * t.chosen) + 1 - torch.sigmoid(t.beta * (t.chosen - t.rejected)))


@register("pair_loss", "discopop", params={
    "discopop_tau": Param(0.05, "temperature τ of the modulation", lo=0, lo_open=True)},
          formula="(1 − σ(z/τ))·(−log σ(z)) + σ(z/τ)·exp(−z)", source="DiscoPOP (Chan Lu et al. 2024) Eq. 5")
def discopop_loss(t: PairTerms, params: Params) -> PairLossOut:
    """The discovered log-ratio-modulated loss: logistic for negative, exponential for positive logits.
    exp(−z) is capped at exp(80) so that very negative logits stay finite."""
    z = t.logits
    mod = torch.sigmoid(z / float(params["discopop_tau"]))
    return PairLossOut(nls(z) * (1 - mod) + capped_exp(-z) * mod)


@register("pair_loss", "cal_dpo", params={
    "cal_weight": Param(0.5, "weight of the calibration terms (0.5 in the authors' released code)", lo=0)},
          formula="−log σ(z/β) + w·[(h_w − 1/(2β))² + (h_l + 1/(2β))²]",
          source="Cal-DPO (Xiao et al., NeurIPS 2024, arXiv 2412.14516) as implemented in the released code "
                 "tengxiao1/Cal-DPO scripts/dpo_trainer.py (loss_type 'Cal-DPO')",
          preset=PresetSpec("cal_dpo", "−log σ(ρ_w − ρ_l) + ½(ρ_w − 1/(2β))² + ½(ρ_l + 1/(2β))²",
                            "Xiao et al., NeurIPS 2024 (Cal-DPO, arXiv 2412.14516); the released code",
                            "as released: the Bradley–Terry term has no β; β sets only the calibration targets "
                            "±1/(2β) (the authors' 7B runs use β = 0.001–0.002; unipo's default is DPO's 0.1)"))
def cal_dpo_loss(t: PairTerms, params: Params) -> PairLossOut:
    """Calibrated DPO: the contrastive term plus squared errors that pull each side's log-ratio towards
    ±1/(2β), so the implicit rewards keep a scale (the chosen likelihood cannot fall while the margin grows).
    Written as in the authors' code: −log σ(Δ) with no β (z/β here), plus ``cal_weight`` (0.5) times the two
    squared errors (their batch-mean MSE, per pair)."""
    target = 0.5 / t.beta
    calibration = (t.chosen - target) ** 2 + (t.rejected + target) ** 2
    return PairLossOut(nls(t.logits / t.beta) + float(params["cal_weight"]) * calibration)


@register("pair_loss", "simper", formula="−exp(h_w) + exp(h_l)",
          source="SimPER (Xiao et al., ICLR 2025, arXiv 2502.00883); released code tengxiao1/SimPER "
                 "scripts/simper_trainer.py (loss_type 'SimPER')", uses_logit=False,
          preset=PresetSpec("simper", "−exp(ā(y_w)) + exp(ā(y_l))  (ā: mean token log-prob; exp(ā) = 1/perplexity)",
                            "Xiao et al., ICLR 2025 (SimPER, arXiv 2502.00883); the released code",
                            "no hyperparameter: β only scales the logged rewards; no reference model",
                            {"prior": "none", "aggregation": "mean"}))
def simper_loss(t: PairTerms, params: Params) -> PairLossOut:
    """SimPER: raise the chosen response's inverse perplexity exp(ā(y_w)) and lower the rejected one's. With the
    preset's constant prior and mean aggregation h = ā, the mean token log-probability (exp capped at e^80)."""
    return PairLossOut(capped_exp(t.rejected) - capped_exp(t.chosen))


@register("pair_loss", "beta_dpo", params={
    "beta_dpo_alpha": Param(0.6, "a: how strongly β follows the batch's margin (0 = static β)", lo=0),
    "beta_dpo_filter": Param(0.2, "ρ: the share of each batch's pairs filtered out", lo=0, hi=1, hi_open=True),
    "beta_dpo_momentum": Param(0.9, "m: momentum of the moving mean and std of the margin", lo=0, hi=1,
                               hi_open=True),
    "beta_dpo_seed": Param(0, "seed of the pair sampler (with the step count)", lo=0)},
          formula="−log σ(β_b·z/β) on the pairs kept,  β_b = β(1 + a(mean_kept(M) − M₀)),  M = z/β,  pair i kept "
                  "with probability ∝ exp(−(M_i − M₀)²/(2σ₀²))",
          source="β-DPO (Wu et al., NeurIPS 2024, arXiv 2407.08639); released code junkangwu/beta-DPO trainers.py "
                 "(preference_loss, mode_loss 'beta_DPO'; update_and_sync_tensor_mean)",
          preset=PresetSpec("beta_dpo", "−log σ(β_b Δ) averaged over the (1 − ρ)·B pairs drawn with probability ∝ "
                                        "exp(−(Δ_i − M₀)²/(2σ₀²)),  β_b = max(10⁻³, β(1 + a(mean_kept Δ − M₀)))",
                            "Wu et al., NeurIPS 2024 (β-DPO, arXiv 2407.08639); read: the released code",
                            "M₀, σ₀: moving mean/std (m = 0.9, from 0) of Δ, updated before use, in training only; "
                            "per process and per micro-batch (the released code all-gathers the global batch); "
                            "a = 0.6, ρ = 0.2 as in the authors' README"))
class BetaDPOLoss(StatefulPart):
    """β-DPO: a batch-level β that grows with the batch's margin above its moving mean, and β-guided filtering
    that keeps (1 − ρ) of the pairs, drawn without replacement with Gaussian weights around the moving mean
    (outliers, likely noisy labels, are dropped). Statistics are per process and per micro-batch: nothing is
    all-reduced (the released code all-gathers the global batch). In evaluation (``training`` false) the
    statistics are frozen and every pair is kept."""

    def __init__(self, params: Mapping[str, Any]):
        super().__init__(params)
        self.stats = MovingStats(float(params["beta_dpo_momentum"]))
        self.seed = int(params["beta_dpo_seed"])

    def _keep(self, margin: torch.Tensor, keep_share: float) -> torch.Tensor:
        """Indices of the pairs kept: drawn without replacement ∝ exp(−½((M − M₀)/σ₀)²) (uniform when σ₀ = 0),
        on a CPU generator seeded from the seed and the step count (reproducible on any device)."""
        m = margin.detach().to("cpu", torch.float64)
        std = self.stats.std
        w = torch.exp(-0.5 * ((m - self.stats.mean) / std) ** 2) if std > 0 else torch.ones_like(m)
        w = w.clamp_min(1e-300)  # far outliers underflow to 0; multinomial needs enough non-zero weights
        k = max(1, int(m.numel() * keep_share))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stats.steps)
        return torch.multinomial(w, k, replacement=False, generator=g).to(margin.device)

    def __call__(self, t: PairTerms, params: Params) -> PairLossOut:
        margin = (t.logits / t.beta).detach()  # M = Δ for DPO's parts
        if self.training:
            self.stats.update(margin)
            idx = self._keep(margin, 1.0 - float(params["beta_dpo_filter"]))
        else:
            idx = torch.arange(margin.numel(), device=margin.device)
        beta_b = max(1e-3, t.beta * (1 + float(params["beta_dpo_alpha"]) * (float(margin[idx].mean())
                                                                             - self.stats.mean)))
        self.metrics = {"beta_dpo/beta": torch.tensor(beta_b), "beta_dpo/margin_mean": torch.tensor(self.stats.mean),
                        "beta_dpo/margin_std": torch.tensor(self.stats.std),
                        "beta_dpo/kept": torch.tensor(float(idx.numel()) / margin.numel())}
        losses = nls(t.logits * (beta_b / t.beta))
        if not self.training:
            return PairLossOut(losses)
        selected = torch.zeros_like(losses).index_fill(0, idx, 1.0)
        return PairLossOut(losses, selected)

    def state_dict(self) -> dict[str, float]:
        return self.stats.state_dict()

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.stats.load_state_dict(state)


@register("pair_loss", "mixture", mixes="pair_loss_weights", params={
    "pair_loss_weights": Param(None, "the pair losses mixed and their weights, {name: weight > 0} (TRL's loss_type + "
                                     "loss_weights)", kind="weights")},
          formula="Σ_k w_k·ℓ_k  (every mixed pair loss on the same logit z and scores h_w, h_l; the NLL term is "
                  "nll_weight)",
          source="TRL's DPOConfig(loss_type=[...], loss_weights=[...]) (trl/trainer/dpo_trainer.py::_compute_loss, "
                 "TRL 1.16); MPO (Wang et al. 2024, arXiv 2411.10442)",
          preset=PresetSpec("mpo", "0.8·(−log σ(βΔ)) + 0.2·(−log σ(βρ(y_w)) − log σ(−βρ(y_l))) + 1.0·NLL(y_w)",
                            "Wang et al. 2024 (MPO, arXiv 2411.10442): preference + quality + generation loss; "
                            "weights and loss types as TRL's DPOConfig documents for MPO (loss_type=['sigmoid', "
                            "'bco_pair', 'sft'], loss_weights=[0.8, 0.2, 1.0])",
                            "the quality term is TRL's bco_pair (no running reward shift δ, which the paper's BCO "
                            "has); the NLL is TRL's sft reduction (one token mean over the batch's chosen tokens: "
                            "nll_token_mean true)",
                            {"pair_loss_weights": {"sigmoid": 0.8, "bco_pair": 0.2}, "nll_weight": 1.0,
                             "nll_token_mean": True}))
class PairLossMixture(StatefulPart):
    """A weighted sum of pair losses, each on the same logit and scores (TRL's ``loss_type=[...]`` with
    ``loss_weights``: its loss is Σ_k w_k·mean_i ℓ_k,i, the mean of this per-pair sum). Each component's mean is
    logged as ``mixture/NAME`` (unweighted). Registered as a class for its per-objective component list and
    metrics; it keeps no state. The mixed losses share every other part (prior, weights, aggregation, link, KL,
    margins) and their parameters; stateful (β-DPO) and listwise pair losses are refused in a mixture
    (:mod:`unipo.objective.config`)."""

    def __init__(self, params: Mapping[str, Any]):
        super().__init__(params)
        self.components = [(name, float(w), get_part("pair_loss", name).fn)
                           for name, w in params["pair_loss_weights"].items()]

    def __call__(self, t: PairTerms, params: Params) -> PairLossOut:
        total: torch.Tensor | float = 0.0
        self.metrics = {}
        for name, weight, fn in self.components:
            losses = fn(t, params).losses
            self.metrics[f"mixture/{name}"] = losses.detach().mean()
            total = total + weight * losses
        return PairLossOut(total)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, stably (log1p(−eˣ) below −log 2, log(−expm1(x)) above: Mächler 2012). A log-prob
    cannot be positive: x is clamped at −eps of its dtype, so that a probability rounded to 1 stays finite."""
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@register("pair_loss", "orpo",
          formula="−β·log σ(log odds(y_w) − log odds(y_l)),  log odds(y) = ā(y) − log(1 − exp(ā(y)))",
          source="ORPO (Hong et al., EMNLP 2024, arXiv 2403.07691) Eq. 4–7, as TRL computes it "
                 "(trl/experimental/orpo/orpo_trainer.py::odds_ratio_loss, TRL 1.16) and the authors' released "
                 "code (xfactlab/orpo src/orpo_trainer.py::compute_loss)",
          uses_logit=False, uses_scores=False, uses_prior=False,
          preset=PresetSpec("orpo", "NLL(y_w) − λ·log σ(log(odds(y_w)/odds(y_l))),  odds(y) = P/(1 − P),  "
                                    "P = exp(mean_t log π_θ(y_t))",
                            "Hong et al., EMNLP 2024 (ORPO, arXiv 2403.07691); formula read from TRL's code and the "
                            "authors' released code (xfactlab/orpo)",
                            "λ is β (0.1, TRL's default); reference-free; the NLL is over the chosen RESPONSE tokens "
                            "(TRL's and the released code's cover the prompt too; nll_token_mean: true gives their "
                            "batch token mean); the released code's mean log-prob also counts the first padding "
                            "position and its NLL skips every EOS (docs/family_trl.md)",
                            config={"prior": "none", "aggregation": "mean", "nll_weight": 1.0}))
def orpo_loss(t: PairTerms, params: Params) -> PairLossOut:
    """The odds-ratio term of ORPO on the aggregated policy log-probs (the mean over response tokens in the
    preset: P = exp(ā) is the length-normalised sequence probability); its NLL term is the objective's
    ``nll_weight``. β plays the paper's λ and multiplies the log-sigmoid (it is not a temperature here)."""
    pw, pl = t.policy_chosen, t.policy_rejected
    log_odds = (pw - pl) - (log1mexp(pw) - log1mexp(pl))
    return PairLossOut(t.beta * nls(log_odds))


@register("pair_loss", "repo", formula="max(0, −z)/β  (= max(0, γ/β − (h_w − h_l)) with a margin γ)",
          source="RePO (Wu et al. 2025, arXiv 2503.07426), the ReLU max-margin loss; released code junkangwu/RePO "
                 "scripts/simpo_trainer.py::get_batch_loss_metrics (loss_type 'repo')",
          preset=PresetSpec("repo", "max(0, −(ā(y_w) − ā(y_l) − γ))  (ā: mean token log-prob)",
                            "Wu et al. 2025 (RePO, arXiv 2503.07426); the released code (junkangwu/RePO, "
                            "training_configs/llama-3-8b-instruct-repo.yaml)",
                            "γ = gamma_beta_ratio = 0.6 (the authors' Llama-3-8B-Instruct config; Mistral 0.4, "
                            "Gemma-2 0.4); the loss does not depend on β: β (2.5 as in that config) only scales "
                            "the logged rewards; reference-free",
                            {"prior": "none", "aggregation": "mean", "beta": 2.5, "gamma_beta_ratio": 0.6}))
def repo_loss(t: PairTerms, params: Params) -> PairLossOut:
    """RePO: the ReLU max-margin loss, SimPO's limit β → ∞ (−log σ(z)/β → max(0, −z)/β). A pair whose margin
    already exceeds γ contributes nothing (and no gradient); the others get the same weight 1. Written on the
    combined logit divided by β, so that with ``gamma_beta_ratio`` = γ it is max(0, γ − (h_w − h_l)) whatever β is,
    as the released code computes ``relu(−(pi_logratios − gamma_beta_ratio))``."""
    return PairLossOut(torch.relu(-t.logits) / t.beta)


def bpo_log_ratio(z: torch.Tensor, params: Params) -> torch.Tensor:
    """log R_θ = −z (Algorithm 1 line 4 of BPO: R_θ = [π_θ(y_l)π_ref(y_w) / (π_θ(y_w)π_ref(y_l))]^β = exp(−βΔ)),
    clipped to [log r_min, log r_max] where those are set (the paper's runs clip R_θ, Appendix C.2); a clipped
    pair has no gradient, as ``clamp`` of R itself would give."""
    lo, hi = params["bpo_ratio_min"], params["bpo_ratio_max"]
    if lo is None and hi is None:
        return -z
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"bpo_ratio_min ({lo}) is above bpo_ratio_max ({hi}): R_θ would be clipped to one value")
    return (-z).clamp(min=None if lo is None else math.log(lo), max=None if hi is None else math.log(hi))


@register("pair_loss", "bpo", params={
    "bpo_lambda": Param(-0.5, "λ of the scaled Basu's power (SBA) h(R) = (R^{1+λ} − R)/(sλ(λ+1)); λ = 0 is its KLIEP "
                              "limit; null selects the logistic-regression h, BPO's DPO instance (the sigmoid loss)",
                        lo=-1, lo_open=True, kind="optional_number"),
    "bpo_scale": Param(4.0, "s of SBA: 4 matches DPO's gradient magnitude at R_θ = 1 (the paper's choice)", lo=0,
                       lo_open=True),
    "bpo_ratio_min": Param(None, "clip R_θ = exp(−z) from below (null: no clip, as the paper's Code 1; its runs "
                                 "use 0.01 on HH, 0.025 on TL;DR, 0.003 on UltraFeedback)", lo=0, lo_open=True,
                           kind="optional_number"),
    "bpo_ratio_max": Param(None, "clip R_θ from above (null: no clip; the paper's SimPO-ratio runs use 30 or 100)",
                           lo=0, lo_open=True, kind="optional_number")},
          formula="SBA: R^{λ+1}/(s(λ+1)) − R^{−λ}/(sλ) (λ = 0: (R + log R)/s); logistic h: log(1 + R); R = exp(−z)",
          source="BPO (Kim et al., NeurIPS 2025, arXiv 2505.19601): L^h_BPO = E[h′(R)R − h(R) − h′(1/R)] (Eq. 10, "
                 "Algorithm 1 line 5), Table 2 (instances), §3.3 (SBA, s = 4), Appendix C Code 1 (BPO_loss)",
          preset=PresetSpec("bpo_sba", "R^{λ+1}/(s(λ+1)) − R^{−λ}/(sλ), R = exp(−βΔ) clipped at 0.01 (λ = −0.5: √R)",
                            "Kim et al., NeurIPS 2025 (BPO, arXiv 2505.19601), Table 2, §3.3, Algorithm 1, Code 1, "
                            "Appendix C.2",
                            "λ = −0.5 (C.2: every stated setting), s = 4 (§3.3), β = 0.1 and R_θ ≥ 0.01 (the HH "
                            "setting); the paper's UltraFeedback runs mix it with the logistic loss: "
                            "pair_loss: {sigmoid: 0.7, bpo: 0.3}",
                            {"bpo_ratio_min": 0.01}))
def bpo_loss(t: PairTerms, params: Params) -> PairLossOut:
    """Bregman preference optimisation: ratio matching of R_θ = exp(−z) to the data's ratio under the Bregman
    divergence of h, in the tractable form h′(R)R − h(R) − h′(1/R) (constants dropped), closed-form per h (Table 2,
    Code 1) and computed from log R so that it stays finite (exponentials capped at e^80). With
    ``bpo_lambda: null`` (the logistic h) it is log(1 + R) = −log σ(z), DPO's loss; the SBA instance reweights
    pairs by λ (λ > −1; λ → −1 flattens, larger λ focuses on confident pairs). On any z: with SimPO's parts
    R_θ is SimPO's ratio (Appendix B.3: there the authors retune s)."""
    log_r = bpo_log_ratio(t.logits, params)
    lam = params["bpo_lambda"]
    if lam is None:
        return PairLossOut(F.softplus(log_r))
    lam, scale = float(lam), float(params["bpo_scale"])
    if lam == 0.0:
        return PairLossOut((capped_exp(log_r) + log_r) / scale)
    return PairLossOut(capped_exp((lam + 1) * log_r) / (scale * (lam + 1))
                       - capped_exp(-lam * log_r) / (scale * lam))


def epsilon_steps(chosen, rejected) -> torch.Tensor:
    """ε-DPO's per-pair decision s_i ∈ {−1, 0, +1} (no gradient): +1 when the policy's log-ratio
    log π(y_w) − log π(y_l) (sums over response tokens) lies strictly between the ε-perturbed policies' ones in
    the order π^{−ε} < π < π^{+ε} (the preference confidence grows as β shrinks: relax β), −1 when it lies
    between them in the reverse order, 0 otherwise."""
    def logratio(attr: str) -> torch.Tensor:
        return (getattr(chosen, attr).sum(-1) - getattr(rejected, attr).sum(-1)).detach()

    now, up, down = logratio("logps"), logratio("eps_plus_logps"), logratio("eps_minus_logps")
    return ((up > now) & (now > down)).to(now.dtype) - ((down > now) & (now > up)).to(now.dtype)


@register("pair_loss", "epsilon_dpo", params={
    "edpo_epsilon": Param(0.01, "ε: the relative step of the per-pair perturbation of β (and of β's update)",
                          lo=0, hi=1, lo_open=True, hi_open=True)},
          formula="−log σ(z·β_i/β),  β_i = β_t/(1 + ε·s_i),  s_i = +1 if LR(π^{+ε}) > LR(π) > LR(π^{−ε}), −1 if "
                  "LR(π^{−ε}) > LR(π) > LR(π^{+ε}), else 0;  β_{t+1} = β_t/(1 + ε·mean_i s_i)",
          source="ε-DPO (Lee et al., NeurIPS 2025, arXiv 2502.13177); released code oddqueue/e-dpo trainer.py "
                 "(concatenated_forward: ε-steps; dpo_loss: updated_beta; get_batch_loss_metrics: β update)",
          needs=Needs(inputs=("eps_plus_logps", "eps_minus_logps"), reference=True, live_reference=True,
                      perturbation="edpo_epsilon"),
          preset=PresetSpec("epsilon_dpo", "−log σ(β_i Δ),  β_i = β_t/(1 + ε·s_i),  s_i ∈ {−1, 0, 1} from the "
                                           "log-ratios of the policies log softmax((1 ± ε)z_θ ∓ ε z_ref)",
                            "Lee et al., NeurIPS 2025 (ε-DPO, arXiv 2502.13177); the released code (oddqueue/e-dpo)",
                            "ε = 0.01 and β = 0.01 as the authors' configs; β_t starts at β and moves after every "
                            "training micro-batch, per process (the released code: after every optimizer step, with "
                            "the mean over its micro-batches and processes); needs the reference model at every step",
                            {"beta": 0.01}))
class EpsilonDPOLoss(StatefulPart):
    """ε-DPO: a KL penalty per pair. For each pair the policies that training with β/(1 + ε) and β/(1 − ε) would
    give are estimated without training them, π^{±ε} ∝ exp((1 ± ε)·z_θ ∓ ε·z_ref) (z: the logits at each position),
    and β is relaxed to β/(1 + ε) where the preference log-ratio grows monotonically as β shrinks, tightened to
    β/(1 − ε) where it shrinks, and kept otherwise. The baseline β_t itself moves
    by the batch's mean decision after each training call (in training only; evaluation uses β_t as it is).
    The loss scales the whole logit z (margins included) by β_i/β, as β-DPO does."""

    def __init__(self, params: Mapping[str, Any]):
        super().__init__(params)
        self.beta_t = float(params["beta"])
        self.epsilon = float(params["edpo_epsilon"])

    def __call__(self, t: PairTerms, params: Params) -> PairLossOut:
        if t.sides is None:  # several rejected responses per pair: refused earlier (per-token inputs), kept safe here
            raise UnipoError("pair_loss=epsilon_dpo compares one chosen with one rejected response")
        chosen, rejected = t.sides
        steps = epsilon_steps(chosen, rejected)
        beta_i = self.beta_t / (1.0 + self.epsilon * steps)
        self.metrics = {"epsilon_dpo/beta": torch.tensor(self.beta_t),
                        "epsilon_dpo/relaxed": (steps > 0).float().mean(),
                        "epsilon_dpo/tightened": (steps < 0).float().mean()}
        losses = nls(t.logits * (beta_i / t.beta))
        if self.training:
            self.beta_t = self.beta_t / (1.0 + self.epsilon * float(steps.mean()))
        return PairLossOut(losses)

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta_t}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.beta_t = float(state["beta"])
