"""Speed, never new math: GM-VQ's posterior and Gumbel straight-through sample (paper eqs.
16–17 and §3.3.2) by faster backends, each tested equal to the reference path written out in
:mod:`quantizers.gmvq` (``tests/quantizers/test_kernels.py``).

- ``fused`` (:mod:`.fused`): one autograd Function in PyTorch, far fewer N×C passes and
  stored tensors; the same noise draws as the reference path, so the same samples.
- ``triton`` (:mod:`.triton`, CUDA, experimental): kernels that never store the N×C logits,
  noise or soft sample; their Philox noise gives other samples than the PyTorch paths' for
  the same seed. Triton is imported on first use.

Precision levers of both (``logit_matmul``, ``bf16_backward``) are in :mod:`.precision`.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from . import fused

BACKENDS = ("fused", "triton")
# A method's ``backend`` option: its own reference path, one of these, or "auto" (the method says).
OPTIONS = ("auto", "reference", *BACKENDS)
# tl.arange needs powers of two; the tiles fit an SM up to L = 64 (benchmarks/triton_fit.py).
TRITON_DIMS = (8, 16, 32, 64)


def check_options(backend: str, dim: int, *, logit_matmul: str | None, bf16_backward: bool | None) -> None:
    """One-line ValueError for a bad ``backend`` option or a precision option it cannot honour:
    ``logit_matmul`` and ``bf16_backward`` (None: the backend's default) tune the fast
    backends only, so the reference path refuses them instead of ignoring them."""
    if backend not in OPTIONS:
        raise ValueError(f"backend must be one of {', '.join(OPTIONS)}, got {backend!r}")
    if logit_matmul not in (None, "fp32", "3xtf32"):
        raise ValueError(f"logit_matmul must be fp32 or 3xtf32 (or null: fp32), got {logit_matmul!r}")
    if bf16_backward is not None and not isinstance(bf16_backward, bool):
        raise ValueError(f"bf16_backward must be true or false (or null: true), got {bf16_backward!r}")
    for name, value in (("logit_matmul", logit_matmul), ("bf16_backward", bf16_backward)):
        if backend == "reference" and value is not None:
            raise ValueError(f"{name} applies to the fast backends (fused, triton) only, not to "
                             f"backend='reference'; leave {name} unset")
    if backend == "triton" and dim not in TRITON_DIMS:
        raise ValueError(f"backend='triton' needs dim in {', '.join(map(str, TRITON_DIMS))}, got {dim}; "
                         "use backend='fused'")


def check_device(backend: str, device: torch.device) -> None:
    """One-line ValueError for a backend that cannot run on ``device``."""
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend='triton' needs a CUDA device, but this run is on {device.type}; use "
                         "backend='fused' (or TRITON_INTERPRET=1 to run the kernels in Triton's interpreter)")


def posterior_sample(z: Tensor, weights: Tensor, codebook: Tensor, tau: Tensor, sample: bool, *,
                     backend: str = "fused", grad_dtype: torch.dtype | None = None, split_tf32: bool = False
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(π (N, C), z_c = μ_j (N, L) with straight-through gradients, j (N,), mean posterior
    entropy) for ẑ (N, L), precisions ŵ (N, L), codebook M (C, L), by ``backend``; see
    :func:`.fused.posterior_sample` for the options."""
    if z.dtype == torch.float64:
        raise ValueError(f"backend={backend!r} computes in float32; float64 input needs backend='reference'")
    if backend == "fused":
        impl = fused.posterior_sample
    elif backend == "triton":
        if not z.is_cuda:  # off CUDA only under the interpreter; else one line, not Triton's traceback
            check_device(backend, z.device)
        from .triton import posterior_sample as impl  # Triton only when this backend is used
    else:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return impl(z, weights, codebook, tau, sample, grad_dtype=grad_dtype, split_tf32=split_tf32)
