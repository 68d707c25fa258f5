"""The one table of the objective's inputs: every tensor the objective may read besides the policy's log-probs and
the masks, declared once.

Each :class:`InputSpec` names one input, says whether it is per token (one per response side, ``[B, T]``), per
response (one per response side, one value per response, ``[B]``) or per pair (``[B]``), its dtype, which producer
supplies it in training and what it means. Everything else derives from :data:`INPUTS`:

- the optional fields of :class:`unipo.objective.sides.Side` (per-token and per-response inputs) and of
  :class:`unipo.objective.sides.ObjectiveInputs` (per-pair inputs);
- the keywords of :func:`unipo.compute_loss` / :meth:`unipo.objective.Objective.__call__`
  (:data:`KEYWORDS`, ``<side>`` filled in: ``ref_chosen_logps``, ``chosen_weights``, …);
- the meaning of each input that a part may declare in its ``Needs`` (:data:`SIDE_INPUTS`);
- the per-token and per-response data columns of a collated batch (:class:`unipo.layout.SideLayout`,
  ``unipo.layout.SIDE_COLUMNS``);
- what :func:`unipo.training.step.objective_inputs` hands the objective (:attr:`InputSpec.producers`);
- what the TRL drop-in builds from TRL's batch (``unipo.integrations.trl.SUPPLIED_INPUTS``);
- the inputs only a token signal supplies (``unipo.models.signals.SIGNAL_ONLY_INPUTS``).

Adding an input is one entry here plus its producer (the code that computes it: a model pass, a data column, a
token signal), which the entry names. This module imports nothing of unipo (it sits under every other one).
"""

from __future__ import annotations

from dataclasses import dataclass

#: where an input comes from in training (:func:`unipo.training.step.objective_inputs`):
#: ``reference`` an attribute of ``ReferenceOutputs`` (per side), ``policy`` an attribute of ``ForwardOutput``
#: (per side), ``data`` a per-token or per-response data column of the batch (an attribute of ``SideLayout``),
#: ``signal`` the token signal's output, ``batch`` a per-pair attribute of ``PackedBatch``
SOURCES = ("reference", "policy", "data", "signal", "batch")
#: how many values an input holds: one per response token of a side, one per response of a side, one per pair
PER = ("token", "response", "pair")


@dataclass(frozen=True)
class Producer:
    """One producer of an input: ``source`` (one of :data:`SOURCES`) and the attribute that holds it there
    (``ForwardOutput.log_sum_sq``, ``SideLayout.weights``, …; a token signal's outputs are keyed by input name)."""

    source: str
    attribute: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"producer source must be one of {SOURCES}, got {self.source!r}")


@dataclass(frozen=True)
class InputSpec:
    """One input of the objective.

    - ``name``: the :class:`~unipo.objective.sides.Side` field (per token, per response) or
      :class:`~unipo.objective.sides.ObjectiveInputs` field (per pair), and what a part lists in ``Needs.inputs``;
    - ``keyword``: its keyword in :func:`unipo.compute_loss`, ``{}`` standing for the side (``ref_{}_logps``);
    - ``per``: ``token`` (``[B, T]`` per side), ``response`` (``[B]`` per side: one value per response, e.g. its
      score) or ``pair`` (``[B]``; ``rejected_pair`` ``[N]``);
    - ``dtype``: ``float`` (computed in at least float32), ``long``;
    - ``producers``: who supplies it in training, in order (a later one that gives a value wins);
    - ``column``: a data column a batch may carry (per token: collated, padded with 0; per response: stacked);
    - ``drop_in``: the TRL drop-in builds it from TRL's batch;
    - ``constant``: the objective detaches it (no gradient ever flows into it);
    - ``doc``: what it is.
    """

    name: str
    keyword: str
    doc: str
    per: str = "token"
    dtype: str = "float"
    producers: tuple[Producer, ...] = ()
    column: bool = False
    drop_in: bool = False
    constant: bool = False

    def __post_init__(self) -> None:
        if self.per not in PER:
            raise ValueError(f"input {self.name}: per must be one of {PER}, got {self.per!r}")

    def key(self, side: str) -> str:
        """The keyword of this input for ``side`` (``chosen`` / ``rejected``); a per-pair input's is its name."""
        return self.keyword.format(side)


def _token(name: str, keyword: str, doc: str, *producers: Producer, **flags: bool) -> InputSpec:
    return InputSpec(name, keyword, doc, "token", "float", producers, **flags)


def _response(name: str, keyword: str, doc: str, *producers: Producer, **flags: bool) -> InputSpec:
    return InputSpec(name, keyword, doc, "response", "float", producers, **flags)


def _pair(name: str, doc: str, dtype: str, producer: Producer) -> InputSpec:
    return InputSpec(name, name, doc, "pair", dtype, (producer,))


#: every input of the objective, per-side ones first (in the order of :class:`~unipo.objective.sides.Side`)
INPUTS: tuple[InputSpec, ...] = (
    _token("ref_logps", "ref_{}_logps", "reference log-probabilities r_t of the response tokens",
           Producer("reference", "logps"), column=True, drop_in=True, constant=True),
    _token("weights", "{}_weights",
           "token weights ω_t (TIS-DPO weights from the data, SparsePO masks m^u from a token signal)",
           Producer("data", "weights"), Producer("signal"), column=True),
    _token("kl", "{}_kl", "per-position KL between policy and reference over the vocabulary (direction: the KL part's)",
           Producer("policy", "kl")),
    _token("kl_weights", "{}_kl_weights", "weights on the per-position KL (SparsePO masks m^d, from a token signal)",
           Producer("signal")),
    _token("diff_mask", "{}_diff_mask", "BMC: 1 on tokens where the pseudo-winning and the losing response differ",
           Producer("data", "diff_mask"), column=True, drop_in=True),
    _token("prior_offsets", "{}_prior_offsets",
           "learned prior: per-token offset g_t added to the reference log-prob (a token signal)", Producer("signal")),
    _token("log_sum_sq_probs", "{}_log_sum_sq_probs",
           "log Σ_v π_θ(v|x,y_<t)² of the policy's next-token distribution at each response position, no gradient "
           "(WPO's aligned weights; computed in the chunked LM head pass)", Producer("policy", "log_sum_sq")),
    _token("eps_plus_logps", "{}_eps_plus_logps",
           "log-probs of the response tokens under the ε-perturbed policy log softmax((1 + ε)·z_θ − ε·z_ref) (the "
           "policy trained with β/(1 + ε)), no gradient (ε-DPO; from the policy's and the reference's logits at each "
           "position)", Producer("policy", "eps_plus")),
    _token("eps_minus_logps", "{}_eps_minus_logps",
           "log-probs of the response tokens under log softmax((1 − ε)·z_θ + ε·z_ref) (the policy trained with "
           "β/(1 − ε)), no gradient (ε-DPO)", Producer("policy", "eps_minus")),
    _response("score", "{}_score", "the response's score from the data, ONE number per response ([B], not per token): "
              "a reward model's or a judge's rating (Uni-DPO's quality weight; the data's `score_columns`)",
              Producer("data", "score"), column=True, constant=True),
    _pair("pair_weights", "each pair's weight (≥ 0): the batch loss is Σ w_i ℓ_i / Σ w_i instead of the mean",
          "float", Producer("batch", "pair_weights")),
    _pair("rejected_pair", "several rejected responses per pair: the pair of each rejected row (each pair's rows "
          "contiguous, in pair order; listwise pair losses only)", "long", Producer("batch", "rejected_pair")),
    _pair("pair_ids", "each pair's identity, its row in the dataset (SamPO's draw is keyed by it; None: its position "
          "in the batch)", "long", Producer("batch", "index")),
)
#: the per-token inputs (fields of :class:`~unipo.objective.sides.Side`, ``[B, T]``), by name
TOKEN_INPUTS: dict[str, InputSpec] = {s.name: s for s in INPUTS if s.per == "token"}
#: the per-response inputs (fields of :class:`~unipo.objective.sides.Side`, ``[B]``: one value per response), by name
RESPONSE_INPUTS: dict[str, InputSpec] = {s.name: s for s in INPUTS if s.per == "response"}
#: every input of one side, per token or per response (the optional fields of :class:`~unipo.objective.sides.Side`)
SIDE_SPECS: dict[str, InputSpec] = {**TOKEN_INPUTS, **RESPONSE_INPUTS}
#: the per-pair inputs (fields of :class:`~unipo.objective.sides.ObjectiveInputs`), by name
PAIR_INPUTS: dict[str, InputSpec] = {s.name: s for s in INPUTS if s.per == "pair"}
#: keyword of each per-side input in :func:`unipo.compute_loss`, by name (``{}``: the side)
KEYWORDS: dict[str, str] = {name: s.keyword for name, s in SIDE_SPECS.items()}
#: the per-side inputs a part may read (``Needs.inputs``) and what each is
SIDE_INPUTS: dict[str, str] = {name: s.doc for name, s in SIDE_SPECS.items()}
#: the data columns of a side a collated batch may carry (per token, then per response), by name → batch key pattern
DATA_COLUMNS: dict[str, str] = {name: s.keyword for name, s in SIDE_SPECS.items() if s.column}
#: the per-response data columns among them (``[B]`` each, not padded per token)
RESPONSE_COLUMNS: dict[str, str] = {name: s.keyword for name, s in RESPONSE_INPUTS.items() if s.column}
#: the per-side inputs that only a token signal supplies
SIGNAL_ONLY: tuple[str, ...] = tuple(name for name, s in SIDE_SPECS.items()
                                     if s.producers and all(p.source == "signal" for p in s.producers))
#: the per-side inputs the TRL drop-in builds from TRL's batch
DROP_IN: frozenset[str] = frozenset(name for name, s in SIDE_SPECS.items() if s.drop_in)
SIDE_NAMES = ("chosen", "rejected")


def input_keywords() -> dict[str, tuple[str, str | None]]:
    """Every input keyword of :func:`unipo.compute_loss` → (input name, side; None for a per-pair input)."""
    out: dict[str, tuple[str, str | None]] = {}
    for spec in INPUTS:
        for side in (SIDE_NAMES if spec.per != "pair" else (None,)):
            out[spec.key(side or "")] = (spec.name, side)
    return out
