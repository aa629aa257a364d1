"""vqbench/training/setup.py: the compile mode is checked."""
from __future__ import annotations

import pytest
import torch

from vqbench.errors import UserError
from vqbench.training import compile_model


def test_compile_mode_is_checked():
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, "none") is False
    with pytest.raises(UserError, match="reduce-overhead"):
        compile_model(model, "fast")
