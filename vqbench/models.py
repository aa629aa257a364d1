"""Convolutional autoencoders with a quantizer as the bottleneck.

``conv32`` follows SQ-VAE's ``net_32`` as used by Huh et al. 2023 (whose setup the GM-VQ
paper follows): two 4×4 stride-2 convolutions take 32×32 images to an 8×8 latent, residual
blocks on both sides, a mirrored decoder. ``conv128`` adds a third stage for 128×128
CelebA (a 16×16 latent). The autoencoder knows nothing of which quantizer it holds.

``conv32-ref`` is ``net_32`` as the SQ-VAE reference code (sony/sqvae, vision/networks/net_32.py)
writes it, where ``conv32`` departs from it: BatchNorm after every convolution but the last
of the decoder (residual blocks too), weights drawn from N(0, 0.02) and BatchNorm scales from
N(1, 0.02) (the DCGAN init the reference applies), a first stage of ``latent_dim // 2``
channels, the encoder ending in a residual block rather than a 1×1 convolution, pixels in
[0, 1] in and a sigmoid out. Its encoder outputs are of unit scale from the first step
(conv32's start at ≈ 1e-4 variance per dimension); docs/reproduction.md measures what that
changes for every quantizer.
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


class ReferenceResBlock(nn.Module):
    """x + BN(conv1×1(relu(BN(conv3×3(relu(x)))))) (sony/sqvae networks/util.py)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _conv_bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU()]


def dcgan_init(module: nn.Module) -> None:
    """Convolution weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02), BatchNorm shifts 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class ReferenceConv32(ConvAutoencoder):
    """SQ-VAE's ``net_32`` (EncoderVqResnet32 / DecoderVqResnet32) as its reference code has it.

    ``channels`` is unused: the reference's widths follow ``latent_dim`` (dim_z), half of it
    in the first stage. ``res_blocks`` counts the encoder's blocks including the last.
    """

    def __init__(self, quantizer: Quantizer, latent_dim: int = 64, channels: int = 64, res_blocks: int = 2) -> None:
        nn.Module.__init__(self)
        if quantizer.dim != latent_dim:
            raise ValueError(f"quantizer dim {quantizer.dim} != latent_dim {latent_dim}")
        if latent_dim < 2 or res_blocks < 1:
            raise ValueError("conv32-ref needs latent_dim >= 2 and res_blocks >= 1")
        d, half = latent_dim, latent_dim // 2
        self.encoder = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(3, half, 4, stride=2, padding=1), half),
            *_conv_bn_relu(nn.Conv2d(half, d, 4, stride=2, padding=1), d),
            *_conv_bn_relu(nn.Conv2d(d, d, 3, padding=1), d),
            *[ReferenceResBlock(d) for _ in range(res_blocks)],
        )
        self.quantizer = quantizer
        self.decoder = nn.Sequential(
            *[ReferenceResBlock(d) for _ in range(res_blocks)],
            *_conv_bn_relu(nn.ConvTranspose2d(d, d, 3, padding=1), d),
            *_conv_bn_relu(nn.ConvTranspose2d(d, half, 4, stride=2, padding=1), half),
            nn.ConvTranspose2d(half, 3, 4, stride=2, padding=1), nn.Sigmoid(),
        )
        self.encoder.apply(dcgan_init)
        self.decoder.apply(dcgan_init)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)


class Conv32(ConvAutoencoder):
    """CIFAR-10 32×32 → 8×8 latent."""

    stages = 2


class Conv128(ConvAutoencoder):
    """CelebA 128×128 → 16×16 latent."""

    stages = 3
