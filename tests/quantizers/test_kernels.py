"""GM-VQ's ``backend`` option and quantizers/kernels' dispatch: which backend runs, and the
one-line refusals (a bad name; precision options the reference path cannot honour). That the
fast backends compute the reference function is tests/test_fast_path.py and test_gmvq_triton.py."""
from __future__ import annotations

import pytest
import torch

import quantizers.kernels as kernels
from quantizers.gmvq import GMVQ
from vqbench import UserError, build_quantizer


@pytest.mark.parametrize("option", [{"logit_matmul": "3xtf32"}, {"logit_matmul": "fp32"},
                                    {"bf16_backward": False}, {"bf16_backward": True}])
def test_precision_options_are_refused_in_one_line_on_the_reference_backend(option):
    (name,) = option
    with pytest.raises(ValueError, match=rf"^{name} applies to the fast backends \(fused, triton\) only, not to "
                                         rf"backend='reference'; leave {name} unset$"):
        GMVQ(16, 8, backend="reference", **option)
    with pytest.raises(UserError) as info:
        build_quantizer("gmvq", num_codes=16, dim=8, backend="reference", **option)
    assert "\n" not in str(info.value)
    for backend in ("auto", "fused"):
        GMVQ(16, 8, backend=backend, **option)  # where they apply, they are taken


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "cuda"}, "backend must be one of auto, reference, fused, triton, got 'cuda'"),
    ({"backend": "torch"}, "backend must be one of auto, reference, fused, triton, got 'torch'"),
    ({"logit_matmul": "tf32"}, "logit_matmul must be fp32 or 3xtf32"),
    ({"bf16_backward": "yes"}, "bf16_backward must be true or false"),
])
def test_a_bad_backend_or_precision_value_is_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GMVQ(16, 8, **kwargs)
    with pytest.raises(UserError, match=message):
        build_quantizer("gmvq", num_codes=16, dim=8, **kwargs)


def test_the_dispatch_refuses_an_unknown_backend_too():
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="backend must be one of fused, triton, got 'reference'"):
        kernels.posterior_sample(z, torch.ones_like(z), torch.randn(16, 8), torch.tensor(1.0), True,
                                 backend="reference")


def test_auto_takes_fused_for_float32_and_the_reference_path_for_float64(monkeypatch):
    calls = []
    real = kernels.posterior_sample
    monkeypatch.setattr(kernels, "posterior_sample", lambda *a, **k: calls.append(k["backend"]) or real(*a, **k))
    torch.manual_seed(0)
    q = GMVQ(16, 8)
    q(torch.randn(2, 8, 3, 3))
    assert calls == ["fused"]
    q.double()(torch.randn(2, 8, 3, 3, dtype=torch.float64))
    GMVQ(16, 8, backend="reference")(torch.randn(2, 8, 3, 3))
    assert calls == ["fused"]  # neither float64 under auto nor the reference backend uses a kernel
    with pytest.raises(ValueError, match="backend='fused' computes in float32; float64 input needs "
                                         "backend='reference'"):
        GMVQ(16, 8, backend="fused").double()(torch.randn(5, 8, dtype=torch.float64))


@pytest.mark.parametrize("training", [True, False])
def test_auto_is_the_fused_backend_bit_for_bit(training):
    outs = []
    for backend in ("auto", "fused"):
        torch.manual_seed(0)
        q = GMVQ(32, 8, backend=backend).train(training)
        z = torch.randn(4, 8, 2, 2).requires_grad_()
        out = q(z)
        (out.z_q.sum() + out.loss).backward()
        outs.append((out.z_q, out.loss, out.indices, out.probs, z.grad, q.embedding.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_bf16_backward_defaults_to_on_for_the_fast_backends():
    assert GMVQ(16, 8).bf16_backward is True and GMVQ(16, 8, bf16_backward=False).bf16_backward is False
    assert GMVQ(16, 8).logit_matmul == "fp32" and GMVQ(16, 8, logit_matmul="3xtf32").logit_matmul == "3xtf32"


def test_the_triton_backend_is_refused_off_cuda_before_any_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = GMVQ(16, 8, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA device, but this run is on cpu"):
        q.check_device(torch.device("cpu"))
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA device"):  # also if called directly
        q(torch.randn(5, 8))
    GMVQ(16, 8).check_device(torch.device("cpu"))
