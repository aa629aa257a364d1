"""The Quantizer contract every method implements, and the pieces methods share.

A quantizer maps encoder outputs ``z_e`` of shape (B, D, H, W) or (N, D) to ``z_q`` of the
same shape and returns a :class:`QuantizerOutput`. A subclass implements *either*
``quantize(z)`` or ``forward(z)`` (the PyTorch habit); either way the method receives flat
(N, D) vectors and :meth:`Quantizer.forward` handles the layouts, in one place. The way back,
:meth:`Quantizer.embed`, turns codes into the eval-mode ``z_q`` (layouts handled beside
``forward``'s; a subclass overrides ``dequantize`` on flat codes where its default, the rows
of the effective ``codebook``, is not how its eval ``z_q`` is computed).
:class:`CodebookQuantizer` owns a learnable (C, D) codebook (k-means initialises it);
:class:`AnnealedQuantizer` a Gumbel temperature schedule. The two combine as mixins.
"""
from __future__ import annotations

import abc
import functools
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


def _with_layouts(flat_method):
    """``forward`` of a forward-style class: the layouts of :meth:`Quantizer.forward` around
    the class's own ``forward``, which thus receives (N, D) like ``quantize`` would."""
    @functools.wraps(flat_method)
    def forward(self, z_e: Tensor) -> QuantizerOutput:
        return self._apply_flat(flat_method.__get__(self), z_e)
    return forward


class Quantizer(nn.Module, abc.ABC):
    """Abstract base: C codes of dimension D, hooks with sensible defaults.

    Implement ``quantize(z)`` or ``forward(z)``, on flat (N, D) vectors: a class that defines
    ``forward`` while nothing above it implements ``quantize`` is forward-style, its
    ``forward`` is its ``quantize`` and the public ``forward`` adds the layout handling. (A
    ``forward`` defined below a quantize-style class is an ordinary override of the public
    one and sees the input as given.)
    """

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("forward")
        if own is None or "quantize" in cls.__dict__:
            return
        inherited = cls.quantize  # Quantizer's abstract one, or a forward-style parent's forward
        if getattr(inherited, "__isabstractmethod__", False) or getattr(inherited, "_forward_style", False):
            own._forward_style = True
            cls.quantize, cls.forward = own, _with_layouts(own)

    def __new__(cls, *args, **kwargs):
        if getattr(cls.quantize, "__isabstractmethod__", False):
            raise TypeError(f"{cls.__qualname__} implements neither quantize(z) nor forward(z): a quantizer "
                            "implements one of them, on flat (N, D) vectors (docs/plugins.md)")
        return super().__new__(cls)

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
        return self._apply_flat(self.quantize, z_e)

    def _apply_flat(self, flat_method, z_e: Tensor) -> QuantizerOutput:
        """``flat_method`` on (N, D) vectors; (B, D, H, W) in and out around it."""
        if z_e.dim() == 2:
            return flat_method(z_e)
        if z_e.dim() != 4 or z_e.shape[1] != self.dim:
            raise ValueError(
                f"expected (B, {self.dim}, H, W) or (N, {self.dim}) input, got {tuple(z_e.shape)}"
            )
        b, _, h, w = z_e.shape
        out = flat_method(rearrange(z_e, "b d h w -> (b h w) d"))
        out.z_q = rearrange(out.z_q, "(b h w) d -> b d h w", b=b, h=h, w=w)
        if out.indices is not None:
            out.indices = out.indices.reshape(b, h, w)
        if out.probs is not None:
            out.probs = out.probs.reshape(b, h, w, -1)
        return out

    def embed(self, indices: Tensor) -> Tensor:
        """Codes → the eval-mode ``z_q`` they stand for: (B, H, W) → (B, D, H, W), (N,) → (N, D),
        so ``embed(q(z).indices)`` is ``q(z).z_q`` in eval (up to the straight-through rounding)."""
        if indices.dim() not in (1, 3) or indices.is_floating_point() or indices.is_complex() \
                or indices.dtype == torch.bool:
            raise ValueError(f"expected integer codes (N,) or (B, H, W), got {indices.dtype} {tuple(indices.shape)}")
        flat = indices.reshape(-1).long()
        if flat.numel() and not (0 <= int(flat.min()) and int(flat.max()) < self.num_codes):
            raise ValueError(f"codes must be in [0, {self.num_codes}), got [{int(flat.min())}, {int(flat.max())}]")
        z_q = self.dequantize(flat)
        return z_q if indices.dim() == 1 else rearrange(z_q, "(b h w) d -> b d h w", b=indices.shape[0],
                                                         h=indices.shape[1], w=indices.shape[2])

    def dequantize(self, indices: Tensor) -> Tensor:
        """The eval-mode z_q (N, D) of valid codes (N,), long: rows of the effective ``codebook``."""
        return F.embedding(indices, self.codebook)

    # --- hooks ---------------------------------------------------------------------
    def codebook_parameter(self) -> nn.Parameter | None:
        """The raw (C, D) parameter k-means initialisation writes to: none here
        (:class:`CodebookQuantizer` has one)."""
        return None

    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        """Initialise from encoder outputs (N, D) before training; nothing to do by default
        (:class:`CodebookQuantizer`: k-means)."""

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


class CodebookQuantizer(Quantizer):
    """A quantizer with a learnable (C, D) codebook, the parameter ``embedding`` (its
    ``state_dict`` key), drawn from N(0, 1/D) and initialised by k-means from encoder outputs.

    ``super().__init__(num_codes, dim)`` creates it. A subclass that must draw other random
    weights first (so that a seed keeps giving the same weights) passes
    ``create_codebook=False`` and calls :meth:`create_codebook` where the draw belongs.
    """

    def __init__(self, num_codes: int, dim: int, *, create_codebook: bool = True) -> None:
        super().__init__(num_codes, dim)
        if create_codebook:
            self.create_codebook()

    def create_codebook(self) -> None:
        self.embedding = nn.Parameter(torch.randn(self.num_codes, self.dim) / self.dim**0.5)

    @property
    def codebook(self) -> Tensor:
        return self.embedding

    def codebook_parameter(self) -> nn.Parameter:
        return self.embedding

    @torch.no_grad()
    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        """k-means initialisation on encoder outputs (N, D) (Huh et al. 2023)."""
        target = self.embedding
        centroids = Fq.kmeans(samples.to(target.dtype), self.num_codes, generator=generator)
        target.copy_(centroids.to(target.device))


class AnnealedQuantizer(Quantizer):
    """A quantizer with a Gumbel-softmax temperature τ, annealed exponentially from
    ``tau_start`` to ``tau_end`` over training through ``set_progress`` (GM-VQ paper §5.1).
    τ lives in a buffer: checkpoints carry it, and a captured CUDA graph reads its current
    value instead of the one at capture. Combine with :class:`CodebookQuantizer` as
    ``class M(AnnealedQuantizer, CodebookQuantizer)``."""

    def init_temperature(self, tau_start: float, tau_end: float) -> None:
        check_positive("tau_start", tau_start)
        check_positive("tau_end", tau_end)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.register_buffer("tau", torch.tensor(self.tau_start))

    def set_progress(self, fraction: float) -> None:
        self.tau.fill_(Fq.exponential_schedule(self.tau_start, self.tau_end, fraction))

