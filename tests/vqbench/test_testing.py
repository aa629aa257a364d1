"""vqbench/testing.py: the conformance kit that third-party plugins use too, over every name
in registry.yaml, and the kit rejecting quantizers with one defect planted each."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from quantizers.gumbel import GumbelQuantizer
from quantizers.vq import VectorQuantizer
from tests.conftest import registry_entries

ENTRIES = registry_entries()


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_conformance(name):
    """The shared kit (vqbench.testing.check_quantizer) that third-party plugins use too:
    runner steps move the codebook, shapes/dtypes for both layouts, detached terms, normalised
    probs, gradients, eval determinism, state_dict round trip, autocast and device moves."""
    from vqbench.testing import check_quantizer

    check_quantizer(name, num_codes=16, dim=8)


# --- the kit rejects broken quantizers ----------------------------------------------------
# Each is a working built-in with one defect planted, the kind a third-party plugin ships.

class DetachedZq(VectorQuantizer):
    """Returns the code itself, no straight-through: the decoder's gradient never reaches the encoder."""

    def quantize(self, z):
        out = super().quantize(z)
        return dataclasses.replace(out, z_q=self.codebook[out.indices].detach())


class UnnormalisedProbs(GumbelQuantizer):
    """q(c|x) as unnormalised exp(logits)."""

    def quantize(self, z):
        out = super().quantize(z)
        return dataclasses.replace(out, probs=out.probs * 2)


class StrayTensor(VectorQuantizer):
    """Keeps a tensor outside parameters and buffers: .to(device) and state_dict miss it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.usage_counts = torch.zeros(self.num_codes)


class AttachedTerms(VectorQuantizer):
    """Logs a term that still carries the graph (it would keep every step's graph alive)."""

    def quantize(self, z):
        out = super().quantize(z)
        return dataclasses.replace(out, terms={**out.terms, "raw_loss": out.loss})


class IntIndices(VectorQuantizer):
    """Indices as int32: embedding lookups and the token writer expect long."""

    def quantize(self, z):
        out = super().quantize(z)
        return dataclasses.replace(out, indices=out.indices.int())


class NoisyEval(VectorQuantizer):
    """Samples in eval too: the same input gives other codes."""

    def quantize(self, z):
        return super().quantize(z + 0.5 * torch.randn_like(z))


@pytest.mark.parametrize(("broken", "message"), [
    (DetachedZq, "no gradient reaches the encoder through z_q"),
    (UnnormalisedProbs, "probs must sum to one"),
    (StrayTensor, r"tensor attributes \['usage_counts'\] are not buffers"),
    (AttachedTerms, r"terms\['raw_loss'\] must be detached"),
    (IntIndices, "indices dtype torch.int32, expected torch.long"),
    (NoisyEval, "eval must be deterministic"),
])
def test_the_kit_rejects_a_broken_quantizer_and_names_the_defect(broken, message):
    from vqbench.testing import check_quantizer

    with pytest.raises(AssertionError, match=message):
        check_quantizer(broken, num_codes=16, dim=8)
    # The defect, not the harness: the class it was planted in passes.
    check_quantizer(broken.__mro__[1], num_codes=16, dim=8)
