"""vqbench/results/plots.py: the Pareto front of MSE against perplexity."""
from __future__ import annotations

import numpy as np

from vqbench.results.plots import pareto_front


def test_pareto_front():
    mse = np.array([1.0, 2.0, 0.5, 3.0, 2.0])
    ppl = np.array([10.0, 20.0, 5.0, 15.0, 30.0])
    assert list(pareto_front(mse, ppl)) == [2, 0, 4]


def test_curves_average_the_seeds_of_a_setting_and_keep_settings_apart(tmp_path):
    from pathlib import Path

    from vqbench.results.plots import plot_curves, seed_groups
    from vqbench.results.run_records import RunRecord

    def run(q, gamma, seed):
        history = [{"epoch": e, "train_loss": 1 / e, "mse": 0.02 / e + seed * 1e-3, "perplexity": 10.0 * e}
                   for e in (1, 2)]
        return RunRecord(Path(f"{q}-{gamma}-{seed}"), {"quantizer": {"name": q, "gamma": gamma}, "seed": seed},
                         {"quantizer": q}, history)

    runs = [run("gmvq", 0.01, s) for s in range(3)] + [run("gmvq", 0.1, 0), run("vqvae", None, 0)]
    groups = seed_groups(runs)
    assert {k: len(v) for k, v in groups.items()} == {"gmvq gamma=0.01": 3, "gmvq gamma=0.1": 1, "vqvae": 1}
    assert plot_curves(runs, tmp_path / "c.png").stat().st_size > 10_000
