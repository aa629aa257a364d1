"""quantizers/calibration.py: a scale set once from the data — at k-means init, else on the
first training batch, never in eval, never twice, and "done" carried by the checkpoint."""
from __future__ import annotations

import torch

from quantizers.base import CodebookQuantizer, QuantizerOutput
from quantizers.calibration import CalibratedQuantizer


class Probe(CalibratedQuantizer, CodebookQuantizer):
    """Records what it was calibrated from."""

    def __init__(self, from_data: bool) -> None:
        super().__init__(num_codes=4, dim=2)
        self.init_calibration(from_data)
        self.seen: list[torch.Tensor] = []

    def calibrate_from(self, z: torch.Tensor) -> None:
        self.seen.append(z.clone())

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        self.calibrate_if_unset(z)
        return QuantizerOutput(z_q=z, loss=z.sum() * 0, terms={}, indices=torch.zeros(len(z), dtype=torch.long))


def test_a_fixed_scale_is_never_calibrated():
    q = Probe(from_data=False)
    assert bool(q.calibrated)
    q.train()
    q.quantize(torch.ones(3, 2))
    q.init_codebook(torch.randn(8, 2), torch.Generator().manual_seed(0))
    assert q.seen == []


def test_the_first_training_batch_calibrates_once_and_eval_never():
    q = Probe(from_data=True)
    assert not bool(q.calibrated)
    q.eval()
    q.quantize(torch.ones(3, 2))
    assert q.seen == [] and not bool(q.calibrated)
    q.train()
    z = torch.randn(3, 2, requires_grad=True)
    q.quantize(z)
    q.quantize(torch.zeros(3, 2))
    assert len(q.seen) == 1 and torch.equal(q.seen[0], z.detach()) and not q.seen[0].requires_grad
    assert bool(q.calibrated)


def test_k_means_init_calibrates_from_its_samples_and_the_first_batch_then_does_not():
    q = Probe(from_data=True)
    samples = torch.randn(16, 2)
    q.init_codebook(samples, torch.Generator().manual_seed(0))
    assert len(q.seen) == 1 and torch.equal(q.seen[0], samples)
    q.train()
    q.quantize(torch.ones(3, 2))
    assert len(q.seen) == 1


def test_a_resumed_run_is_not_calibrated_again():
    first = Probe(from_data=True)
    first.train()
    first.quantize(torch.ones(3, 2))
    resumed = Probe(from_data=True)
    resumed.load_state_dict(first.state_dict())  # the checkpoint carries "calibrated"
    resumed.train()
    resumed.quantize(torch.full((3, 2), 5.0))
    assert resumed.seen == [] and bool(resumed.calibrated)


def test_k_means_under_calibration_draws_from_the_run_s_generator_only():
    samples = torch.randn(32, 2)
    books = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        q = Probe(from_data=True)
        q.init_codebook(samples, torch.Generator().manual_seed(4))
        books.append(q.embedding.detach().clone())
    assert torch.equal(books[0], books[1])
