"""GM-VQ's posterior and Gumbel straight-through sample as one autograd Function
(``GMVQ(backend="fused")``, the default for float32 and lower precisions).

The reference path in :mod:`quantizers.gmvq` writes the math as the paper does (eqs. 12, 16,
17 and §3.3.2) and lets autograd store every N×C intermediate: two distance matmuls,
clamp, scale, log_softmax, exp, the Gumbel noise chain, the perturbed logits, the tempered
softmax y, an int64 one-hot and ``hard + y − sg(y)``. This Function computes the same
function touching each N×C tensor as few times as it can:

- One matmul for the logits. With a = [ŵ⊙ẑ, ŵ] (N, 2L) and b = [μ, −½μ²] (C, 2L),
  a·bᵀ = −½ Σ_i ŵ_i (ẑ_i − μ_{c,i})² + ½ Σ_i ŵ_i ẑ_i². The last term is constant per row,
  and log_softmax is invariant to per-row shifts, so log π is exactly eq. 17's (and
  without the plain path's cancellation between ½Σŵẑ² and the cross term).
- In place: the Gumbel noise becomes the perturbed logits and then y, so the forward holds
  at most three N×C tensors, and saves two (π, which is an output anyway, and y).
- The forward value of c_q = onehot(j) + y − sg(y) is the one-hot, so c_qᵀM is the gather
  μ_j; its backward needs ∂L/∂c_q = (∂L/∂z_c) Mᵀ, formed only in backward.
- Backward reuses one N×C buffer for ∂/∂y → ∂/∂(log π + g) → ∂/∂logits (``addcmul_``
  instead of temporaries) and two matmuls for ∂a, ∂b.
- Distances, softmax and the sampling run in fp32 even under autocast. Under bf16
  autocast two of the backward's three matmuls (∂L/∂y and ∂b) may take bf16 operands
  (``grad_dtype``, GM-VQ's ``bf16_backward``, on by default here); ``split`` computes the
  logits and ∂a as three TF32-exact products (``logit_matmul="3xtf32"``). Both are
  :mod:`quantizers.kernels.precision`.

The noise is drawn exactly as :func:`functional.gumbel_noise` draws it (one ``torch.rand``
of N×C float32), so with the same seed both paths sample the same codes;
``tests/quantizers/test_kernels.py`` checks values, indices and gradients against the reference path.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..functional import gumbel_noise
from .precision import logit_input_grads, matmul_3xtf32


class GMVQPosteriorSample(torch.autograd.Function):
    """(a, b, codebook, tau, sample, grad_dtype, split) → (π, z_c, j, mean posterior entropy);
    see module doc. ``grad_dtype``: operand dtype of ∂L/∂y and ∂b (None: fp32); ``split``:
    the logits and ∂a by :func:`precision.matmul_3xtf32`."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, codebook: Tensor, tau: Tensor, sample: bool,
                grad_dtype: torch.dtype | None = None, split: bool = False):
        with torch.autocast(a.device.type, enabled=False):
            a32, b32 = a.float(), b.float()
            logits = matmul_3xtf32(a32, b32.t()) if split else a32 @ b32.t()
            log_pi = torch.log_softmax(logits, dim=-1)
            del logits
            probs = log_pi.exp()
            # −Σ π log π averaged over vectors (detached, for logging only).
            entropy = -torch.dot(probs.view(-1), log_pi.view(-1)) / probs.shape[0]  # no N×C temporary
            if sample:
                y = gumbel_noise(log_pi).add_(log_pi)
                del log_pi
                indices = y.argmax(dim=-1)  # τ never changes the argmax
                y.div_(tau)
                y.sub_(y.amax(dim=-1, keepdim=True)).exp_()
                y.div_(y.sum(dim=-1, keepdim=True))  # y = softmax_τ(log π + g)
            else:
                indices = log_pi.argmax(dim=-1)
                y = None
                del log_pi
            centre = codebook.float().index_select(0, indices)
        ctx.sample, ctx.grad_dtype, ctx.split = sample, grad_dtype, split
        ctx.mark_non_differentiable(indices, entropy)
        ctx.save_for_backward(a, b, codebook, tau, indices, probs, y)
        return probs, centre, indices, entropy

    @staticmethod
    def backward(ctx, g_probs: Tensor | None, g_centre: Tensor | None, _g_idx, _g_ent):
        a, b, codebook, tau, indices, probs, y = ctx.saved_tensors
        g_a = g_b = g_book = None
        mm = ctx.grad_dtype or torch.float32  # operands; products are used in fp32
        with torch.autocast(a.device.type, enabled=False):
            g_centre = None if g_centre is None else g_centre.float()
            g = None
            if ctx.sample and g_centre is not None:
                # Straight-through: ∂L/∂y = (∂L/∂z_c) Mᵀ; through softmax_τ:
                # ∂L/∂(log π + g) = y ⊙ (∂L/∂y − ⟨y, ∂L/∂y⟩) / τ.
                g = ((g_centre / tau).to(mm) @ codebook.to(mm).t()).float()  # 1/τ on N×L, not N×C
                g.mul_(y)
                g.addcmul_(y, g.sum(dim=-1, keepdim=True), value=-1.0)
            if g_probs is not None:
                if g is None:
                    g = g_probs.float() * probs
                else:
                    g.addcmul_(g_probs.float(), probs)  # ∂π/∂log π = π
            if g is not None:
                # Through log_softmax: ∂L/∂logits = g − π Σ_c g.
                g.addcmul_(probs, g.sum(dim=-1, keepdim=True), value=-1.0)
                g_a, g_b = logit_input_grads(g, a, b, ctx.needs_input_grad[:2], ctx.split, ctx.grad_dtype)
            if ctx.needs_input_grad[2] and g_centre is not None:
                g_book = codebook_grad(indices, g_centre, codebook)
        return g_a, g_b, g_book, None, None, None, None


def codebook_grad(indices: Tensor, g_centre: Tensor, codebook: Tensor) -> Tensor:
    """∂L/∂M of z_c = μ_j: the forward value of c_q is one-hot, so ∂L/∂M = onehotᵀ ∂L/∂z_c."""
    g_book = torch.zeros(codebook.shape, dtype=torch.float32, device=codebook.device)
    g_book.index_add_(0, indices, g_centre.float())
    return g_book.to(codebook.dtype)


def posterior_sample(
    z: Tensor, weights: Tensor, codebook: Tensor, tau: Tensor, sample: bool,
    grad_dtype: torch.dtype | None = None, split_tf32: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """π (N, C), z_c = μ_j (N, L) with Gumbel straight-through gradients, j (N,), and the
    mean posterior entropy, for ẑ (N, L), precisions ŵ (N, L), codebook M (C, L).

    ``sample=False`` (eval): j = argmax π and z_c = μ_j with the gather's gradient only.
    ``grad_dtype=torch.bfloat16``: the backward's ∂L/∂y and ∂b matmuls take bf16 operands
    (fp32 accumulation); ∂a and the forward (logits, π, the sample) stay fp32 either way.
    ``split_tf32=True``: the logits and ∂a as three TF32-exact products
    (:func:`precision.matmul_3xtf32`), fp32-accurate on TF32 tensor cores.
    """
    a, b, codebook, tau = logit_operands(z, weights, codebook, tau)
    return GMVQPosteriorSample.apply(a, b, codebook, tau, sample, grad_dtype, split_tf32)


def logit_operands(z: Tensor, weights: Tensor, codebook: Tensor, tau: Tensor | float
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(a, b, M, τ) in fp32 with a = [ŵ⊙ẑ, ŵ], b = [μ, −½μ²] (logits a·bᵀ) and τ a copy
    (``set_progress`` writes the buffer in place); shared with :mod:`quantizers.kernels.triton`."""
    z, weights, codebook = z.float(), weights.float(), codebook.float()
    a = torch.cat([weights * z, weights], dim=-1)
    b = torch.cat([codebook, -0.5 * codebook.pow(2)], dim=-1)
    return a, b, codebook, torch.as_tensor(tau, dtype=torch.float32, device=z.device).clone()
