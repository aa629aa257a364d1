"""FSQ: Finite Scalar Quantization (Mentzer et al. 2024, "Finite Scalar Quantization: VQ-VAE
Made Simple", ICLR; arXiv 2309.15505).

A projection D → d (d = len(levels)) when D ≠ d, then each of the d channels is bounded and
rounded to one of L_i levels (§3, the bound of App. A.1):

    f(z)_i = tanh(z_i + s_i) · h_i − o_i,   h_i = (L_i − 1)(1 − ε)/2,
    o_i = ½ if L_i is even else 0,          s_i = atanh(o_i / h_i),
    ẑ_i = round_ste(f(z)_i) / ⌊L_i/2⌋,

so ẑ lies on the grid {−⌊L_i/2⌋ … ⌈L_i/2⌉ − 1}/⌊L_i/2⌋ of ∏ L_i points, the *implicit
codebook*, and the projection d → D maps it back (the paper's setup: a dense layer into and
out of the quantizer). round_ste is the straight-through estimator (§3, "STE"). The code
index is the mixed-radix number Σ_i (ẑ_i⌊L_i/2⌋ + ⌊L_i/2⌋) ∏_{j<i} L_j (App. A.1's basis).
No codebook parameters and no auxiliary loss: FSQ's loss is the task loss alone.

Levels: ``levels`` if given, else the paper's Table 1 choice for ``num_codes`` (2^8 → [8,6,5],
2^10 → [8,5,5,5], 2^12 → [7,5,5,5,5], 2^14 → [8,8,8,6,5], 2^16 → [8,8,8,5,5,5]); off that
table (the paper is silent) d = round(log_5 C) near-equal levels ≥ 3, the largest product
≤ C. ``num_codes`` then becomes ∏ L_i (1024 → 1000). Levels of 2 are refused: with o = ½ and
h < ½ the shift atanh(o/h) does not exist (upstream needs a "symmetric" variant for them).

The shift: App. A.1's listing writes tan(o/h); we use atanh, which makes f(0) = 0 exactly (the
listing's intent; the two differ by < 3·10⁻⁴ for L ≤ 8), as vector-quantize-pytorch does.
Its bound uses (1 + ε) where the paper writes (1 − ε): that is ours with ``eps = −1e-3``.

Precision: projection, bound, rounding and index run in fp32 with autocast off. In bf16 the
mixed-radix sum is not exact above 256 and the bound's rounding shifts, which left half of
the codes unused in an upstream release; the test suite checks every code is reachable
under bf16 autocast and that bf16 and fp32 runs give the same codes.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .base import Quantizer, QuantizerOutput

# Mentzer et al. 2024, Table 1: recommended levels for a target codebook size.
PAPER_LEVELS = {2**8: [8, 6, 5], 2**10: [8, 5, 5, 5], 2**12: [7, 5, 5, 5, 5],
                2**14: [8, 8, 8, 6, 5], 2**16: [8, 8, 8, 5, 5, 5]}


def default_levels(num_codes: int) -> list[int]:
    """The paper's levels for C, else near-equal levels ≥ 3 with the largest product ≤ C."""
    if num_codes in PAPER_LEVELS:
        return list(PAPER_LEVELS[num_codes])
    if num_codes < 3:
        raise ValueError(f"FSQ needs num_codes ≥ 3 (levels are ≥ 3), got {num_codes}")
    d = max(1, round(math.log(num_codes) / math.log(5)))
    levels = [max(3, int(num_codes ** (1 / d) + 1e-9))] * d
    while math.prod(levels) > num_codes:  # only when C < 3^d
        levels.pop()
    grew = True
    while grew:
        grew = False
        for i in range(len(levels)):
            if math.prod(levels) // levels[i] * (levels[i] + 1) <= num_codes:
                levels[i] += 1
                grew = True
    return levels


def parse_levels(levels: Any) -> list[int]:
    """[8, 5, 5, 5], (8, 5, 5, 5) or "8,5,5,5" / "8x5x5x5" → a list of whole numbers ≥ 3."""
    if isinstance(levels, str):
        levels = [part for part in levels.replace("x", ",").split(",") if part.strip()]
    try:
        out = [int(v) for v in levels]
        if any(int(v) != float(v) for v in levels):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"levels must be a list of whole numbers like [8, 5, 5, 5], got {levels!r}") from None
    if not out or min(out) < 3:
        raise ValueError(f"levels must be whole numbers ≥ 3 (a level of 2 has no centred grid), got {out}")
    return out


class FSQ(Quantizer):
    """FSQ (Mentzer et al. 2024, ICLR): bounded per-channel rounding, straight-through, no codebook."""

    def __init__(self, num_codes: int = 1024, dim: int = 64, levels: Sequence[int] | None = None,
                 eps: float = 1e-3) -> None:
        super().__init__(num_codes, dim)
        if levels is None:
            chosen = default_levels(self.num_codes)
        else:
            chosen = parse_levels(levels)
            nominal = math.prod(PAPER_LEVELS.get(self.num_codes, [self.num_codes]))
            if math.prod(chosen) not in (self.num_codes, nominal):
                hint = (f" (the paper's levels for {self.num_codes} are {PAPER_LEVELS[self.num_codes]}, "
                        f"{nominal} codes)" if self.num_codes in PAPER_LEVELS else "")
                raise ValueError(f"levels {chosen} give {math.prod(chosen)} codes but num_codes is "
                                 f"{self.num_codes}{hint}; set num_codes={math.prod(chosen)} or change levels")
        if not (isinstance(eps, (int, float)) and abs(eps) < 1 / (max(chosen) - 1)):
            # |ε| < 1/(L−1): every level stays reachable and none rounds past the grid.
            raise ValueError(f"eps must satisfy |eps| < 1/(max level − 1) = {1 / (max(chosen) - 1):.3g}, got {eps!r}")
        self.levels, self.eps = chosen, float(eps)
        self.num_codes = math.prod(chosen)
        d = len(chosen)
        lv = torch.tensor(chosen, dtype=torch.float64)
        half_l = (lv - 1) * (1 - self.eps) / 2
        offset = torch.where(lv.remainder(2) == 0, 0.5, 0.0)
        basis = torch.cumprod(torch.tensor([1] + chosen[:-1], dtype=torch.long), 0)
        # Constants of the bound, derived from `levels`: not saved in checkpoints.
        self.register_buffer("half_l", half_l.float(), persistent=False)
        self.register_buffer("offset", offset.float(), persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half_l).float(), persistent=False)
        self.register_buffer("half_width", (lv // 2).float(), persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        grid = (torch.arange(self.num_codes)[:, None] // basis) % torch.tensor(chosen)
        self.register_buffer("implicit_codebook", (grid - lv.long() // 2).float() / (lv // 2).float(),
                             persistent=False)
        self.project_in = nn.Linear(self.dim, d) if self.dim != d else nn.Identity()
        self.project_out = nn.Linear(d, self.dim) if self.dim != d else nn.Identity()

    @property
    def codebook(self) -> Tensor:
        """The implicit grid (C, d) mapped to latent space by ``project_out``: (C, D)."""
        with torch.autocast(self.implicit_codebook.device.type, enabled=False):
            return self.project_out(self.implicit_codebook)

    @property
    def cuda_graph_safe(self) -> bool:
        return True  # elementwise arithmetic and two small matmuls; no state, no host sync

    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        """Nothing to initialise: the grid is fixed (the projections learn from the task)."""

    def bound(self, z: Tensor) -> Tensor:
        """f(z) of App. A.1, in level units: values in (−⌊L/2⌋ − ½, ⌈L/2⌉ − ½) per channel."""
        return torch.tanh(z + self.shift) * self.half_l - self.offset

    def codes_to_indices(self, levels_int: Tensor) -> Tensor:
        """Integer grid points (…, d) in [−⌊L/2⌋, ⌈L/2⌉ − 1] → mixed-radix indices (…,), long."""
        return ((levels_int.long() + self.half_width.long()) * self.basis).sum(-1)

    def dequantize(self, indices: Tensor) -> Tensor:
        """The grid points of ``indices`` through ``project_out``, in fp32, as :meth:`quantize`'s z_q."""
        with torch.autocast(indices.device.type, enabled=False):
            return self.project_out(self.implicit_codebook[indices])

    def quantize(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):  # fp32: see the module docstring
            bounded = self.bound(self.project_in(z.float()))
            rounded = bounded.round()
            codes = (bounded + (rounded - bounded).detach()) / self.half_width  # round_ste
            z_q = self.project_out(codes)
        indices = self.codes_to_indices(rounded.detach())
        return QuantizerOutput(z_q=z_q.to(z.dtype), loss=z.new_zeros((), dtype=torch.float32), terms={},
                               indices=indices, probs=None)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, num_codes={self.num_codes}, dim={self.dim}"
