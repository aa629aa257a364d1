"""vqbench/training/summary.py: the steady throughput leaves out the first epoch."""
from __future__ import annotations

import pytest

from vqbench.training import steady_throughput


def test_steady_throughput_leaves_out_the_first_epoch():
    # Epoch 1 (compile, capture) at 100 img/s; epochs 2–3: 10 steps of 32 images at 400 and 200 img/s.
    history = [{"step": 10, "images_per_s": 100.0}, {"step": 20, "images_per_s": 400.0},
               {"step": 30, "images_per_s": 200.0}]
    assert steady_throughput(history, 32) == pytest.approx(640 / (320 / 400 + 320 / 200))
    assert steady_throughput(history[:1], 32) is None
