"""Fixtures of the trainer's tests (test_trainer_loop.py, test_trainer_wiring.py)."""
from __future__ import annotations

import pytest

from vqbench.training.step import TrainStep


@pytest.fixture
def steps(monkeypatch) -> list[dict]:
    """Every optimiser step the loop takes, in order: the batch indices, step number, loss, mse."""
    seen: list[dict] = []
    real_batch, real_call = TrainStep.batch, TrainStep.__call__

    def batch(self, indices):
        seen.append({"indices": indices.clone()})
        return real_batch(self, indices)

    def call(self, x, number):
        result = real_call(self, x, number)
        seen[-1].update(step=number, loss=float(result[0]), mse=float(result[1]))
        return result
    monkeypatch.setattr(TrainStep, "batch", batch)
    monkeypatch.setattr(TrainStep, "__call__", call)
    return seen
