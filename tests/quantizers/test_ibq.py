"""IBQ (Shi et al. 2024): hard codes forward, the softmax over all codes backward (every code
gets gradient each step), and the double quantization loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quantizers.base import CodebookQuantizer
from quantizers.ibq import IBQ


def test_forward_is_the_hard_code_of_the_largest_logit():
    torch.manual_seed(0)
    q = IBQ(32, 8)
    z = torch.randn(100, 8)
    out = q(z)
    book = q.embedding.detach()
    assert torch.equal(out.indices, (z @ book.t()).argmax(-1))
    torch.testing.assert_close(out.z_q.detach(), book[out.indices], rtol=0, atol=1e-6)
    assert isinstance(q, CodebookQuantizer) and q.codebook is q.embedding


def test_every_code_receives_gradient_from_the_task_loss():
    """Index backpropagation: the task gradient through z_q alone reaches every row of the
    codebook (the softmax over all codes), not only the selected rows as straight-through VQ."""
    torch.manual_seed(0)
    q = IBQ(64, 8, entropy_weight=0.0)
    z = torch.randn(6, 8, requires_grad=True)  # at most 6 of 64 codes selected
    out = q(z)
    out.z_q.pow(2).sum().backward()
    per_code = q.embedding.grad.norm(dim=-1)
    assert out.indices.unique().numel() <= 6
    assert (per_code > 0).all(), f"{int((per_code == 0).sum())}/64 codes got no gradient"
    assert z.grad.abs().sum() > 0


def test_backward_is_the_soft_mixture():
    """z_q = (h + p − sg p) E: the hard code's gradient (to its row of E) plus, through the
    softmax p over all codes, the gradient of p·sg(E) to z and to every row of E."""
    torch.manual_seed(2)
    q = IBQ(16, 4, entropy_weight=0.0)
    z = torch.randn(20, 4, requires_grad=True)
    g = torch.randn(20, 4)
    grads = torch.autograd.grad((q(z).z_q * g).sum(), [z, q.embedding])
    book = q.embedding.detach().clone().requires_grad_(True)
    zz = z.detach().clone().requires_grad_(True)
    soft = torch.softmax(zz @ book.t(), -1)
    hard = F.one_hot((zz @ book.t()).argmax(-1), 16).float()
    expected = torch.autograd.grad(((hard @ book) * g).sum() + ((soft @ book.detach()) * g).sum(), [zz, book])
    torch.testing.assert_close(grads[0], expected[0])
    torch.testing.assert_close(grads[1], expected[1])


def test_double_quantization_loss():
    torch.manual_seed(3)
    q = IBQ(16, 4, entropy_weight=0.0)
    z = torch.randn(30, 4)
    out = q(z)
    chosen = q.embedding.detach()[out.indices]
    d = F.mse_loss(chosen, z)
    torch.testing.assert_close(out.terms["index"], d)  # value of ‖z_q − z‖² is the hard code's
    torch.testing.assert_close(out.loss, d + d + 0.25 * d)
    assert set(out.terms) == {"index", "commitment", "codebook"}


def test_entropy_term_on_the_sharpened_softmax():
    torch.manual_seed(4)
    q = IBQ(16, 4)
    z = torch.randn(50, 4) * 0.1
    out = q(z)
    p = torch.softmax(z @ q.embedding.detach().t() / 0.01, -1)
    h = lambda x: -(x * x.clamp_min(1e-30).log()).sum(-1)  # noqa: E731
    torch.testing.assert_close(out.terms["sample_entropy"], h(p).mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.terms["batch_entropy"], h(p.mean(0)), rtol=1e-4, atol=1e-5)
    quant = out.terms["index"] + out.terms["commitment"] + 0.25 * out.terms["codebook"]
    torch.testing.assert_close(out.loss, quant + 0.05 * (h(p).mean() - h(p.mean(0))), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"beta": -1.0}, "beta must be"), ({"entropy_temperature": 0.0}, "entropy_temperature must be"),
    ({"entropy_weight": float("nan")}, "entropy_weight must be"),
])
def test_bad_hyperparameters_are_one_line(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        IBQ(16, 4, **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_conformance():
    from vqbench.testing import check_quantizer

    check_quantizer(IBQ)
