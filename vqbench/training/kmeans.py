"""Encoder outputs for the codebook's k-means initialisation, and the check that there are
enough of them (one per code at least) before the run folder exists."""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import Tensor

from ..data import to_float_images
from ..errors import UserError
from ..models import ConvAutoencoder


def kmeans_image_count(model: ConvAutoencoder, shape: torch.Size, count: int) -> tuple[int, int]:
    """(images drawn, latent vectors per image) for ``count`` k-means samples."""
    per_image = (shape[-1] // model.downsample) * (shape[-2] // model.downsample)
    return min(shape[0], max(1, math.ceil(count / per_image))), per_image


def check_kmeans_samples(model: ConvAutoencoder, shape: torch.Size, train: DictConfig) -> None:
    """k-means needs at least one encoder output per code; say how to get there if not."""
    if not train.kmeans_init:
        return
    num_codes = model.quantizer.num_codes
    n_images, per_image = kmeans_image_count(model, shape, train.kmeans_samples)
    if n_images * per_image < num_codes:
        raise UserError(
            f"k-means needs at least {num_codes} encoder outputs (one per code) but gets {n_images * per_image} "
            f"({n_images} training image{'s' * (n_images != 1)} x {per_image} latents, train.kmeans_samples="
            f"{train.kmeans_samples}); lower quantizer.num_codes, raise train.kmeans_samples, "
            "use more images, or set train.kmeans_init=false")


@torch.no_grad()
def collect_latents(model: ConvAutoencoder, images: Tensor, count: int, generator: torch.Generator,
                    batch_size: int, channels_last: bool) -> Tensor:
    """About ``count`` encoder output vectors from random training images, (N, D)."""
    n_images, _ = kmeans_image_count(model, images.shape, count)
    order = torch.randperm(len(images), generator=generator)[:n_images].to(images.device)
    chunks = []
    for start in range(0, n_images, batch_size):
        z = model.encode(to_float_images(images[order[start:start + batch_size]], channels_last)).float()
        chunks.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    return torch.cat(chunks)


def init_codebook(model: ConvAutoencoder, images: Tensor, train: DictConfig, generator: torch.Generator,
                  channels_last: bool) -> None:
    """The quantizer's ``init_codebook`` (k-means) on ``train.kmeans_samples`` encoder outputs."""
    samples = collect_latents(model, images, train.kmeans_samples, generator, train.eval_batch_size, channels_last)
    model.quantizer.init_codebook(samples, generator=generator)
