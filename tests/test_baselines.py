"""Behaviour tests for the Table 1 baselines (issue 3).

Each method's defining behaviour has a test that fails if the method quietly became plain
VQ-VAE; a generic conformance test runs the vqbench.testing kit over every name in registry.yaml.
The behaviour tests build classes from the registry's ``module:Class`` path with importlib.
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from vqbench.testing import runner_optimizer

REGISTRY = Path(__file__).resolve().parents[1] / "registry.yaml"
ENTRIES = yaml.safe_load(REGISTRY.read_text())["quantizers"]

# GM-VQ paper Table 1: (cifar10 MSE e-3, perplexity, celeba MSE e-3, perplexity).
TABLE1 = {
    "vqvae": ("VQVAE", 5.65, 14.0, 10.02, 16.2),
    "vqvae-l2": ("VQVAE + l_2", 3.21, 57.0, 6.49, 188.7),
    "vqvae-replace": ("VQVAE + replace", 4.07, 109.8, 4.77, 676.4),
    "vqvae-l2-replace": ("VQVAE + l_2 + replace", 3.24, 115.6, 4.93, 861.7),
    "vqvae-affine": ("VQVAE + Affine", 5.15, 69.5, 7.47, 112.6),
    "vqvae-opt": ("VQVAE + OPT", 4.73, 15.5, 7.78, 30.5),
    "vqvae-affine-opt": ("VQVAE + Affine + OPT", 4.00, 79.3, 6.60, 186.6),
    "sqvae": ("SQVAE", 3.36, 769.3, 9.17, 769.1),
    "gumbel-vqvae": ("Gumbel-VQVAE", 6.16, 20.3, 7.34, 96.7),
    "gmvq": ("GM-VQ", 3.13, 731.9, 1.38, 338.6),
    "gmvq-entropy": ("GM-VQ + Entropy", 3.11, 878.7, 0.97, 831.0),
}


def build(name: str, **overrides):
    entry = ENTRIES[name]
    module, cls = entry["class"].split(":")
    kwargs = {**entry.get("defaults", {}), **overrides}
    return getattr(importlib.import_module(module), cls)(**kwargs)


# --- the registry -------------------------------------------------------------------
def test_registry_has_every_table1_row_with_the_papers_numbers():
    for name, (row, c_mse, c_ppl, a_mse, a_ppl) in TABLE1.items():
        entry = ENTRIES[name]
        assert entry["table1_row"] == row
        assert entry["citation"]
        assert entry["paper"] == {"cifar10": {"mse_e3": c_mse, "perplexity": c_ppl},
                                  "celeba": {"mse_e3": a_mse, "perplexity": a_ppl}}


def test_vq_variants_are_options_of_one_class():
    names = ["vqvae", "vqvae-l2", "vqvae-replace", "vqvae-l2-replace", "vqvae-affine",
             "vqvae-opt", "vqvae-affine-opt"]
    assert {ENTRIES[n]["class"] for n in names} == {"quantizers.vq:VectorQuantizer"}
    assert ENTRIES["sqvae"]["class"] == "quantizers.sqvae:SQVAE"
    assert ENTRIES["gumbel-vqvae"]["class"] == "quantizers.gumbel:GumbelQuantizer"


@pytest.mark.parametrize("name, bad", [
    ("vqvae-replace", {"replace_window": 0}), ("vqvae-replace", {"replace_window": -3}),
    ("vqvae-replace", {"replace_noise": -0.1}), ("vqvae", {"commitment": -1.0}),
    ("vqvae-affine", {"affine_lr": 0.0}), ("vqvae-opt", {"inner_lr": -1.0}),
    ("vqvae-opt", {"sync_nu": -0.2}), ("vqvae-l2", {"num_codes": 0}),
    ("sqvae", {"tau_end": 0.0}), ("sqvae", {"log_var_init": float("nan")}),
    ("gumbel-vqvae", {"kl_weight": -5e-4}), ("gumbel-vqvae", {"num_codes": 0}),
])
def test_bad_hyperparameters_are_rejected_in_one_line(name, bad):
    with pytest.raises(ValueError) as err:
        build(name, **{"num_codes": 8, "dim": 4, **bad})
    assert "\n" not in str(err.value) and next(iter(bad)) in str(err.value)


# --- conformance over every registered name ---------------------------------------------
@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_conformance(name):
    """The shared kit (vqbench.testing.check_quantizer) that third-party plugins use too:
    runner steps move the codebook, shapes/dtypes for both layouts, detached terms, normalised
    probs, gradients, eval determinism, state_dict round trip, autocast and device moves."""
    from vqbench.testing import check_quantizer

    check_quantizer(name, num_codes=16, dim=8)


# --- l2 (Yu et al. 2021) ------------------------------------------------------------------
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


# --- dead-code replacement (Zeghidour et al. 2021; Dhariwal et al. 2020) ----------------
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


# --- affine re-parameterisation (Huh et al. 2023 §5.1) ----------------------------------
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


# --- alternating optimisation (Huh et al. 2023 §5.2, §5.3) ------------------------------
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


# --- SQ-VAE (Takida et al. 2022) ----------------------------------------------------------
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
        q.init_codebook(enc(x).detach(), torch.Generator().manual_seed(0))
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
    assert variances[0] == pytest.approx(math.exp(3.0), rel=0.05)
    early, late = sum(variances[10:30]) / 20, sum(variances[-20:]) / 20
    assert late < 0.5 * early, (early, late)
    assert "log_var" in q.state_dict()


# --- Gumbel-VQVAE (Karpathy 2021; Esser et al. 2021) -------------------------------------
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


@pytest.mark.parametrize("name", ["gumbel-vqvae", "sqvae"])
def test_temperature_anneals_two_to_a_tenth_and_is_checkpointed(name):
    q = build(name, num_codes=8, dim=4)
    q.set_progress(0.0)
    assert float(q.tau) == pytest.approx(2.0)
    q.set_progress(0.5)
    assert float(q.tau) == pytest.approx(math.sqrt(2.0 * 0.1))
    q.set_progress(1.0)
    assert float(q.tau) == pytest.approx(0.1)
    assert "tau" in q.state_dict()
