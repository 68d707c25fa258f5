"""TIS-DPO token-importance weights (Liu et al., ICLR 2025, "TIS-DPO: Token-level Importance Sampling for
Direct Preference Optimization With Estimated Weights").

The pipeline behind ``unipo weights``:

1. :mod:`unipo.tisdpo.contrastive`: build a contrastive pair of models (π+, π−) with method (P) prompts,
   (S) SFT on chosen / rejected, or (D) DPO on the data / the swapped data (the paper's §6.1); trained
   models are cached under a key of method, base model, data and training settings;
2. :mod:`unipo.tisdpo.estimate`: score every response token with both models and turn the
   log-probability differences into weights (:mod:`unipo.tisdpo.transform`, the paper's Eq. 19, or the
   released code's rank mapping), appending rows to a resumable JSONL file;
3. :mod:`unipo.tisdpo.show`: render the weights (HTML, PNG, histogram).

See docs/tisdpo.md.
"""
