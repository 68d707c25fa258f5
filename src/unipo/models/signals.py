"""Token signals: small modules trained (or computed) alongside the policy that produce per-token tensors
for the objective from the REFERENCE model's hidden states.

A token signal is an ``nn.Module`` with ``forward(ref, batch) -> {key: [B, T] tensor}``; the keys are
inputs of :class:`unipo.objective.Objective` (``chosen_weights`` / ``rejected_weights``: SparsePO's m^u,
``chosen_kl_weights`` / ``rejected_kl_weights``: SparsePO's m^d, ``chosen_prior_offsets`` /
``rejected_prior_offsets``: the learned prior's g). ``PreferenceTrainer(token_signal=...)`` calls it
on the output of the reference pass, optimises its parameters in their own parameter group (weight
decay ``module.weight_decay``) and saves its state as ``unipo_signal.safetensors``. Attributes read by
the trainer:

- ``needs_hidden_states``: run the reference with ``output_hidden_states=True`` (all layers in
  ``ref["hidden_states"]``, each ``[rows, L, H]`` in the packed layout of :mod:`unipo.data.batching`);
  otherwise only the final hidden states gathered per side (``ref["chosen_hidden"]``, ``[N, H]``) exist;
- ``weight_decay``: for the optimiser group;
- ``metrics``: detached scalars from the last call (mask sparsity, mean mask, prior offsets), logged
  with the objective's metrics.

Everything here is pure torch; no gradient ever flows into the reference (its hidden states are detached).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unipo.errors import ConfigError, UnipoError
from unipo.models.forward import gather_side, scatter_tokens

SIDES = ("chosen", "rejected")


def _layers(ref: Mapping[str, Any], expected: int | None = None) -> Sequence[torch.Tensor]:
    layers = ref.get("hidden_states")
    if layers is None:
        raise UnipoError("this token signal needs the reference model's hidden states of all layers "
                         "(ref['hidden_states']); run the reference pass with output_hidden_states=True")
    if expected is not None and len(layers) != expected:
        raise UnipoError(f"the reference returned {len(layers)} hidden-state tensors, but the mask network was "
                         f"built for {expected} (num_hidden_layers + 1, embeddings included)")
    return layers


def _mask_metrics(prefix: str, masks: Sequence[torch.Tensor], token_masks: Sequence[torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """Sparsity statistics over the response tokens of both sides: share of exact zeros and the mean."""
    vals = torch.cat([m.detach()[tm].float() for m, tm in zip(masks, token_masks, strict=True)])
    return {f"{prefix}/zero_frac": (vals == 0).float().mean(), f"{prefix}/mean": vals.mean(),
            f"{prefix}/max": vals.max()}


class _MaskNet(nn.Module):
    """One SparsePO mask network (Christopoulou et al. 2024, arXiv 2410.05102, Sec. 3, "learnable sparse
    mask"): for every layer l, m_l = dropout(ReLU(w_lᵀ LayerNorm_l(h_l) + b_l)); then
    m = dropout(ReLU(Σ_l v_l m_l)) with a bias-free mixing layer v. Non-negative, unbounded."""

    def __init__(self, num_layers: int, hidden_size: int, dropout: float):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers))
        self.scores = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        self.mix = nn.Linear(num_layers, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        # unipo's choice (not specified in the paper): the mixing weights start at the layer average, all
        # positive. With PyTorch's default (uniform, signed) init a small network can start with every
        # mixing weight negative, hence an all-zero mask behind a dead ReLU that never receives gradient.
        nn.init.constant_(self.mix.weight, 1.0 / num_layers)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """``feats``: one ``[N, H]`` tensor per layer → mask ``[N]``."""
        per_layer = [self.dropout(torch.relu(score(norm(h)).squeeze(-1)))
                     for h, norm, score in zip(feats, self.norms, self.scores, strict=True)]
        return self.dropout(torch.relu(self.mix(torch.stack(per_layer, -1)).squeeze(-1)))


class SparsePOMasks(nn.Module):
    """SparsePO's learned token masks (Christopoulou et al. 2024, arXiv 2410.05102, Eq. 6 and Sec. 3).

    The loss is −log σ(β([Σ m^u ρ_t](y_w) − [Σ m^u ρ_t](y_l) − ([Σ m^d KLr_t](y_l) − [Σ m^d KLr_t](y_w))))
    (+ optional L1 penalties on the masks: the objective's ``l1_weight``). The masks are computed per
    response token from the REFERENCE model's hidden states of all ``num_layers`` layers
    (``num_hidden_layers + 1``: the embeddings included), at the position that predicts the token, by
    :class:`_MaskNet`. The reference's hidden states are detached: the network learns, the reference
    does not. ``common=True``: one network, m^u = m^d (only ``*_weights`` is returned; the objective's
    ``kl_masks`` falls back to them); ``common=False``: two independent networks (``*_weights`` and
    ``*_kl_weights``). Defaults as in the paper: dropout 0.01, weight decay 0.01 in the mask's own
    optimiser group.
    """

    needs_hidden_states = True

    def __init__(self, num_layers: int, hidden_size: int, common: bool = True, dropout: float = 0.01,
                 weight_decay: float = 0.01):
        super().__init__()
        if num_layers < 1 or hidden_size < 1:
            raise ConfigError(f"SparsePOMasks needs num_layers >= 1 and hidden_size >= 1, got {num_layers}, "
                              f"{hidden_size}")
        self.num_layers, self.hidden_size, self.common = int(num_layers), int(hidden_size), bool(common)
        self.weight_decay = float(weight_decay)
        self.token_mask = _MaskNet(self.num_layers, self.hidden_size, dropout)
        self.kl_mask = None if self.common else _MaskNet(self.num_layers, self.hidden_size, dropout)
        self.metrics: dict[str, torch.Tensor] = {}

    def forward(self, ref: Mapping[str, Any], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        layers = _layers(ref, self.num_layers)
        dtype = self.token_mask.mix.weight.dtype
        out: dict[str, torch.Tensor] = {}
        for side in SIDES:
            mask = batch[f"{side}_mask"]
            feats = [gather_side(h, batch, side).detach().to(dtype) for h in layers]
            out[f"{side}_weights"] = scatter_tokens(self.token_mask(feats), mask)
            if self.kl_mask is not None:
                out[f"{side}_kl_weights"] = scatter_tokens(self.kl_mask(feats), mask)
        token_masks = [batch[f"{s}_mask"] for s in SIDES]
        self.metrics = _mask_metrics("mask", [out[f"{s}_weights"] for s in SIDES], token_masks)
        if self.kl_mask is not None:
            self.metrics.update(_mask_metrics("mask_kl", [out[f"{s}_kl_weights"] for s in SIDES], token_masks))
        return out


def activation_mask(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-sequence z-normalisation over the response tokens, then min–max rescaling to [0, 1].

    ``values`` and ``mask`` are ``[B, T]``; returns ``[B, T]`` (0 on padding). Note that min–max rescaling
    is invariant to the affine z-normalisation: it is kept because the paper describes both steps, and it
    makes the statistics well-conditioned. A sequence whose values are all equal (in particular a
    one-token response: std = 0) gets mask 1 on every token, i.e. plain TDPO1 weighting for it.
    """
    m = mask.bool()
    x = torch.where(m, values.float(), torch.zeros((), device=values.device))
    n = m.sum(-1, keepdim=True).clamp(min=1)
    mean = x.sum(-1, keepdim=True) / n
    var = torch.where(m, (x - mean) ** 2, torch.zeros((), device=values.device)).sum(-1, keepdim=True) / n
    std = var.sqrt()
    z = torch.where(std > eps, (x - mean) / std.clamp(min=eps), torch.zeros_like(x))
    big = torch.finfo(z.dtype).max
    lo = torch.where(m, z, torch.full_like(z, big)).amin(-1, keepdim=True)
    hi = torch.where(m, z, torch.full_like(z, -big)).amax(-1, keepdim=True)
    span = hi - lo
    scaled = torch.where(span > eps, (z - lo) / span.clamp(min=eps), torch.ones_like(z))
    return torch.where(m, scaled, torch.zeros_like(scaled)).detach()


class ActivationMasks(nn.Module):
    """SparsePO's model-activation masks (Christopoulou et al. 2024, arXiv 2410.05102, Sec. 3,
    "model activation-based mask"): the REFERENCE model's activations averaged over the hidden dimension,
    z-normalised per sequence over its response tokens, min–max rescaled to [0, 1] and detached; the same
    mask is used on the reward and the KL terms (m^u = m^d). It has no parameters.

    Which activations: the paper takes them with forward hooks on the reference; here they are the
    reference pass's ``hidden_states`` (equivalent, and no extra hooks). ``layers="all"`` (default) averages
    the outputs of every decoder layer (``hidden_states[1:]``, embeddings excluded), ``"last"`` uses the
    final (normalised) hidden state only, and a list of integers selects ``hidden_states`` entries. The
    paper text available to us does not pin the layer set down; "all" is unipo's default. Each token's
    activation is taken at the position that predicts it, consistently with the log-probabilities.
    """

    needs_hidden_states = True
    weight_decay = 0.0

    def __init__(self, layers: str | Sequence[int] = "all"):
        super().__init__()
        if isinstance(layers, str) and layers not in ("all", "last"):
            raise ConfigError(f"activation_masks layers must be 'all', 'last' or a list of layer indices, "
                              f"got {layers!r}")
        self.layers = layers if isinstance(layers, str) else [int(i) for i in layers]
        self.metrics: dict[str, torch.Tensor] = {}

    def _select(self, layers: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        if self.layers == "all":
            return layers[1:] if len(layers) > 1 else layers
        if self.layers == "last":
            return layers[-1:]
        return [layers[i] for i in self.layers]

    @torch.no_grad()
    def forward(self, ref: Mapping[str, Any], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        chosen = self._select(_layers(ref))
        out: dict[str, torch.Tensor] = {}
        for side in SIDES:
            mask = batch[f"{side}_mask"]
            act = torch.stack([gather_side(h, batch, side).float().mean(-1) for h in chosen]).mean(0)
            out[f"{side}_weights"] = activation_mask(scatter_tokens(act, mask), mask)
        self.metrics = _mask_metrics("mask", [out[f"{s}_weights"] for s in SIDES],
                                     [batch[f"{s}_mask"] for s in SIDES])
        return out


class LearnedPrior(nn.Module):
    """A learned prior for the ``learned_prior`` preset: unipo's own construction.

    Tutnov, Grosnit and Bou-Ammar 2025 ("Many of Your DPOs are Secretly One", arXiv 2501.01544, Eq. 1)
    write the DPO family as J(π, ζ) = −E log σ(α log π(y_w|x)/ζ(y_w) − α log π(y_l|x)/ζ(y_l)) and suggest
    learning the prior ζ jointly with π, without a construction or experiments. Here ζ is the reference
    shifted per token, log ζ_t = r_t + g_t, with g_t = MLP(h_t) a small head (Linear → GELU → Linear) over
    the REFERENCE's final hidden state h_t at the position that predicts y_t (detached: no gradient into
    the reference). The output layer is zero-initialised, so training starts exactly at DPO (g = 0).

    What it is and is not: g_t depends on the context (x, y_<t) through h_t, not on the token y_t itself,
    and ζ is not normalised (it is a per-token re-weighting of the reference, not a distribution). Because
    the loss is minimised over ζ too, the head can absorb the preference itself (lower g on chosen, raise
    it on rejected responses) instead of the policy learning it; the objective's ``prior_reg_weight``
    (λ·mean g², 0.1 in the preset) keeps it near the reference. Whether this reaches better minima, as
    the paper argues, is untested.
    """

    needs_hidden_states = False

    def __init__(self, hidden_size: int, init_zero: bool = True, head_size: int = 64, weight_decay: float = 0.0):
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.weight_decay = float(weight_decay)
        self.net = nn.Sequential(nn.Linear(self.hidden_size, head_size), nn.GELU(), nn.Linear(head_size, 1))
        if init_zero:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        self.metrics: dict[str, torch.Tensor] = {}

    def forward(self, ref: Mapping[str, Any], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = self.net[0].weight.dtype
        out: dict[str, torch.Tensor] = {}
        for side in SIDES:
            hidden = ref.get(f"{side}_hidden")
            if hidden is None:
                raise UnipoError("LearnedPrior needs the reference's final hidden states (ref['chosen_hidden']); "
                                 "the reference pass must run with need_hidden=True")
            g = self.net(hidden.detach().to(dtype)).squeeze(-1)
            out[f"{side}_prior_offsets"] = scatter_tokens(g, batch[f"{side}_mask"])
        vals = {s: out[f"{s}_prior_offsets"].detach()[batch[f"{s}_mask"]].float() for s in SIDES}
        self.metrics = {"prior/offset_chosen_mean": vals["chosen"].mean(),
                        "prior/offset_rejected_mean": vals["rejected"].mean()}
        return out


# -- configuration -----------------------------------------------------------------------------------
#: signal types and the keyword arguments each accepts (besides the model sizes filled in by ``build``)
SIGNAL_TYPES: dict[str, tuple[str, ...]] = {
    "sparsepo_masks": ("common", "dropout", "weight_decay"),
    "activation_masks": ("layers",),
    "learned_prior": ("init_zero", "head_size", "weight_decay"),
}


def _parts(objective_config: Any) -> tuple[dict[str, str], dict[str, Any]]:
    return dict(objective_config.parts), dict(objective_config.params)


def resolve_signal_spec(spec: Any, objective_config: Any, *, data_weights: bool = False) -> dict[str, Any] | None:
    """Validate the ``token_signal`` setting against the objective; return ``{type: ..., **kwargs}`` or None.

    ``spec`` is None (choose automatically: SparsePO's kl-masked objective → ``sparsepo_masks`` unless the
    data supplies the masks (``data_weights``), a learned prior → ``learned_prior``), ``"none"`` (no
    signal), a type name, or a mapping ``{type: ..., option: value}``.
    """
    parts, params = _parts(objective_config)
    wants_masks = parts.get("weights") == "given" and bool(params.get("kl_masks"))
    wants_prior = parts.get("prior") == "learned"
    name = getattr(objective_config, "name", "?")
    if spec is None:
        if wants_prior:
            spec = {"type": "learned_prior"}
        elif wants_masks and not data_weights:
            spec = {"type": "sparsepo_masks"}
        else:
            return None
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"token_signal must be a type name or a mapping {{type: ..., ...}}, got {spec!r}")
    spec = dict(spec)
    kind = str(spec.get("type", "")).strip().lower().replace("-", "_")
    if kind in ("none", "", "null"):
        if wants_prior:
            raise ConfigError(f"variant {name} has a learned prior (prior: learned): it needs token_signal "
                              f"{{type: learned_prior}}, not none")
        return None
    if kind not in SIGNAL_TYPES:
        close = difflib.get_close_matches(kind, list(SIGNAL_TYPES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown token_signal type {kind!r}{hint}; known: {', '.join(SIGNAL_TYPES)}, none")
    unknown = set(spec) - {"type", *SIGNAL_TYPES[kind]}
    if unknown:
        raise ConfigError(f"token_signal {kind}: unknown option(s) {sorted(unknown)}; allowed: "
                          f"{', '.join(SIGNAL_TYPES[kind])}")
    if kind == "learned_prior" and not wants_prior:
        raise ConfigError(f"token_signal learned_prior produces prior offsets, but variant {name} does not use a "
                          f"learned prior (set prior: learned, or use the learned_prior preset)")
    if kind in ("sparsepo_masks", "activation_masks"):
        if parts.get("weights") != "given":
            raise ConfigError(f"token_signal {kind} produces token masks, but variant {name} does not read token "
                              f"weights (weights: {parts.get('weights')}); use the sparsepo preset or weights: given")
        if wants_prior:
            raise ConfigError(f"variant {name} needs a learned prior and token masks at once; unipo trains one "
                              f"token signal at a time")
        if data_weights:
            raise ConfigError(f"token_signal {kind} and weights_columns both supply the token weights; keep one")
    if kind == "activation_masks" and spec.get("layers") is not None:
        layers = spec["layers"]
        if not (layers in ("all", "last") or (isinstance(layers, list) and all(isinstance(i, int) for i in layers))):
            raise ConfigError(f"token_signal activation_masks: layers must be all, last or a list of integers, "
                              f"got {layers!r}")
    spec["type"] = kind
    return spec


def build_signal(spec: Mapping[str, Any], *, num_layers: int, hidden_size: int) -> nn.Module:
    """Construct the module for a resolved spec. ``num_layers`` counts the hidden-state tensors the
    reference returns (``num_hidden_layers + 1``)."""
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    if kind == "sparsepo_masks":
        return SparsePOMasks(num_layers, hidden_size, **kwargs)
    if kind == "activation_masks":
        return ActivationMasks(**kwargs)
    if kind == "learned_prior":
        return LearnedPrior(hidden_size, **kwargs)
    raise ConfigError(f"unknown token_signal type {kind!r}")
