"""The chunked log-probability / KL path equals the plain full-logits path, in value and gradient."""

from __future__ import annotations

import pytest
import torch

from unipo.models.logprobs import token_logps, token_logps_reference

pytestmark = pytest.mark.unit


def setup(seed=0, n=37, h=16, v=101, bias=False):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(h, v, bias=bias).double()
    ref_head = torch.nn.Linear(h, v, bias=bias).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g, dtype=torch.float64))
        ref_head.weight.copy_(head.weight + 0.3 * torch.randn(v, h, generator=g, dtype=torch.float64))
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    ref_hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (n,), generator=g)
    return hidden, head, ref_hidden, ref_head, labels


@pytest.mark.parametrize("direction", [None, "ref||policy", "policy||ref"])
@pytest.mark.parametrize("chunk", [1, 8, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_equals_plain(direction, chunk, bias):
    hidden, head, ref_hidden, ref_head, labels = setup(bias=bias)
    lp, kl = token_logps(hidden, head, labels, ref_hidden=ref_hidden, ref_head=ref_head,
                         kl_direction=direction, chunk_size=chunk)
    hidden2 = hidden.detach().clone().requires_grad_(True)
    lp2, kl2 = token_logps_reference(hidden2, head, labels, ref_hidden=ref_hidden, ref_head=ref_head,
                                     kl_direction=direction)
    torch.testing.assert_close(lp.double(), lp2, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(lp2)
    gk = torch.randn_like(lp2)
    loss1 = (lp * g).sum() + ((kl * gk).sum() if kl is not None else 0)
    loss2 = (lp2 * g).sum() + ((kl2 * gk).sum() if kl2 is not None else 0)
    params = [hidden, head.weight] + ([head.bias] if bias else [])
    g1 = torch.autograd.grad(loss1, params)
    params2 = [hidden2, head.weight] + ([head.bias] if bias else [])
    g2 = torch.autograd.grad(loss2, params2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if direction is not None:
        torch.testing.assert_close(kl.double(), kl2, rtol=1e-5, atol=1e-6)
        assert (kl >= -1e-9).all()


def test_kl_of_identical_models_is_zero():
    hidden, head, _, _, labels = setup()
    _, kl = token_logps(hidden, head, labels, ref_hidden=hidden.detach(), ref_head=head,
                        kl_direction="ref||policy", chunk_size=5)
    assert kl.abs().max() < 1e-6


def test_bfloat16_hidden_finite_and_close():
    hidden, head, ref_hidden, ref_head, labels = setup()
    head = head.float()
    lp, _ = token_logps(hidden.detach().bfloat16().requires_grad_(True), head, labels, chunk_size=7)
    lp2, _ = token_logps_reference(hidden.detach().float(), head, labels)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, lp2, rtol=0.05, atol=0.3)


@pytest.mark.parametrize("direction", [None, "ref||policy"])
def test_peak_memory_does_not_scale_with_tokens_times_vocab(direction):
    """The forward+backward of the chunked path (log-probs, and the per-position KL of TDPO) allocates
    O(chunk × vocab), not O(N × vocab): measured with the CPU allocator profiler as the largest single
    allocation, for N = 256 and N = 2048 tokens."""
    from torch.profiler import ProfilerActivity, profile

    v, h = 5000, 32
    head = torch.nn.Linear(h, v, bias=False)
    peaks = {}
    for n in (256, 2048):
        hidden = torch.randn(n, h, requires_grad=True)
        labels = torch.randint(0, v, (n,))
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            lp, kl = token_logps(hidden, head, labels, chunk_size=64, ref_hidden=hidden.detach() + 0.1,
                                 ref_head=head if direction else None, kl_direction=direction)
            (lp.sum() + (kl.sum() if kl is not None else 0)).backward()
        peaks[n] = max(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    assert peaks[2048] <= peaks[256] * 1.5, peaks  # does not grow with the sequence
    # the largest allocation is a [chunk, vocab] float32 block (64 × 5000 × 4 = 1.28 MB), never N × vocab
    assert peaks[2048] <= 64 * v * 4 * 1.5
    assert peaks[2048] < 2048 * v * 4 / 10


def test_a_zero3_partitioned_head_is_refused_with_the_way_out():
    """DeepSpeed ZeRO-3 leaves a module's weight as an empty tensor (with ``ds_id``) outside its forward: the
    chunked head would read nothing, so it refuses and names the configurations that work."""
    from unipo.errors import UnipoError
    from unipo.models.logprobs import token_logps

    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = torch.nn.Parameter(torch.empty(0))
    head.weight.ds_id = 7
    with pytest.raises(UnipoError, match="ZeRO-3.*fsdp.yaml"):
        token_logps(torch.randn(3, 4), head, torch.tensor([1, 2, 3]))
