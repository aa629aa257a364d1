"""The VQ family's issue-17 options: the rotation trick (Fifty et al. 2024) and the EMA
codebook (van den Oord et al. 2017 App. A.1; Razavi et al. 2019)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantizers.distributed as Fd
from quantizers.vq import VectorQuantizer
from vqbench.testing import runner_optimizer, runner_step


# --- the rotation trick ---------------------------------------------------------------------
def rotation_matrices(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """λR per row (Fifty et al. §4.2): R = I − 2rrᵀ + 2q̂êᵀ, r = (ê + q̂)/‖ê + q̂‖, λ = ‖q‖/‖e‖."""
    e_hat, q_hat = F.normalize(e, dim=-1), F.normalize(q, dim=-1)
    r = F.normalize(e_hat + q_hat, dim=-1)
    eye = torch.eye(e.shape[-1]).expand(e.shape[0], -1, -1)
    rot = eye - 2 * r[:, :, None] * r[:, None, :] + 2 * q_hat[:, :, None] * e_hat[:, None, :]
    return (q.norm(dim=-1) / e.norm(dim=-1))[:, None, None] * rot


@pytest.mark.parametrize("l2", [False, True])
def test_rotation_forward_is_the_straight_through_forward(l2):
    torch.manual_seed(0)
    ste, rot = VectorQuantizer(32, 6, l2=l2), VectorQuantizer(32, 6, l2=l2, rotation=True)
    rot.load_state_dict(ste.state_dict())
    z = torch.randn(100, 6) * 2
    a, b = ste(z), rot(z)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(b.z_q, a.z_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.loss, a.loss)


@pytest.mark.parametrize("l2", [False, True])
def test_rotation_gradient_is_lambda_R_transposed(l2):
    """∂L/∂e = (λR)ᵀ ∂L/∂q with R, λ constants — not the straight-through copy ∂L/∂q."""
    torch.manual_seed(1)
    q = VectorQuantizer(32, 6, l2=l2, rotation=True)
    z = torch.randn(50, 6) * 2
    e = F.normalize(z, dim=-1) if l2 else z
    zz = z.clone().requires_grad_(True)
    out = q(zz)
    g = torch.randn(50, 6)
    (grad_z,) = torch.autograd.grad((out.z_q * g).sum(), zz)
    code = q.codebook.detach()[out.indices]
    expected_e = torch.einsum("nij,ni->nj", rotation_matrices(e, code), g)
    if l2:  # through the normalisation: ∂L/∂z = J_norm(z)ᵀ ∂L/∂e
        zn = z.clone().requires_grad_(True)
        (expected_z,) = torch.autograd.grad((F.normalize(zn, dim=-1) * expected_e).sum(), zn)
    else:
        expected_z = expected_e
    torch.testing.assert_close(grad_z, expected_z, rtol=1e-4, atol=1e-5)
    ste = VectorQuantizer(32, 6, l2=l2)
    ste.load_state_dict(q.state_dict())
    zs = z.clone().requires_grad_(True)
    (grad_ste,) = torch.autograd.grad((ste(zs).z_q * g).sum(), zs)
    assert (grad_z - grad_ste).abs().max() > 1e-2, "the rotation trick's gradient is the straight-through one"


def test_rotation_preserves_the_gradient_norm_up_to_lambda_and_leaves_the_codebook_alone():
    torch.manual_seed(2)
    q = VectorQuantizer(16, 5, rotation=True)
    z = torch.randn(40, 5, requires_grad=True)
    out = q(z)
    g = torch.randn(40, 5)
    (out.z_q * g).sum().backward()
    lam = q.codebook.detach()[out.indices].norm(dim=-1) / z.detach().norm(dim=-1)
    torch.testing.assert_close(z.grad.norm(dim=-1), lam * g.norm(dim=-1), rtol=1e-4, atol=1e-5)
    assert q.embedding.grad is None or q.embedding.grad.abs().sum() == 0  # only the codebook loss trains it


# --- the EMA codebook ---------------------------------------------------------------------
def ema_expected(q: VectorQuantizer, z: torch.Tensor, indices: torch.Tensor, count: torch.Tensor,
                 total: torch.Tensor, decay: float = 0.99, eps: float = 1e-5, ranks: int = 1) -> torch.Tensor:
    """van den Oord et al. App. A.1 eqs. 6-8 with Sonnet's Laplace smoothing."""
    onehot = F.one_hot(indices, q.num_codes).float()
    n = decay * count + (1 - decay) * ranks * onehot.sum(0)
    m = decay * total + (1 - decay) * ranks * onehot.t() @ z
    smoothed = (n + eps) / (n.sum() + q.num_codes * eps) * n.sum()
    return m / smoothed[:, None]


def test_ema_update_is_the_papers_and_the_codebook_is_not_optimised():
    """After a runner step (forward, backward, AdamW at lr 1e-2) the codebook is exactly the EMA
    update of its statistics: no codebook loss and no optimiser moved it."""
    torch.manual_seed(3)
    q = VectorQuantizer(16, 4, ema_decay=0.99)
    assert not q.embedding.requires_grad
    assert all(p is not q.embedding for g in q.param_groups() for p in g["params"])
    count, total = q.ema_count.clone(), q.ema_sum.clone()
    z = torch.randn(64, 4, requires_grad=True)  # an encoder output
    opt = runner_optimizer(q, [z])
    z_seen = z.detach().clone()  # AdamW moves z after the forward that the update used
    q.eval()
    indices = q(z).indices  # eval: the assignment the training forward will use, no update
    q.train()
    out = runner_step(q, z, opt)
    assert torch.equal(out.indices, indices)
    torch.testing.assert_close(q.embedding.detach(), ema_expected(q, z_seen, indices, count, total),
                               rtol=1e-5, atol=1e-6)
    assert set(out.terms) >= {"commitment"} and "codebook" not in out.terms
    torch.testing.assert_close(out.loss, 0.25 * out.terms["commitment"])


def test_ema_statistics_are_all_reduced(monkeypatch):
    """Under DDP the counts and sums are summed over ranks before the update; two ranks with
    the same batch must give the update of that batch counted twice."""
    torch.manual_seed(4)
    q = VectorQuantizer(16, 4, ema_decay=0.9)
    count, total = q.ema_count.clone(), q.ema_sum.clone()
    calls = []

    def two_identical_ranks(t):
        calls.append(t.shape)
        return t.mul_(2)

    monkeypatch.setattr(Fd, "all_reduce_sum_", two_identical_ranks)
    z = torch.randn(32, 4)
    out = q(z)
    assert len(calls) == 1, "counts and sums go in one collective"
    torch.testing.assert_close(q.embedding.detach(), ema_expected(q, z, out.indices, count, total, decay=0.9, ranks=2))


def test_ema_eval_does_not_update_and_kmeans_seeds_the_averages():
    torch.manual_seed(5)
    q = VectorQuantizer(8, 3, ema_decay=0.99)
    q.init_codebook(torch.randn(200, 3), torch.Generator().manual_seed(0))
    torch.testing.assert_close(q.ema_sum, q.embedding.detach())
    torch.testing.assert_close(q.ema_count, torch.ones(8))
    book = q.embedding.detach().clone()
    q.eval()
    q(torch.randn(20, 3))
    assert torch.equal(q.embedding.detach(), book)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"ema_decay": 1.0}, "ema_decay must be in (0, 1)"), ({"ema_decay": 0.0}, "ema_decay must be in (0, 1)"),
    ({"ema_decay": 1.5}, "ema_decay must be in (0, 1)"), ({"ema_decay": -0.1}, "ema_decay must be in (0, 1)"),
    ({"ema_decay": 0.99, "ema_eps": 0.0}, "ema_eps must be a finite number > 0"),
    ({"ema_decay": 0.99, "alternating": True}, "ema_decay"),
    ({"ema_decay": 0.99, "sync_nu": 0.2}, "ema_decay"),
])
def test_bad_hyperparameters_are_one_line(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        VectorQuantizer(8, 4, **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs", [{"rotation": True}, {"rotation": True, "l2": True}, {"ema_decay": 0.99}])
def test_conformance(kwargs):
    from vqbench.testing import check_quantizer

    check_quantizer(VectorQuantizer, kwargs=kwargs)
