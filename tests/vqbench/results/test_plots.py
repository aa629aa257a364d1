"""vqbench/results/plots.py: the Pareto front of MSE against perplexity."""
from __future__ import annotations

import numpy as np

from vqbench.results.plots import pareto_front


def test_pareto_front():
    mse = np.array([1.0, 2.0, 0.5, 3.0, 2.0])
    ppl = np.array([10.0, 20.0, 5.0, 15.0, 30.0])
    assert list(pareto_front(mse, ppl)) == [2, 0, 4]
