"""Gumbel-VQVAE (Karpathy 2021, deep-vector-quantization ``GumbelQuantize``; Esser et al.
2021, taming-transformers ``GumbelQuantize``), after Jang et al. 2017 / Maddison et al. 2017.

- Logits come from the encoder features directly through a linear projection owned by this
  module (their 1×1 conv ``proj``), not from distances to the codebook.
- Training: straight-through Gumbel-softmax, c_q = onehot(argmax(l + g)) + y − sg(y),
  y = softmax((l + g)/τ), z_q = c_q @ E; the forward value is exactly one code (the Table 1
  row is a VQ-VAE; taming trains with ``straight_through=True``). Eval: j = argmax l, no noise.
- Loss: ``kl_weight`` · mean_n KL(q(c|x_n) ‖ uniform) = mean_n Σ_c q log(C q) (Karpathy's
  ``kld_scale`` = 5e-4, also taming's default), per-position (not aggregated) posterior.
- τ anneals 2.0 → 0.1 exponentially via ``set_progress`` (GM-VQ paper §5.1 applies this to
  every Gumbel method; Karpathy keeps τ = 1, taming anneals 1 → 1/16). τ is a buffer.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import functional as Fq
from .base import AnnealedQuantizer, CodebookQuantizer, QuantizerOutput, check_positive


class GumbelQuantizer(AnnealedQuantizer, CodebookQuantizer):
    """Encoder-predicted categorical posterior with Gumbel-softmax (``gumbel-vqvae``)."""

    def __init__(
        self,
        num_codes: int = 1024,
        dim: int = 64,
        kl_weight: float = 5e-4,
        tau_start: float = 2.0,
        tau_end: float = 0.1,
    ) -> None:
        super().__init__(num_codes, dim, create_codebook=False)  # after proj, whose init draws first
        check_positive("kl_weight", kl_weight, allow_zero=True)
        self.init_temperature(tau_start, tau_end)
        self.kl_weight = float(kl_weight)
        self.proj = nn.Linear(self.dim, self.num_codes)
        self.create_codebook()

    @property
    def cuda_graph_safe(self) -> bool:
        return True  # τ is read from its buffer

    def quantize(self, z: Tensor) -> QuantizerOutput:
        log_q = torch.log_softmax(self.proj(z.float()), dim=-1)  # fp32 softmax under autocast
        probs = log_q.exp()
        if self.training:
            c_q, indices, _ = Fq.gumbel_softmax_st(log_q, self.tau)
        else:
            indices = log_q.argmax(-1)
            c_q = torch.nn.functional.one_hot(indices, self.num_codes).to(log_q.dtype)
        z_q = c_q @ self.codebook.float()
        kl = Fq.kl_to_uniform(probs).mean()
        terms = {"kl": kl.detach(), "tau": self.tau.detach().clone()}
        return QuantizerOutput(z_q=z_q.to(z.dtype), loss=self.kl_weight * kl, terms=terms,
                               indices=indices, probs=probs)
