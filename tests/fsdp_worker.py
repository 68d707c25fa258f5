"""The worker of ``tests/test_fsdp.py`` (not a test module): unipo's model path on the tiny model, either in
each process of ``torchrun`` (``torchrun --nproc_per_node 2 tests/fsdp_worker.py MODEL UNTIED_MODEL OUT``),
first unsharded on the whole batch (the one-process run), then under FSDP2 on that process's half of it.

For each scenario it runs one preference step (policy forward with segment attention on one padding-free row,
the chunked log-prob head, the reference, the token signal, the objective), backward, and saves the loss
(averaged over the processes) and every trainable parameter's full gradient to ``OUT/SCENARIO-MODE.pt`` (MODE
``single`` or ``fsdp``). Under FSDP2 it also saves and restores a sharded checkpoint
(torch.distributed.checkpoint) after one AdamW step and records the next step's loss from the live run and
from the restored one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from unipo.data.batching import collate_pairs
from unipo.layout import PackedBatch
from unipo.models.forward import unwrap
from unipo.models.loading import apply_lora, load_model
from unipo.models.sharding import shard_model
from unipo.models.signals import attach_signal, build_signal, signal_sizes
from unipo.objective import Objective
from unipo.training.reference import Reference
from unipo.training.step import preference_step

#: name → (variant, token signal spec, LoRA, reference mode, untied head as its own FSDP unit)
SCENARIOS = {
    "tdpo2": ("tdpo2", None, False, "copy", False),
    "sparsepo_untied_head": ("sparsepo", {"type": "sparsepo_masks", "common": False, "dropout": 0.0}, False,
                             "copy", True),
    "learned_prior": ("learned_prior", {"type": "learned_prior", "init_zero": False}, False, "copy", False),
    "lora_tdpo1": ("tdpo1", None, True, "adapter", False),
}
PAIRS = 4  # the global batch; each of 2 processes takes 2


def batches(step: int) -> list[dict]:
    """The global batch of ``step``: PAIRS tokenised pairs of different lengths, fixed seed."""
    g = torch.Generator().manual_seed(100 + step)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=g).tolist()

    lengths = [(5, 3, 6), (9, 1, 2), (2, 7, 1), (1, 2, 4)]
    return [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in lengths]


def build(model_dir: str, scenario: str, sharded: bool):
    """Policy (perturbed from the reference by a seeded offset, LoRA where asked, the token signal attached),
    reference, objective; sharded with FSDP2 when ``sharded``."""
    variant, signal_spec, lora, ref_mode, own_head = SCENARIOS[scenario]
    policy = load_model(model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = load_model(model_dir, trainable=False) if ref_mode == "copy" else None
    if lora:
        policy = apply_lora(policy, {"r": 4, "alpha": 8, "dropout": 0.0})
        torch.manual_seed(2)
        with torch.no_grad():  # LoRA's B starts at zero: give the adapters a value and a gradient
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.05 * torch.randn_like(p))
    signal = None
    if signal_spec is not None:
        torch.manual_seed(3)
        signal = build_signal(signal_spec, **signal_sizes(unwrap(policy).config))
        attach_signal(policy, signal)
    if sharded:
        heads = lambda m: [unwrap(m).get_output_embeddings()] if own_head else []  # noqa: E731
        shard_model(policy, units=heads(policy))
        if ref is not None:
            shard_model(ref, units=heads(ref))
    return policy, Reference(ref_mode, ref), Objective(variant), signal


def step_loss(policy, reference, objective, signal, pairs: list[dict]) -> torch.Tensor:
    batch = PackedBatch.from_dict(collate_pairs(pairs, pad_token_id=0, one_row=True))
    return preference_step(policy, reference, batch, objective, token_signal=signal, chunk_size=3).loss


def local(pairs: list[dict]) -> list[dict]:
    if not dist.is_initialized():
        return pairs
    n = len(pairs) // dist.get_world_size()
    return pairs[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: no gradient"
            g = p.grad
            out[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    return out


def checkpoint_round_trip(model_dir: str, scenario: str, ckpt: Path) -> dict[str, float]:
    """Train 1 AdamW step, save a sharded checkpoint, take step 2; rebuild, load, take step 2 again."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def fresh():
        policy, reference, objective, signal = build(model_dir, scenario, sharded=True)
        opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
        return policy, reference, objective, signal, opt

    policy, reference, objective, signal, opt = fresh()
    step_loss(policy, reference, objective, signal, local(batches(0))).backward()
    opt.step()
    opt.zero_grad()
    model_sd, optim_sd = get_state_dict(policy, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(ckpt))
    live = step_loss(policy, reference, objective, signal, local(batches(1)))

    policy, reference, objective, signal, opt = fresh()
    model_sd, optim_sd = get_state_dict(policy, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(ckpt))
    set_state_dict(policy, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    restored = step_loss(policy, reference, objective, signal, local(batches(1)))
    restored.backward()  # the restored model trains on: its optimizer state is complete
    opt.step()
    return {"live": mean_over_ranks(live), "restored": mean_over_ranks(restored)}


def run(scenario: str, path: str, sharded: bool) -> dict:
    """One step of ``scenario``: unsharded on the whole batch, or sharded on this process's half."""
    policy, reference, objective, signal = build(path, scenario, sharded)
    pairs = local(batches(0)) if sharded else batches(0)
    loss = step_loss(policy, reference, objective, signal, pairs)
    loss.backward()
    return {"loss": mean_over_ranks(loss) if sharded else float(loss), "grads": full_grads(policy)}


def main(model_dir: str, untied_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    out_dir = Path(out)
    dist.init_process_group("gloo")
    for scenario in SCENARIOS:
        path = untied_dir if SCENARIOS[scenario][4] else model_dir
        single, sharded = run(scenario, path, sharded=False), run(scenario, path, sharded=True)
        if scenario == "tdpo2":
            sharded["checkpoint"] = checkpoint_round_trip(path, scenario, out_dir / "ckpt")
        if dist.get_rank() == 0:
            torch.save(single, out_dir / f"{scenario}-single.pt")
            torch.save(sharded, out_dir / f"{scenario}-fsdp.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(*sys.argv[1:4])
