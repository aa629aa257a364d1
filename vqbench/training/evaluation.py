"""The noise-free test metrics (``eval()``: GM-VQ and Gumbel take the argmax, paper §5.1):
MSE, PSNR and SSIM (per image, then averaged), perplexity (per batch, averaged), code
perplexity, codes used and usage; and the mean-image baseline they are to beat.

PSNR and SSIM are computed on the same reconstructions as the MSE, the decoder's output as it
is (not clipped to [0, 1]), with pixels on the [0, 1] scale (data range 1): PSNR_i = −10 log10
MSE_i of each image, then the mean over images (inf for a perfect one); SSIM as Wang et al.
2004 (11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, the valid positions only),
averaged over channels and positions per image, then over images: scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1)``, to 1e-12 (tests/vqbench/training/test_evaluation_metrics.py). Not torchmetrics:
its SSIM (1.9) also averages the windows over a reflection-padded border, 53% of the positions
of a 32×32 image (0.13 higher on CIFAR-10 images), and importing it takes seconds.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

import quantizers.functional as Fq

from ..data import to_float_images
from ..models import ConvAutoencoder


def psnr_from_mse(mse: Tensor, data_range: float = 1.0) -> Tensor:
    """10 log10(range² / MSE), elementwise; inf where the MSE is 0."""
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB of each image of (B, C, H, W) batches, as float64 (B,)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"psnr needs two (B, C, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return psnr_from_mse((x.double() - y.double()).pow(2).flatten(1).mean(1), data_range)


def gaussian_window(size: int = 11, sigma: float = 1.5, **like) -> Tensor:
    """The normalised 1-D Gaussian of ``size`` taps (SSIM's window is its outer product)."""
    t = torch.arange(size, **like) - (size - 1) / 2
    g = torch.exp(-t.pow(2) / (2 * sigma**2))
    return g / g.sum()


def _valid_filter(size: int, g: Tensor) -> Tensor:
    """The (size − k + 1, size) matrix of a 'valid' 1-D filtering by the k taps ``g``."""
    rows = torch.arange(size - len(g) + 1, device=g.device)
    m = torch.zeros(len(rows), size, dtype=g.dtype, device=g.device)
    m[rows[:, None], rows[:, None] + torch.arange(len(g), device=g.device)] = g
    return m


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """SSIM (Wang et al. 2004) of each image of (B, C, H, W) batches, float64 (B,): the mean
    over channels and valid window positions of the SSIM map (module docstring), in float64
    (as fast as float32 here: memory-bound), the separable window as two matrix products."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim needs images of at least {window}x{window} pixels, got {tuple(x.shape[-2:])}")
    x, y = x.double(), y.double()
    g = gaussian_window(window, sigma, dtype=x.dtype, device=x.device)
    rows, cols = _valid_filter(x.shape[-2], g), _valid_filter(x.shape[-1], g)
    with torch.autocast(x.device.type, enabled=False):
        mu_x, mu_y, xx, yy, xy = rows @ torch.stack([x, y, x * x, y * y, x * y]) @ cols.t()  # local means
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


@torch.no_grad()
def evaluate(model: ConvAutoencoder, images: Tensor, batch_size: int, channels_last: bool = False,
             autocast: Callable[[], Any] | None = None) -> dict[str, float]:
    """Noise-free test metrics: mse, psnr, ssim (per image, averaged), perplexity (per batch,
    averaged), code_perplexity, codes_used, usage (codes_used / C)."""
    was_training = model.training
    model.eval()
    num_codes = model.quantizer.num_codes
    sse = torch.zeros((), dtype=torch.float64, device=images.device)
    ppl_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    counts = torch.zeros(num_codes, dtype=torch.float64, device=images.device)
    psnr_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    ssim_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    batches = 0
    for start in range(0, len(images), batch_size):
        x = to_float_images(images[start:start + batch_size], channels_last)
        with autocast() if autocast else torch.autocast(x.device.type, enabled=False):
            x_hat, out = model(x)
        # Per-image sums, then a short float64 sum: a fixed reduction order, so the same
        # seed gives bit-identical metrics (one big multi-threaded sum does not).
        per_image = (x_hat.float() - x).pow(2).flatten(1).sum(1).double()
        sse += per_image.sum()
        psnr_sum += psnr_from_mse(per_image / x[0].numel()).sum()  # the MSE's own reconstructions
        ssim_sum += ssim(x_hat.float(), x).sum()
        batch_counts = Fq.code_histogram(out.indices, num_codes)
        counts += batch_counts
        # The paper's perplexity uses q(c|x) where the method has one; else the hard codes.
        q = Fq.aggregated_posterior(out.probs.double()) if out.probs is not None else batch_counts / batch_counts.sum()
        ppl_sum += Fq.perplexity(q)
        batches += 1
    model.train(was_training)
    codes_used = int((counts > 0).sum())
    return {
        "mse": float(sse) / images.numel(),
        "psnr": float(psnr_sum) / len(images),
        "ssim": float(ssim_sum) / len(images),
        "perplexity": float(ppl_sum) / batches,
        "code_perplexity": float(Fq.histogram_perplexity(counts)),
        "codes_used": codes_used,
        "usage": codes_used / num_codes,
    }


def mean_image_mse(train: Tensor, test: Tensor) -> float:
    """MSE of predicting every test image by the mean training image: the floor to beat."""
    mean = train.float().div(255).mean(0)
    return float((test.float().div(255) - mean).pow(2).mean())
