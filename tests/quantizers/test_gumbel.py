"""quantizers/gumbel.py: Gumbel-VQVAE (Karpathy 2021; Esser et al. 2021): one-hot samples in
training, argmax in eval, the closed-form KL, logits from the projection."""
from __future__ import annotations

import math

import torch

from tests.conftest import build_registered as build


def test_gumbel_forward_one_hot_eval_argmax_and_closed_form_kl():
    torch.manual_seed(7)
    q = build("gumbel-vqvae", num_codes=16, dim=4)
    z = torch.randn(100, 4)
    out = q(z)
    torch.testing.assert_close(out.z_q, q.embedding.detach()[out.indices], rtol=0, atol=1e-6)
    logits = q.proj(z).detach()
    assert not torch.equal(out.indices, logits.argmax(-1)), "training samples, not argmax"
    qy = logits.softmax(-1)
    kl = (math.log(16) + (qy * qy.log()).sum(-1)).mean()
    torch.testing.assert_close(out.loss, q.kl_weight * kl)
    assert q.kl_weight == 5e-4
    q.eval()
    a, b = q(z), q(z)
    assert torch.equal(a.indices, logits.argmax(-1)) and torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.z_q, q.embedding.detach()[a.indices], rtol=0, atol=0)


def test_gumbel_logits_come_from_the_projection_not_distances():
    torch.manual_seed(8)
    q = build("gumbel-vqvae", num_codes=16, dim=4).eval()
    z = torch.randn(50, 4)
    before = q(z).probs
    with torch.no_grad():
        q.embedding.mul_(-3.0).add_(5.0)
    torch.testing.assert_close(q(z).probs, before)
    assert "proj.weight" in q.state_dict()


def test_gumbel_sample_and_its_gradient_use_seeded_noise_and_the_annealed_tau():
    """Forward: codebook[argmax(log q + g)]; backward: the Jacobian of y = softmax((log q +
    g)/τ) with τ from set_progress (2.0 · 0.05^f), not a fixed τ."""
    torch.manual_seed(9)
    q = build("gumbel-vqvae", num_codes=8, dim=4)
    q.set_progress(0.25)
    tau = 2.0 * (0.1 / 2.0) ** 0.25
    z = torch.randn(30, 4, requires_grad=True)
    w = torch.randn(30, 4)
    torch.manual_seed(321)
    out = q(z)
    (grad,) = torch.autograd.grad((out.z_q * w).sum(), z)
    torch.manual_seed(321)
    u = torch.rand(30, 8).clamp(torch.finfo(torch.float32).tiny, 1 - 1e-7)
    g = -torch.log(-torch.log(u))
    log_q = torch.log_softmax(q.proj(z), -1)
    y = torch.softmax((log_q + g) / tau, -1)
    hard = torch.nn.functional.one_hot((log_q + g).argmax(-1), 8).float()
    ref = (hard + y - y.detach()) @ q.embedding
    assert torch.equal(out.indices, (log_q + g).argmax(-1))
    torch.testing.assert_close(out.z_q, ref.detach())
    (grad_ref,) = torch.autograd.grad((ref * w).sum(), z)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6)
    assert math.isclose(float(out.terms["tau"]), tau, rel_tol=1e-6)


def test_gumbel_defaults_seeded_init_order_and_option_checks():
    import pytest

    from quantizers.gumbel import GumbelQuantizer

    q = GumbelQuantizer()
    assert (q.num_codes, q.dim, q.kl_weight, q.tau_start, q.tau_end) == (1024, 64, 5e-4, 2.0, 0.1)
    assert float(q.tau) == 2.0
    # proj draws first, then the codebook (once): a seed gives these exact weights
    torch.manual_seed(0)
    q = GumbelQuantizer(8, 4)
    torch.manual_seed(0)
    proj = torch.nn.Linear(4, 8)
    codebook = torch.randn(8, 4) / 2
    assert torch.equal(q.proj.weight, proj.weight) and torch.equal(q.embedding, codebook)
    assert GumbelQuantizer(8, 4, kl_weight=0.0).kl_weight == 0.0
    with pytest.raises(ValueError, match=r"^kl_weight must be a finite number ≥ 0, got -1.0"):
        GumbelQuantizer(8, 4, kl_weight=-1.0)


def test_gumbel_outputs_terms_probs_and_dtype_in_eval_on_a_few_vectors():
    torch.manual_seed(4)
    q = build("gumbel-vqvae", num_codes=16, dim=4)
    q.set_progress(1.0)
    z = torch.randn(3, 4, dtype=torch.float64)
    out = q(z)
    log_q = torch.log_softmax(q.proj(z.float()), -1).detach()
    torch.testing.assert_close(out.probs, log_q.exp())
    assert set(out.terms) == {"kl", "tau"}
    torch.testing.assert_close(out.terms["kl"], (math.log(16) + (log_q.exp() * log_q).sum(-1)).mean())
    assert math.isclose(float(out.terms["tau"]), 0.1, rel_tol=1e-6)
    q.eval()
    a = q(z)
    assert a.z_q.dtype == torch.float64 and torch.equal(a.indices, log_q.argmax(-1))  # 3 rows: max index < 15 here
    torch.testing.assert_close(a.z_q, q.embedding.detach().double()[a.indices])
