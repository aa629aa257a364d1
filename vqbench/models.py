"""Convolutional autoencoders with a quantizer as the bottleneck.

``conv32`` follows SQ-VAE's ``net_32`` as used by Huh et al. 2023 (whose setup the GM-VQ
paper follows): two 4×4 stride-2 convolutions take 32×32 images to an 8×8 latent, residual
blocks on both sides, a mirrored decoder. ``conv128`` adds a third stage for 128×128
CelebA (a 16×16 latent). The autoencoder knows nothing of which quantizer it holds.
"""
from __future__ import annotations

from torch import Tensor, nn

from quantizers.base import Quantizer, QuantizerOutput


class ResBlock(nn.Module):
    """x + conv1×1(relu(conv3×3(relu(x)))) (van den Oord et al. 2017)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(), nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _encoder(stages: int, channels: int, latent_dim: int, res_blocks: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1)]
    for _ in range(stages - 1):
        layers += [nn.ReLU(), nn.Conv2d(channels, channels, 4, stride=2, padding=1)]
    layers += [nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)]
    layers += [ResBlock(channels) for _ in range(res_blocks)]
    layers += [nn.ReLU(), nn.Conv2d(channels, latent_dim, 1)]
    return nn.Sequential(*layers)


def _decoder(stages: int, channels: int, latent_dim: int, res_blocks: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(latent_dim, channels, 3, padding=1)]
    layers += [ResBlock(channels) for _ in range(res_blocks)]
    for _ in range(stages - 1):
        layers += [nn.ReLU(), nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)]
    layers += [nn.ReLU(), nn.ConvTranspose2d(channels, 3, 4, stride=2, padding=1)]
    return nn.Sequential(*layers)


class ConvAutoencoder(nn.Module):
    """encoder → quantizer → decoder; pixels in [0, 1] in and out."""

    stages = 2

    def __init__(self, quantizer: Quantizer, latent_dim: int = 64, channels: int = 64, res_blocks: int = 2) -> None:
        super().__init__()
        if quantizer.dim != latent_dim:
            raise ValueError(f"quantizer dim {quantizer.dim} != latent_dim {latent_dim}")
        self.encoder = _encoder(self.stages, channels, latent_dim, res_blocks)
        self.quantizer = quantizer
        self.decoder = _decoder(self.stages, channels, latent_dim, res_blocks)

    @property
    def downsample(self) -> int:
        return 2**self.stages

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x * 2.0 - 1.0)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z) + 0.5

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        out = self.quantizer(self.encode(x))
        return self.decode(out.z_q), out


class Conv32(ConvAutoencoder):
    """CIFAR-10 32×32 → 8×8 latent."""

    stages = 2


class Conv128(ConvAutoencoder):
    """CelebA 128×128 → 16×16 latent."""

    stages = 3
