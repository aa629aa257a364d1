"""Shared plumbing for the vector-quantize-pytorch adapters (``pip install 'vqbench[lucid]'``).

Every adapter hands the upstream module our flat (N, D) latents as one sequence (1, N, D),
returns hard codes (``probs=None``: test perplexity then comes from the code histogram, the
same rule the evaluation applies to every method without a posterior) and exposes the effective
(C, D) codebook in latent space, projections included.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from quantizers.base import Quantizer, QuantizerOutput

from ..registry import PluginUnavailable

try:
    import vector_quantize_pytorch as vqp
except ImportError as exc:  # an optional extra: the lucid-* names are absent, nothing breaks
    raise PluginUnavailable(
        f"needs vector-quantize-pytorch ({exc.name or exc}): pip install 'vqbench[lucid]'") from exc

UPSTREAM_VERSION = getattr(vqp, "__version__", None)
if UPSTREAM_VERSION is None:
    from importlib import metadata

    UPSTREAM_VERSION = metadata.version("vector-quantize-pytorch")


def as_sequence(z: Tensor) -> Tensor:
    """(N, D) → (1, N, D): upstream modules take (batch, sequence, dim)."""
    return z.unsqueeze(0)


def hard_output(z: Tensor, quantized: Tensor, indices: Tensor, loss: Tensor | float | None,
                **terms: Tensor) -> QuantizerOutput:
    """Our output from upstream (1, N, D) codes and (1, N) indices; loss a finite scalar."""
    z_q = quantized.reshape(z.shape).to(z.dtype)
    loss = torch.zeros((), device=z.device) if loss is None else torch.as_tensor(loss, device=z.device)
    loss = loss.float().sum()
    return QuantizerOutput(z_q=z_q, loss=loss, indices=indices.reshape(-1).long(), probs=None,
                           terms={k: v.detach().float() for k, v in terms.items()})


def log2_exact(num_codes: int, what: str) -> int:
    bits = int(round(math.log2(num_codes))) if num_codes > 1 else 0
    if bits < 1 or 2 ** bits != num_codes:
        raise ValueError(f"{what} needs num_codes to be a power of two ≥ 2, got {num_codes}")
    return bits


class LucidAdapter(Quantizer):
    """Base: the wrapped module lives in ``self.inner``; subclasses set it and ``quantize``."""

    upstream_version: str = UPSTREAM_VERSION
    from_indices = "indices_to_codes"  # the upstream module's own codes → latents method

    def upstream_indices(self, indices: Tensor) -> Tensor:
        """Our flat codes (N,) as the upstream module's indices, one sequence (1, N)."""
        return indices[None]

    def dequantize(self, indices: Tensor) -> Tensor:
        """Upstream's own way from codes to latents (projections included), so that ``embed``
        is what its forward gives in eval."""
        return getattr(self.inner, self.from_indices)(self.upstream_indices(indices)).reshape(-1, self.dim)

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, dim={self.dim}, vector-quantize-pytorch {self.upstream_version}"


@torch.no_grad()
def write_ema_codebook(vq: "vqp.VectorQuantize", centroids: Tensor) -> None:
    """Put k-means centroids (K, D) into an EMA ``VectorQuantize``'s codebook and EMA state.

    ``embed_avg / cluster_size`` is the codebook upstream recomputes after each EMA step, so
    both are set (cluster size 1 per code, as upstream's own non-k-means initialisation).
    """
    book = vq._codebook
    c = centroids.to(book.embed.device, book.embed.dtype)[None]
    book.embed.data.copy_(c)
    book.embed_avg.data.copy_(c)
    book.cluster_size.data.fill_(1.0)
    book.initted.data.fill_(True)
