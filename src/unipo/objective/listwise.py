"""One chosen response against several rejected ones: the Plackett–Luce form of DPO.

DPO's Appendix A.3 (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", arXiv 2305.18290, Eq. 18) replaces the Bradley–Terry model by the Plackett–Luce model over K
responses. When the data says only which response is best (y_w) among {y_w, y_l1, …, y_lK}, the likelihood
keeps the first factor of that product:

    p(y_w ≻ all) = exp(βh_w) / Σ_{y ∈ {w, l_1..l_K}} exp(βh_y),   loss = −log p = log(1 + Σ_k exp(−z_k))

with z_k = β(h_w − h_{l_k}) (plus the objective's margins, −γ − α_len(|y_w| − |y_{l_k}|), when set). With
K = 1 this is log(1 + e^{−z}) = −log σ(z): DPO's loss.

How several rejected responses reach the objective: the rejected :class:`~unipo.objective.sides.Side`
holds one row per rejected response (``[N, T]``, N = Σ_i K_i, each pair's rows contiguous and in pair
order) and :attr:`~unipo.objective.sides.ObjectiveInputs.rejected_pair` (long ``[N]``) names each row's
pair. The objective scores every side on its own rows, repeats the chosen scores for each of its pair's
rejected rows (so z has one entry per comparison, ``[N]``), and a pair loss declared ``listwise`` reduces
the comparisons of each pair to one loss ``[B]``. Pairs may have different K (no padding of K).
"""

from __future__ import annotations

import torch

from unipo.errors import UnipoError
from unipo.objective.pair_losses import nls
from unipo.objective.protocols import Params
from unipo.objective.registry import PresetSpec, register
from unipo.objective.sides import PairLossOut, PairTerms


def check_groups(groups: torch.Tensor, num_pairs: int, num_rows: int) -> torch.Tensor:
    """Validate ``rejected_pair`` (``[N]``: the pair of each rejected row): integers in [0, B), in
    non-decreasing order (each pair's rows contiguous), every pair with at least one rejected response."""
    if groups.dim() != 1 or groups.shape[0] != num_rows or groups.dtype.is_floating_point:
        raise UnipoError(f"rejected_pair must be an integer tensor [rejected rows] = [{num_rows}]; got "
                         f"{tuple(groups.shape)} {groups.dtype}")
    groups = groups.long()
    if num_rows and (int(groups.min()) < 0 or int(groups.max()) >= num_pairs):
        raise UnipoError(f"rejected_pair holds pair indices outside [0, {num_pairs})")
    if bool((groups[1:] < groups[:-1]).any()):
        raise UnipoError("rejected_pair must be non-decreasing: each pair's rejected rows contiguous, in pair order")
    counts = torch.bincount(groups, minlength=num_pairs)
    if bool((counts == 0).any()):
        bad = torch.nonzero(counts == 0).flatten().tolist()
        raise UnipoError(f"pairs {bad} have no rejected response (every pair needs at least one)")
    return groups


def per_pair_max(values: torch.Tensor, groups: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """``[B]``: the largest of each pair's values (``values`` ``[N]``, one per rejected row)."""
    out = values.new_full((num_pairs,), float("-inf"))
    return out.scatter_reduce(0, groups, values, reduce="amax", include_self=True)


def listwise_nll(z: torch.Tensor, groups: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """``[B]``: log(1 + Σ_{k ∈ pair i} exp(−z_k)) for each pair i, computed stably: with the shift
    m_i = max(0, max_k −z_k) (held constant: the value does not depend on it, so neither does the gradient),
    m_i + log(e^{−m_i} + Σ_k e^{−z_k − m_i})."""
    m = per_pair_max(-z.detach(), groups, num_pairs).clamp_min(0.0)
    total = torch.zeros(num_pairs, dtype=z.dtype, device=z.device).index_add(0, groups, torch.exp(-z - m[groups]))
    return m + torch.log(torch.exp(-m) + total)


@register("pair_loss", "plackett_luce", listwise=True,
          formula="log(1 + Σ_k exp(−z_k)) = −log [exp(βh_w) / Σ_{y ∈ {w, l_1..l_K}} exp(βh_y)]",
          source="DPO (Rafailov et al. 2023, arXiv 2305.18290) Appendix A.3, Eq. 18: the Plackett–Luce model "
                 "with only the first-ranked response known",
          preset=PresetSpec("listwise_dpo", "−log [exp(βρ_w) / (exp(βρ_w) + Σ_k exp(βρ_{l_k}))]",
                            "Rafailov et al. 2023 (DPO, arXiv 2305.18290), Appendix A.3 (Plackett–Luce, Eq. 18)",
                            "rows may give 'rejected' as a list of K responses (docs/data.md); K = 1 is DPO"))
def plackett_luce_loss(t: PairTerms, params: Params) -> PairLossOut:
    """One chosen response against every rejected response of its row at once (a softmax over the K + 1
    responses' rewards, the chosen one the target). Without several rejected responses per pair
    (``t.groups`` None) this is −log σ(z), computed exactly as DPO's sigmoid loss."""
    if t.groups is None:
        return PairLossOut(nls(t.logits))
    return PairLossOut(listwise_nll(t.logits, t.groups, int(t.num_pairs)))
