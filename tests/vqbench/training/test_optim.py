"""vqbench/training/optim.py: the learning-rate schedule."""
from __future__ import annotations

import pytest

from vqbench.training import lr_factor


def test_lr_schedule_warms_up_from_a_fifth_then_decays_to_zero():
    assert lr_factor(0, 100, 0.1, 0.2) == pytest.approx(0.2)
    assert lr_factor(10, 100, 0.1, 0.2) == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1, 0.2) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0.1, 0.2) == pytest.approx(0.0, abs=1e-12)
