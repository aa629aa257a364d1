"""Residual quantization of K stages of any quantizer (Zeghidour et al. 2021, "SoundStream:
An End-to-End Neural Audio Codec", Algorithm 1; Lee et al. 2022, "Autoregressive Image
Generation using Residual Quantization", RQ-VAE, §3.1).

Stage k quantizes what the stages before it left (RQ-VAE eq. 4–5):

    r_1 = z,   q_k = Q_k(r_k),   r_{k+1} = r_k − sg(q_k),   ẑ = Σ_k q_k,

one code per stage, (i_1, …, i_K). Each stage is a complete quantizer with its own loss, so a
VQ stage's commitment term is ‖r_k − sg(c_k)‖² = ‖z − sg(ẑ^{(k)})‖², RQ-VAE's commitment loss
on the partial sum ẑ^{(k)} (eq. 7, summed over k), and its codebook learns the residuals'
distribution. The residuals are detached (RQ-VAE; vector-quantize-pytorch) so a stage's loss
moves the encoder, not the earlier stages. The task gradient then reaches z through every
stage's own estimator; ẑ's backward is scaled by 1/K (its value untouched), so ∂ẑ/∂z is the
mean of the stage Jacobians: I for straight-through stages, RQ-VAE's single straight-through
(eq. 6), where Σ_k q_k alone (vector-quantize-pytorch) gives K·I; for l2 stages the mean of
the normalisations' Jacobians. Stages whose parameters learn through their output (FSQ/LFQ
projections, IBQ's codebook) keep that gradient, scaled by 1/K (AdamW is insensitive to it).

Codes and sizes: ``num_codes`` C is the size of the composite code, at equal bits with the
other methods: K stages of C^{1/K} codes each (C = 1024, K = 2 → 2 × 32; C must be a perfect
K-th power). A stage may round its size (FSQ's levels): then C = ∏ stage sizes. The composite
index is Σ_k i_k ∏_{l>k} C_l (stage 1 most significant) and the (C, D) ``codebook`` holds
every sum of one code per stage, so ``codebook[index]`` is ẑ in eval, as the contract needs;
:meth:`split_indices` gives the per-stage codes (…, K), :meth:`join_indices` reverses it,
and :meth:`embed` turns composite codes (N,) / (B, H, W), the contract's, or per-stage codes
(N, K) / (B, H, W, K) back into ẑ, the sum of each stage's own ``dequantize``.

The stages: ``stage`` is a Quantizer class, a factory ``(num_codes=, dim=, **stage_options)
→ Quantizer`` or a ``"module:Class"`` path. Registered *names* (``vqvae-l2``) live in vqbench's
registry, which this package may not import: ``vqbench.composite`` subclasses this class and
turns a name into a factory (``rvq`` in registry.yaml is built that way).

Hooks fan out to the stages: k-means initialisation stage by stage on the residuals the
earlier (initialised) stages leave, ``set_progress``, ``after_optimizer_step``,
``param_groups`` (each stage's own groups and options), ``check_device``; ``cuda_graph_safe``
when every stage is. Terms are the stages' own, prefixed ``stageK.``.
"""
from __future__ import annotations

import importlib
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .base import Quantizer, QuantizerOutput

StageFactory = Callable[..., Quantizer]


def load_stage(stage: str | StageFactory) -> StageFactory:
    """A class or factory as given; a ``"module:Class"`` string imported."""
    if callable(stage):
        return stage
    if not isinstance(stage, str) or ":" not in stage:
        raise ValueError(f"stage must be a Quantizer class, a factory or 'module:Class', got {stage!r} "
                         "(registered names such as 'vqvae-l2' are resolved by vqbench's build_quantizer('rvq', ...))")
    module_name, _, attr = stage.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"stage {stage!r} cannot be imported: {exc}") from exc


class ResidualQuantizer(Quantizer):
    """Residual quantization (SoundStream; RQ-VAE): K stages of any quantizer, each on the residual of the last."""

    def __init__(self, num_codes: int = 1024, dim: int = 64, depth: int = 2,
                 stage: str | StageFactory = "quantizers.vq:VectorQuantizer",
                 stage_options: dict[str, Any] | None = None) -> None:
        super().__init__(num_codes, dim)
        if isinstance(depth, bool) or int(depth) != depth or depth < 1:
            raise ValueError(f"depth must be a whole number ≥ 1 (the number of residual stages), got {depth!r}")
        depth = int(depth)
        per_stage = round(self.num_codes ** (1 / depth))
        if per_stage < 2 or per_stage**depth != self.num_codes:
            raise ValueError(f"num_codes must be K^depth with K ≥ 2 codes per stage; {self.num_codes} is not a "
                             f"perfect power {depth} (e.g. num_codes={max(2, per_stage) ** depth})")
        if stage_options is not None and not isinstance(stage_options, dict):
            raise ValueError(f"stage_options must be a mapping of the stage's options, got {stage_options!r}")
        make = load_stage(stage)
        self.stages = nn.ModuleList(make(num_codes=per_stage, dim=self.dim, **dict(stage_options or {}))
                                    for _ in range(depth))
        for s in self.stages:
            if not isinstance(s, Quantizer) or s.dim != self.dim:
                raise ValueError(f"stage {stage!r} did not build a Quantizer of dim {self.dim}")
        self.depth = depth
        sizes = [s.num_codes for s in self.stages]
        self.num_codes = math.prod(sizes)
        radix = [math.prod(sizes[k + 1:]) for k in range(depth)]  # stage 1 most significant
        self.register_buffer("radix", torch.tensor(radix, dtype=torch.long), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)

    # --- codes ------------------------------------------------------------------------
    def split_indices(self, indices: Tensor) -> Tensor:
        """Composite indices (…,) → per-stage codes (…, K)."""
        return (indices.unsqueeze(-1) // self.radix) % self.sizes

    def join_indices(self, codes: Tensor) -> Tensor:
        """Per-stage codes (…, K) → composite indices (…,)."""
        return (codes.long() * self.radix).sum(-1)

    def embed(self, indices: Tensor) -> Tensor:
        """Codes → the eval-mode ẑ: composite (N,) → (N, D) and (B, H, W) → (B, D, H, W), as for
        every quantizer, or per-stage (N, K) → (N, D) and (B, H, W, K) → (B, D, H, W)."""
        if indices.dim() in (2, 4):
            if indices.shape[-1] != self.depth or indices.is_floating_point():
                raise ValueError(f"expected per-stage codes (N, {self.depth}) or (B, H, W, {self.depth}) or composite "
                                 f"codes (N,) or (B, H, W), got {indices.dtype} {tuple(indices.shape)}")
            codes = indices.long()
            if codes.numel() and ((codes < 0) | (codes >= self.sizes.to(codes.device))).any():
                raise ValueError(f"per-stage codes must be below the stage sizes {self.sizes.tolist()}")
            indices = self.join_indices(codes)
        return super().embed(indices)

    def dequantize(self, indices: Tensor) -> Tensor:
        """ẑ of composite codes (N,): the sum of every stage's eval z_q, in :meth:`quantize`'s order."""
        codes = self.split_indices(indices)
        return sum(s.dequantize(codes[:, k]) for k, s in enumerate(self.stages))

    @property
    def codebook(self) -> Tensor:
        """Every sum of one code per stage, (C, D), in composite-index order."""
        book = self.stages[0].codebook
        for s in self.stages[1:]:
            book = (book[:, None, :] + s.codebook[None, :, :]).reshape(-1, self.dim)
        return book

    # --- forward ----------------------------------------------------------------------
    def quantize(self, z: Tensor) -> QuantizerOutput:
        residual, z_q, loss = z, 0, 0
        codes, terms = [], {}
        for k, s in enumerate(self.stages, start=1):
            out = s(residual)
            z_q = z_q + out.z_q
            residual = residual - out.z_q.detach()
            loss = loss + out.loss
            codes.append(out.indices)
            terms.update({f"stage{k}.{name}": value for name, value in out.terms.items()})
        if self.depth > 1:  # backward × 1/K, value exact (module docstring)
            z_q = z_q + (z_q - z_q.detach()) * (1 / self.depth - 1)
        return QuantizerOutput(z_q=z_q, loss=loss, terms=terms,
                               indices=self.join_indices(torch.stack(codes, -1)), probs=None)

    # --- hooks --------------------------------------------------------------------------
    @torch.no_grad()
    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        residual = samples
        for s in self.stages:
            s.init_codebook(residual, generator=generator)
            was_training = s.training
            s.eval()  # the stage's deterministic code, and no training-time updates (EMA)
            residual = residual - s(residual).z_q.to(residual.dtype)
            s.train(was_training)

    def set_progress(self, fraction: float) -> None:
        for s in self.stages:
            s.set_progress(fraction)

    def param_groups(self) -> list[dict]:
        return [group for s in self.stages for group in s.param_groups()]

    def after_optimizer_step(self) -> None:
        for s in self.stages:
            s.after_optimizer_step()

    @property
    def cuda_graph_safe(self) -> bool:
        return all(s.cuda_graph_safe for s in self.stages)

    def check_device(self, device: torch.device) -> None:
        for s in self.stages:
            s.check_device(device)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, num_codes={self.num_codes} ({' x '.join(map(str, self.sizes.tolist()))}), dim={self.dim}"
