"""quantizers/vq.py: the Table 1 variants of VQ-VAE, each a constructor option of one class,
each with a test that fails if it quietly became plain VQ-VAE: l2 (Yu et al. 2021), dead-code
replacement (Zeghidour et al. 2021; Dhariwal et al. 2020), affine re-parameterisation and
alternating optimisation (Huh et al. 2023). The rotation trick and the EMA codebook are in
test_vq_options.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import build_registered as build
from vqbench.testing import runner_optimizer


def test_l2_compares_unit_vectors_and_picks_max_cosine():
    torch.manual_seed(1)
    q = build("vqvae-l2", num_codes=32, dim=6)
    with torch.no_grad():  # very unequal norms: Euclidean nearest ≠ max cosine
        q.embedding.mul_(torch.logspace(-2, 2, 32)[:, None])
    z = torch.randn(200, 6) * 3
    out = q(z)
    cosine = F.normalize(z, dim=-1) @ F.normalize(q.embedding.detach(), dim=-1).t()
    assert torch.equal(out.indices, cosine.argmax(-1))
    assert not torch.equal(out.indices, torch.cdist(z, q.embedding.detach()).argmin(-1))
    torch.testing.assert_close(q.codebook.norm(dim=-1), torch.ones(32))
    torch.testing.assert_close(out.z_q.norm(dim=-1), torch.ones(200))
    unit_z = F.normalize(z, dim=-1)
    chosen = F.normalize(q.embedding.detach(), dim=-1)[out.indices]
    torch.testing.assert_close(out.terms["commitment"], F.mse_loss(unit_z, chosen))


@pytest.mark.parametrize("name", ["vqvae-replace", "vqvae-l2-replace"])
def test_replace_reinitialises_exactly_the_dead_codes_within_the_window(name):
    torch.manual_seed(2)
    window = 4
    q = build(name, num_codes=8, dim=4, replace_window=window)
    with torch.no_grad():  # codes 0-3 live near the data, 4-7 far away in the other direction
        q.embedding[:4] = torch.eye(4) * 3
        q.embedding[4:] = -100 * torch.ones(4, 4) + torch.randn(4, 4)
    dead = q.embedding.detach()[4:].clone()
    for step in range(window):
        z = torch.eye(4).repeat(8, 1) * 3 + 0.1 * torch.randn(32, 4) + step  # moves every step
        out = q(z)
        assert (out.indices < 4).all()
        q.after_optimizer_step()
        if step < window - 1:
            assert torch.equal(q.embedding.detach()[4:], dead), "replaced before the window"
    live = torch.eye(4) * 3
    assert torch.equal(q.embedding.detach()[:4], live), "live codes must not be touched"
    new = q.codebook.detach()[4:]
    recent = q._compare(z)
    gap = torch.cdist(new, recent).min(-1).values
    scale = recent.pow(2).mean().sqrt()
    assert (gap < 10 * q.replace_noise * scale * math.sqrt(4)).all(), gap
    assert (gap > 0).all(), "replacements carry noise, so they are distinct"
    older = q._compare(torch.eye(4).repeat(8, 1) * 3)  # batch 0 (step offset 0) is not recent
    if name == "vqvae-replace":
        assert (torch.cdist(new, older).min(-1).values > 1.0).all()
    assert q.steps_unused.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert "steps_unused" in q.state_dict()


def test_affine_scale_and_shift_learn_and_change_the_effective_codebook():
    torch.manual_seed(3)
    q = build("vqvae-affine", num_codes=16, dim=4)
    groups = q.param_groups()
    affine = [g for g in groups if any(p is q.affine_scale for p in g["params"])]
    assert len(affine) == 1 and affine[0]["lr_scale"] == 10.0 and affine[0]["weight_decay"] == 0.0
    raw = q.embedding.detach().clone()
    z = torch.randn(64, 4) * 2 + 1
    out = q(z)
    (out.z_q.pow(2).mean() + out.loss).backward()
    assert q.affine_scale.grad.abs().sum() > 0 and q.affine_shift.grad.abs().sum() > 0
    lr = 1e-3
    opt = torch.optim.AdamW([{"params": affine[0]["params"], "lr": lr * affine[0]["lr_scale"],
                              "weight_decay": 0.0}])
    opt.step()
    assert torch.equal(q.embedding.detach(), raw), "raw rows keep their values"
    # Adam's first step has size lr·lr_scale per element: the multiplier is honoured.
    torch.testing.assert_close(q.affine_shift.detach().abs(), torch.full((4,), lr * 10.0))
    expected = raw * q.affine_scale.detach() + q.affine_shift.detach()
    torch.testing.assert_close(q.codebook.detach(), expected)
    assert not torch.allclose(q.codebook.detach(), raw)


@pytest.mark.parametrize("name", ["vqvae-opt", "vqvae-affine-opt"])
def test_opt_inner_step_moves_used_codes_towards_their_assigned_mean(name):
    torch.manual_seed(4)
    q = build(name, num_codes=16, dim=4, sync_nu=0.0)
    assert all(p is not q.embedding for g in q.param_groups() for p in g["params"])
    if q.affine_scale is not None:
        with torch.no_grad():
            q.affine_scale.copy_(torch.tensor([0.5, 2.0, 1.5, 0.8]))
            q.affine_shift.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    enc = torch.nn.Linear(4, 4)
    opt = runner_optimizer(q, enc.parameters())
    x = torch.randn(128, 4)
    q.set_progress(0.0)
    out = q(enc(x))
    (out.z_q.pow(2).mean() + out.loss).backward()
    z = enc(x).detach()  # the encoder outputs the forward assigned (before the encoder step)
    raw = q.embedding.detach().clone()
    opt.step()
    assert torch.equal(q.embedding.detach(), raw), "the task optimiser must not move the codebook"
    # The inner step works in effective space under the affine map as the task step left it.
    eff = raw * q.affine_scale.detach() + q.affine_shift.detach() if q.affine_scale is not None else raw
    q.after_optimizer_step()
    new = q.codebook.detach()
    used = out.indices.unique()
    assert 1 < used.numel() < 16
    for c in range(16):
        if c in used:
            mean = z[out.indices == c].mean(0)
            torch.testing.assert_close(new[c], eff[c] + q.inner_lr * (mean - eff[c]))
        else:
            torch.testing.assert_close(new[c], eff[c], rtol=0, atol=1e-6)


def test_opt_sync_gradient_is_applied_by_the_inner_step_only():
    torch.manual_seed(5)
    q = build("vqvae-opt", num_codes=8, dim=4)
    assert q.sync_nu == 0.2
    z = torch.randn(64, 4)
    out = q(z)
    target = torch.randn(64, 4)
    (out.z_q - target).pow(2).sum().backward()
    grad = q.embedding.grad.clone()
    assert grad.abs().sum() > 0, "the synchronised update gives the codebook ν × task gradient"
    raw = q.embedding.detach().clone()
    q.after_optimizer_step()
    plain = build("vqvae-opt", num_codes=8, dim=4, sync_nu=0.0)
    plain.load_state_dict(q.state_dict())
    with torch.no_grad():
        plain.embedding.copy_(raw)
    plain(z)
    plain.after_optimizer_step()
    torch.testing.assert_close(q.embedding.detach(), plain.embedding.detach() - q.inner_lr * grad)
    assert q.embedding.grad is None


@pytest.mark.parametrize("commitment", [0.25, 0.7])
def test_vqvae_loss_gradients_equal_their_closed_forms(commitment):
    """L = mean‖sg[ẑ] − e_j‖² + β mean‖ẑ − sg[e_j]‖² over the N·D elements (eq. 2):
    ∂L/∂ẑ = 2β(ẑ − e_j)/(ND), ∂L/∂e_c = Σ_{n→c} 2(e_c − ẑ_n)/(ND); the STE passes the task
    gradient to ẑ unchanged and none to the codebook."""
    torch.manual_seed(11)
    q = build("vqvae", num_codes=6, dim=3, commitment=commitment)
    z = torch.randn(20, 3, dtype=torch.float32, requires_grad=True)
    out = q(z)
    e = q.embedding.detach()
    j = torch.cdist(z.detach(), e).argmin(-1)
    assert torch.equal(out.indices, j)
    grad_z, grad_e = torch.autograd.grad(out.loss, (z, q.embedding))
    n_el = z.numel()
    torch.testing.assert_close(grad_z, 2 * commitment * (z.detach() - e[j]) / n_el)
    expected_e = torch.zeros_like(e).index_add_(0, j, 2 * (e[j] - z.detach()) / n_el)
    torch.testing.assert_close(grad_e, expected_e)
    torch.testing.assert_close(out.loss, ((e[j] - z.detach()).pow(2).mean() * (1 + commitment)))
    w = torch.randn(20, 3)
    grad_task_z, grad_task_e = torch.autograd.grad((q(z).z_q * w).sum(), (z, q.embedding), allow_unused=True)
    torch.testing.assert_close(grad_task_z, w)
    assert grad_task_e is None or not grad_task_e.any()


def test_vq_defaults_buffers_and_state_dict():
    from quantizers.vq import VectorQuantizer

    q = VectorQuantizer()
    assert (q.num_codes, q.dim, q.commitment, q.replace_window, q.replace_noise, q.affine_lr, q.inner_lr,
            q.sync_nu, q.ema_decay) == (1024, 64, 0.25, None, 0.01, 10.0, 0.1, 0.0, None)
    assert q.affine_scale is None and q.affine_shift is None and not q.l2 and not q.alternating
    r = VectorQuantizer(8, 2, replace_window=1)
    state = r.state_dict()
    assert state["steps_unused"].dtype == torch.long and "_used" not in state  # timers persist, the mask does not
    a = VectorQuantizer(8, 2, affine=True)
    assert torch.equal(a.affine_scale, torch.ones(2)) and torch.equal(a.affine_shift, torch.zeros(2))


@pytest.mark.parametrize("options, message", [
    ({"commitment": -1.0}, r"^commitment must be a finite number ≥ 0, got -1.0$"),
    ({"replace_noise": -1.0}, r"^replace_noise must be a finite number ≥ 0, got -1.0$"),
    ({"affine_lr": 0.0}, r"^affine_lr must be a finite number > 0, got 0.0$"),
    ({"inner_lr": 0.0}, r"^inner_lr must be a finite number > 0, got 0.0$"),
    ({"sync_nu": -0.5}, r"^sync_nu must be a finite number ≥ 0, got -0.5$"),
    ({"replace_window": 0}, r"^replace_window must be a whole number ≥ 1 \(or None to disable\), got 0$"),
    ({"replace_window": 1.5}, r"^replace_window must be a whole number ≥ 1"),
    ({"ema_decay": True}, r"^ema_decay must be in \(0, 1\)"),
    ({"ema_decay": "0.5"}, r"^ema_decay must be in \(0, 1\)"),
    ({"ema_decay": 1.0}, r"^ema_decay must be in \(0, 1\)"),
    ({"ema_decay": 0.9, "ema_eps": 0.0}, r"^ema_eps must be a finite number > 0"),
    ({"ema_decay": 0.9, "sync_nu": 0.1}, r"^ema_decay cannot be combined with affine, alternating or sync_nu "
                                         r"\(each gives the codebook a second learning rule\)$"),
])
def test_vq_bad_options_are_refused_with_their_message(options, message):
    from quantizers.vq import VectorQuantizer

    with pytest.raises(ValueError, match=message):
        VectorQuantizer(8, 2, **options)


def test_vq_edge_values_are_accepted():
    from quantizers.vq import VectorQuantizer

    q = VectorQuantizer(8, 2, commitment=0.0, replace_noise=0.0, sync_nu=0.0, replace_window=1, ema_decay=None)
    assert q.commitment == 0.0 and q.replace_window == 1
    assert VectorQuantizer(8, 2, replace_window=2.0).replace_window == 2


def test_sync_update_gives_the_codebook_nu_times_the_task_gradient():
    """z_q = ẑ + sg(e_j − ẑ) + ν(e_j − sg(e_j)): forward e_j, ∂(w·z_q)/∂e_c = ν Σ_{n→c} w_n."""
    torch.manual_seed(3)
    q = build("vqvae", num_codes=5, dim=3, sync_nu=0.3)
    z = torch.randn(12, 3, requires_grad=True)
    out = q(z)
    w = torch.randn(12, 3)
    torch.testing.assert_close(out.z_q, q.embedding.detach()[out.indices])
    grad_z, grad_e = torch.autograd.grad((out.z_q * w).sum(), (z, q.embedding))
    torch.testing.assert_close(grad_z, w)
    torch.testing.assert_close(grad_e, 0.3 * torch.zeros(5, 3).index_add_(0, out.indices, w))
    assert set(out.terms) == {"commitment", "codebook"} and out.probs is None
    torch.testing.assert_close(out.terms["codebook"], (q.embedding.detach()[out.indices] - z.detach()).pow(2).mean())


def test_eval_forward_keeps_no_batch_for_replacement_and_keeps_the_dtype():
    q = build("vqvae-replace", num_codes=5, dim=3).eval()
    out = q(torch.randn(4, 3, dtype=torch.float64))
    assert out.z_q.dtype == torch.float64
    assert q._last_batch is None and not q._used.any()
