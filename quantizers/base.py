"""The Quantizer contract every method implements.

A quantizer maps encoder outputs ``z_e`` of shape (B, D, H, W) or (N, D) to ``z_q`` of the
same shape and returns a :class:`QuantizerOutput`. Subclasses implement
:meth:`Quantizer.quantize` on flat (N, D) vectors; the base class handles layouts.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from . import functional as Fq


@dataclass
class QuantizerOutput:
    """What every quantizer returns.

    z_q: quantized latents, same shape as the input (what the decoder sees).
    loss: scalar, the quantizer's own weighted loss terms (added to reconstruction).
    terms: named unweighted terms, detached, for logging.
    indices: long, one code per latent position ((B, H, W) or (N,)).
    probs: q(c|x) per position ((B, H, W, C) or (N, C)) where the method defines one.
    """

    z_q: Tensor
    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    indices: Tensor | None = None
    probs: Tensor | None = None


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Reject a bad hyperparameter at construction with one clear line."""
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and value == value and value != float("inf")):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


class Quantizer(nn.Module, abc.ABC):
    """Abstract base: C codes of dimension D, hooks with sensible defaults."""

    def __init__(self, num_codes: int, dim: int) -> None:
        super().__init__()
        if int(num_codes) != num_codes or num_codes < 1:
            raise ValueError(f"num_codes must be a whole number ≥ 1, got {num_codes!r}")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a whole number ≥ 1, got {dim!r}")
        self.num_codes = int(num_codes)
        self.dim = int(dim)

    # --- what a method implements -------------------------------------------------
    @property
    @abc.abstractmethod
    def codebook(self) -> Tensor:
        """The effective (C, D) codebook the decoder's inputs are drawn from."""

    @abc.abstractmethod
    def quantize(self, z: Tensor) -> QuantizerOutput:
        """Quantize flat vectors z of shape (N, D); indices (N,), probs (N, C)."""

    # --- layout handling ------------------------------------------------------------
    def forward(self, z_e: Tensor) -> QuantizerOutput:
        if z_e.dim() == 2:
            return self.quantize(z_e)
        if z_e.dim() != 4 or z_e.shape[1] != self.dim:
            raise ValueError(
                f"expected (B, {self.dim}, H, W) or (N, {self.dim}) input, got {tuple(z_e.shape)}"
            )
        b, _, h, w = z_e.shape
        out = self.quantize(rearrange(z_e, "b d h w -> (b h w) d"))
        out.z_q = rearrange(out.z_q, "(b h w) d -> b d h w", b=b, h=h, w=w)
        if out.indices is not None:
            out.indices = out.indices.reshape(b, h, w)
        if out.probs is not None:
            out.probs = out.probs.reshape(b, h, w, -1)
        return out

    # --- hooks ---------------------------------------------------------------------
    def codebook_parameter(self) -> nn.Parameter | None:
        """The raw (C, D) parameter k-means initialisation writes to, if any."""
        weight = getattr(self, "embedding", None)
        return weight if isinstance(weight, nn.Parameter) else None

    @torch.no_grad()
    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        """k-means initialisation on encoder outputs (N, D) (Huh et al. 2023)."""
        target = self.codebook_parameter()
        if target is None:
            return
        centroids = Fq.kmeans(samples.to(target.dtype), self.num_codes, generator=generator)
        target.copy_(centroids.to(target.device))

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1], for temperature and variance schedules."""

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups (extra keys: ``lr_scale``, ``weight_decay``)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def after_optimizer_step(self) -> None:
        """Called after each optimiser step (alternating optimisation, replacement)."""

    @property
    def cuda_graph_safe(self) -> bool:
        """True if a training step can be captured once and replayed (``train.cuda_graph``).

        A replay reruns the kernels, not the Python: ``quantize`` must keep no Python state
        per step (values it writes into tensors are fine), sync nothing with the host (no
        ``float(t)``, ``.item()``, ``nonzero``, ``bincount``), and read schedules such as τ
        from buffers, not Python floats. ``set_progress`` and ``after_optimizer_step`` run
        eagerly around every replay. Off unless a quantizer says so.
        """
        return False

    def check_device(self, device: torch.device) -> None:
        """Raise ValueError if this quantizer, as configured, cannot run on ``device`` (the
        runner asks before the run folder exists, so a bad setting is one line, not a silent
        fallback). Every device is fine unless a quantizer says otherwise."""

    def reconstruction_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Mean squared error over pixels; methods with another likelihood override it."""
        return F.mse_loss(x_hat, x)


class AnnealedQuantizer(Quantizer):
    """A quantizer with a Gumbel-softmax temperature τ, annealed exponentially from
    ``tau_start`` to ``tau_end`` over training through ``set_progress`` (GM-VQ paper §5.1).
    τ lives in a buffer: checkpoints carry it, and a captured CUDA graph reads its current
    value instead of the one at capture."""

    def init_temperature(self, tau_start: float, tau_end: float) -> None:
        check_positive("tau_start", tau_start)
        check_positive("tau_end", tau_end)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.register_buffer("tau", torch.tensor(self.tau_start))

    def set_progress(self, fraction: float) -> None:
        self.tau.fill_(Fq.exponential_schedule(self.tau_start, self.tau_end, fraction))
