"""What the commands that read a trained run (reconstruct, encode, usage) share."""
from __future__ import annotations

import pytest

from tests.vqbench._tiny import fake_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small trained run folder, made once per test module."""
    return fake_run(tmp_path_factory.mktemp("runs"))
