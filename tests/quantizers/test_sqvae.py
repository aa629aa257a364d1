"""quantizers/sqvae.py: SQ-VAE (Takida et al. 2022): its terms against their closed forms, and
the variance self-annealing on a small problem."""
from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import build_registered as build
from vqbench.testing import runner_optimizer


def test_sqvae_terms_match_their_closed_forms():
    torch.manual_seed(6)
    q = build("sqvae", num_codes=8, dim=3)
    z = torch.randn(40, 3)
    out = q(z)
    var = q.log_var.exp().detach()
    logits = -torch.cdist(z, q.embedding.detach()).pow(2) / (2 * var)
    p = logits.softmax(-1)
    torch.testing.assert_close(out.probs, p)
    torch.testing.assert_close(out.terms["kl_discrete"], (p * p.log()).sum(-1).mean())
    cont = (z - out.z_q.detach()).pow(2).sum(-1).mean() / (2 * var)
    torch.testing.assert_close(out.terms["kl_continuous"], cont)
    assert not torch.equal(out.z_q, q.embedding[out.indices]), "training sample is soft"
    x, x_hat = torch.rand(4, 3, 5, 5), torch.rand(4, 3, 5, 5)
    expected = 0.5 * 75 * torch.log((x - x_hat).pow(2).sum() / 4) / (40 / 4)
    torch.testing.assert_close(q.reconstruction_loss(x, x_hat), expected)
    q.eval()
    torch.testing.assert_close(q(z).z_q, q.embedding.detach()[p.argmax(-1)])


def test_sqvae_variance_self_anneals_on_a_small_problem():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        centres = torch.randn(8, 64)
        x = centres[torch.randint(8, (128,))] + 0.05 * torch.randn(128, 64)
        enc, dec = torch.nn.Linear(64, 4), torch.nn.Linear(4, 64)
        q = build("sqvae", num_codes=16, dim=4)
        v = float(enc(x).detach().var(0).mean())  # log_var_init="auto": σ² = e³ · v, their ratio at our scale
        q.init_codebook(enc(x).detach(), torch.Generator().manual_seed(0))
        assert float(q.variance) == pytest.approx(math.exp(3.0) * v, rel=1e-5)
        opt = runner_optimizer(q, [*enc.parameters(), *dec.parameters()])
        variances = []
        for step in range(150):
            q.set_progress(step / 150)
            out = q(enc(x))
            loss = q.reconstruction_loss(x, dec(out.z_q)) + out.loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            q.after_optimizer_step()
            variances.append(float(q.variance))
    finally:
        torch.set_num_threads(threads)
    assert variances[0] == pytest.approx(math.exp(3.0) * v, rel=0.05)
    early, late = sum(variances[10:30]) / 20, sum(variances[-20:]) / 20
    assert late < 0.5 * early, (early, late)
    assert "log_var" in q.state_dict()


def test_sqvae_fixed_log_var_init_is_theirs_and_auto_calibrates_on_the_first_batch():
    fixed = build("sqvae", num_codes=8, dim=3, log_var_init=3.0)
    fixed(torch.randn(40, 3) * 1e-2)
    assert float(fixed.variance) == pytest.approx(math.exp(3.0))  # theirs: no data scaling
    auto = build("sqvae", num_codes=8, dim=3)  # no k-means init: the first training batch sets it
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(1)) * 1e-2
    auto(z)
    assert float(auto.variance) == pytest.approx(math.exp(3.0) * float(z.var(0).mean()), rel=1e-5)
    auto(z * 100)  # once set, later batches do not move it
    assert float(auto.variance) == pytest.approx(math.exp(3.0) * float(z.var(0).mean()), rel=1e-5)
    assert bool(auto.state_dict()["calibrated"])


def test_sqvae_training_sample_is_the_gumbel_softmax_of_seeded_noise():
    """z_q = softmax((log p + g)/τ) @ E with g the Gumbel noise the global RNG draws, and τ
    from the schedule (set_progress)."""
    torch.manual_seed(5)
    q = build("sqvae", num_codes=8, dim=3)
    q.set_progress(0.5)
    tau = 2.0 * (0.1 / 2.0) ** 0.5
    assert float(q.tau) == pytest.approx(tau, rel=1e-6)
    z = torch.randn(30, 3)
    torch.manual_seed(123)
    out = q(z)
    torch.manual_seed(123)
    u = torch.rand(30, 8).clamp(torch.finfo(torch.float32).tiny, 1 - 1e-7)
    g = -torch.log(-torch.log(u))
    log_p = torch.log_softmax(-0.5 * torch.cdist(z, q.embedding.detach()).pow(2) / q.log_var.exp().detach(), -1)
    y = torch.softmax((log_p + g) / tau, -1)
    torch.testing.assert_close(out.z_q, y @ q.embedding.detach(), rtol=1e-4, atol=1e-5)
    assert torch.equal(out.indices, (log_p + g).argmax(-1))
    assert out.terms["tau"] == pytest.approx(tau, rel=1e-6)


def test_sqvae_defaults_option_checks_terms_and_dtype():
    from quantizers.sqvae import SQVAE

    q = SQVAE()
    assert (q.num_codes, q.dim, float(q.log_var), q.tau_start, q.tau_end, q.eps) == (1024, 64, 3.0, 2.0, 0.1, 1e-10)
    assert q.log_var_init == "auto" and not bool(q.calibrated)  # 3.0 until the data sets it
    for bad in (math.inf, "fixed"):
        with pytest.raises(ValueError, match=r"^log_var_init must be 'auto' or a finite number, got "):
            SQVAE(8, 3, log_var_init=bad)
    with pytest.raises(ValueError, match=r"^eps must be a finite number > 0, got 0.0"):
        SQVAE(8, 3, eps=0.0)
    torch.manual_seed(2)
    q = SQVAE(8, 3, log_var_init=-1.0)
    z = torch.randn(10, 3, dtype=torch.float64)
    out = q(z)
    assert out.z_q.dtype == torch.float64 and out.indices.shape == (10,)
    assert set(out.terms) == {"kl_discrete", "kl_continuous", "variance", "tau"}
    torch.testing.assert_close(out.loss, out.terms["kl_discrete"] + out.terms["kl_continuous"])
    assert float(out.terms["variance"]) == pytest.approx(math.exp(-1.0)) and float(out.terms["tau"]) == 2.0


def test_sqvae_reconstruction_loss_of_a_perfect_single_image_is_log_eps():
    q = build("sqvae", num_codes=8, dim=3)  # no forward yet: one position per image
    x = torch.rand(1, 3, 4, 4)
    assert float(q.reconstruction_loss(x, x.clone())) == pytest.approx(0.5 * 48 * math.log(1e-10), rel=1e-6)
