"""Every named variant as a preset: a configuration of the objective's parts. This module is the presets' one home:
:data:`PRESETS` holds every one of them.

A preset is declared once, as a :class:`~unipo.objective.registry.PresetSpec`, either in the table below (the
presets that combine several parts or set parameters) or next to the part it is named after (``register(...,
preset=PresetSpec(...))``: the part is implied). :func:`_collect` turns both into :class:`Preset` records, in
that order, and refuses a name declared twice. A preset only lists what differs from :data:`DEFAULT_PARTS` / the
global parameter defaults; a preset that changes exactly one part and gives no formula shows that part's formula
(written once, on the part). The formulas are the ones of ``docs/variants.md`` (and of the cited papers); the tests
check each preset against its formula written out independently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unipo.objective.registry import KINDS, PART_PRESETS, Param, PresetSpec, parts

#: the plain DPO configuration that every preset starts from
DEFAULT_PARTS: dict[str, str] = {
    "prior": "reference",
    "weights": "none",
    "aggregation": "sum",
    "link": "reverse_kl",
    "chosen_transform": "none",
    "rejected_transform": "none",
    "kl": "none",
    "pair_loss": "sigmoid",
    "pair_weighting": "none",
}

#: parameters every objective has (margins and auxiliary terms; 0 disables a term)
GLOBAL_PARAM_SPECS: dict[str, Param] = {
    "beta": Param(0.1, "β, the inverse temperature / KL strength (the MI-DPO paper's α)", lo=0, lo_open=True),
    "gamma": Param(0.0, "γ, absolute target margin subtracted from the logit: z = β·Δ − γ (SimPO; TRL's "
                        "simpo_gamma)"),
    "gamma_beta_ratio": Param(None, "γ/β, the SimPO authors' convention: γ = ratio·β (None: unused)",
                              kind="optional_number"),
    "length_alpha": Param(0.0, "α_len, R-DPO's length penalty: z = β·Δ − α(|y_w| − |y_l|)"),
    "nll_weight": Param(0.0, "λ_nll, + λ·NLL(y_w) (RPO / CPO / ORPO), mean over chosen tokens", lo=0),
    "nll_token_mean": Param(False, "NLL reduction: false = each pair's mean over its chosen tokens, then the mean over "
                                   "pairs; true = one mean over every chosen token of the batch (TRL's CPO / ORPO / "
                                   "'sft' terms; depends on how the batch is split)", kind="bool"),
    "gold_nll_weight": Param(0.0, "λ_gold, + λ·NLL(y_gold) of a third, gold response per pair (TPO's tpo_alpha; the "
                                  "data's gold_column, default 'reference'); same reduction as nll_token_mean", lo=0),
    "l1_weight": Param(0.0, "λ_L1, + λ·mean|m| on SparsePO masks (token and KL masks, both sides)", lo=0),
    "prior_reg_weight": Param(0.0, "λ_g, + λ·(mean g²(y_w) + mean g²(y_l)) on the learned prior's offsets",
                              lo=0),
}
GLOBAL_PARAMS: dict[str, Any] = {k: p.default for k, p in GLOBAL_PARAM_SPECS.items()}


@dataclass(frozen=True)
class Preset:
    """A preset as the resolver reads it: the parts and the parameters it sets (split from its declaration's
    ``config``), its formula, source and note."""

    name: str
    parts: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    formula: str = ""
    source: str = ""
    note: str = ""


#: where TPO's formulas and defaults were read
_TRL_TPO = ("TRL 1.16 trl/experimental/tpo/tpo_trainer.py TPOTrainer._compute_loss (lines 637–712; defaults "
            "tpo_config.py)")


def _p(name: str, formula: str, source: str, note: str = "", **config: Any) -> PresetSpec:
    return PresetSpec(name, formula, source, note, config)


_TABLE = [
    _p("dpo", "−log σ(βΔ)", "Rafailov et al. 2023, Eq. 7"),
    _p("reference_free", "−log σ(β(Σa(y_w) − Σa(y_l)))", "DPO paper's released code", prior="none"),
    _p("cdpo", "−(1−ε) log σ(βΔ) − ε log σ(−βΔ)", "Mitchell 2023 (conservative DPO)", pair_loss="cdpo"),
    _p("robust", "[−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε)", "Chowdhury et al. 2024 (rDPO)",
       pair_loss="robust"),
    _p("hinge", "max(0, 1 − βΔ)", "Zhao et al. 2023 (SLiC)", pair_loss="hinge"),
    _p("ipo", "(ρ̄(y_w) − ρ̄(y_l) − 1/(2β))²", "Azar et al. 2023, Eq. 17",
       "length-normalised log-ratios, as agreed with the authors (TRL does the same)",
       pair_loss="ipo", aggregation="mean"),
    _p("ln_dpo", "−log σ(β(ρ̄(y_w) − ρ̄(y_l)))", "length-normalised DPO (TRL's sigmoid_norm)",
       aggregation="mean"),
    _p("simpo", "−log σ(β(ā(y_w) − ā(y_l)) − γ)", "Meng et al. 2024, Eq. 6",
       "γ is absolute (TRL's simpo_gamma); the authors' gamma_beta_ratio is accepted too (γ = ratio·β)",
       prior="none", aggregation="mean", beta=2.0, gamma=0.5),
    _p("rdpo", "−log σ(βΔ − α(|y_w| − |y_l|))", "Park et al. 2024 (R-DPO), Eq. 9", length_alpha=0.05),
    _p("dpop", "−log σ(β(Δ − λ·max(0, −ρ(y_w))))", "Pal et al. 2024 (DPO-Positive), Eq. 3",
       chosen_transform="dpop"),
    _p("minordpo", "−log σ(β(ρ(y_w) − max(0, ρ(y_l))))", "Xie et al. 2024, arXiv 2408.09834",
       rejected_transform="minor"),
    _p("rpo", "−log σ(βΔ) + λ·NLL(y_w)", "Pang et al. 2024 (RPO) / CPO's NLL term", nll_weight=1.0),
    _p("fdpo_reverse_kl", "−log σ(β log u_w − β log u_l)  (= DPO)", "Wang et al., ICLR 2024, Table 1"),
    _p("fdpo_forward_kl", "−log σ(−β/u_w + β/u_l)", "Wang et al., ICLR 2024, Table 1", link="forward_kl"),
    _p("fdpo_js", "−log σ(β log(2u_w/(1+u_w)) − β log(2u_l/(1+u_l)))", "Wang et al., ICLR 2024, Table 1",
       link="js"),
    _p("fdpo_alpha", "−log σ(β(1 − u_w^(−α))/α − β(1 − u_l^(−α))/α),  α = 0.5",
       "Wang et al., ICLR 2024, Table 1", "the paper's α; TRL's f_alpha_divergence_coef = 1 − α",
       link="alpha"),
    _p("tdpo1", "−log σ(β(Δ − (K(y_l) − K(y_w))))", "Zeng et al., ICML 2024, Eq. 17", kl="tdpo"),
    _p("tdpo2", "−log σ(β(Δ − α(K(y_l) − sg(K(y_w)))))", "Zeng et al., ICML 2024, Eq. 19",
       kl="tdpo", kl_alpha=0.5, kl_stopgrad_chosen=True),
    _p("sparsepo", "−log σ(β(Σm^u ρ(y_w) − Σm^u ρ(y_l) − (Σm^d KLr(y_l) − Σm^d KLr(y_w)))) + L1",
       "Christopoulou et al. 2024, arXiv 2410.05102, Eq. 6",
       "masks come in as chosen/rejected_weights (m^u) and chosen/rejected_kl_weights (m^d; m^u if absent)",
       weights="given", kl="tdpo", kl_masks=True),
    _p("bmc", "−log σ(β(Σλρ(ỹ_w) − Σλρ(y_l))),  λ_t = 1 + min(sg(1/π_θ(y_t)), δ) on differing tokens",
       "Jiang et al., ICLR 2025 version, Eq. 4–6 (weighting)",
       "β 0.01–0.05 and δ 1.5–3.5 in the paper; this default (0.05, 2.0) is none of its Table 8 settings: "
       "bmc_qa, bmc_math and bmc_if are", weights="bmc", beta=0.05, bmc_delta=2.0),
    _p("bmc_qa", "bmc with the paper's question-answering setting", "Jiang et al., ICLR 2025, Table 8 (QA)",
       "β 0.05, δ 3.0", weights="bmc", beta=0.05, bmc_delta=3.0),
    _p("bmc_math", "bmc with the paper's mathematical-reasoning setting", "Jiang et al., ICLR 2025, Table 8 (math)",
       "β 0.05, δ 2.5", weights="bmc", beta=0.05, bmc_delta=2.5),
    _p("bmc_if", "bmc with the paper's instruction-following setting",
       "Jiang et al., ICLR 2025, Table 8 (instruction following)", "β 0.01, δ 2.0", weights="bmc", beta=0.01,
       bmc_delta=2.0),
    _p("tisdpo", "−log σ(β(Σwρ(y_w) − Σwρ(y_l)) − ηβ(ΣwKLp(y_w) − ΣwKLp(y_l)))",
       "Liu et al., ICLR 2025 version, Eq. 16",
       "η = kl_eta = 1 as in the paper; the released code (exlaw/TIS-DPO, trainers.py::tisdpo_loss) uses 0.5 "
       "with its KL term on, off by default (= tisdpo_nokl): set kl_eta: 0.5 to match it",
       weights="given", kl="tisdpo"),
    _p("tisdpo_nokl", "−log σ(β(Σwρ(y_w) − Σwρ(y_l)))", "Liu et al., ICLR 2025 (ablation without KL)",
       weights="given"),
    _p("ti_dpo_w", "−log σ(β(Σ w^w_t ρ_t(y_w) − Σ w^l_t ρ_t(y_l))), w from `unipo weights estimate --method ti_dpo`",
       "Yang et al., ICLR 2026 (TI-DPO, arXiv 2505.19653), Eq. 11-12 and Algorithm 1 line 10; β 0.1 (Table B13)",
       "TI-DPO's weighted DPO term L_DPO-w alone: its triplet term γ·L_triplet (Eq. 13-14) needs an anchor response "
       "generated by the policy at every step and is not included (docs/variants.md, TI-DPO)",
       weights="given"),
    _p("learned_prior", "−log σ(β(Σ(a − r − g)(y_w) − Σ(a − r − g)(y_l))) + λ·(ḡ²(y_w) + ḡ²(y_l))",
       "open question of Tutnov et al. 2025; unipo's own construction",
       "g is a per-token log-prior offset from a small head over the reference's hidden states",
       prior="learned", prior_reg_weight=0.1),
    _p("exo_pair", "", "Ji et al. 2024 (EXO)", pair_loss="exo_pair"),  # the formula: the part's
    _p("nca_pair", "−log σ(βρ_w) − ½ log σ(−βρ_w) − ½ log σ(−βρ_l)", "Chen et al. 2024 (NCA)",
       pair_loss="nca_pair"),
    _p("bco_pair", "−log σ(βρ_w) − log σ(−βρ_l)", "Jung et al. 2024 (BCO), TRL's pair form",
       pair_loss="bco_pair"),
    _p("sppo_hard", "(ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²", "Wu et al. 2024 (SPPO)", pair_loss="sppo_hard"),
    _p("aot", "sorted-batch DPO on policy vs reference log-ratio differences", "Melnyk et al. 2024 (AOT)",
       pair_loss="aot"),
    _p("aot_pair", "sorted-batch DPO on chosen vs rejected log-ratios", "Melnyk et al. 2024 (AOT)",
       pair_loss="aot_pair"),
    _p("apo_zero", "1 − σ(βρ_w) + σ(βρ_l)", "D'Oosterlinck et al. 2024 (APO), Eq. 7", pair_loss="apo_zero"),
    _p("apo_down", "σ(βρ_w) + 1 − σ(β(ρ_w − ρ_l))", "D'Oosterlinck et al. 2024 (APO), Eq. 8",
       pair_loss="apo_down"),
    _p("discopop", "(1 − σ(βΔ/τ))(−log σ(βΔ)) + σ(βΔ/τ) exp(−βΔ)", "Chan Lu et al. 2024, Eq. 5",
       pair_loss="discopop"),
    _p("cpo", "−log σ(β(Σa(y_w) − Σa(y_l))) + λ·NLL(y_w)", "Xu et al., ICML 2024 (CPO, arXiv 2401.08417), Eq. 3 "
       "+ NLL; formula read from TRL's CPOTrainer (loss_type sigmoid, cpo_alpha = λ = 1)",
       "reference-free; NLL a mean per pair over chosen tokens (nll_token_mean: true = TRL's batch token mean)",
       prior="none", nll_weight=1.0),
    _p("alphapo", "−log σ(β(r_α(y_w) − r_α(y_l)) − γ),  r_α(y) = (1 − exp(−α·ā(y)))/α",
       "Gupta et al., ICML 2025 (AlphaPO, arXiv 2501.03884); formula read from TRL's CPOTrainer "
       "(loss_type alphapo)", "SimPO with the f-DPO α link on the mean log-prob (f_alpha = AlphaPO's α, "
       "0 < α < 1 here; α → 0 is SimPO); β, γ as simpo; α = 0.25 (TRL's default α = 0 is plain SimPO)",
       prior="none", aggregation="mean", link="alpha", f_alpha=0.25, beta=2.0, gamma=0.5),
    _p("tpo", "−log σ(β(Σa(y_w) − Σa(y_l))) + λ·NLL(y_gold)",
       "Saeidi et al. 2024 (TPO, arXiv 2405.16681); formula and defaults read from " + _TRL_TPO + ": loss_type "
       "sigmoid, "
       "β = 0.01, tpo_alpha = λ = 1",
       "reference-free; rows carry a third, gold response (the data's gold_column, default 'reference', TRL's "
       "name); NLL(y_gold) one mean over the batch's gold tokens (TRL's F.cross_entropy)",
       prior="none", beta=0.01, gold_nll_weight=1.0, nll_token_mean=True),
    _p("tpo_l", "−log σ(β(ā(y_w) − ā(y_l)) − γ) + λ·NLL(y_gold)",
       "Saeidi et al. 2024 (TPO-L, arXiv 2405.16681); formula and defaults read from " + _TRL_TPO + ": loss_type "
       "tpo-l, "
       "β = 0.01, tpo_l_gamma = γ = 0.5, tpo_alpha = λ = 1",
       "tpo on the mean log-prob with SimPO's absolute margin γ (TRL's β(ā_w − ā_l − γ/β) = β(ā_w − ā_l) − γ)",
       prior="none", aggregation="mean", beta=0.01, gamma=0.5, gold_nll_weight=1.0, nll_token_mean=True),
]



def _record(spec: PresetSpec) -> Preset:
    """The :class:`Preset` of a declaration; an empty formula is the formula of the one part it changes."""
    parts_set = {k: v for k, v in spec.config.items() if k in DEFAULT_PARTS}
    params = {k: v for k, v in spec.config.items() if k not in DEFAULT_PARTS}
    formula = spec.formula
    if not formula:
        changed = [(kind, name) for kind, name in parts_set.items() if name != DEFAULT_PARTS[kind]]
        if len(changed) != 1:
            raise ValueError(f"preset {spec.name}: give its formula (it changes {len(changed)} parts, not one)")
        formula = parts(changed[0][0])[changed[0][1]].formula
    return Preset(spec.name, parts_set, params, formula, spec.source, spec.note)


def _collect(table: list[PresetSpec]) -> dict[str, Preset]:
    """Every preset: the table's, then those declared next to their part (in registration order)."""
    for kind in KINDS:
        parts(kind)  # loads every part module, which registers their presets
    declared = [*table, *(PresetSpec(spec.name, spec.formula, spec.source, spec.note,
                                     {kind: name, **spec.config}) for kind, name, spec in PART_PRESETS)]
    out: dict[str, Preset] = {}
    for spec in declared:
        if spec.name in out:
            raise ValueError(f"preset {spec.name!r} is declared twice")
        out[spec.name] = _record(spec)
    return out


PRESETS: dict[str, Preset] = _collect(_TABLE)
