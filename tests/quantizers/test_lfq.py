"""LFQ (MAGVIT-v2) and BSQ: sign codes, the entropy penalty's two terms with the papers'
weights, the batch term that keeps codes in use, the sphere, bad sizes."""
from __future__ import annotations

import math

import pytest
import torch

from quantizers.lfq import BinaryQuantizer, bits_table

LFQ_DEFAULTS = dict(entropy_weight=0.1, sample_weight=1.0, batch_weight=1.0, inv_temperature=100.0,
                    commitment=0.25)
BSQ_DEFAULTS = dict(spherical=True, entropy_weight=0.1, inv_temperature=1.0, commitment=0.0, group_size=1)


def reference_entropies(u: torch.Tensor, corners: torch.Tensor, kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MAGVIT-v2's entropy terms from the full softmax over all C corners (no factorisation)."""
    q = torch.softmax(-kappa * torch.cdist(u, corners).pow(2), dim=-1)
    h = lambda p: -(p * p.clamp_min(1e-30).log()).sum(-1)  # noqa: E731
    return h(q).mean(), h(q.mean(0))


def test_sign_codes_and_index_order():
    q = BinaryQuantizer(16, 4)  # d = L: no projection, u = z
    z = torch.tensor([[0.3, -2.0, 0.1, -0.1], [-1.0, -1.0, -1.0, 5.0]])
    out = q(z)
    torch.testing.assert_close(out.z_q, torch.tensor([[1.0, -1, 1, -1], [-1, -1, -1, 1]]))
    assert out.indices.tolist() == [1 + 4, 8]  # Σ 2^k·1[u_k > 0], channel 1 lowest (MAGVIT-v2 eq. 3)
    torch.testing.assert_close(q.codebook[out.indices], out.z_q)
    assert q.codebook.shape == (16, 4) and set(q.codebook.unique().tolist()) == {-1.0, 1.0}


def test_default_weights_follow_the_papers():
    lfq = BinaryQuantizer(1024, 64)
    assert (lfq.bits, lfq.entropy_weight, lfq.sample_weight, lfq.batch_weight, lfq.inv_temperature,
            lfq.commitment, lfq.group_size) == (10, 0.1, 1.0, 1.0, 100.0, 0.25, 10)
    assert [n for n, _ in lfq.named_parameters()] == ["project_in.weight", "project_in.bias",
                                                     "project_out.weight", "project_out.bias"]


@pytest.mark.parametrize("kwargs", [LFQ_DEFAULTS, dict(BSQ_DEFAULTS, group_size=4)])
def test_entropy_terms_equal_the_full_softmax(kwargs):
    """The factorised per-sample entropy and the grouped batch entropy equal MAGVIT-v2's terms
    computed over all C codes, and the loss is w·(γ₀ H_sample − γ H_batch) + β·commitment."""
    torch.manual_seed(0)
    q = BinaryQuantizer(16, 4, **kwargs)
    z = torch.randn(300, 4) * 0.05
    out = q(z)
    u = torch.nn.functional.normalize(z, dim=-1) if q.spherical else z
    sample, batch = reference_entropies(u, q.corners, q.inv_temperature)
    torch.testing.assert_close(out.terms["sample_entropy"], sample, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.terms["batch_entropy"], batch, rtol=1e-4, atol=1e-5)
    expected = q.entropy_weight * (sample - batch) + q.commitment * out.terms["commitment"]
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)


def test_bsq_factorised_batch_entropy_is_the_sum_over_bits():
    """BSQ eq. 8 with group size 1: H(E[q]) ≈ Σ_k H(E[q_k]) (an upper bound of the joint)."""
    torch.manual_seed(1)
    q = BinaryQuantizer(64, 6, **BSQ_DEFAULTS)
    z = torch.randn(500, 6)
    out = q(z)
    p = torch.sigmoid(4 * torch.nn.functional.normalize(z, dim=-1) / math.sqrt(6)).mean(0)
    per_bit = -(p * p.log() + (1 - p) * (1 - p).log()).sum()
    torch.testing.assert_close(out.terms["batch_entropy"], per_bit)
    _, joint = reference_entropies(torch.nn.functional.normalize(z, dim=-1), q.corners, 1.0)
    assert out.terms["batch_entropy"] >= joint - 1e-5


def test_bsq_lives_on_the_sphere():
    q = BinaryQuantizer(256, 8, **BSQ_DEFAULTS)
    z = torch.randn(100, 8) * 7
    out = q(z)
    torch.testing.assert_close(out.z_q.norm(dim=-1), torch.ones(100))
    torch.testing.assert_close(out.z_q.abs(), torch.full((100, 8), 8**-0.5))
    assert torch.equal(out.indices, q(z * 0.01).indices)  # only the direction matters


def test_batch_entropy_term_keeps_codes_in_use():
    """Start with every latent in one code. Minimising the penalty spreads them over the codes
    (the batch term raises H(E[q])); without the batch term they stay in one (the per-sample
    term only makes them more confident). Fails if the batch term is dropped or mis-signed."""
    torch.manual_seed(0)
    q = BinaryQuantizer(16, 4, commitment=0.0, entropy_weight=1.0)
    z = (0.01 + 0.002 * torch.randn(128, 4)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=1e-2)
    assert q(z).indices.unique().numel() == 1
    for _ in range(30):
        loss = q(z).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    used = q(z).indices.unique().numel()
    assert used >= 12, f"only {used}/16 codes in use after minimising the entropy penalty"


def test_commitment_and_eval():
    q = BinaryQuantizer(16, 4).eval()
    z = torch.randn(50, 4)
    out = q(z)
    assert set(out.terms) == {"commitment"}  # the penalty is a training regulariser
    torch.testing.assert_close(out.loss, 0.25 * ((z - z.sign()) ** 2).mean())


@pytest.mark.parametrize("kwargs, fragment", [
    ({"num_codes": 1000}, "num_codes must be a power of two"),
    ({"num_codes": 1}, "num_codes must be a power of two"),
    ({"num_codes": 16, "group_size": 3}, "group_size must divide the 4 bits"),
    ({"num_codes": 16, "inv_temperature": 0.0}, "inv_temperature must be a finite number > 0"),
    ({"num_codes": 16, "entropy_weight": -0.1}, "entropy_weight must be a finite number ≥ 0"),
])
def test_bad_hyperparameters_are_one_line(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        BinaryQuantizer(dim=8, **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bits_table():
    assert bits_table(3).tolist()[5] == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("kwargs", [LFQ_DEFAULTS, BSQ_DEFAULTS])
def test_conformance(kwargs):
    from vqbench.testing import check_quantizer

    check_quantizer(BinaryQuantizer, kwargs=kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_codes": 1000}, r"got 1000; try 512 or 1024$"),
    ({"num_codes": 1}, r"got 1; try 2 or 4$"),
    ({"num_codes": 6}, r"got 6; try 4 or 8$"),
    ({"num_codes": 16, "sample_weight": -1.0}, r"^sample_weight must be a finite number ≥ 0"),
    ({"num_codes": 16, "batch_weight": -1.0}, r"^batch_weight must be a finite number ≥ 0"),
    ({"num_codes": 16, "commitment": -1.0}, r"^commitment must be a finite number ≥ 0"),
    ({"num_codes": 16, "group_size": 1.5}, r"^group_size must divide the 4 bits and be 1..16, got 1.5$"),
    ({"num_codes": 2**17, "group_size": 17}, r"^group_size must divide the 17 bits and be 1..16"),
])
def test_bad_sizes_name_the_option_and_the_nearest_good_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BinaryQuantizer(dim=8, **kwargs)


def test_smallest_sizes_defaults_buffers_repr_and_zero_signs():
    q = BinaryQuantizer(2, 1)  # one bit: the smallest LFQ
    assert q.bits == 1 and q.codebook.shape == (2, 1)
    d = BinaryQuantizer()
    assert (d.num_codes, d.dim, d.spherical) == (1024, 64, False)
    assert set(BinaryQuantizer(16, 8).state_dict()) == {"project_in.weight", "project_in.bias",
                                                         "project_out.weight", "project_out.bias"}
    assert "LFQ: bits=4, num_codes=16, dim=4" in repr(BinaryQuantizer(16, 4))
    assert "BSQ: bits=4" in repr(BinaryQuantizer(16, 4, spherical=True))
    q = BinaryQuantizer(16, 4).eval()  # u = z; a zero channel is the negative sign, bit 0
    out = q(torch.tensor([[0.0, 1.0, 0.0, 1.0]], dtype=torch.float64))
    assert out.indices.tolist() == [2 + 8] and out.z_q.dtype == torch.float64
    torch.testing.assert_close(out.z_q, torch.tensor([[-1.0, 1, -1, 1]], dtype=torch.float64))
    assert out.probs is None and set(out.terms) == {"commitment"}


def test_grouped_batch_entropy_of_three_bit_groups():
    """group_size 3 of 6 bits: batch entropy = Σ over the two groups of H(mean q(group code))."""
    torch.manual_seed(2)
    q = BinaryQuantizer(64, 6, inv_temperature=1.0, group_size=3)
    u = torch.randn(50, 6)
    _, batch = q.entropies(u)
    logit = 4 * u
    total = 0.0
    for g in range(2):
        p1 = torch.sigmoid(logit[:, 3 * g:3 * g + 3])  # (N, 3)
        bits = bits_table(3)  # (8, 3)
        q_code = (bits * p1[:, None] + (1 - bits) * (1 - p1[:, None])).prod(-1).mean(0)  # (8,)
        total += float(-(q_code * q_code.log()).sum())
    assert float(batch) == pytest.approx(total, rel=1e-5)
