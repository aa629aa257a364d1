"""Factorized, l2-normalised code lookup (Yu et al. 2022, Vector-quantized Image Modeling with
Improved VQGAN (ViT-VQGAN), ICLR, §3.2).

The encoder output z (D) is projected to a low dimension d, l2-normalised, matched to the
nearest of C unit-norm codes (cosine similarity), and projected back to D. Written against
the public contract only: ``quantizers.base.Quantizer`` and its ``QuantizerOutput``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantizers.base import Quantizer, QuantizerOutput


class FactorizedVQ(Quantizer):
    """Factorized l2 VQ (ViT-VQGAN §3.2): lookup in a d-dim unit sphere, projected to D and back.

    Loss (VQ-VAE eq. 3 in the normalised low-dim space): ‖sg(u) − e‖² + β ‖u − sg(e)‖², u the
    normalised projection, e its code. Gradients reach the encoder by straight-through.
    """

    def __init__(self, num_codes: int = 1024, dim: int = 64, code_dim: int = 8, beta: float = 0.25) -> None:
        super().__init__(num_codes, dim)
        if code_dim < 1:
            raise ValueError(f"code_dim must be ≥ 1, got {code_dim}")
        if not beta >= 0:
            raise ValueError(f"beta must be ≥ 0, got {beta}")
        self.code_dim, self.beta = int(code_dim), float(beta)
        self.proj_in = nn.Linear(dim, code_dim)
        self.proj_out = nn.Linear(code_dim, dim)
        self.embedding = nn.Parameter(F.normalize(torch.randn(num_codes, code_dim), dim=-1))

    @property
    def codebook(self) -> Tensor:
        return self.proj_out(F.normalize(self.embedding, dim=-1))

    @torch.no_grad()
    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        """Codes start at C distinct projected training vectors (the runner passes encoder outputs)."""
        u = F.normalize(self.proj_in(samples.to(self.embedding.dtype)), dim=-1)
        pick = torch.randperm(len(u), generator=generator)[: self.num_codes].to(u.device)
        if len(pick) < self.num_codes:  # fewer samples than codes: repeat some
            pick = pick[torch.arange(self.num_codes, device=u.device) % len(pick)]
        self.embedding.copy_(u[pick])

    def quantize(self, z: Tensor) -> QuantizerOutput:
        u = F.normalize(self.proj_in(z), dim=-1)
        codes = F.normalize(self.embedding, dim=-1)
        indices = (u.detach() @ codes.t()).argmax(-1)  # max cosine = nearest on the unit sphere
        e = codes[indices]
        codebook_loss = F.mse_loss(e, u.detach())
        commitment = F.mse_loss(u, e.detach())
        u_q = u + (e - u).detach()  # straight-through
        z_q = self.proj_out(u_q)
        return QuantizerOutput(
            z_q=z_q, loss=codebook_loss + self.beta * commitment, indices=indices,
            terms={"codebook": codebook_loss.detach(), "commitment": commitment.detach()},
        )
