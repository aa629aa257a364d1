"""PSNR, SSIM and usage in vqbench/training/evaluation.py against known values: identical
images, a fixed error level, scikit-image's reference implementation on real images; and
evaluate() computing them on the very reconstructions its MSE is computed on."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import import_or_skip_unless_ci
from vqbench.config import resolve_config
from vqbench.data import load_cifar10_tiny
from vqbench.rows import METRICS
from vqbench.training import build_model, evaluate
from vqbench.training.evaluation import gaussian_window, psnr, psnr_from_mse, ssim


@pytest.fixture(scope="module")
def real():
    """Six real CIFAR-10 test images in [0, 1] and a noisy copy (fixed seed)."""
    x = load_cifar10_tiny(None).test[::27][:6].double() / 255
    g = torch.Generator().manual_seed(0)
    return x, (x + 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)


def test_psnr_known_values():
    x = torch.full((2, 3, 16, 16), 0.5, dtype=torch.float64)
    assert torch.equal(psnr(x, x), torch.full((2,), math.inf, dtype=torch.float64))  # identical: inf
    for e in (0.1, 0.01, 0.3):
        assert psnr(x + e, x) == pytest.approx([-10 * math.log10(e**2)] * 2, abs=1e-9)  # uniform error e
    assert float(psnr(x + 0.1, x)[0]) == pytest.approx(20.0, abs=1e-9)
    assert float(psnr_from_mse(torch.tensor(0.01, dtype=torch.float64), data_range=255.0)) == pytest.approx(
        10 * math.log10(255**2 / 0.01))


def test_psnr_is_per_image_then_averaged():
    x = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    y = torch.stack([x[0] + 0.1, x[1] + 0.01])  # 20 dB and 40 dB
    assert psnr(y, x).mean() == pytest.approx(30.0)  # not the PSNR of the mean MSE
    assert -10 * math.log10(float((y - x).pow(2).mean())) == pytest.approx(22.967, abs=1e-3)


def test_ssim_known_values():
    x = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)  # identical: 1
    flat = torch.full((1, 1, 11, 11), 0.25, dtype=torch.float64)  # one window, constant images
    c1 = (0.01) ** 2
    expected = (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)  # only the luminance term differs from 1
    assert float(ssim(flat, flat + 0.5)) == pytest.approx(expected, rel=1e-12)
    assert float(ssim(x, 1 - x).mean()) < 0  # anti-correlated structure
    g = gaussian_window()
    assert g.shape == (11,) and float(g.sum()) == pytest.approx(1.0) and int(g.argmax()) == 5


def test_against_scikit_image_on_real_images(real):
    metrics = import_or_skip_unless_ci("skimage.metrics", "pip install -e '.[test]'")
    x, y = real
    ours_ssim, ours_psnr = ssim(y, x), psnr(y, x)
    for i in range(len(x)):
        a, b = x[i].numpy(), y[i].numpy()
        ref_ssim = metrics.structural_similarity(a, b, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False, data_range=1.0)
        assert float(ours_ssim[i]) == pytest.approx(ref_ssim, abs=1e-12)
        assert float(ours_psnr[i]) == pytest.approx(metrics.peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)
    assert 0.5 < float(ours_ssim.mean()) < 0.95  # noise at σ = 0.05 on 32x32 images


def test_ssim_of_float32_input_and_bad_shapes(real):
    x, y = real
    assert torch.allclose(ssim(y.float(), x.float()), ssim(y, x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_evaluate_scores_the_reconstructions_its_mse_scores():
    cfg = resolve_config("vqvae", "cifar10-tiny", overrides=["quantizer.num_codes=16", "model.channels=8",
                                                              "model.res_blocks=0", "model.latent_dim=8"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = load_cifar10_tiny(None).test[:20]
    metrics = evaluate(model, images, batch_size=8)  # batches of 8, 8 and 4
    with torch.no_grad():
        x = images.float() / 255
        x_hat, out = model(x)
    assert metrics["mse"] == pytest.approx(float((x_hat.double() - x.double()).pow(2).mean()), rel=1e-6)
    assert metrics["psnr"] == pytest.approx(float(psnr(x_hat, x).mean()), rel=1e-6)  # unclipped, per image
    assert metrics["ssim"] == pytest.approx(float(ssim(x_hat, x).mean()), rel=1e-6)
    assert metrics["usage"] == metrics["codes_used"] / 16 == len(out.indices.unique()) / 16
    assert {"psnr", "ssim", "usage"} <= set(METRICS)
    assert all(np.isfinite(metrics[k]) for k in metrics)


class _StubQuantizer(torch.nn.Module):
    num_codes = 4


class _StubModel(torch.nn.Module):
    """x̂ = x/2 and, per call (batch), the given indices and probs: every metric has a known value."""

    def __init__(self, batches):
        super().__init__()
        self.quantizer, self.batches, self.calls = _StubQuantizer(), batches, 0

    def forward(self, x):
        from quantizers.base import QuantizerOutput

        indices, probs = self.batches[self.calls]
        self.calls += 1
        return x / 2, QuantizerOutput(z_q=x, loss=x.sum() * 0, indices=indices, probs=probs)


def _ppl(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    p = p[p > 0]
    return math.exp(-float((p * p.log()).sum()))


def test_evaluate_on_a_stub_with_known_indices_and_probs_over_two_batches():
    images = torch.arange(2 * 3 * 12 * 12, dtype=torch.float64).remainder(256).to(torch.uint8).reshape(2, 3, 12, 12)
    # batch 1: two positions with posteriors whose mean is (0.5, 0.5, 0, 0); batch 2: one, uniform
    p1 = torch.tensor([[[1.0, 0, 0, 0]], [[0, 1.0, 0, 0]]])  # (B=1, 2 positions, C) per image row
    p2 = torch.full((1, 1, 4), 0.25)
    model = _StubModel([(torch.tensor([[0, 1]]), p1.reshape(1, 2, 4)), (torch.tensor([[1]]), p2)])
    m = evaluate(model, images, batch_size=1)
    x = images.double() / 255
    assert m["mse"] == pytest.approx(float((x / 2 - x).pow(2).mean()), rel=1e-9)
    assert m["perplexity"] == pytest.approx((2.0 + 4.0) / 2, rel=1e-9)  # exp H(q^B) per batch, averaged
    assert m["code_perplexity"] == pytest.approx(_ppl([1 / 3, 2 / 3]), rel=1e-9)  # counts 1, 2, 0, 0
    assert m["codes_used"] == 2 and m["usage"] == 0.5
    # without probs: the batch's code histogram stands in for q^B
    model = _StubModel([(torch.tensor([[0, 1, 1, 3]]), None), (torch.tensor([[2, 2]]), None)])
    m = evaluate(model, images, batch_size=1)
    assert m["perplexity"] == pytest.approx((_ppl([0.25, 0.5, 0.25]) + 1.0) / 2, rel=1e-9)
    assert m["code_perplexity"] == pytest.approx(_ppl([1 / 6, 2 / 6, 2 / 6, 1 / 6]), rel=1e-9)
    assert m["codes_used"] == 4 and m["usage"] == 1.0
    assert model.training  # evaluate() restores the mode it found


def _ssim_by_conv2d(x, y, sigma, data_range, k1=0.01, k2=0.03):
    """Wang et al. 2004 written out: an 11×11 Gaussian window by conv2d, valid positions."""
    t = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-t.pow(2) / (2 * sigma**2))
    w = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[1], 1, 11, 11)
    f = lambda a: torch.nn.functional.conv2d(a, w, groups=x.shape[1])  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    m = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return m.flatten(1).mean(1)


def test_ssim_and_psnr_with_other_sigma_range_and_a_non_square_image():
    """13×17 images, data_range 2: scikit-image's values at σ = 1.5, the formula at σ = 2."""
    metrics = import_or_skip_unless_ci("skimage.metrics", "pip install -e '.[test]'")
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.rand(2, 3, 13, 17, dtype=torch.float64, generator=g)
    y = (x + 0.2 * torch.randn(x.shape, dtype=torch.float64, generator=g)).clamp(0, 2)
    ours = ssim(y, x, data_range=2.0)
    for i in range(2):
        ref = metrics.structural_similarity(x[i].numpy(), y[i].numpy(), channel_axis=0, gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False, data_range=2.0)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-12)
        assert float(psnr(y, x, data_range=2.0)[i]) == pytest.approx(
            metrics.peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=2.0), abs=1e-9)
    torch.testing.assert_close(ssim(y, x, data_range=2.0), _ssim_by_conv2d(y, x, 1.5, 2.0), rtol=0, atol=1e-12)
    torch.testing.assert_close(ssim(y, x, data_range=2.0, sigma=2.0), _ssim_by_conv2d(y, x, 2.0, 2.0), rtol=0, atol=1e-12)
    t = torch.arange(11, dtype=torch.float64) - 5
    expected = torch.exp(-t.pow(2) / (2 * 1.5**2))
    torch.testing.assert_close(gaussian_window(dtype=torch.float64), expected / expected.sum())


def test_metric_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"^ssim needs two \(B, C, H, W\) batches of one shape, got \(3, 12, 12\) "
                                         r"and \(3, 12, 12\)$"):
        ssim(torch.zeros(3, 12, 12), torch.zeros(3, 12, 12))
    with pytest.raises(ValueError, match=r"^ssim needs images of at least 11x11 pixels, got \(8, 12\)$"):
        ssim(torch.zeros(1, 3, 8, 12), torch.zeros(1, 3, 8, 12))
    with pytest.raises(ValueError, match=r"^psnr needs two \(B, C, H, W\) batches of one shape, got \(1, 3, 8, 8\) "
                                         r"and \(1, 3, 8, 9\)$"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_mean_image_mse_known_answer():
    from vqbench.training.evaluation import mean_image_mse

    train = torch.stack([torch.zeros(3, 2, 2), torch.full((3, 2, 2), 255.0)]).to(torch.uint8)  # mean 0.5
    test = torch.stack([torch.full((3, 2, 2), 255.0), torch.zeros(3, 2, 2)]).to(torch.uint8)
    test[1, 0, 0, 0] = 51  # one pixel at 0.2: (0.2 − 0.5)² instead of 0.25
    assert mean_image_mse(train, test) == pytest.approx((23 * 0.25 + 0.09) / 24, rel=1e-6)
    train[1, 1] = 0  # the mean is per pixel: channel 1 now has mean 0
    assert mean_image_mse(train, test) == pytest.approx((7 * 0.25 + 0.09 + 4 * 1.0 + 4 * 0 + 8 * 0.25) / 24, rel=1e-6)
