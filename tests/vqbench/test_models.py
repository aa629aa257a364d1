"""The autoencoders: shapes, and conv32-ref as SQ-VAE's reference ``net_32`` writes it (issue 16)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vqbench.data import TINY_CIFAR10
from vqbench.models import Conv32, Conv128, ReferenceConv32
from vqbench.registry import build_quantizer
from vqbench.training.setup import model_class


def _images(n: int = 64) -> torch.Tensor:
    x = np.load(TINY_CIFAR10)["x_train"][:n]  # (N, 32, 32, 3) uint8, real CIFAR-10
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0


def _model(cls, dim: int = 16, **kwargs):
    torch.manual_seed(0)
    return cls(build_quantizer("vqvae", dim=dim, num_codes=32), latent_dim=dim, **kwargs)


@pytest.mark.parametrize("cls, size, latent", [(Conv32, 32, 8), (ReferenceConv32, 32, 8), (Conv128, 128, 16)])
def test_latent_grid_and_output_shape(cls, size, latent):
    model = _model(cls, channels=8)
    x = torch.rand(2, 3, size, size)
    assert model.encode(x).shape == (2, 16, latent, latent)
    y, _ = model(x)
    assert y.shape == x.shape


def test_registry_names_the_reference_model():
    assert model_class("conv32-ref") is ReferenceConv32
    assert model_class("conv32") is Conv32


def test_reference_layout_batchnorm_after_every_conv_but_the_last_and_a_sigmoid():
    model = _model(ReferenceConv32, res_blocks=2)
    enc, dec = list(model.encoder.modules()), list(model.decoder.modules())
    convs = lambda mods: [m for m in mods if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    bns = lambda mods: [m for m in mods if isinstance(m, nn.BatchNorm2d)]
    # encoder: 3 stem convs + 2 blocks x 2 convs, each followed by BatchNorm
    assert len(convs(enc)) == len(bns(enc)) == 7
    # decoder: 2 blocks x 2 + 2 transposed convs with BatchNorm, then the output conv without
    assert len(convs(dec)) == 7 and len(bns(dec)) == 6
    assert isinstance(model.decoder[-1], nn.Sigmoid)
    assert model.encoder[0].out_channels == 8  # the first stage is latent_dim // 2 wide
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.out_channels == 16
                   for m in model.encoder[:9])  # no 1x1 projection to the latent: it ends in a block


def test_reference_init_is_dcgan():
    model = _model(ReferenceConv32, dim=64)
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    scales = torch.cat([m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    shifts = torch.cat([m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(weights.mean())) < 1e-3 and float(weights.std()) == pytest.approx(0.02, rel=0.02)
    assert float(scales.mean()) == pytest.approx(1.0, abs=0.005) and float(scales.std()) == pytest.approx(0.02, rel=0.15)
    assert torch.equal(shifts, torch.zeros_like(shifts))


def test_reference_encoder_outputs_are_unit_scale_where_conv32s_are_not():
    """The root of GM-VQ's and SQ-VAE's scale problems (issue 16 (d)): conv32 starts its latents at
    ~1e-4 variance per dimension on real images, the reference at order one."""
    x = _images()
    var = lambda m: float(m.encode(x).detach().var(dim=(0, 2, 3)).mean())
    assert var(_model(Conv32, dim=64)) < 1e-3
    assert 0.3 < var(_model(ReferenceConv32, dim=64)) < 10.0


def test_reference_pixels_in_zero_one_and_eval_is_per_image():
    model = _model(ReferenceConv32)
    x = _images(16)
    y, _ = model(x)
    assert 0.0 < float(y.min()) and float(y.max()) < 1.0
    model(x)  # running statistics move in train mode
    model.eval()
    with torch.no_grad():
        alone, _ = model(x[:1])
        batched, _ = model(x)
    torch.testing.assert_close(alone[0], batched[0], rtol=1e-4, atol=1e-5)  # BatchNorm uses running stats


def test_reference_input_is_not_rescaled():
    """The reference feeds [0, 1] pixels to its first convolution; conv32 feeds 2x - 1."""
    x = _images(4)
    ref, ours = _model(ReferenceConv32), _model(Conv32)
    ref.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ref.encode(x), ref.encoder(x))
        torch.testing.assert_close(ours.encode(x), ours.encoder(2 * x - 1))


def test_latent_dim_must_match_the_quantizer():
    with pytest.raises(ValueError, match="quantizer dim 16 != latent_dim 8"):
        ReferenceConv32(build_quantizer("vqvae", dim=16, num_codes=8), latent_dim=8)
    with pytest.raises(ValueError, match="res_blocks >= 1"):
        ReferenceConv32(build_quantizer("vqvae", dim=8, num_codes=8), latent_dim=8, res_blocks=0)


def test_a_reference_model_too_narrow_is_one_line(capsys, tmp_path):
    from vqbench.cli import main
    assert main(["run", "--quantizer", "vqvae", "--model", "conv32-ref", "model.res_blocks=0", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "vqbench: error: model conv32-ref needs model.res_blocks ≥ 1, got 0"
    assert not any(tmp_path.iterdir())  # nothing half-written
