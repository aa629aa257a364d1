"""Binary (lookup-free) quantization: LFQ (Yu et al. 2024, "Language Model Beats Diffusion —
Tokenizer is Key to Visual Generation", MAGVIT-v2, ICLR; arXiv 2310.05737) and BSQ (Zhao et
al. 2024, "Image and Video Tokenization with Binary Spherical Quantization", arXiv 2406.07548),
as two settings of one class: BSQ is LFQ on the unit sphere.

Both project D → L = log2 C (and back L → D) with dense layers when D ≠ L (MAGVIT-v2's
encoder ends in L channels; our autoencoder's latent has D), quantize each channel by its
sign and pass the gradient straight through:

    LFQ (MAGVIT-v2 §3.1, eq. 3):  u = W_in z,          q(u) = sign(u) ∈ {−1, 1}^L
    BSQ (Zhao et al. §3.1):       u = W_in z / ‖W_in z‖, q(u) = sign(u) / √L  (on the sphere)
    index = Σ_k 2^k · 1[u_k > 0]  (MAGVIT-v2 eq. 3's order: channel 1 is the lowest bit)

The codebook is implicit: the 2^L corners, W_out-projected. The entropy penalty (MAGVIT-v2
eq. 5; BSQ §3.3) uses the soft assignment q(c|u) ∝ exp(−κ‖u − c‖²) over the corners:

    L = w · (γ₀ · E_u[H(q(c|u))] − γ · H(E_u[q(c|u)])) + β · ‖u − sg(q(u))‖²

per-sample entropy down (confident codes), batch ("codebook") entropy up (all codes used).
Because the corners are a product of bits, q(c|u) = ∏_k σ(±4κs·u_k) (s the corner scale: 1
for LFQ, 1/√L for BSQ), so the per-sample entropy is exactly Σ_k H(σ(4κs·u_k)) and never
needs the N × C table. The batch entropy is computed over groups of ``group_size`` bits and
summed (BSQ eq. 8's factorised approximation; ``group_size = L`` is the exact joint entropy).

Defaults. LFQ (MAGVIT-v2 training details, as replicated by Open-MAGVIT2): w = 0.1,
γ₀ = γ = 1, β = 0.25 (MAGVIT-v2 also ramps w up early in training; not done), κ = 100
(temperature 0.01: the paper is silent, MAGVIT's released ``compute_entropy_loss`` default),
exact batch entropy (group_size = L; C = 1024 is small). BSQ (the released BSQ-ViT configs):
κ = 1, γ₀ = γ = 1, β = 0, group_size = 1, loss weight w = 0.1 (its ``codebook_weight``; the
warm-up ramp of that weight is not done). BSQ's released code numbers channels the other way
round (channel 1 highest bit); the codes are the same, only their labels permute.

Under DDP the batch entropy uses the global batch (one autograd all-reduce,
:func:`functional.aggregated_posterior`). The penalty is a training regulariser: in eval only
the commitment term is computed (no collective, no C-sized work). All of it runs in fp32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as Fq
from .base import Quantizer, QuantizerOutput, check_positive


def bits_table(bits: int) -> Tensor:
    """(2^bits, bits) of {0, 1}: row c holds the bits of c, lowest first."""
    return ((torch.arange(2**bits)[:, None] >> torch.arange(bits)) & 1).float()


def bernoulli_entropy(logit: Tensor) -> Tensor:
    """H(σ(x)) in nats, stable for large |x|: softplus(x) − x·σ(x)."""
    return F.softplus(logit) - logit * torch.sigmoid(logit)


class BinaryQuantizer(Quantizer):
    """LFQ (Yu et al. 2024, MAGVIT-v2) or, with ``spherical``, BSQ (Zhao et al. 2024): sign
    quantization to the corners of {−1, 1}^log2(C), entropy penalty, straight-through."""

    def __init__(self, num_codes: int = 1024, dim: int = 64, spherical: bool = False,
                 entropy_weight: float = 0.1, sample_weight: float = 1.0, batch_weight: float = 1.0,
                 inv_temperature: float = 100.0, commitment: float = 0.25,
                 group_size: int | None = None) -> None:
        super().__init__(num_codes, dim)
        bits = int(round(math.log2(self.num_codes))) if self.num_codes > 1 else 0
        if bits < 1 or 2**bits != self.num_codes:
            below = 2 ** max(1, int(math.log2(max(self.num_codes, 2))))
            raise ValueError(f"num_codes must be a power of two ≥ 2 (codes are sign patterns of log2 C bits), "
                             f"got {self.num_codes}; try {below} or {2 * below}")
        for name, value in (("entropy_weight", entropy_weight), ("sample_weight", sample_weight),
                            ("batch_weight", batch_weight), ("commitment", commitment)):
            check_positive(name, value, allow_zero=True)
        check_positive("inv_temperature", inv_temperature)
        group = bits if group_size is None else group_size
        if int(group) != group or not 1 <= group <= min(bits, 16) or bits % group:
            raise ValueError(f"group_size must divide the {bits} bits and be 1..16, got {group_size!r}")
        self.bits, self.spherical, self.group_size = bits, bool(spherical), int(group)
        self.entropy_weight, self.sample_weight, self.batch_weight = float(entropy_weight), float(sample_weight), float(batch_weight)
        self.inv_temperature, self.commitment = float(inv_temperature), float(commitment)
        self.scale = 1 / math.sqrt(bits) if self.spherical else 1.0
        self.register_buffer("corners", (2 * bits_table(bits) - 1) * self.scale, persistent=False)
        self.register_buffer("group_bits", bits_table(self.group_size), persistent=False)
        self.register_buffer("powers", 2 ** torch.arange(bits), persistent=False)
        self.project_in = nn.Linear(self.dim, bits) if self.dim != bits else nn.Identity()
        self.project_out = nn.Linear(bits, self.dim) if self.dim != bits else nn.Identity()

    @property
    def codebook(self) -> Tensor:
        """The 2^L corners (LFQ: ±1; BSQ: ±1/√L) mapped by ``project_out``: (C, D)."""
        with torch.autocast(self.corners.device.type, enabled=False):
            return self.project_out(self.corners)

    @property
    def cuda_graph_safe(self) -> bool:
        return True  # no Python state, no host sync (the DDP all-reduce is never graphed)

    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        """Nothing to initialise: the corners are fixed (the projections learn from the task)."""

    def entropies(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(mean per-sample entropy, batch entropy) of q(c|u), in nats (see the docstring)."""
        logit = 4 * self.inv_temperature * self.scale * u  # log q(bit=1) − log q(bit=0), per channel
        per_sample = bernoulli_entropy(logit).sum(-1).mean()
        # log q of every code of each group: Σ_k [b_k log σ(x_k) + (1 − b_k) log σ(−x_k)].
        groups = logit.reshape(-1, self.bits // self.group_size, self.group_size)
        log_q = F.logsigmoid(groups) @ self.group_bits.t() + F.logsigmoid(-groups) @ (1 - self.group_bits).t()
        q_batch = Fq.aggregated_posterior(log_q.exp().flatten(1), global_batch=True)
        batch = Fq.entropy(q_batch.reshape(-1, 2**self.group_size)).sum()
        return per_sample, batch

    def dequantize(self, indices: Tensor) -> Tensor:
        """The corners of ``indices`` through ``project_out``, in fp32, as :meth:`quantize`'s z_q."""
        with torch.autocast(indices.device.type, enabled=False):
            return self.project_out(self.corners[indices])

    def quantize(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):  # signs, indices and entropies in fp32
            u = self.project_in(z.float())
            if self.spherical:
                u = Fq.l2_normalize(u)
            q = torch.where(u > 0, self.scale, -self.scale)
            z_q = self.project_out(u + (q - u).detach())
            commitment = F.mse_loss(u, q)
            loss = self.commitment * commitment
            terms = {"commitment": commitment.detach()}
            if self.training:
                per_sample, batch = self.entropies(u)
                loss = loss + self.entropy_weight * (self.sample_weight * per_sample - self.batch_weight * batch)
                terms.update(sample_entropy=per_sample.detach(), batch_entropy=batch.detach())
        indices = ((u > 0).long() * self.powers).sum(-1)
        return QuantizerOutput(z_q=z_q.to(z.dtype), loss=loss, terms=terms, indices=indices, probs=None)

    def extra_repr(self) -> str:
        kind = "BSQ" if self.spherical else "LFQ"
        return f"{kind}: bits={self.bits}, num_codes={self.num_codes}, dim={self.dim}"
