"""The noise-free test metrics (``eval()``: GM-VQ and Gumbel take the argmax, paper §5.1):
MSE, perplexity (per batch, averaged), code perplexity, codes used; and the mean-image
baseline they are to beat."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

import quantizers.functional as Fq

from ..data import to_float_images
from ..models import ConvAutoencoder


@torch.no_grad()
def evaluate(model: ConvAutoencoder, images: Tensor, batch_size: int, channels_last: bool = False,
             autocast: Callable[[], Any] | None = None) -> dict[str, float]:
    """Noise-free test metrics: mse, perplexity (per batch, averaged), code_perplexity, codes_used."""
    was_training = model.training
    model.eval()
    num_codes = model.quantizer.num_codes
    sse = torch.zeros((), dtype=torch.float64, device=images.device)
    ppl_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    counts = torch.zeros(num_codes, dtype=torch.float64, device=images.device)
    batches = 0
    for start in range(0, len(images), batch_size):
        x = to_float_images(images[start:start + batch_size], channels_last)
        with autocast() if autocast else torch.autocast(x.device.type, enabled=False):
            x_hat, out = model(x)
        # Per-image sums, then a short float64 sum: a fixed reduction order, so the same
        # seed gives bit-identical metrics (one big multi-threaded sum does not).
        sse += (x_hat.float() - x).pow(2).flatten(1).sum(1).double().sum()
        batch_counts = Fq.code_histogram(out.indices, num_codes)
        counts += batch_counts
        # The paper's perplexity uses q(c|x) where the method has one; else the hard codes.
        q = Fq.aggregated_posterior(out.probs.double()) if out.probs is not None else batch_counts / batch_counts.sum()
        ppl_sum += Fq.perplexity(q)
        batches += 1
    model.train(was_training)
    return {
        "mse": float(sse) / images.numel(),
        "perplexity": float(ppl_sum) / batches,
        "code_perplexity": float(Fq.histogram_perplexity(counts)),
        "codes_used": int((counts > 0).sum()),
    }


def mean_image_mse(train: Tensor, test: Tensor) -> float:
    """MSE of predicting every test image by the mean training image: the floor to beat."""
    mean = train.float().div(255).mean(0)
    return float((test.float().div(255) - mean).pow(2).mean())
