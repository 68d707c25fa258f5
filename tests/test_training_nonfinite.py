"""The non-finite guard's decision rule (training/nonfinite.py), the console's NaN, and the objective parameters'
finiteness (issue 23, items 1 and 2) — no model. The same rule under two real processes (gloo all-reduce) is the
slow test at the end."""

from __future__ import annotations

import pytest
import torch

from unipo.training.nonfinite import (
    Decision,
    NonFiniteGuard,
    describe,
    local_flags,
    nonfinite_parameters,
    way_out,
)

NAN, INF = float("nan"), float("inf")
OK = [torch.tensor(0.69), torch.tensor(0.71)]


def _ranks(guards, per_rank):
    """Each rank's decision on the flags summed over the ranks (what the trainer's all-reduce gives each)."""
    flags = [local_flags(losses, gn) for losses, gn in per_rank]
    total = torch.stack(flags).sum(0)
    return [g.decide(total.clone(), per_rank[0][1]) for g in guards]


@pytest.mark.unit
@pytest.mark.parametrize("losses,grad_norm,expected", [
    (OK, 1.3, [0, 0, 0]),
    ([torch.tensor(0.5), torch.tensor(NAN)], 1.3, [1, 0, 0]),
    ([torch.tensor(INF)], 1.3, [0, 1, 0]),
    ([torch.tensor(-INF)], 1.3, [0, 1, 0]),
    (OK, NAN, [0, 0, 1]), (OK, INF, [0, 0, 1]), (OK, torch.tensor(NAN), [0, 0, 1]), (OK, None, [0, 0, 0]),
])
def test_local_flags(losses, grad_norm, expected):
    assert local_flags(losses, grad_norm).tolist() == expected


@pytest.mark.unit
def test_stop_policy_stops_at_the_first_bad_step_naming_the_quantity():
    g = NonFiniteGuard("stop")
    assert g.decide(local_flags(OK, 1.0), 1.0) == Decision(apply=True)
    assert g.decide(local_flags([torch.tensor(NAN)], NAN), NAN) == Decision(False, True, "loss", "nan")
    g = NonFiniteGuard("stop")
    assert g.decide(local_flags([torch.tensor(INF)], 2.0), 2.0) == Decision(False, True, "loss", "inf")
    g = NonFiniteGuard("stop")
    assert g.decide(local_flags(OK, INF), INF) == Decision(False, True, "gradient norm", "inf")


@pytest.mark.unit
def test_skip_step_counts_and_stops_after_the_limit_in_a_row():
    g = NonFiniteGuard("skip_step", skip_limit=3)
    bad, good = local_flags([torch.tensor(NAN)], NAN), local_flags(OK, 1.0)
    seq = [g.decide(f, 1.0) for f in (bad, bad, good, bad, bad)]
    assert [d.apply for d in seq] == [False, False, True, False, False]
    assert not any(d.stop for d in seq) and g.skipped == 4 and g.in_a_row == 2
    last = g.decide(bad, 1.0)  # the third in a row
    assert last.stop and not last.apply and g.skipped == 4 and g.in_a_row == 3


@pytest.mark.unit
def test_every_rank_takes_the_same_decision():
    """DDP / FSDP: one rank's NaN loss (the other's finite; gradients not yet mixed) stops every rank; an inf loss
    on one rank with finite gradients everywhere too; every rank applies a step only when all saw it finite."""
    for per_rank in ([(OK, 1.0), ([torch.tensor(NAN)], 1.0)], [([torch.tensor(INF)], 1.0), (OK, 1.0)]):
        decisions = _ranks([NonFiniteGuard("stop"), NonFiniteGuard("stop")], per_rank)
        assert decisions[0] == decisions[1] and decisions[0].stop
    guards = [NonFiniteGuard("skip_step", 2), NonFiniteGuard("skip_step", 2)]
    first = _ranks(guards, [(OK, 1.0), ([torch.tensor(NAN)], 1.0)])
    assert first[0] == first[1] and not first[0].apply and not first[0].stop
    assert _ranks(guards, [(OK, 1.0), (OK, 1.0)]) == [Decision(apply=True)] * 2


@pytest.mark.unit
def test_the_line_names_step_quantity_checkpoint_and_what_to_try():
    line = describe(7, "loss", "nan") + way_out("loss", 7, "runs/x/checkpoint-6", "runs/x", 2, 1e-3, 0.1, "stop")
    assert line.startswith("step 7: the loss is nan; this step's update was not applied and training stopped; ")
    assert "the last finite checkpoint is runs/x/checkpoint-6" in line and "no final model was written" in line
    assert "lower --learning-rate (now 0.001) or --beta (now 0.1)" in line and "--nan-policy skip_step" in line
    none = way_out("gradient norm", 1, None, "runs/x", 100, 1e-3, None, "skip_step")
    assert "no checkpoint was written before step 1 (save_steps 100)" in none
    assert "--beta" not in none and "skip_step" not in none


@pytest.mark.unit
def test_nonfinite_parameters_names_them():
    params = [("a", torch.zeros(3)), ("b", torch.tensor([1.0, INF])), ("c", torch.tensor([NAN])),
              ("d", torch.zeros(0))]
    assert nonfinite_parameters(params) == ["b", "c"]


@pytest.mark.unit
def test_console_prints_nan_never_zero():
    from unipo.training.console import train_line

    line = train_line({"loss": NAN, "grad_norm": NAN, "rewards/margins": NAN, "skipped_steps": 2}, 3, 6, None, None)
    assert line == "step 3/6 · loss nan · margin nan · grad norm nan · 2 non-finite steps skipped"
    assert "grad norm" not in train_line({"loss": 0.5, "grad_norm": 1.0}, 1, 6, None, None)


@pytest.mark.unit
def test_every_objective_parameter_refuses_nan_inf_and_beyond_float32():
    """Issue 23, item 2: NaN fails every range comparison and inf passes "> 0"; each numeric parameter of every
    registered part (and the objective's own) is refused, naming it."""
    from unipo.errors import ConfigError
    from unipo.objective.presets import GLOBAL_PARAM_SPECS
    from unipo.objective.registry import KINDS, parts

    specs = dict(GLOBAL_PARAM_SPECS)
    for kind in KINDS:
        for part in parts(kind).values():
            specs.update(part.param_specs)
    numeric = {k: s for k, s in specs.items() if s.kind not in ("bool", "weights")}
    assert {"beta", "gamma"} <= set(numeric)
    for key, spec in ((k, s) for k, s in specs.items() if s.kind == "weights"):  # a mixture's {name: weight}
        for bad in (NAN, INF, -INF, 1e39, -1e39):
            with pytest.raises(ConfigError, match=f"{key}: the weight of 'sigmoid' must be a positive finite"):
                spec.check(key, {"sigmoid": bad, "bco_pair": 0.2})
    for key, spec in numeric.items():
        for bad in (NAN, INF, -INF, 1e39, -1e39):
            with pytest.raises(ConfigError, match=f"parameter '{key}' must be a finite number"):
                spec.check(key, bad)
        if spec.default is not None:
            spec.check(key, spec.default)  # the default itself is valid


def _gloo_worker(rank: int, world: int, init: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    guard = NonFiniteGuard("stop")
    out = []
    for bad_rank in (None, 1):  # step 1 finite everywhere, step 2 NaN on rank 1 only
        losses = [torch.tensor(NAN if rank == bad_rank else 0.7)]
        flags = local_flags(losses, 1.0)
        dist.all_reduce(flags)  # what accelerator.reduce(..., "sum") does
        d = guard.decide(flags, 1.0)
        out.append([d.apply, d.stop, d.quantity])
    with open(f"{results}.{rank}", "w") as f:
        f.write(repr(out))
    dist.destroy_process_group()


@pytest.mark.slow  # two processes that import torch
def test_two_processes_agree_to_stop(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = str(tmp_path / "decisions")
    mp.spawn(_gloo_worker, args=(2, f"tcp://127.0.0.1:{port}", results), nprocs=2, join=True)
    got = [open(f"{results}.{r}").read() for r in range(2)]
    assert got[0] == got[1] == repr([[True, False, None], [False, True, "loss"]])
