"""Hypothesis strategies shared by the property suites (ranges from shared/MATH.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import hypothesis.extra.numpy as hnp
import numpy as np
import torch
from hypothesis import strategies as st

from quantizers.gmvq import GMVQ

F64 = torch.float64
TOL = 1e-12


def finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return finite(math.log(lo), math.log(hi)).map(math.exp)


def array(shape: tuple[int, ...], lo: float, hi: float) -> st.SearchStrategy[torch.Tensor]:
    return hnp.arrays(np.float64, shape, elements=finite(lo, hi)).map(torch.from_numpy)


def inverse_softplus(w: torch.Tensor) -> torch.Tensor:
    """softplus⁻¹(w) = w + log(−expm1(−w)), stable for tiny and huge w."""
    return w + torch.log(-torch.expm1(-w))


@dataclass
class Case:
    z: torch.Tensor  # (B, L, H, W)
    codebook: torch.Tensor  # (C, L)
    w: torch.Tensor  # (L,) precision weights ŵ = scale · softplus(r̂)
    tau: float
    sigma2: float

    @property
    def flat(self) -> torch.Tensor:
        return self.z.permute(0, 2, 3, 1).reshape(-1, self.z.shape[1])

    def module(self, **kwargs) -> GMVQ:
        c, dim = self.codebook.shape
        kwargs.setdefault("sigma2", self.sigma2)
        kwargs.setdefault("precision_init", 1.0)  # ŵ = softplus(r̂) exactly: the case sets r̂
        q = GMVQ(num_codes=c, dim=dim, **kwargs).double()
        with torch.no_grad():
            q.embedding.copy_(self.codebook)
            q.weight_head.weight.zero_()
            q.weight_head.bias.copy_(inverse_softplus(self.w))
            q.tau.fill_(self.tau)
        return q


@st.composite
def cases(draw, max_b: int = 16, max_hw: int = 4, max_c: int = 64, max_l: int = 16) -> Case:
    b, h, w = draw(st.integers(1, max_b)), draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    c, dim = draw(st.integers(1, max_c)), draw(st.integers(1, max_l))
    z = draw(array((b, dim, h, w), -10, 10))
    codebook = draw(array((c, dim), -10, 10))
    if draw(st.booleans()):  # some latent vectors sit exactly on a codeword
        flat = z.permute(0, 2, 3, 1).reshape(-1, dim)
        codebook[0] = flat[draw(st.integers(0, flat.shape[0] - 1))]
    r_hat = draw(array((dim,), -20, 20))
    scale = draw(log_uniform(1e-3, 1e3))
    weights = scale * torch.nn.functional.softplus(r_hat)
    return Case(z, codebook, weights, draw(finite(0.05, 5.0)), draw(log_uniform(1e-3, 1e3)))


@st.composite
def distributions(draw, max_c: int = 64, zeros: bool = True) -> torch.Tensor:
    """A probability vector, possibly with exact zeros."""
    c = draw(st.integers(1, max_c))
    raw = draw(array((c,), 0.0, 1.0))
    if zeros:
        raw = raw * draw(hnp.arrays(np.bool_, (c,)).map(torch.from_numpy))
    if raw.sum() <= 0:
        raw[draw(st.integers(0, c - 1))] = 1.0
    return raw / raw.sum()


def slack(*values: torch.Tensor) -> float:
    """Rounding allowance for comparing bounds: 1e-9 relative to the largest value."""
    return 1e-9 * (1 + max(float(v.abs().max()) for v in values))


def magnitude(z: torch.Tensor, w: torch.Tensor, codebook: torch.Tensor) -> float:
    """Scale of the expanded-form weighted distance, for rounding tolerances."""
    z, w, codebook = z.detach(), w.detach(), codebook.detach()
    return float(1.0 + w.max() * (z.pow(2).sum(-1).max() + codebook.pow(2).sum(-1).max()))
