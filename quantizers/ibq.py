"""IBQ: Index Backpropagation Quantization (Shi et al. 2024, "Scalable Image Tokenization
with Index Backpropagation Quantization", arXiv 2412.02692).

VQ's straight-through estimator sends the task gradient to the encoder only; a code learns
only while it is selected, so unused codes stay where they are (codebook collapse). IBQ
passes the straight-through estimator through the *index* instead (§3.2):

    ℓ = z Eᵀ,  p = softmax(ℓ),  j = argmax ℓ,  h = onehot(j),
    ĥ = h − sg(p) + p,          z_q = ĥ E,

so the forward value is the hard code E_j while the backward is that of the soft mixture
p E: every code's row of E (and every logit) receives gradient at every step. Its "double
quantization" loss (§3.2) trains the soft and the hard paths together:

    L_Q = ‖z_q − z‖² + ‖sg(E_j) − z‖² + β ‖E_j − sg(z)‖²,   β = 0.25,

the first term through ĥ (gradient to z, E and the logits), the other two VQ's commitment and
codebook terms. The weighting (1 on commitment, β on the codebook term) is the authors'
released code's. That code also adds MAGVIT-v2's entropy penalty on softmax(ℓ / 0.01),
E[H(q)] − H(E[q]), with weight 0.05 in its 1024-code ImageNet config (0.1 elsewhere): our
``entropy_weight`` 0.05 and ``entropy_temperature`` 0.01; ``entropy_weight=0`` is IBQ alone.

The codebook is a learnable :class:`CodebookQuantizer` codebook (k-means initialised by the
runner). Logits, softmax and losses are fp32; under DDP the batch-entropy term averages over
the global batch. ``probs`` is None: p is IBQ's gradient surrogate, not a posterior, so test
perplexity is that of the hard codes, as for VQ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import functional as Fq
from .base import CodebookQuantizer, QuantizerOutput, check_positive


class IBQ(CodebookQuantizer):
    """IBQ (Shi et al. 2024): straight-through over the softmax of all codes, so every code learns each step."""

    def __init__(self, num_codes: int = 1024, dim: int = 64, beta: float = 0.25, entropy_weight: float = 0.05,
                 entropy_temperature: float = 0.01) -> None:
        super().__init__(num_codes, dim)
        check_positive("beta", beta, allow_zero=True)
        check_positive("entropy_weight", entropy_weight, allow_zero=True)
        check_positive("entropy_temperature", entropy_temperature)
        self.beta, self.entropy_weight = float(beta), float(entropy_weight)
        self.entropy_temperature = float(entropy_temperature)

    @property
    def cuda_graph_safe(self) -> bool:
        return True

    def quantize(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):  # fp32 logits: bf16 flips argmax ties
            z32, book = z.float(), self.embedding.float()
            logits = z32 @ book.t()
            indices = logits.argmax(-1)
            hard = F.one_hot(indices, self.num_codes).to(logits.dtype)
            soft = torch.softmax(logits, dim=-1)
            z_q = (hard + (soft - soft.detach())) @ book  # index backpropagation
            chosen = F.embedding(indices, book)
            index_loss = F.mse_loss(z_q, z32)
            commitment_loss = F.mse_loss(z32, chosen.detach())
            codebook_loss = F.mse_loss(chosen, z32.detach())
            loss = index_loss + commitment_loss + self.beta * codebook_loss
            terms = {"index": index_loss.detach(), "commitment": commitment_loss.detach(),
                     "codebook": codebook_loss.detach()}
            if self.training and self.entropy_weight > 0:
                log_q = torch.log_softmax(logits / self.entropy_temperature, dim=-1)
                sample_entropy = Fq.entropy(log_q.exp()).mean()
                batch_entropy = Fq.entropy(Fq.aggregated_posterior(log_q.exp(), global_batch=True))
                loss = loss + self.entropy_weight * (sample_entropy - batch_entropy)
                terms.update(sample_entropy=sample_entropy.detach(), batch_entropy=batch_entropy.detach())
        return QuantizerOutput(z_q=z_q.to(z.dtype), loss=loss, terms=terms, indices=indices, probs=None)
