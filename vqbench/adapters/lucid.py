"""vector-quantize-pytorch (lucidrains) quantizers in the vqbench ``Quantizer`` contract.

Registered as ``lucid-fsq``, ``lucid-lfq``, ``lucid-simvq``, ``lucid-vq-ema`` and
``lucid-rvq`` through the ``vqbench.quantizers`` entry points in vqbench's own pyproject
(``pip install 'vqbench[lucid]'``), so ``vqbench run`` trains them in the same autoencoder,
data, schedule and metrics as GM-VQ. Each maps our (N, D) latent (D = model.latent_dim,
default 64) and C codes (``num_codes``, default 1024) onto the upstream method as its
docstring says, and names the upstream defaults that change the method. Tested against
vector-quantize-pytorch 1.32.0.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

import quantizers.functional as Fq
from quantizers.base import QuantizerOutput

from ._lucid_base import LucidAdapter, as_sequence, hard_output, log2_exact, write_ema_codebook

import vector_quantize_pytorch as vqp  # noqa: E402 (importing _lucid_base checked it is installed)

# Mentzer et al. 2024 (FSQ, ICLR), Table 1: recommended levels for a target codebook size.
FSQ_PAPER_LEVELS = {2**8: [8, 6, 5], 2**10: [8, 5, 5, 5], 2**12: [7, 5, 5, 5, 5],
                    2**14: [8, 8, 8, 6, 5], 2**16: [8, 8, 8, 5, 5, 5]}


def fsq_levels(num_codes: int) -> list[int]:
    """FSQ levels whose product is the paper's choice for C, else the largest product ≤ C.

    Off the paper's table: d = round(log_5 C) dimensions (the paper's levels sit near 5),
    every level ⌊C^(1/d)⌋ (at least 3, since upstream needs level 2 to be symmetric), then
    levels raised one at a time while the product stays ≤ C.
    """
    if num_codes in FSQ_PAPER_LEVELS:
        return list(FSQ_PAPER_LEVELS[num_codes])
    if num_codes < 3:
        raise ValueError(f"FSQ needs num_codes ≥ 3, got {num_codes}")
    d = max(1, round(math.log(num_codes) / math.log(5)))
    levels = [max(3, int(num_codes ** (1 / d) + 1e-9))] * d
    grew = True
    while grew:
        grew = False
        for i in range(d):
            if math.prod(levels) // levels[i] * (levels[i] + 1) <= num_codes:
                levels[i] += 1
                grew = True
    return levels


def parse_levels(levels: Any) -> list[int]:
    if isinstance(levels, str):
        levels = [part for part in levels.replace("x", ",").split(",") if part.strip()]
    try:
        out = [int(v) for v in levels]
    except (TypeError, ValueError):
        raise ValueError(f"levels must be a list of whole numbers like [8, 5, 5, 5], got {levels!r}") from None
    if not out or min(out) < 2:
        raise ValueError(f"levels must be whole numbers ≥ 2, got {levels!r}")
    return out


class LucidFSQ(LucidAdapter):
    """FSQ (Mentzer et al. 2024, Finite Scalar Quantization: VQ-VAE Made Simple, ICLR).

    Mapping: ``levels`` default to the paper's Table 1 choice for C (C = 1024 → [8, 5, 5, 5],
    1000 codes), else :func:`fsq_levels`; ``num_codes`` becomes their product. Upstream adds a
    linear projection D → len(levels) and back (with bias) whenever D ≠ len(levels): here
    64 → 4 → 64. Upstream defaults kept: tanh bounding, no rotation, no noise dropout,
    quantization forced to float32. No loss term (FSQ has none) and no codebook to k-means
    initialise (the implicit grid is fixed; the projections learn).
    """

    def __init__(self, num_codes: int = 1024, dim: int = 64, levels: Any = None) -> None:
        chosen = parse_levels(levels) if levels is not None else fsq_levels(num_codes)
        super().__init__(math.prod(chosen), dim)
        self.levels = chosen
        self.inner = vqp.FSQ(levels=chosen, dim=dim)

    @property
    def codebook(self) -> Tensor:
        return self.inner.project_out(self.inner.implicit_codebook)

    def quantize(self, z: Tensor) -> QuantizerOutput:
        quantized, indices = self.inner(as_sequence(z))
        return hard_output(z, quantized, indices, None)


class LucidLFQ(LucidAdapter):
    """LFQ (Yu et al. 2024, Language Model Beats Diffusion — Tokenizer is Key, MAGVIT-v2, ICLR).

    Mapping: log2(C) bits (C must be a power of two: 1024 → 10 bits), upstream's linear
    projection D → bits and back (64 → 10 → 64); codes are {-1, 1}^bits. Upstream defaults
    that shape the method and are kept: ``entropy_loss_weight`` 0.1 (per-sample entropy minus
    ``diversity_gamma`` 1.0 × batch codebook entropy, at inverse temperature 100),
    ``commitment_loss_weight`` 0 (no commitment loss unless set). Codes are fixed; nothing to
    k-means initialise.
    """

    def __init__(self, num_codes: int = 1024, dim: int = 64, entropy_loss_weight: float = 0.1,
                 diversity_gamma: float = 1.0, commitment_loss_weight: float = 0.0) -> None:
        bits = log2_exact(num_codes, "LFQ")
        super().__init__(num_codes, dim)
        self.bits = bits
        self.inner = vqp.LFQ(dim=dim, codebook_size=num_codes, entropy_loss_weight=entropy_loss_weight,
                             diversity_gamma=diversity_gamma, commitment_loss_weight=commitment_loss_weight)

    @property
    def codebook(self) -> Tensor:
        return self.inner.project_out(self.inner.codebook)

    def quantize(self, z: Tensor) -> QuantizerOutput:
        quantized, indices, aux_loss = self.inner(as_sequence(z))
        return hard_output(z, quantized, indices, aux_loss, aux=torch.as_tensor(aux_loss))


class LucidSimVQ(LucidAdapter):
    """SimVQ (Zhu et al. 2024, Addressing Representation Collapse in Vector Quantized Models
    with One Linear Layer).

    Mapping: C codes of dimension D directly, codebook = W · (frozen Gaussian codes, N(0, 1/D)).
    Upstream defaults that change the method, kept: the **rotation trick** (Fifty et al.
    2024) instead of the straight-through estimator, and the loss
    ``commitment_weight`` × (‖sg(z) − q‖² + 0.25 ‖z − sg(q)‖²). The frozen basis is not
    k-means initialised (that would defeat the method); only W learns.
    """

    def __init__(self, num_codes: int = 1024, dim: int = 64, rotation_trick: bool = True,
                 commitment_weight: float = 1.0, input_to_quantize_commit_loss_weight: float = 0.25) -> None:
        super().__init__(num_codes, dim)
        self.inner = vqp.SimVQ(dim=dim, codebook_size=num_codes, rotation_trick=rotation_trick,
                               commitment_weight=commitment_weight,
                               input_to_quantize_commit_loss_weight=input_to_quantize_commit_loss_weight)

    @property
    def codebook(self) -> Tensor:
        return self.inner.codebook

    def quantize(self, z: Tensor) -> QuantizerOutput:
        quantized, indices, loss = self.inner(as_sequence(z))
        return hard_output(z, quantized, indices, loss, commitment=loss)


def _ema_options(decay: float, commitment_weight: float, rotation_trick: bool,
                 threshold_ema_dead_code: int) -> dict[str, Any]:
    return dict(decay=decay, commitment_weight=commitment_weight, rotation_trick=rotation_trick,
                threshold_ema_dead_code=threshold_ema_dead_code, kmeans_init=False)


class LucidVQEMA(LucidAdapter):
    """EMA VQ-VAE (van den Oord et al. 2017, App. A.1; Razavi et al. 2019) as upstream's ``VectorQuantize``.

    Mapping: C codes of dimension D, no projection. Upstream defaults that change the method,
    kept: the codebook is **not** trained by gradients but by EMA of assigned encoder outputs
    with ``decay`` 0.8 (the papers use 0.99), the **rotation trick** (Fifty et al. 2024) instead
    of straight-through, ``commitment_weight`` 1.0 (VQ-VAE's β is 0.25), no dead-code expiry.
    What the adapter sets: the runner's k-means initialisation is written into the codebook
    and its EMA state (``kmeans_init``, upstream's default is random), as for every vqbench VQ.
    """

    from_indices = "get_output_from_indices"

    def __init__(self, num_codes: int = 1024, dim: int = 64, decay: float = 0.8, commitment_weight: float = 1.0,
                 rotation_trick: bool = True, threshold_ema_dead_code: int = 0, kmeans_init: bool = True) -> None:
        super().__init__(num_codes, dim)
        self.kmeans_init = kmeans_init
        self.inner = vqp.VectorQuantize(dim=dim, codebook_size=num_codes,
                                        **_ema_options(decay, commitment_weight, rotation_trick,
                                                       threshold_ema_dead_code))

    @property
    def codebook(self) -> Tensor:
        return self.inner.codebook

    @torch.no_grad()
    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        if self.kmeans_init:
            write_ema_codebook(self.inner, Fq.kmeans(samples.float(), self.num_codes, generator=generator))

    def quantize(self, z: Tensor) -> QuantizerOutput:
        quantized, indices, loss = self.inner(as_sequence(z))
        return hard_output(z, quantized, indices, loss, commitment=loss)


class LucidResidualVQ(LucidAdapter):
    """Residual VQ (Zeghidour et al. 2021, SoundStream, Algorithm 1) as upstream's ``ResidualVQ``.

    Mapping at equal bits: ``num_quantizers`` Q stages of K = C^(1/Q) codes each (C = 1024,
    Q = 2 → two codebooks of 32), so one code of ours is the tuple (i_1, ..., i_Q), index
    Σ i_q K^(Q−q), and the (C, D) codebook holds every sum of one code per stage. C must be
    a perfect Q-th power. Each stage is upstream's ``VectorQuantize`` with its defaults kept
    (EMA codebooks with decay 0.8, rotation trick, commitment weight 1.0, see
    :class:`LucidVQEMA`). The adapter sets k-means initialisation stage by stage, on the
    residuals the earlier stages leave.
    """

    def __init__(self, num_codes: int = 1024, dim: int = 64, num_quantizers: int = 2, decay: float = 0.8,
                 commitment_weight: float = 1.0, rotation_trick: bool = True, threshold_ema_dead_code: int = 0,
                 kmeans_init: bool = True) -> None:
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be ≥ 1, got {num_quantizers}")
        per_stage = round(num_codes ** (1 / num_quantizers))
        if per_stage < 2 or per_stage ** num_quantizers != num_codes:
            raise ValueError(f"residual VQ needs num_codes = K^num_quantizers with K ≥ 2 codes per stage; "
                             f"{num_codes} is not a perfect power {num_quantizers} (try num_codes=1024, num_quantizers=2)")
        super().__init__(num_codes, dim)
        self.num_quantizers, self.per_stage, self.kmeans_init = num_quantizers, per_stage, kmeans_init
        self.inner = vqp.ResidualVQ(dim=dim, num_quantizers=num_quantizers, codebook_size=per_stage,
                                    **_ema_options(decay, commitment_weight, rotation_trick,
                                                   threshold_ema_dead_code))
        weights = per_stage ** torch.arange(num_quantizers - 1, -1, -1)
        self.register_buffer("stage_weights", weights, persistent=False)

    from_indices = "get_output_from_indices"

    def upstream_indices(self, indices: Tensor) -> Tensor:
        return ((indices[:, None] // self.stage_weights) % self.per_stage)[None]  # composite → (1, N, Q)

    @property
    def codebook(self) -> Tensor:
        stages: Sequence[Tensor] = [layer.codebook for layer in self.inner.layers]
        book = stages[0]
        for stage in stages[1:]:  # first stage most significant, as in the composite index
            book = (book[:, None, :] + stage[None, :, :]).reshape(-1, self.dim)
        return self.inner.project_out(book)

    @torch.no_grad()
    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        if not self.kmeans_init:
            return
        residual = samples.float()
        for layer in self.inner.layers:
            centroids = Fq.kmeans(residual, self.per_stage, generator=generator)
            write_ema_codebook(layer, centroids)
            residual = residual - centroids[torch.cdist(residual, centroids).argmin(-1)]

    def quantize(self, z: Tensor) -> QuantizerOutput:
        quantized, indices, losses = self.inner(as_sequence(z))
        composite = (indices.reshape(-1, self.num_quantizers).long() * self.stage_weights).sum(-1)
        loss = torch.as_tensor(losses).float().sum()
        return hard_output(z, quantized, composite, loss, commitment=loss)
