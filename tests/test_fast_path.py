"""The fast path computes the same function as the plain path (issue: GM-VQ nearly free).

GM-VQ's fused posterior + Gumbel straight-through Function (``quantizers/kernels/fused.py``,
``backend="fused"``) against the plain reference path (``backend="reference"``), with the
same seed: same indices, values and gradients to relative error 1e-5 in fp32 and 1e-2 under
bf16 autocast, for the layer and for one full training step of the real conv32 autoencoder.
CPU, a few seconds.
"""
from __future__ import annotations

import copy

import pytest
import torch

import quantizers.kernels.precision as Fp
from quantizers.gmvq import GMVQ
from vqbench.config import resolve_config
from vqbench.errors import UserError
from vqbench.data import to_float_images
from vqbench.training import Trainer, compile_model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (0 when both are 0)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def layer_pair(latreg: str, weight_head: bool, codes: int = 128, dim: int = 16):
    torch.manual_seed(0)
    fast = GMVQ(codes, dim, latreg=latreg, weight_head=weight_head)
    if weight_head:
        with torch.no_grad():  # a non-trivial precision head (it starts at ŵ = 1)
            fast.weight_head.weight.normal_(0.0, 0.2)
    fast.init_codebook(torch.randn(4 * codes, dim) * 0.5, generator=torch.Generator().manual_seed(0))
    plain = copy.deepcopy(fast)
    plain.backend = "reference"
    return fast, plain


def run_layer(q: GMVQ, z: torch.Tensor, upstream: torch.Tensor, seed: int = 1):
    z = z.clone().requires_grad_()
    q.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = q(z)
    ((out.z_q.float() * upstream).sum() + out.loss).backward()
    grads = {name: p.grad.clone() for name, p in q.named_parameters()}
    return out, z.grad, grads


def assert_same(fast_run, plain_run, tol: float) -> None:
    (a, ga, pa), (b, gb, pb) = fast_run, plain_run
    assert torch.equal(a.indices, b.indices)
    for what, x, y in [("z_q", a.z_q, b.z_q), ("probs", a.probs, b.probs), ("loss", a.loss, b.loss),
                       ("dL/dz", ga, gb), *[(f"dL/d{k}", pa[k], pb[k]) for k in pb]]:
        assert rel(x, y) <= tol, f"{what}: relative error {rel(x, y):.2e} > {tol}"
    for key in b.terms:
        assert rel(a.terms[key], b.terms[key]) <= tol, key


@pytest.mark.parametrize("latreg", ["sampled", "aggregated", "posterior"])
@pytest.mark.parametrize("weight_head", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_fused_layer_matches_plain_fp32(latreg, weight_head, training):
    fast, plain = layer_pair(latreg, weight_head)
    fast.train(training), plain.train(training)
    fast.set_progress(0.3), plain.set_progress(0.3)
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(512, 16, generator=gen) * 0.5
    upstream = torch.randn(512, 16, generator=gen)
    assert_same(run_layer(fast, z, upstream), run_layer(plain, z, upstream), 1e-5)


def test_fused_layer_matches_plain_under_bf16_autocast():
    fast, plain = layer_pair("sampled", True)
    gen = torch.Generator().manual_seed(3)
    z = (torch.randn(512, 16, generator=gen) * 0.5).bfloat16()
    upstream = torch.randn(512, 16, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast_run, plain_run = run_layer(fast, z, upstream), run_layer(plain, z, upstream)
    assert fast_run[0].z_q.dtype == torch.bfloat16
    assert fast_run[0].probs.dtype == torch.float32  # the posterior stays fp32 under autocast
    assert_same(fast_run, plain_run, 1e-2)


def test_the_comparison_sees_a_different_sample():
    """Teeth: another seed draws other codes, and the check above would notice."""
    fast, plain = layer_pair("sampled", True)
    z, upstream = torch.randn(512, 16) * 0.5, torch.randn(512, 16)
    with pytest.raises(AssertionError):
        assert_same(run_layer(fast, z, upstream, seed=1), run_layer(plain, z, upstream, seed=2), 1e-5)


def test_fused_backward_holds_fewer_tensors():
    """The fused Function saves π and y only: autograd keeps far fewer N×C bytes."""
    def saved_bytes(q: GMVQ) -> int:
        total, seen = 0, set()

        def pack(t):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                nonlocal total
                total += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = q(torch.randn(1024, 16).requires_grad_())
        del out
        return total
    fast, plain = layer_pair("sampled", True, codes=256)
    nc_bytes = 1024 * 256 * 4
    fast_bytes, plain_bytes = saved_bytes(fast), saved_bytes(plain)
    assert fast_bytes <= 2.6 * nc_bytes and plain_bytes >= 2 * fast_bytes, (fast_bytes, plain_bytes)


@pytest.mark.filterwarnings("ignore::UserWarning")  # lr_scheduler: optimizer.step is stubbed out
@pytest.mark.parametrize("amp, tol", [("none", 1e-5), ("bf16", 1e-2)])
def test_training_step_fast_matches_plain(amp, tol):
    """One step of the real conv32 autoencoder: same loss, same gradients everywhere."""
    results = []
    for backend in ("fused", "reference"):
        cfg = resolve_config("gmvq", "cifar10-tiny", None, [
            "device=cpu", "train.batch_size=16", "train.kmeans_init=false", f"train.amp={amp}",
            f"quantizer.backend={backend}", "quantizer.num_codes=64", "model.channels=16",
            "model.res_blocks=1", "out=/tmp/vqbench-test-fast-path"])
        trainer = Trainer(cfg, log=lambda line: None)
        trainer.setup_optimization()
        trainer.optimizer.step = lambda: None  # keep the weights; compare gradients
        x = to_float_images(trainer.train_images[:16], False)
        torch.manual_seed(5)
        loss, mse, terms = trainer.train_step(x)
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((loss, mse, grads))
    (la, ma, ga), (lb, mb, gb) = results
    assert rel(la, lb) <= tol and rel(ma, mb) <= tol
    assert ga.keys() == gb.keys()
    for name in gb:
        assert rel(ga[name], gb[name]) <= tol, f"{name}: {rel(ga[name], gb[name]):.2e}"


def test_compile_mode_is_checked():
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, "none") is False
    with pytest.raises(UserError, match="reduce-overhead"):
        compile_model(model, "fast")


def test_bf16_backward_is_within_the_reduced_precision_bar():
    """Under bf16 autocast the fused backward's matmuls take bf16 operands (the default):
    the forward (π, indices) does not move, the gradients stay within 1e-2 of the plain
    path's, and the option really changes them (against ``bf16_backward=False``)."""
    fast, plain = layer_pair("sampled", True, codes=256, dim=32)
    fp32_grads = copy.deepcopy(fast)
    fp32_grads.bf16_backward = False
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(1024, 32, generator=gen) * 0.5
    upstream = torch.randn(1024, 32, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runs = [run_layer(q, z, upstream) for q in (fast, fp32_grads, plain)]
    (out_f, gz_f, gp_f), (_, gz_32, gp_32), (out_p, gz_p, gp_p) = runs
    assert torch.equal(out_f.indices, out_p.indices)
    assert rel(out_f.probs, out_p.probs) <= 1e-5
    assert max([rel(gz_f, gz_p)] + [rel(gp_f[k], gp_p[k]) for k in gp_p]) <= 1e-2
    assert rel(gp_f["embedding"], gp_32["embedding"]) > 1e-4  # bf16 operands really were used


def test_round_mantissa_keeps_ten_bits_to_nearest():
    x = torch.tensor([1.0 + 2**-10, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 1.0 + 2**-11 + 2**-20, -3.0e-7])
    y = Fp.round_mantissa(x, 10)
    assert y.tolist()[:4] == [1.0 + 2**-10, 1.0, 1.0 + 2**-9, 1.0 + 2**-10]  # ties to even, else nearest
    assert float(y[4]) == pytest.approx(-3.0e-7, rel=2**-10)
    assert torch.equal(Fp.round_mantissa(y, 10), y)  # TF32 values are fixed points


def test_3xtf32_split_is_fp32_accurate_and_one_tf32_product_is_not():
    """The split the fused path uses with ``logit_matmul="3xtf32"``: on GM-VQ's cancelling
    logits, three TF32-exact products (accumulated exactly here) are as accurate as fp32,
    while one TF32 product is not."""
    fast, _ = layer_pair("sampled", True, codes=256, dim=32)
    z = torch.randn(2048, 32, generator=torch.Generator().manual_seed(5)) * 0.5
    with torch.no_grad():
        w = fast.precision_weights(z)
        a, b = torch.cat([w * z, w], -1), torch.cat([fast.codebook, -0.5 * fast.codebook**2], -1)
        ref = a.double() @ b.double().t()
        parts = [Fp.round_mantissa(t, 10) for t in (a, b)]
        lows = [Fp.round_mantissa(t - p, 10) for t, p in zip((a, b), parts)]
        split = parts[0].double() @ parts[1].double().t() + parts[0].double() @ lows[1].double().t() \
            + lows[0].double() @ parts[1].double().t()
        one = parts[0].double() @ parts[1].double().t()
        fp32 = (a @ b.t()).double()
    err = lambda x: float((x - ref).abs().max())  # noqa: E731
    assert err(split) <= err(fp32) and err(one) > 50 * err(fp32)
    assert torch.allclose(Fp.matmul_3xtf32(a, b.t()).double(), ref, rtol=0, atol=4 * err(fp32))


@pytest.mark.parametrize("training", [True, False])
def test_3xtf32_logits_path_matches_plain(training):
    fast, plain = layer_pair("sampled", True)
    fast.logit_matmul = "3xtf32"
    fast.train(training), plain.train(training)
    gen = torch.Generator().manual_seed(6)
    z, upstream = torch.randn(512, 16, generator=gen) * 0.5, torch.randn(512, 16, generator=gen)
    assert_same(run_layer(fast, z, upstream), run_layer(plain, z, upstream), 1e-5)


@pytest.mark.parametrize("dim", [12, 48, 128])
def test_the_triton_kernel_takes_only_the_dims_it_was_fitted_for(dim):
    """Powers of two (tl.arange) up to 64, the largest whose tiles fit an SM's registers and
    shared memory (benchmarks/triton_fit.py: L = 128 spills)."""
    from quantizers.gmvq import GMVQ

    with pytest.raises(ValueError, match=r"backend='triton' needs dim in 8, 16, 32, 64, got"):
        GMVQ(16, dim, backend="triton")
    GMVQ(16, dim)  # the PyTorch path takes any dim
