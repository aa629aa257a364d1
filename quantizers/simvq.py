"""SimVQ (Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models
with One Linear Layer", arXiv 2411.02038).

The codebook is a frozen random basis Q ∈ R^{C×D}, drawn once from N(0, 1/D) and never
updated, reparameterised by one learnable linear map W (§3.3, eq. 9):

    C = Q Wᵀ (+ b),   j = argmin_c ‖z − C_c‖,   z_q = z + sg(C_j − z),

and trained with the VQ loss of eq. 10, ‖sg(z) − C_j‖² + β ‖z − sg(C_j)‖², β = 0.25 (the
released config, ``legacy: false``: weight 1 on the codebook term, β on commitment). The
gradient of the codebook term lands on W, not on Q: a step that selects a few codes moves
*every* code (the whole span rotates and scales), which is the paper's remedy for
representation collapse — a plain VQ step moves only the selected rows.

Defaults and choices: W is D × D with a bias, as the authors' ``nn.Linear(e_dim, e_dim)``
(vector-quantize-pytorch's SimVQ has no bias: ``bias=False``), straight-through gradient
(upstream switches the rotation trick on by default; the paper uses the STE). Q is a
persistent buffer (checkpoints carry it; DDP broadcasts buffers at wrap time, and the seed
makes it identical on every rank anyway). No k-means initialisation: the paper starts from
the random basis, and writing centroids into Q would make it a data-fitted codebook.
Distances in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as Fq
from .base import Quantizer, QuantizerOutput, check_positive


class SimVQ(Quantizer):
    """SimVQ (Zhu et al. 2024): frozen random codebook × one learned linear map."""

    def __init__(self, num_codes: int = 1024, dim: int = 64, commitment: float = 0.25, bias: bool = True) -> None:
        super().__init__(num_codes, dim)
        check_positive("commitment", commitment, allow_zero=True)
        self.commitment = float(commitment)
        self.register_buffer("basis", torch.randn(self.num_codes, self.dim) / self.dim**0.5)
        self.transform = nn.Linear(self.dim, self.dim, bias=bool(bias))

    @property
    def codebook(self) -> Tensor:
        """C = Q Wᵀ + b, (C, D): differentiable in W, constant in Q."""
        with torch.autocast(self.basis.device.type, enabled=False):
            return self.transform(self.basis)

    @property
    def cuda_graph_safe(self) -> bool:
        return True

    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        """Nothing: the basis stays the random draw the paper starts from (see the docstring)."""

    def quantize(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):  # fp32 distances: bf16 flips argmin ties
            z32 = z.float()
            codebook = self.codebook
            with torch.no_grad():
                indices = Fq.squared_distances(z32, codebook).argmin(-1)
            z_c = F.embedding(indices, codebook)
            codebook_loss = F.mse_loss(z_c, z32.detach())
            commitment_loss = F.mse_loss(z32, z_c.detach())
            z_q = Fq.straight_through(z32, z_c)
        return QuantizerOutput(
            z_q=z_q.to(z.dtype),
            loss=codebook_loss + self.commitment * commitment_loss,
            terms={"codebook": codebook_loss.detach(), "commitment": commitment_loss.detach()},
            indices=indices, probs=None)
