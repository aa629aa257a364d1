"""VQ-VAE (van den Oord et al. 2017) and the Table 1 VQ-VAE variants, as options of one class.

Nearest-neighbour lookup j = argmin_c ‖ẑ − μ_c‖ (GM-VQ paper eq. 1), straight-through
estimator, and the codebook + commitment loss of GM-VQ paper eq. 2,

    L = ‖sg[ẑ] − z_c‖² + commitment · ‖ẑ − sg[z_c]‖²,

both as means over latent elements (van den Oord et al. use β = 0.25; we keep 0.25 for every
variant so the rows of Table 1 differ only in the option under test). Options:

- ``l2`` (Yu et al. 2021, ViT-VQGAN §3.2): ẑ and the codes are l2-normalised before the
  lookup, so the nearest code is the max-cosine one; the decoder sees the unit-norm code.
  (ViT-VQGAN's low-dimensional factorised lookup is not part of the Table 1 row; not done.)
- ``replace_window`` (Zeghidour et al. 2021 §3.2; Dhariwal et al. 2020 §2.6): a code unused
  for ``replace_window`` consecutive training steps is re-initialised, after the optimiser
  step, to a random encoder output of the latest batch plus Gaussian noise of std
  ``replace_noise`` × the batch's rms. Default window 20 steps (Huh et al.'s vqtorch
  ``replace_freq=20``). The timers are a buffer, so checkpoints carry them.
- ``affine`` (Huh et al. 2023 §5.1): effective codebook = scale ⊙ μ + shift per dimension;
  scale and shift learn with lr × ``affine_lr`` (10, vqtorch's README) and no weight decay
  (our choice: decay would pull the scale to 0, not to the identity).
- ``alternating`` (Huh et al. 2023 §5.2, "OPT"): the raw codebook leaves the task optimiser
  (it is not in :meth:`param_groups`); after each optimiser step an inner SGD step on
  ½‖μ_c − mean_{n→c} ẑ_n‖² moves each used code towards the mean of its assigned encoder
  outputs by the fraction ``inner_lr`` (our choice 0.1; a k-means step is 1). The
  codebook loss then only trains the affine parameters.
- ``sync_nu`` (Huh et al. 2023 §5.3, synchronised update): z_q = ẑ + sg(z_c − ẑ) + ν(z_c −
  sg(z_c)), so the codebook also receives ν × the task gradient. Under ``alternating`` that
  gradient is applied by the inner step (the codebook's own optimiser), not the task one.
- ``rotation`` (Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation
  Trick", ICLR 2025, arXiv 2410.06424, §4.2): instead of copying the gradient (the STE),
  z_q = sg(λR) ẑ with λ = ‖z_c‖/‖ẑ‖ and R = I − 2rrᵀ + 2ĉêᵀ, r = (ê + ĉ)/‖ê + ĉ‖, the
  rotation taking ẑ's direction ê to z_c's ĉ. Forward value z_c, as the STE's; backward
  ∂L/∂ẑ = λRᵀ ∂L/∂z_q, R and λ constants, so no task gradient reaches the codebook.
- ``ema_decay`` (van den Oord et al. 2017 App. A.1 eqs. 6–8; Razavi et al. 2019, VQ-VAE-2):
  the codebook is not trained by gradient (it leaves the optimiser and the loss keeps only
  the commitment term) but set in each training forward, after the lookup, from moving
  averages of assignment counts and sums, N_c ← γN_c + (1 − γ)n_c, m_c ← γm_c + (1 − γ)
  Σ_{ẑ→c} ẑ, μ_c = m_c / Ñ_c with Laplace smoothing Ñ_c = (N_c + ε)/(ΣN + Cε)·ΣN
  (``ema_eps`` ε = 1e-5, Sonnet's). γ = 0.99 in ``vqvae-ema`` (the papers'). k-means and
  dead-code replacement seed a row's averages with the written code and a count of 1 (our
  choice, as vector-quantize-pytorch; Sonnet starts from zero with a debiased average).
  Under DDP the counts and sums are all-reduced (one collective) before the update, so every
  rank applies the same update to the global batch's statistics. Not with ``affine``,
  ``alternating`` or ``sync_nu`` (each gives the codebook a second learning rule).

Replacement and the inner step write the effective codebook through one helper that inverts
the affine map, so ``l2``/``affine``/``alternating``/``replace`` compose freely.

Under DDP (``quantizers.distributed``) the codebook stays bitwise identical on every rank:
a code counts as used when any rank used it (a max-reduced mask), replacement vectors are
drawn once on rank 0 from its batch and broadcast, and the inner step uses the all-reduced
per-code sums and counts, i.e. the global batch's means.
Both read the latest training batch the forward cached (with gradient accumulation: only the
last micro-batch, our choice). The task optimiser's state for a replaced row is not reset.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed as Fd
from . import functional as Fq
from .base import CodebookQuantizer, QuantizerOutput, check_positive


class VectorQuantizer(CodebookQuantizer):
    """Deterministic VQ with a learnable codebook (``vqvae`` and its Table 1 variants)."""

    def __init__(
        self,
        num_codes: int = 1024,
        dim: int = 64,
        commitment: float = 0.25,
        l2: bool = False,
        replace_window: int | None = None,
        replace_noise: float = 0.01,
        affine: bool = False,
        affine_lr: float = 10.0,
        alternating: bool = False,
        inner_lr: float = 0.1,
        sync_nu: float = 0.0,
        rotation: bool = False,
        ema_decay: float | None = None,
        ema_eps: float = 1e-5,
    ) -> None:
        super().__init__(num_codes, dim)
        check_positive("commitment", commitment, allow_zero=True)
        check_positive("replace_noise", replace_noise, allow_zero=True)
        check_positive("affine_lr", affine_lr)
        check_positive("inner_lr", inner_lr)
        check_positive("sync_nu", sync_nu, allow_zero=True)
        if replace_window is not None and (int(replace_window) != replace_window or replace_window < 1):
            raise ValueError(f"replace_window must be a whole number ≥ 1 (or None to disable), got {replace_window!r}")
        self.commitment, self.l2, self.rotation = float(commitment), bool(l2), bool(rotation)
        self.replace_window = None if replace_window is None else int(replace_window)
        self.replace_noise, self.affine_lr = float(replace_noise), float(affine_lr)
        self.alternating, self.inner_lr, self.sync_nu = bool(alternating), float(inner_lr), float(sync_nu)
        if ema_decay is not None:
            if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0 < ema_decay < 1:
                raise ValueError(f"ema_decay must be in (0, 1) (or None: the codebook learns by gradient), got {ema_decay!r}")
            check_positive("ema_eps", ema_eps)
            if affine or alternating or sync_nu > 0:
                raise ValueError("ema_decay cannot be combined with affine, alternating or sync_nu "
                                 "(each gives the codebook a second learning rule)")
            self.embedding.requires_grad_(False)  # the EMA sets it; no optimiser may move it
            self.register_buffer("ema_count", torch.ones(self.num_codes))
            self.register_buffer("ema_sum", self.embedding.detach().clone())
        self.ema_decay, self.ema_eps = (None if ema_decay is None else float(ema_decay)), float(ema_eps)
        self.affine_scale = nn.Parameter(torch.ones(self.dim)) if affine else None
        self.affine_shift = nn.Parameter(torch.zeros(self.dim)) if affine else None
        if self.replace_window is not None:
            self.register_buffer("steps_unused", torch.zeros(self.num_codes, dtype=torch.long))
            # Codes used since the last optimiser step on this rank; reduced over ranks there.
            self.register_buffer("_used", torch.zeros(self.num_codes, dtype=torch.uint8), persistent=False)
        self._last_batch: tuple[Tensor, Tensor] | None = None  # (compared vectors, indices)

    # --- the effective codebook -----------------------------------------------------
    def _affine(self, raw: Tensor) -> Tensor:
        return raw if self.affine_scale is None else raw * self.affine_scale + self.affine_shift

    def _compare(self, x: Tensor) -> Tensor:
        """The space the lookup happens in: unit sphere under ``l2``."""
        return Fq.l2_normalize(x) if self.l2 else x

    @property
    def codebook(self) -> Tensor:
        return self._compare(self._affine(self.embedding))

    @property
    def cuda_graph_safe(self) -> bool:
        # OPT's inner step and replacement read the batch the forward kept in Python (and sync): a replay would not.
        return not self.alternating and self.replace_window is None

    @torch.no_grad()
    def _write_effective(self, rows: Tensor, values: Tensor) -> None:
        """Set the pre-normalisation effective codes of ``rows`` to ``values`` (shared by
        dead-code replacement and the alternating inner step)."""
        if self.affine_scale is not None:
            scale = torch.where(self.affine_scale.abs() < 1e-8, torch.full_like(self.affine_scale, 1e-8), self.affine_scale)
            values = (values - self.affine_shift) / scale
        self.embedding[rows] = values.to(self.embedding.dtype)
        if self.ema_decay is not None:  # the written code is the row's average, counted once
            self.ema_sum[rows] = values.to(self.ema_sum.dtype)
            self.ema_count[rows] = 1.0

    # --- forward --------------------------------------------------------------------
    def quantize(self, z: Tensor) -> QuantizerOutput:
        z_cmp = self._compare(z.float())  # fp32 even under autocast: argmin ties flip in bf16
        codebook = self.codebook.float()
        with torch.no_grad():
            indices = Fq.squared_distances(z_cmp, codebook).argmin(-1)
        z_c = F.embedding(indices, codebook)
        # Under OPT the raw codebook gets no task/codebook-loss gradient; only the affine does.
        loss_book = self._compare(self._affine(self.embedding.detach())).float() if self.alternating else codebook
        codebook_loss = F.mse_loss(F.embedding(indices, loss_book), z_cmp.detach())
        commitment_loss = F.mse_loss(z_cmp, z_c.detach())
        loss = self.commitment * commitment_loss
        terms = {"commitment": commitment_loss.detach()}
        if self.ema_decay is None:
            loss = loss + codebook_loss
            terms["codebook"] = codebook_loss.detach()
        elif self.training:  # after the lookup: this batch is quantized with the codebook it saw
            self._ema_update(z_cmp.detach(), indices)
        z_q = Fq.rotation_trick(z_cmp, z_c) if self.rotation else Fq.straight_through(z_cmp, z_c)
        if self.sync_nu > 0:
            z_q = z_q + self.sync_nu * (z_c - z_c.detach())
        if self.training and (self.alternating or self.replace_window is not None):
            self._last_batch = (z_cmp.detach(), indices.detach())
            if self.replace_window is not None:
                self._used[indices] = 1
        return QuantizerOutput(z_q=z_q.to(z.dtype), loss=loss, terms=terms, indices=indices, probs=None)

    # --- hooks ----------------------------------------------------------------------
    @torch.no_grad()
    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        """k-means (Huh et al. 2023) in the lookup space (on the sphere under ``l2``)."""
        points = self._compare(samples.float())
        centroids = Fq.kmeans(points, self.num_codes, generator=generator).to(self.embedding.device)
        self._write_effective(torch.arange(self.num_codes, device=centroids.device), centroids)

    def param_groups(self) -> list[dict]:
        groups = [] if self.alternating or self.ema_decay is not None else [{"params": [self.embedding]}]
        if self.affine_scale is not None:
            groups.append({"params": [self.affine_scale, self.affine_shift],
                           "lr_scale": self.affine_lr, "weight_decay": 0.0})
        return groups

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self._last_batch is None:
            return
        z, indices = self._last_batch
        if self.alternating:
            self._inner_step(z, indices)
        if self.replace_window is not None:
            self._replace_dead_codes(z)
        self._last_batch = None

    @torch.no_grad()
    def _ema_update(self, z: Tensor, indices: Tensor) -> None:
        """The EMA codebook step (module docstring): no host sync, so CUDA graphs replay it."""
        stats = torch.zeros(self.num_codes, self.dim + 1, dtype=torch.float32, device=z.device)
        stats.index_add_(0, indices, torch.cat([z.float(), torch.ones_like(z[:, :1], dtype=torch.float32)], 1))
        Fd.all_reduce_sum_(stats)  # one collective: the global batch's per-code sums and counts
        Fq.ema_(self.ema_count, stats[:, -1], self.ema_decay)
        Fq.ema_(self.ema_sum, stats[:, :-1], self.ema_decay)
        self.embedding.copy_(self.ema_sum / Fq.laplace_smoothed(self.ema_count, self.ema_eps)[:, None])

    @torch.no_grad()
    def _inner_step(self, z: Tensor, indices: Tensor) -> None:
        """One SGD step of the codebook's own objective (Huh et al. 2023 §5.2)."""
        sums = torch.zeros(self.num_codes, self.dim + 1, dtype=z.dtype, device=z.device)
        sums[:, :-1].index_add_(0, indices, z)
        sums[:, -1] = torch.bincount(indices, minlength=self.num_codes).to(z.dtype)
        Fd.all_reduce_sum_(sums)  # one collective: the global batch's per-code sums and counts
        sums, counts = sums[:, :-1], sums[:, -1]
        used = (counts > 0).nonzero().squeeze(1)
        grad = self.embedding.grad  # only ν × the task gradient (sync) lands here under OPT
        if used.numel():
            eff = self._affine(self.embedding)[used].float()
            mean = sums[used] / counts[used, None].to(z.dtype)
            self._write_effective(used, eff + self.inner_lr * (mean - eff))
        if grad is not None:
            self.embedding.sub_(self.inner_lr * grad)
            self.embedding.grad = None

    @torch.no_grad()
    def _replace_dead_codes(self, z: Tensor) -> None:
        """Re-initialise codes unused for ``replace_window`` steps from recent outputs."""
        used = Fd.all_reduce_max_(self._used).bool()  # the same mask, so the same timers, everywhere
        self.steps_unused[used] = 0
        self._used.zero_()
        self.steps_unused += 1
        dead = (self.steps_unused >= self.replace_window).nonzero().squeeze(1)
        if dead.numel() == 0:
            return

        def draw() -> Tensor:  # rank 0 draws, every rank writes the same rows
            if z.shape[0] == 0:
                return self._affine(self.embedding)[dead].to(z.dtype)
            pick = torch.randint(z.shape[0], (dead.numel(),), device=z.device)
            noise = torch.randn(dead.numel(), self.dim, dtype=z.dtype, device=z.device)
            rms = z.pow(2).mean().sqrt()
            return z[pick] + self.replace_noise * rms * noise

        values = Fd.on_rank0_then_broadcast(draw, torch.empty(dead.numel(), self.dim, dtype=z.dtype, device=z.device))
        self._write_effective(dead, values)
        self.steps_unused[dead] = 0
