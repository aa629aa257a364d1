"""vqbench/experiments.py, Figure 3 / Appendix A.1: straight-through Gumbel-softmax gradient
bias vs entropy."""
from __future__ import annotations

import numpy as np
import torch

from vqbench.experiments import (NUM_CLASSES, exact_gradient, gradient_bias, gradient_bias_study, make_mlp,
                                 median_rho)


def test_median_rho_over_ten_seeds_matches_the_paper():
    results = gradient_bias_study(10)
    assert 0.6 <= median_rho(results) <= 0.95  # MATH.md: median ≈ 0.78; the paper reports 0.77
    assert all(len(r.entropy) == 41 and np.isfinite(r.bias).all() for r in results)


def test_exact_gradient_formula_matches_autograd():
    f = make_mlp(torch.Generator().manual_seed(3))
    logits = torch.randn(4, NUM_CLASSES, dtype=torch.float64, requires_grad=True)  # four temperatures' rows
    values = f(torch.eye(NUM_CLASSES, dtype=torch.float64)).squeeze(-1).detach()
    (auto,) = torch.autograd.grad((torch.softmax(logits, -1) * values).sum(), logits)
    pi = torch.softmax(logits, -1).detach()
    assert torch.allclose(exact_gradient(pi, values), auto)  # the experiment's own function, not a copy


def test_bias_vanishes_for_a_point_mass_and_grows_with_entropy():
    r = gradient_bias(0, temperatures=np.array([1e-3, 20.0]), repeats=200)
    assert r.entropy[0] < 1e-6 and r.bias[0] < 1e-8  # deterministic pick: no gradient, no bias
    assert r.entropy[1] > 2.2 and r.bias[1] > 1e-3
