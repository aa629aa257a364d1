"""Gaussian SQ-VAE (Takida et al. 2022, "SQ-VAE: Variational Bayes on Discrete Representation
with Self-annealed Stochastic Quantization", ICML), the ``gaussian_1`` (one scalar variance)
variant.

- Stochastic quantisation (their eq. 7/8): P(z_n = b_c | ẑ_n) ∝ exp(−‖ẑ_n − b_c‖² / (2σ²)),
  with one learnable variance σ² = exp(``log_var``). Training draws a Gumbel-softmax sample
  (soft, ``hard=False`` as in their code): z_q = softmax_τ(log P + g) @ B. Eval is
  deterministic: z_q = b_j with j = argmax P (their ``flg_quant_det``).
- Latent loss (their eq. 10, Gaussian case): KL_discrete = Σ_c P log P (= −H(P); the prior
  is uniform so log C is dropped) and KL_continuous = ‖ẑ − z_q‖² / (2σ²); both as a mean
  over latent vectors (ours) where they sum per image.
- Reconstruction (their §4 with ARELBO, Lin et al. 2019, decoder variance at its MLE):
  (D_x / 2) · log(‖x − x̂‖² summed per image), via :meth:`reconstruction_loss`. To keep
  the ratio of their per-image objective we divide it by P, the latent positions per image
  (taken from the latest forward), so the total is their objective / P.
- Self-annealing: nothing schedules σ²; the gradient of the objective lowers it as the
  reconstruction improves. Their init σ² = exp(3) ≈ 20 (``log_param_q_init: 3.0``) is for
  unit-variance latents (BatchNorm in their encoder) and a unit-scale codebook. Ours start
  at ≈ 1e-4 per dimension, where σ² = 20 makes the logits of all codes differ by ≈ 2e-4 nats:
  q(c|x) is uniform, no reconstruction gradient reaches the codes and the continuous KL
  alone pushes σ² up (measured: 24.6 after one CIFAR-10 epoch, 46.5 after two; issue 16).
  ``log_var_init="auto"`` (default) keeps their ratio at any scale: σ² = exp(3) · v, with v
  the mean per-dimension variance of the encoder outputs, set once at k-means init or on the
  first training batch (a float fixes log σ² as theirs does). Measured (cifar10-tiny, 300
  steps of batch 32): σ² 20.5 → 146 with 3.0, steady at 0.0027 → 0.0030 with "auto"; but
  q(c|x) still turns uniform within 60 steps and the MSE stays at the mean image's, at lr
  1e-2 and 1e-3 alike, so this is not the whole cause of the degenerate start. We drop the "+1" floor their
  ``gaussian_1`` adds (var = 1 + exp(s)) so σ² can anneal below 1 at any latent scale.
  σ² is a Parameter, so checkpoints carry it.
- Gumbel temperature: 2.0 → 0.1 exponentially via ``set_progress`` (GM-VQ paper §5.1 uses
  this schedule "similar to Takida et al."; their own is 1.0·exp(−1e-5·step)). τ is a buffer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed as Fd
from . import functional as Fq
from .base import AnnealedQuantizer, CodebookQuantizer, QuantizerOutput, check_positive
from .calibration import CalibratedQuantizer


LOG_VAR_UNIT_SCALE = 3.0  # their log σ² at init, for unit-variance latents


class SQVAE(AnnealedQuantizer, CalibratedQuantizer, CodebookQuantizer):
    """Stochastically quantised VAE with a learnable, self-annealing variance (``sqvae``)."""

    def __init__(
        self,
        num_codes: int = 1024,
        dim: int = 64,
        log_var_init: float | str = "auto",
        tau_start: float = 2.0,
        tau_end: float = 0.1,
        eps: float = 1e-10,
    ) -> None:
        super().__init__(num_codes, dim)
        auto = log_var_init == "auto"
        if not auto and (isinstance(log_var_init, str) or not math.isfinite(log_var_init)):
            raise ValueError(f"log_var_init must be 'auto' or a finite number, got {log_var_init!r}")
        self.init_temperature(tau_start, tau_end)
        check_positive("eps", eps)
        self.eps, self.log_var_init = float(eps), log_var_init
        self.log_var = nn.Parameter(torch.tensor(LOG_VAR_UNIT_SCALE if auto else float(log_var_init)))
        self.init_calibration(from_data=auto)
        self._vectors_per_batch: int | None = None

    @property
    def cuda_graph_safe(self) -> bool:
        return True  # τ is read from its buffer

    @property
    def variance(self) -> Tensor:
        """σ² of the stochastic quantiser (detached)."""
        return self.log_var.detach().exp()

    def calibrate_from(self, z: Tensor) -> None:
        """log σ² = 3 + log v, v the mean per-dimension variance of ``z`` (module docstring)."""
        v = Fd.all_reduce_sum_(z.float().var(0).mean().reshape(1)).squeeze(0) / Fd.world_size()
        self.log_var.fill_(LOG_VAR_UNIT_SCALE + float(torch.log(v.clamp_min(1e-12))))

    def quantize(self, z: Tensor) -> QuantizerOutput:
        self.calibrate_if_unset(z)
        z32, codebook = z.float(), self.codebook.float()
        precision = torch.exp(-self.log_var.float())
        log_p = torch.log_softmax(-0.5 * precision * Fq.squared_distances(z32, codebook), dim=-1)
        probs = log_p.exp()
        if self.training:
            y, indices = Fq.gumbel_softmax(log_p, self.tau)
            z_q = y @ codebook
        else:
            indices = log_p.argmax(-1)
            z_q = codebook[indices]
        kl_discrete = (probs * log_p).sum(-1).mean()
        kl_continuous = 0.5 * precision * (z32 - z_q).pow(2).sum(-1).mean()
        self._vectors_per_batch = z.shape[0]
        terms = {
            "kl_discrete": kl_discrete.detach(),
            "kl_continuous": kl_continuous.detach(),
            "variance": self.variance.clone(),
            "tau": self.tau.detach().clone(),
        }
        return QuantizerOutput(z_q=z_q.to(z.dtype), loss=kl_discrete + kl_continuous, terms=terms,
                               indices=indices, probs=probs)

    def reconstruction_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """(D_x/2) log(per-image squared error) / P: the SQ-VAE reconstruction part."""
        batch = x.shape[0]
        per_image = x[0].numel()
        sq_err = F.mse_loss(x_hat.float(), x.float(), reduction="sum") / batch
        positions = (self._vectors_per_batch or batch) / batch
        return 0.5 * per_image * torch.log(sq_err + self.eps) / positions
