"""VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning").

Nearest-neighbour lookup j = argmin_c ‖ẑ − μ_c‖ (GM-VQ paper eq. 1), straight-through
estimator, and the codebook + commitment loss of GM-VQ paper eq. 2:

    L = ‖sg[ẑ] − z_c‖² + commitment · ‖ẑ − sg[z_c]‖²

both as means over latent elements (the usual reduction; van den Oord et al. use β = 0.25).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as Fq
from .base import Quantizer, QuantizerOutput, check_positive


class VectorQuantizer(Quantizer):
    """Deterministic VQ with a learnable codebook (registered as ``vqvae``)."""

    def __init__(self, num_codes: int = 1024, dim: int = 64, commitment: float = 0.25) -> None:
        super().__init__(num_codes, dim)
        check_positive("commitment", commitment, allow_zero=True)
        self.commitment = float(commitment)
        self.embedding = nn.Parameter(torch.randn(self.num_codes, self.dim) / self.dim**0.5)

    @property
    def codebook(self) -> Tensor:
        return self.embedding

    def quantize(self, z: Tensor) -> QuantizerOutput:
        codebook = self.codebook
        # Distances in fp32 even under autocast: argmin ties flip in bf16.
        d = Fq.squared_distances(z.float(), codebook.float())
        indices = d.argmin(-1)
        z_c = F.embedding(indices, codebook).to(z.dtype)
        codebook_loss = F.mse_loss(z_c, z.detach())
        commitment_loss = F.mse_loss(z, z_c.detach())
        loss = codebook_loss + self.commitment * commitment_loss
        return QuantizerOutput(
            z_q=Fq.straight_through(z, z_c),
            loss=loss,
            terms={"codebook": codebook_loss.detach(), "commitment": commitment_loss.detach()},
            indices=indices,
            probs=None,
        )
