"""FSQ (Mentzer et al. 2024): the paper's levels, bounded rounding, straight-through, every
code reachable in fp32 and under bf16 autocast, no codebook and no auxiliary loss."""
from __future__ import annotations

import math

import pytest
import torch

from quantizers.fsq import FSQ, PAPER_LEVELS, default_levels


def preimages(q: FSQ) -> torch.Tensor:
    """An input (C, d) whose bounded value sits inside each code's rounding bin (margin ≥ 0.1
    level units), for a quantizer without projections: the inverse of the bound."""
    grid = q.implicit_codebook * q.half_width  # integer levels
    target = (grid + q.offset).clamp(-(q.half_l - 0.1), q.half_l - 0.1)  # = tanh(z + s)·h
    return torch.atanh(target / q.half_l) - q.shift


def test_paper_levels_and_sizes():
    assert FSQ(1024, 64).levels == [8, 5, 5, 5] and FSQ(1024, 64).num_codes == 1000
    for size, levels in PAPER_LEVELS.items():
        q = FSQ(size, 8)
        assert q.levels == levels and q.num_codes == math.prod(levels)
    assert default_levels(16) == [4, 4] and default_levels(30) == [6, 5]
    for c in (3, 7, 16, 32, 100, 500, 5000):
        assert min(default_levels(c)) >= 3 and math.prod(default_levels(c)) <= c


def test_no_codebook_parameters_and_no_loss():
    q = FSQ(1024, 64)
    names = {n for n, _ in q.named_parameters()}
    assert names == {"project_in.weight", "project_in.bias", "project_out.weight", "project_out.bias"}
    assert list(FSQ(1000, 4, levels=[8, 5, 5, 5]).parameters()) == []  # d = D: no projection at all
    out = q(torch.randn(50, 64))
    assert out.loss.item() == 0.0 and out.terms == {} and out.probs is None
    assert set(q.state_dict()) == names  # the grid is derived from the levels, not stored


@pytest.mark.parametrize("autocast", [False, True])
def test_every_code_is_reachable(autocast):
    """Each of the C codes is hit by its preimage, index = its mixed-radix number, in fp32 and
    under bf16 autocast (where an upstream release computed the index in bf16 and lost half)."""
    q = FSQ(1000, 4, levels=[8, 5, 5, 5]).eval()
    z = preimages(q)
    if autocast:
        z = z.bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = q(z)
    assert torch.equal(out.indices, torch.arange(1000))
    torch.testing.assert_close(out.z_q.float(), q.implicit_codebook, atol=0, rtol=0)  # grid values are exact in bf16


def test_bf16_autocast_gives_the_fp32_codes():
    """With a projection (D = 64): the bf16 encoder output, quantized under autocast, gets the
    codes fp32 gives for the same values — rounding and projection do not run in bf16."""
    torch.manual_seed(0)
    q = FSQ(1024, 64).eval()
    z = (torch.randn(4096, 64) * 2).bfloat16()
    with torch.no_grad():
        reference = q(z.float()).indices
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = q(z)
    assert out.z_q.dtype == torch.bfloat16
    assert torch.equal(out.indices, reference)
    assert reference.unique().numel() > 900  # random inputs cover the grid


def test_bound_and_rounding_match_the_paper():
    """ẑ = round(tanh(z + s)·h − o) / ⌊L/2⌋ with App. A.1's h, o, s: L=5 gives {−1, −½, 0, ½, 1},
    L=8 gives {−1, −¾, …, ¾}; f(0) = 0."""
    q = FSQ(40, 2, levels=[5, 8])
    z = torch.linspace(-6, 6, 2001)[:, None].repeat(1, 2)
    out = q(z)
    assert set(out.z_q[:, 0].tolist()) == {-1.0, -0.5, 0.0, 0.5, 1.0}
    assert set(out.z_q[:, 1].tolist()) == {k / 4 for k in range(-4, 4)}
    torch.testing.assert_close(q.bound(torch.zeros(1, 2)), torch.zeros(1, 2))
    h = torch.tensor([4 * (1 - 1e-3) / 2, 7 * (1 - 1e-3) / 2])
    o = torch.tensor([0.0, 0.5])
    expected = (torch.tanh(z + torch.atanh(o / h)) * h - o).round() / torch.tensor([2.0, 4.0])
    torch.testing.assert_close(out.z_q, expected)


def test_straight_through_gradient():
    """The gradient is the bound's (round is the identity backward), not zero."""
    q = FSQ(25, 2, levels=[5, 5])
    z = torch.randn(64, 2, requires_grad=True)
    (g,) = torch.autograd.grad(q(z).z_q.sum(), z)
    zz = z.detach().requires_grad_(True)
    (expected,) = torch.autograd.grad((q.bound(zz) / q.half_width).sum(), zz)
    torch.testing.assert_close(g, expected)
    assert (g > 0).all()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"num_codes": 1024, "levels": [8, 5, 5]}, "give 200 codes but num_codes is 1024"),
    ({"num_codes": 100, "levels": [8, 5, 5]}, "give 200 codes but num_codes is 100"),
    ({"num_codes": 4, "levels": [2, 2]}, "levels must be whole numbers ≥ 3"),
    ({"num_codes": 16, "levels": "4,a"}, "levels must be a list of whole numbers"),
    ({"num_codes": 16, "eps": 0.5}, "eps must satisfy"),
    ({"num_codes": 2}, "FSQ needs num_codes ≥ 3"),
])
def test_bad_hyperparameters_are_one_line(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        FSQ(dim=8, **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_accepted_level_spellings():
    assert FSQ(1024, 8, levels=[8, 5, 5, 5]).num_codes == 1000  # the paper's row for 1024
    assert FSQ(200, 8, levels="8x5x5").levels == [8, 5, 5]
    assert FSQ(200, 8, levels=(8, 5, 5)).num_codes == 200


def test_conformance():
    from vqbench.testing import check_quantizer

    check_quantizer(FSQ)
