"""Token signals: small modules trained (or computed) alongside the policy that produce per-token tensors
for the objective from the REFERENCE model's hidden states.

A token signal is an ``nn.Module`` with ``forward(ref: ReferenceOutputs, batch: PackedBatch) ->
SignalOutput``: per side, ``[B, T]`` tensors named by the objective input they fill (``weights``: SparsePO's
m^u, ``kl_weights``: SparsePO's m^d, ``prior_offsets``: the learned prior's g), and detached metrics (mask
sparsity, mean mask, prior offsets) logged with the objective's. ``PreferenceTrainer(token_signal=...)``
makes it a submodule of the policy (:func:`attach_signal`: the engine that wraps the policy manages it),
calls it on the output of the reference pass, optimises its parameters in their own parameter group
(weight decay ``module.weight_decay``) and saves its state as ``unipo_signal.safetensors``. Class
attributes read by the training layer:

- ``needs_hidden_states``: run the reference with every layer's hidden states (``ref.layers``, each
  ``[rows, L, H]`` in the packed layout of :mod:`unipo.layout`); otherwise only the final hidden states
  gathered per side (``ref.hidden``, ``[N, H]``) exist;
- ``weight_decay``: for the optimiser group.

Which signal a run uses is decided here too (:func:`resolve_signal_spec`), from what the objective's parts
need (:class:`unipo.objective.config.Requirements`) and what each signal type provides
(:data:`SIGNAL_TYPES`), never from part names.

Everything here is pure torch; no gradient ever flows into the reference (its hidden states are detached).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unipo.errors import ConfigError, UnipoError
from unipo.layout import SIDES, PackedBatch, gather_side, scatter_tokens
from unipo.models.forward import ReferenceOutputs
from unipo.objective.inputs import SIGNAL_ONLY


@dataclass(frozen=True)
class SignalOutput:
    """What a token signal gives the objective: ``inputs[side][field]`` ``[B, T]`` (field: an objective input
    such as ``weights``), and detached scalar ``metrics``."""

    inputs: dict[str, dict[str, torch.Tensor]]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def _layers(ref: ReferenceOutputs, expected: int | None = None) -> Sequence[torch.Tensor]:
    layers = ref.layers
    if layers is None:
        raise UnipoError("this token signal needs the reference model's hidden states of all layers "
                         "(ref.layers); run the reference pass with need_layers=True")
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
                 weight_decay: float = 0.01, learning_rate: float | None = None):
        super().__init__()
        if learning_rate is not None and not float(learning_rate) > 0:
            raise ConfigError(f"token_signal sparsepo_masks: learning_rate must be > 0, got {learning_rate}")
        #: its own peak learning rate (None: the policy's), in its own optimizer param group
        self.learning_rate = float(learning_rate) if learning_rate is not None else None
        if num_layers < 1 or hidden_size < 1:
            raise ConfigError(f"SparsePOMasks needs num_layers >= 1 and hidden_size >= 1, got {num_layers}, "
                              f"{hidden_size}")
        self.num_layers, self.hidden_size, self.common = int(num_layers), int(hidden_size), bool(common)
        self.weight_decay = float(weight_decay)
        self.token_mask = _MaskNet(self.num_layers, self.hidden_size, dropout)
        self.kl_mask = None if self.common else _MaskNet(self.num_layers, self.hidden_size, dropout)

    def forward(self, ref: ReferenceOutputs, batch: PackedBatch | Mapping[str, torch.Tensor]) -> SignalOutput:
        batch = PackedBatch.from_dict(batch)
        layers = _layers(ref, self.num_layers)
        dtype = self.token_mask.mix.weight.dtype
        out: dict[str, dict[str, torch.Tensor]] = {}
        for side, layout in batch.sides.items():
            feats = [gather_side(h, layout).detach().to(dtype) for h in layers]
            out[side] = {"weights": scatter_tokens(self.token_mask(feats), layout.mask)}
            if self.kl_mask is not None:
                out[side]["kl_weights"] = scatter_tokens(self.kl_mask(feats), layout.mask)
        token_masks = [batch.side(s).mask for s in SIDES]
        metrics = _mask_metrics("mask", [out[s]["weights"] for s in SIDES], token_masks)
        if self.kl_mask is not None:
            metrics.update(_mask_metrics("mask_kl", [out[s]["kl_weights"] for s in SIDES], token_masks))
        return SignalOutput(out, metrics)


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

    def _select(self, layers: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        if self.layers == "all":
            return layers[1:] if len(layers) > 1 else layers
        if self.layers == "last":
            return layers[-1:]
        return [layers[i] for i in self.layers]

    @torch.no_grad()
    def forward(self, ref: ReferenceOutputs, batch: PackedBatch | Mapping[str, torch.Tensor]) -> SignalOutput:
        batch = PackedBatch.from_dict(batch)
        chosen = self._select(_layers(ref))
        out: dict[str, dict[str, torch.Tensor]] = {}
        for side, layout in batch.sides.items():
            act = torch.stack([gather_side(h, layout).float().mean(-1) for h in chosen]).mean(0)
            out[side] = {"weights": activation_mask(scatter_tokens(act, layout.mask), layout.mask)}
        metrics = _mask_metrics("mask", [out[s]["weights"] for s in SIDES], [batch.side(s).mask for s in SIDES])
        return SignalOutput(out, metrics)


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
    (λ·(mean g²(y_w) + mean g²(y_l)), λ = 0.1 in the preset) keeps it near the reference. Whether this
    reaches better minima, as the paper argues, is untested.
    """

    needs_hidden_states = False
    #: output-layer initialisations: zero (g = 0, training starts exactly at DPO), normal (N(0, init_std²)
    #: weights, zero bias: a small random prior from step 1), torch (PyTorch's default Linear init)
    INITS = ("zero", "normal", "torch")

    def __init__(self, hidden_size: int, init_zero: bool | None = None, head_size: int = 64,
                 weight_decay: float = 0.0, learning_rate: float | None = None, init: str | None = None,
                 init_std: float | None = None):
        super().__init__()
        if init_zero is not None and init is not None:
            raise ConfigError("token_signal learned_prior: give init (zero | normal | torch) or the older init_zero, "
                              "not both")
        init = init if init is not None else ("torch" if init_zero is False else "zero")
        if init not in self.INITS:
            raise ConfigError(f"token_signal learned_prior: init must be one of {', '.join(self.INITS)}, got {init!r}")
        if init_std is not None and (init != "normal" or not float(init_std) > 0):
            raise ConfigError("token_signal learned_prior: init_std (> 0) goes with init: normal")
        if learning_rate is not None and not float(learning_rate) > 0:
            raise ConfigError(f"token_signal learned_prior: learning_rate must be > 0, got {learning_rate}")
        self.hidden_size, self.init = int(hidden_size), init
        self.weight_decay = float(weight_decay)
        #: its own peak learning rate (None: the policy's); PreferenceTrainer puts it in its own param group
        self.learning_rate = float(learning_rate) if learning_rate is not None else None
        self.net = nn.Sequential(nn.Linear(self.hidden_size, head_size), nn.GELU(), nn.Linear(head_size, 1))
        if init == "zero":
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        elif init == "normal":
            nn.init.normal_(self.net[-1].weight, std=float(init_std if init_std is not None else 0.01))
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, ref: ReferenceOutputs, batch: PackedBatch | Mapping[str, torch.Tensor]) -> SignalOutput:
        batch = PackedBatch.from_dict(batch)
        if ref.hidden is None:
            raise UnipoError("LearnedPrior needs the reference's final hidden states (ref.hidden); the reference "
                             "pass must run with need_hidden=True")
        dtype = self.net[0].weight.dtype
        out: dict[str, dict[str, torch.Tensor]] = {}
        for side, layout in batch.sides.items():
            g = self.net(ref.hidden[side].detach().to(dtype)).squeeze(-1)
            out[side] = {"prior_offsets": scatter_tokens(g, layout.mask)}
        metrics = {f"prior/offset_{s}_mean": out[s]["prior_offsets"].detach()[batch.side(s).mask].float().mean()
                   for s in SIDES}
        return SignalOutput(out, metrics)


# -- the signal inside the policy ------------------------------------------------------------------------
#: the attribute under which a token signal is a submodule of the policy (:func:`attach_signal`)
SIGNAL_ATTRIBUTE = "unipo_token_signal"


def attach_signal(policy: nn.Module, signal: nn.Module) -> None:
    """Make ``signal`` a submodule of ``policy`` (``policy.unipo_token_signal``), so that whatever engine
    wraps the policy manages it as its own parameters: DDP all-reduces its gradients, FSDP2 / ZeRO-3 shard it
    with the root unit, the optimizer and the clipping see it, and the engine's checkpoints save and restore
    it. It is still called on its own, after the policy's forward (:func:`unipo.training.step.preference_step`).
    ``PreferenceTrainer`` keeps its keys out of the saved model (:func:`is_signal_key`) and writes them to
    ``unipo_signal.safetensors`` instead."""
    policy.add_module(SIGNAL_ATTRIBUTE, signal)


def is_signal_key(name: str) -> bool:
    """Whether a state-dict key or parameter name of the policy belongs to an attached token signal."""
    return name.startswith(SIGNAL_ATTRIBUTE + ".") or f".{SIGNAL_ATTRIBUTE}." in name


# -- configuration -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignalType:
    """A signal type: its module, the keyword options it accepts (besides the model sizes that
    :func:`build_signal` fills in) and the objective inputs it provides."""

    cls: type[nn.Module]
    options: tuple[str, ...]
    provides: tuple[str, ...]
    sizes: tuple[str, ...]


SIGNAL_TYPES: dict[str, SignalType] = {
    "sparsepo_masks": SignalType(SparsePOMasks, ("common", "dropout", "weight_decay", "learning_rate"),
                                 ("weights", "kl_weights"),
                                 ("num_layers", "hidden_size")),
    "activation_masks": SignalType(ActivationMasks, ("layers",), ("weights",), ()),
    "learned_prior": SignalType(LearnedPrior, ("init", "init_std", "init_zero", "head_size", "weight_decay",
                                               "learning_rate"), ("prior_offsets",),
                                ("hidden_size",)),
}
#: objective inputs that only a token signal can supply (the others come from the data or the models)
SIGNAL_ONLY_INPUTS = SIGNAL_ONLY  # from the objective's input table: ("kl_weights", "prior_offsets")


def _normalise(spec: Any, default: str | None) -> dict[str, Any] | None:
    if spec is None:
        spec = default
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"token_signal must be a type name or a mapping {{type: ..., ...}}, got {spec!r}")
    spec = dict(spec)
    spec["type"] = str(spec.get("type", "")).strip().lower().replace("-", "_")
    return None if spec["type"] in ("none", "", "null") else spec


def resolve_signal_spec(spec: Any, requirements: Any, *, data_weights: bool = False,
                        name: str = "this variant") -> dict[str, Any] | None:
    """Validate the ``token_signal`` setting against what the objective needs; return ``{type: ..., **options}``
    or None.

    ``requirements`` is the objective's :class:`~unipo.objective.config.Requirements` (or an objective config,
    whose ``.requirements`` is used). ``spec`` is None (choose automatically: the signal the objective's
    parts ask for, unless the data supplies the token weights — ``data_weights``), ``"none"``, a type name,
    or a mapping ``{type: ..., option: value}``.
    """
    req = getattr(requirements, "requirements", requirements)
    default = req.signal if not (data_weights and req.signal and "weights" in SIGNAL_TYPES[req.signal].provides) \
        else None
    spec = _normalise(spec, default)
    needed = [i for i in SIGNAL_ONLY_INPUTS if i in req.inputs and i != "kl_weights"]
    if spec is None:
        if needed:
            raise ConfigError(f"{name} reads {needed[0]}, which only a token signal provides: it needs token_signal "
                              f"{{type: {req.signal}}}, not none")
        return None
    kind = spec["type"]
    if kind not in SIGNAL_TYPES:
        close = difflib.get_close_matches(kind, list(SIGNAL_TYPES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown token_signal type {kind!r}{hint}; known: {', '.join(SIGNAL_TYPES)}, none")
    signal = SIGNAL_TYPES[kind]
    unknown = set(spec) - {"type", *signal.options}
    if unknown:
        raise ConfigError(f"token_signal {kind}: unknown option(s) {sorted(unknown)}; allowed: "
                          f"{', '.join(signal.options)}")
    _check_fit(kind, signal, req, needed, data_weights, name)
    if signal.sizes:  # the options' values are checked by building it once at size 1 (milliseconds)
        build_signal(spec, num_layers=1, hidden_size=1)
    if kind == "activation_masks" and spec.get("layers") is not None:
        layers = spec["layers"]
        if not (layers in ("all", "last") or (isinstance(layers, list) and all(isinstance(i, int) for i in layers))):
            raise ConfigError(f"token_signal activation_masks: layers must be all, last or a list of integers, "
                              f"got {layers!r}")
    return spec


def _check_fit(kind: str, signal: SignalType, req: Any, needed: list[str], data_weights: bool, name: str) -> None:
    """The signal provides what the objective reads, and nothing else provides it too."""
    if signal.provides[0] not in req.inputs:
        raise ConfigError(f"token_signal {kind} produces {signal.provides[0]}, but {name} does not read it "
                          f"(its parts read: {', '.join(sorted(req.inputs)) or 'no per-token inputs'})")
    missing = [i for i in needed if i not in signal.provides]
    if missing:
        raise ConfigError(f"{name} reads {missing[0]}, which token_signal {kind} does not provide; unipo trains "
                          f"one token signal at a time")
    if data_weights and "weights" in signal.provides:
        raise ConfigError(f"token_signal {kind} and weights_columns both supply the token weights; keep one")


def signal_sizes(model_config: Any) -> dict[str, int]:
    """The sizes a signal is built with, from a transformers model config: ``num_layers`` counts the
    hidden-state tensors the reference returns (``num_hidden_layers + 1``)."""
    text = model_config.get_text_config()
    return {"num_layers": text.num_hidden_layers + 1, "hidden_size": text.hidden_size}


def build_signal(spec: Mapping[str, Any], *, num_layers: int, hidden_size: int) -> nn.Module:
    """Construct the module for a resolved spec."""
    signal = SIGNAL_TYPES[spec["type"]]
    sizes = {"num_layers": num_layers, "hidden_size": hidden_size}
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    return signal.cls(*(sizes[k] for k in signal.sizes), **kwargs)
