"""TRL drop-in: keep TRL's ``DPOTrainer``, its data pipeline and ``DPOConfig``; train with any unipo objective.

::

    from trl import DPOConfig
    from unipo.integrations.trl import UnipoDPOTrainer

    trainer = UnipoDPOTrainer(model=model, args=DPOConfig(output_dir="out"), train_dataset=dataset,
                              processing_class=tokenizer, variant={"preset": "simpo", "weights": "bmc"})
    trainer.train()

The override point is :meth:`transformers.Trainer.compute_loss`, the Trainer's documented hook for a custom
loss. In TRL 1.x (read: ``trl/trainer/dpo_trainer.py`` of trl 1.16, ``DPOTrainer._compute_loss``) TRL's own
loss is one function that runs the policy and the reference over the concatenated batch (``[chosen rows;
rejected rows]``, ``completion_mask`` on the response tokens) with TRL's fused LM head, sums the per-token
log-probs and applies ``loss_type``. :class:`UnipoDPOTrainer` keeps everything around it (dataset
preparation, the collator, the reference model or PEFT adapter, precomputed reference log-probs, logging)
and replaces that function: the same forward calls give per-token log-probs ``[2B, L-1]``, which become one
:class:`~unipo.objective.sides.Side` per response (the response tokens left-aligned, ``[B, T]``) and go to
the unipo :class:`~unipo.objective.Objective`, the same object ``unipo train``'s preference step calls.

What the objective can get from TRL's batch: the policy's and the reference's per-token log-probs, the
response masks, and BMC's difference masks (computed here from the response token ids with
:func:`unipo.data.bmc_align.diff_masks`, as ``unipo train`` does while tokenising). What it cannot: per-token
data columns (TIS-DPO weights; TRL's collator keeps no extra column), per-position KL over the vocabulary
(TDPO, SparsePO, TIS-DPO: both models' full next-token distributions at each response position) and token
signals (SparsePO's mask network, the learned prior), and a third, gold response per pair (TPO's NLL term). A
variant that needs one of those is refused when the
trainer is built, naming what is missing. ``precompute_ref_log_probs=True`` stores one summed reference
log-prob per response; it serves the variants whose reference term is aggregated with uniform token weights
(spread evenly over the response tokens, which leaves every sum and mean unchanged), and is refused for the
variants whose parts declare ``Needs(token_reference=True)`` (BMC, SamPO, LD-DPO, TIS-DPO: the reference's
tokens weighted unequally).

TRL's loss options (``loss_type``, ``loss_weights``, ``ld_alpha``, ``f_divergence_type``,
``label_smoothing``, ``use_weighting``) must stay at their defaults: the objective decides the loss. β follows
unipo's one rule (:func:`unipo.objective.config.with_beta`, as ``unipo train``'s ``beta``): a ``DPOConfig.beta``
changed from TRL's default is used when the variant sets no β, and refused when the variant sets a different one.

``variant`` is the keyword of the objective, as ``--variant`` / ``variant:`` of ``unipo train``; ``objective=``, its
former name, is still accepted.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch

try:
    import trl
    from packaging.version import Version  # a dependency of TRL's
    from trl import DPOConfig, DPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter
except ImportError as exc:  # unipo itself never imports this module
    raise ImportError("unipo.integrations.trl needs TRL: pip install 'unipo[trl]' (or pip install trl)") from exc

from unipo.data.bmc_align import ALIGNMENTS, EXEMPTIONS, StopTokens, diff_masks
from unipo.errors import ConfigError
from unipo.objective import LossOutput, Objective
from unipo.objective.config import check_beta, with_beta
from unipo.objective.inputs import DROP_IN, SIDE_INPUTS, SIDE_SPECS
from unipo.objective.sides import ObjectiveInputs, Side

#: the first TRL the drop-in runs on (docs/trl.md, "Which TRL": the versions tried; pyproject's extras say the
#: same): TRL 1.0-1.14 have no fused LM head (``fused_lm_head=True``, ``log_probs``), 1.15.0's runs on Triton only
TRL_FLOOR = "1.16"


def check_trl_version(installed: str) -> None:
    """Refuse a TRL older than :data:`TRL_FLOOR`, in one line naming both and the way out."""
    if Version(installed) < Version(TRL_FLOOR):
        raise ImportError(f"unipo.integrations.trl needs trl>={TRL_FLOOR}, but trl {installed} is installed (older "
                          f"TRL lacks the DPOTrainer internals the drop-in uses): pip install -U 'trl>={TRL_FLOOR}' "
                          f"(docs/trl.md, 'Which TRL', lists the versions tried)")


check_trl_version(trl.__version__)

#: the per-token objective inputs this trainer can build from TRL's batch (the input table's ``drop_in`` entries)
SUPPLIED_INPUTS = DROP_IN
#: DPOConfig fields that shape TRL's own loss; with a unipo objective they must keep their defaults
TRL_LOSS_FIELDS = ("loss_type", "loss_weights", "ld_alpha", "f_divergence_type", "label_smoothing", "use_weighting")
#: the keys of TRL's batch that are not model inputs (trl 1.16, DPOTrainer._compute_loss)
NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps"})


def _default(name: str) -> Any:
    f = DPOConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def build_objective(variant: str | Mapping[str, Any] | Objective, args: Any = None) -> Objective:
    """The objective of ``variant`` (a preset name, a mapping or an :class:`~unipo.objective.Objective`), with
    ``args.beta`` by unipo's one β rule when the user changed it from TRL's default (used when the variant sets no β,
    refused when it sets a different one); TRL's loss options must be at their defaults, and the objective must need
    only what TRL's batch gives. ``args``: the trainer's ``DPOConfig`` (None: TRL's defaults)."""
    if args is None:
        args = SimpleNamespace(**{k: _default(k) for k in (*TRL_LOSS_FIELDS, "beta", "precompute_ref_log_probs")})
    changed = [f"{k}={getattr(args, k)!r}" for k in TRL_LOSS_FIELDS if getattr(args, k) != _default(k)]
    if changed:
        raise ConfigError(f"DPOConfig sets TRL's loss ({', '.join(changed)}), but UnipoDPOTrainer's loss is the unipo "
                          f"objective: leave these at their defaults and say it in the variant (e.g. "
                          f"variant={{'preset': 'ipo'}}; `unipo variants` lists them)")
    beta = args.beta if args.beta != _default("beta") else None
    if isinstance(variant, Objective):
        objective = variant
        if beta is not None:
            check_beta(objective.params["beta"], beta, source="DPOConfig.beta")
    else:
        objective = Objective(with_beta(variant, beta, source="DPOConfig.beta"))
    check_supported(objective, precomputed_reference=bool(args.precompute_ref_log_probs))
    return objective


def check_supported(objective: Objective, *, precomputed_reference: bool) -> None:
    """Refuse, naming what is missing, an objective whose inputs TRL's DPOTrainer cannot supply."""
    req, name = objective.requirements, objective.config.name
    missing = [f"the per-{SIDE_SPECS[k].per} input {k!r} ({SIDE_INPUTS[k]})"
               for k in sorted(req.inputs - SUPPLIED_INPUTS - {"kl"})]
    if req.signal is not None:
        missing.append(f"the token signal {req.signal} that supplies it during training (a network reading the "
                       f"reference model's hidden states)")
    if req.kl_direction is not None:
        missing.append(f"the per-position KL over the vocabulary ({req.kl_direction}), which needs both models' "
                       f"hidden states at every response position")
    if req.gold:
        missing.append(f"a third, gold response per pair (gold_nll_weight = {objective.params['gold_nll_weight']:g}: "
                       f"TPO's NLL term), which a DPO batch does not hold (TRL has TPO in its own experimental "
                       f"TPOTrainer)")
    if missing:
        raise ConfigError(f"variant {name} needs {'; and '.join(missing)}. TRL's DPOTrainer gives per-token "
                          f"log-probs and masks only (its collator keeps no other data column): train this variant "
                          f"with `unipo train --variant {name}` (docs/trl.md lists what the TRL drop-in supports)")
    if precomputed_reference and req.reference and (req.token_reference or req.inputs - {"ref_logps"}):
        who = [f"{kind}={part.name}" for kind, part in objective.parts.items() if part.needs.token_reference]
        who += sorted(req.inputs - {"ref_logps"})
        raise ConfigError(f"precompute_ref_log_probs=True keeps one summed reference log-prob per response, and "
                          f"variant {name} weights the reference's tokens unequally ({', '.join(who)}): the sum "
                          f"cannot be split back into tokens; set precompute_ref_log_probs=False (TRL then runs the "
                          f"reference each step), or train with `unipo train --variant {name}` (its precomputed "
                          f"reference keeps per-token log-probs)")


def left_align(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``values[i]`` at the positions where ``mask[i]`` is set, moved to the front: ``([N, T], mask [N, T])`` with
    T the largest count (a gather: gradients flow back to the original positions)."""
    mask = mask.bool()
    counts = mask.sum(-1)
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[:, : max(int(counts.max()), 1)]
    out_mask = torch.arange(order.shape[1], device=mask.device) < counts[:, None]
    return values.gather(-1, order), out_mask


class UnipoDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` whose loss is a unipo objective (``variant``: a preset name, a composition
    ``{"preset": ..., part: ..., param: ...}`` or an :class:`~unipo.objective.Objective`; ``objective``: its former
    name, still accepted). Every other argument is ``DPOTrainer``'s. Logged metrics are the objective's, under TRL's
    names (``rewards/*``, ``logps/*``)."""

    def __init__(self, *args: Any, variant: str | Mapping[str, Any] | Objective | None = None,
                 objective: str | Mapping[str, Any] | Objective | None = None,
                 bmc_alignment: str = "levenshtein", bmc_exempt: str = "stopwords", **kwargs: Any):
        if variant is not None and objective is not None:
            raise ConfigError("UnipoDPOTrainer takes variant= (or its former name objective=), not both")
        config = kwargs.get("args") if "args" in kwargs else (args[2] if len(args) > 2 else None)
        spec = variant if variant is not None else objective if objective is not None else "dpo"
        self.objective = build_objective(spec, config)  # refused here, before TRL loads or tokenises anything
        if bmc_alignment not in ALIGNMENTS or bmc_exempt not in EXEMPTIONS:
            raise ConfigError(f"bmc_alignment must be one of {ALIGNMENTS} and bmc_exempt one of {EXEMPTIONS}; got "
                              f"{bmc_alignment!r}, {bmc_exempt!r}")
        self.bmc_alignment, self.bmc_exempt = bmc_alignment, bmc_exempt  # as unipo train's options of these names
        super().__init__(*args, **kwargs)
        self._stops = None  # BMC's exempted tokens, found lazily from the tokenizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.objective.train(self.model.training)  # stateful parts (β-DPO, α-DPO, SamPO) move only in training
        out, model_kwargs = self.unipo_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        for key, value in out.metrics.items():
            value = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device)
            self._metrics[mode][key].append(self.accelerator.gather_for_metrics(value.reshape(1)).mean().item())
        if mode == "train":  # TRL's token count (trl 1.16, DPOTrainer._compute_loss)
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if return_outputs:  # TRL's prediction_step wants logits: one more forward, as TRL does
            with torch.no_grad():
                return out.loss, model(**model_kwargs)
        return out.loss

    def unipo_loss(self, model, inputs: Mapping[str, torch.Tensor]) -> tuple[LossOutput, dict[str, Any]]:
        """The objective on TRL's batch (and the model keyword arguments of its forward)."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:].bool()
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        seq_len = shift_mask.size(1)
        # prompt-learning PEFT prepends virtual tokens to the outputs: keep the positions of the real tokens
        logps = model(**model_kwargs, labels=labels, fused_lm_head=True).log_probs[:, -seq_len:]
        ref = self._reference_token_logps(inputs, model_kwargs, labels, shift_mask)
        token_ids, _ = left_align(inputs["input_ids"][:, 1:], shift_mask)
        logps, mask = left_align(logps, shift_mask)
        ref = left_align(ref, shift_mask)[0] if ref is not None else None
        sides = {}
        diffs = self._diff_masks(inputs, token_ids, mask) if "diff_mask" in self.objective.requirements.inputs else None
        for i, name in enumerate(("chosen", "rejected")):
            part = slice(None, logps.shape[0] // 2) if i == 0 else slice(logps.shape[0] // 2, None)
            width = int(mask[part].sum(-1).max())  # each side as narrow as its longest response
            sides[name] = Side(name, logps[part, :width], mask[part, :width],
                               ref_logps=ref[part, :width] if ref is not None else None,
                               diff_mask=diffs[part, :width] if diffs is not None else None)
        return self.objective.loss(ObjectiveInputs(sides["chosen"], sides["rejected"])), model_kwargs

    def _reference_token_logps(self, inputs, model_kwargs, labels, shift_mask) -> torch.Tensor | None:
        """``[2B, L-1]`` reference log-probs: TRL's reference forward (a reference model, or the PEFT model with
        its adapter off), or its precomputed sums spread evenly over each response's tokens."""
        if not self.objective.requirements.reference:
            return None
        if self.precompute_ref_logps:
            sums = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(shift_mask.device)
            per_token = sums / shift_mask.sum(-1).clamp_min(1)
            return per_token[:, None] * shift_mask
        ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self.ref_model is None:  # PEFT: the base model (or the frozen "ref" adapter) is the reference
                unwrapped = self.accelerator.unwrap_model(self.model)
                adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
                model = self.model
            else:
                adapter, model = contextlib.nullcontext(), self.ref_model
            with adapter:
                out = model(**ref_kwargs, labels=labels, fused_lm_head=True)
        return out.log_probs[:, -shift_mask.size(1):]

    def _diff_masks(self, inputs: Mapping[str, torch.Tensor], token_ids: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
        """BMC difference masks ``[2B, T]`` of each pair's response tokens: :func:`unipo.data.bmc_align.diff_masks`
        with this trainer's ``bmc_alignment`` and ``bmc_exempt``, as ``unipo train`` computes them (difflib
        also reads the prompt: the chosen row's tokens before its response)."""
        if self._stops is None:  # DPOTrainer's text tokenizer (a VLM's too)
            self._stops = (StopTokens(self._tokenizer, punctuation=self.bmc_exempt == "stopwords_punctuation")
                           if self.bmc_exempt != "none" else frozenset())
        half = token_ids.shape[0] // 2
        in_prompt = inputs["attention_mask"].bool() & ~inputs["completion_mask"].bool()
        pad = self._tokenizer.pad_token_id
        out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        for i in range(half):
            chosen = token_ids[i][mask[i]].tolist()
            rejected = token_ids[half + i][mask[half + i]].tolist()
            m_c, m_r = diff_masks(chosen, rejected, stopword_ids=self._stops, alignment=self.bmc_alignment,
                                  prompt_ids=inputs["input_ids"][i][in_prompt[i]].tolist(),
                                  pad_id=-1 if pad is None else pad)
            out[i, : len(m_c)] = torch.tensor(m_c, dtype=torch.float32)
            out[half + i, : len(m_r)] = torch.tensor(m_r, dtype=torch.float32)
        return out
