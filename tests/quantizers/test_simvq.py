"""SimVQ (Zhu et al. 2024): the random basis is frozen, the linear map learns, and one step
moves every code (plain VQ moves only the selected ones)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quantizers.simvq import SimVQ
from vqbench.testing import runner_optimizer, runner_step


def test_basis_is_a_frozen_buffer_and_only_the_map_is_trained():
    q = SimVQ(64, 8)
    assert "basis" in dict(q.named_buffers()) and "basis" in q.state_dict()
    assert {n for n, _ in q.named_parameters()} == {"transform.weight", "transform.bias"}
    assert [p for g in q.param_groups() for p in g["params"]] == list(q.transform.parameters())
    torch.testing.assert_close(q.basis.std(), torch.tensor(8**-0.5), rtol=0.15, atol=0)  # N(0, 1/D)
    torch.testing.assert_close(q.codebook, q.basis @ q.transform.weight.t() + q.transform.bias)


def test_a_step_moves_every_code_and_never_the_basis():
    """The defining behaviour: the codebook-loss gradient lands on W, so a step whose batch
    selects a handful of codes moves all C of them, and the random basis Q never changes."""
    torch.manual_seed(0)
    q = SimVQ(64, 8)
    basis = q.basis.clone()
    before = q.codebook.detach().clone()
    z = torch.randn(5, 8)  # at most 5 of 64 codes selected
    opt = runner_optimizer(q)
    out = runner_step(q, z, opt)
    assert out.indices.unique().numel() <= 5
    assert torch.equal(q.basis, basis), "the frozen basis changed: the codebook itself is being learnt"
    moved = (q.codebook.detach() - before).norm(dim=-1) > 1e-6
    assert moved.all(), f"only {int(moved.sum())}/64 codes moved; SimVQ moves every code through W"
    assert q.transform.weight.grad is not None and q.transform.weight.grad.abs().sum() > 0


def test_nearest_code_straight_through_and_loss_weights():
    torch.manual_seed(1)
    q = SimVQ(32, 4)
    z = torch.randn(40, 4, requires_grad=True)
    out = q(z)
    book = q.codebook.detach()
    assert torch.equal(out.indices, torch.cdist(z.detach(), book).argmin(-1))
    torch.testing.assert_close(out.z_q.detach(), book[out.indices])
    (g,) = torch.autograd.grad(out.z_q.sum(), z, retain_graph=True)
    torch.testing.assert_close(g, torch.ones_like(g))  # straight-through
    dist = F.mse_loss(book[out.indices], z.detach())
    torch.testing.assert_close(out.loss, dist + 0.25 * dist)  # codebook term 1, commitment β = 0.25


def test_init_codebook_keeps_the_random_basis():
    q = SimVQ(16, 4)
    basis = q.basis.clone()
    q.init_codebook(torch.randn(100, 4) * 10)
    assert torch.equal(q.basis, basis)


def test_bad_hyperparameters_are_one_line():
    with pytest.raises(ValueError, match="commitment must be a finite number ≥ 0"):
        SimVQ(16, 4, commitment=-1.0)


def test_conformance():
    from vqbench.testing import check_quantizer

    check_quantizer(SimVQ)
    check_quantizer(SimVQ, kwargs={"bias": False})
