"""GM-VQ's Triton kernels (quantizers/kernels/triton.py) against the plain path, on the CPU
through Triton's interpreter: same π, indices, sample and gradients, given the kernels'
own Gumbel noise. Sizes are not multiples of the tiles, so the masks are exercised.

Run by ``tests/quantizers/test_kernels.py`` in a fresh interpreter with ``TRITON_INTERPRET=1``
from the start: Triton reads it when its own functions (``tl.rand``) are defined."""
from __future__ import annotations

import os

import pytest
import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/quantizers/test_kernels.py"
from tests.conftest import import_or_skip_unless_ci  # noqa: E402

triton = import_or_skip_unless_ci("triton", "torch's Linux wheels install it")

import quantizers.functional as Fq  # noqa: E402
from quantizers.kernels.triton import gumbel_noise, posterior_sample  # noqa: E402

N, C, L = 100, 80, 8  # K = 2L = 16, the smallest tl.dot size


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(N, L, generator=gen) * 0.5
    weights = torch.nn.functional.softplus(torch.randn(N, L, generator=gen)) * 4.0
    codebook = torch.randn(C, L, generator=gen) * 0.5
    return z, weights, codebook


def reference(z, weights, codebook, tau, noise, sample):
    log_pi = torch.log_softmax(-0.5 * Fq.weighted_squared_distances(z, weights, codebook), dim=-1)
    probs = log_pi.exp()
    if sample:
        c_q, indices, _ = Fq.gumbel_softmax_st(log_pi, tau, noise=noise)
        centre = c_q @ codebook
    else:
        indices = log_pi.argmax(-1)
        centre = codebook[indices]
    return probs, centre, indices, Fq.entropy(probs).mean()


def leaves(*tensors):
    return [t.clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("wide", [False, True])  # int32 or int64 (N·C ≥ 2³¹) noise offsets
@pytest.mark.parametrize("sample", [True, False])
@pytest.mark.parametrize("probs_grad", ["full", "per-code", "none"])
def test_kernels_match_the_plain_path(sample, probs_grad, wide, monkeypatch):
    import quantizers.kernels.triton as kernels

    if wide:
        monkeypatch.setattr(kernels, "WIDE_FROM", 0)
    z, weights, codebook = inputs()
    tau = torch.tensor(0.7)
    seed = torch.tensor(1234, dtype=torch.int64)
    noise = gumbel_noise(seed, N, C, z.device)
    gen = torch.Generator().manual_seed(9)
    up_centre = torch.randn(N, L, generator=gen)
    up_probs = {"full": torch.randn(N, C, generator=gen), "none": None,
                "per-code": torch.randn(C, generator=gen).expand(N, C)}[probs_grad]  # q^B's mean gives this
    results = []
    for run in ("triton", "plain"):
        zz, ww, mm = leaves(z, weights, codebook)
        if run == "triton":
            probs, centre, indices, ent = posterior_sample(zz, ww, mm, tau, sample, seed=seed)
        else:
            probs, centre, indices, ent = reference(zz, ww, mm, tau, noise, sample)
        loss = (centre * up_centre).sum() + ((probs * up_probs).sum() if up_probs is not None else 0.0)
        loss.backward()
        results.append((probs.detach(), centre.detach(), indices, float(ent), zz.grad, ww.grad, mm.grad))
    (p1, c1, i1, e1, *g1), (p2, c2, i2, e2, *g2) = results
    assert torch.equal(i1, i2)
    assert torch.allclose(p1, p2, rtol=1e-5, atol=1e-7)
    assert torch.allclose(c1, c2, rtol=1e-5, atol=1e-6)
    assert e1 == pytest.approx(e2, rel=1e-5)
    for name, x, y in zip(("z", "weights", "codebook"), g1, g2):
        y = torch.zeros_like(x) if y is None else y  # eval, no ∂π: the plain path has no path to z
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5), (name, float((x - y).abs().max()))


def test_the_noise_is_fresh_per_seed_and_gumbel_distributed():
    a = gumbel_noise(torch.tensor(1, dtype=torch.int64), 64, 64, torch.device("cpu"))
    b = gumbel_noise(torch.tensor(2, dtype=torch.int64), 64, 64, torch.device("cpu"))
    assert not torch.equal(a, b)
    both = torch.cat([a.flatten(), b.flatten()])
    assert float(both.mean()) == pytest.approx(0.5772, abs=0.05)  # Euler–Mascheroni
    assert float(both.var()) == pytest.approx(torch.pi**2 / 6, rel=0.1)


def test_gmvq_kernel_option_trains_through_the_kernels():
    """``GMVQ(backend="triton")``: a training forward and backward through the kernels gives
    finite gradients everywhere and the same posterior as the PyTorch path (π has no noise)."""
    from quantizers.gmvq import GMVQ

    torch.manual_seed(0)
    q = GMVQ(C, L, backend="triton")
    q.init_codebook(torch.randn(4 * C, L) * 0.5, generator=torch.Generator().manual_seed(0))
    torch_path = GMVQ(C, L)
    torch_path.load_state_dict(q.state_dict())
    z = torch.randn(N, L) * 0.5
    outs = []
    for module in (q, torch_path):
        zz = z.clone().requires_grad_()
        out = module(zz)
        (out.z_q.sum() + out.loss).backward()
        assert torch.isfinite(zz.grad).all() and all(torch.isfinite(p.grad).all() for p in module.parameters())
        outs.append(out)
    assert torch.allclose(outs[0].probs, outs[1].probs, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="backend must be one of auto, reference, fused, triton"):
        GMVQ(C, L, backend="cuda")


def test_a_frozen_codebook_gets_no_gradient_and_the_options_reach_the_logit_gradients(monkeypatch):
    """As the fused path: no ∂M for a codebook that needs none; 3xTF32 off unless asked and
    ``grad_dtype`` / ``split_tf32`` passed to the ∂a, ∂b products."""
    import quantizers.kernels.triton as kernels

    seen = []
    real = kernels.logit_input_grads
    monkeypatch.setattr(kernels, "logit_input_grads", lambda g, a, b, needs, split, dtype: (
        seen.append((tuple(needs), split, dtype)), real(g, a, b, needs, split, dtype))[1])
    z, weights, codebook = leaves(*inputs())
    codebook.requires_grad_(False)
    probs, centre, _, _ = posterior_sample(z, weights, codebook, torch.tensor(0.7), True,
                                           seed=torch.tensor(5, dtype=torch.int64))
    (centre.square().sum() + probs[:, 0].sum()).backward()
    assert codebook.grad is None and torch.isfinite(z.grad).all()
    z, weights, codebook = leaves(*inputs())
    probs, centre, _, _ = posterior_sample(z, weights, codebook, torch.tensor(0.7), True,
                                           seed=torch.tensor(5, dtype=torch.int64), grad_dtype=torch.bfloat16,
                                           split_tf32=True)
    (centre.square().sum()).backward()
    assert seen == [((True, False), False, None), ((True, True), True, torch.bfloat16)]  # b = [M, −½M²]: frozen too
