"""vqbench/training/kmeans.py: how many images the codebook's k-means draws, the one-line
refusal when they cannot give one latent per code, and that the latents it collects are the
encoder's outputs of the drawn images, position by position."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from vqbench.data import to_float_images
from vqbench.errors import UserError
from vqbench.models import Conv32
from vqbench.registry import build_quantizer
from vqbench.training.kmeans import check_kmeans_samples, collect_latents, init_codebook, kmeans_image_count


def _model(codes: int = 16) -> Conv32:
    torch.manual_seed(0)
    return Conv32(build_quantizer("vqvae", dim=4, num_codes=codes), latent_dim=4, channels=4, res_blocks=0)


def test_image_count_rounds_up_to_whole_images_within_the_split():
    model = _model()  # 32x32 -> 8x8: 64 latents per image
    assert kmeans_image_count(model, torch.Size([100, 3, 32, 32]), 64) == (1, 64)
    assert kmeans_image_count(model, torch.Size([100, 3, 32, 32]), 65) == (2, 64)
    assert kmeans_image_count(model, torch.Size([100, 3, 32, 32]), 1) == (1, 64)
    assert kmeans_image_count(model, torch.Size([3, 3, 32, 32]), 10_000) == (3, 64)  # no more than there are
    assert kmeans_image_count(model, torch.Size([5, 3, 16, 32]), 64) == (2, 32)  # 4x8 latents per image


def test_too_few_latents_for_the_codes_is_one_line():
    model = _model(codes=200)
    train = OmegaConf.create({"kmeans_init": True, "kmeans_samples": 128})
    with pytest.raises(UserError) as info:
        check_kmeans_samples(model, torch.Size([100, 3, 32, 32]), train)
    assert str(info.value) == ("k-means needs at least 200 encoder outputs (one per code) but gets 128 (2 training "
                               "images x 64 latents, train.kmeans_samples=128); lower quantizer.num_codes, raise "
                               "train.kmeans_samples, use more images, or set train.kmeans_init=false")
    with pytest.raises(UserError, match=r"gets 64 \(1 training image x 64 latents"):
        check_kmeans_samples(model, torch.Size([1, 3, 32, 32]), train)
    check_kmeans_samples(model, torch.Size([100, 3, 32, 32]), OmegaConf.create({**train, "kmeans_samples": 200}))
    check_kmeans_samples(model, torch.Size([1, 3, 32, 32]), OmegaConf.create({**train, "kmeans_init": False}))
    check_kmeans_samples(_model(codes=64), torch.Size([1, 3, 32, 32]), train)  # exactly one per code is enough


def test_collected_latents_are_the_encoder_outputs_of_the_drawn_images():
    model = _model()
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    latents = collect_latents(model, images, 130, torch.Generator().manual_seed(3), batch_size=2, channels_last=False)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))[:3]  # ceil(130 / 64) images
    with torch.no_grad():
        z = model.encode(to_float_images(images[order], False))
    assert latents.shape == (3 * 64, 4) and latents.dtype == torch.float32
    torch.testing.assert_close(latents, z.permute(0, 2, 3, 1).reshape(-1, 4))  # (image, row, column) order


def test_init_codebook_runs_kmeans_on_those_latents(monkeypatch):
    model = _model()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    seen = {}
    monkeypatch.setattr(model.quantizer, "init_codebook", lambda z, generator: seen.update(z=z, g=generator))
    generator = torch.Generator().manual_seed(1)
    init_codebook(model, images, OmegaConf.create({"kmeans_samples": 100, "eval_batch_size": 3}), generator, False)
    expected = collect_latents(model, images, 100, torch.Generator().manual_seed(1), 3, False)
    torch.testing.assert_close(seen["z"], expected)
    assert seen["g"] is generator
