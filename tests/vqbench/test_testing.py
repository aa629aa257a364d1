"""vqbench/testing.py: the conformance kit that third-party plugins use too, over every name
in registry.yaml."""
from __future__ import annotations

import pytest

from tests.conftest import registry_entries

ENTRIES = registry_entries()


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_conformance(name):
    """The shared kit (vqbench.testing.check_quantizer) that third-party plugins use too:
    runner steps move the codebook, shapes/dtypes for both layouts, detached terms, normalised
    probs, gradients, eval determinism, state_dict round trip, autocast and device moves."""
    from vqbench.testing import check_quantizer

    check_quantizer(name, num_codes=16, dim=8)
