"""``Quantizer.embed``: codes back to the eval-mode z_q, for every registered quantizer
(plugins and the lucid adapters included), in both layouts, and its refusals."""
from __future__ import annotations

import pytest
import torch

from quantizers.base import Quantizer
from quantizers.residual import ResidualQuantizer
from quantizers.vq import VectorQuantizer
from vqbench import build_quantizer, list_quantizers

NAMES = list_quantizers()


def trained_like(name: str, num_codes: int = 16, dim: int = 8) -> tuple[Quantizer, torch.Tensor]:
    """A quantizer initialised from data (so that many codes are used), in eval mode, and its input."""
    torch.manual_seed(0)
    q = build_quantizer(name, num_codes=num_codes, dim=dim)
    z = torch.randn(3, dim, 4, 4)
    q.init_codebook(z.permute(0, 2, 3, 1).reshape(-1, dim), torch.Generator().manual_seed(0))
    return q.eval(), z


def test_every_builtin_plugin_and_adapter_is_covered():
    assert {"gmvq", "sqvae", "gumbel-vqvae", "fsq", "lfq", "bsq", "simvq", "ibq", "rvq", "vqvae-affine"} <= set(NAMES)
    assert "example-fvq" in NAMES, "the example plugin (examples/vqbench-plugin-example) must be installed"
    assert any(n.startswith("lucid-") for n in NAMES), "vector-quantize-pytorch (the lucid adapters) must be installed"


@pytest.mark.parametrize("name", NAMES)
def test_embed_gives_back_the_eval_z_q(name):
    q, z = trained_like(name)
    with torch.no_grad():
        out = q(z)
        back, flat = q.embed(out.indices), q.embed(out.indices.reshape(-1))
    assert back.shape == z.shape and flat.shape == (48, 8)
    # Equal up to the straight-through estimator's rounding: z + sg(c − z) is c to about an ulp.
    torch.testing.assert_close(back, out.z_q, rtol=1e-5, atol=1e-6)
    assert torch.equal(flat, back.permute(0, 2, 3, 1).reshape(-1, 8))
    assert back.dtype == torch.float32 and not torch.isnan(back).any()


@pytest.mark.parametrize("name", ["gmvq", "sqvae", "gumbel-vqvae", "fsq", "lfq", "bsq", "ibq", "lucid-fsq"])
def test_embed_is_exact_where_eval_z_q_is_the_code_itself(name):
    """No straight-through rounding in these eval paths: the code's latent, bit for bit."""
    q, z = trained_like(name)
    with torch.no_grad():
        out = q(z)
        assert torch.equal(q.embed(out.indices), out.z_q)


def test_the_default_is_the_effective_codebook():
    q, _ = trained_like("vqvae-affine")
    codes = torch.tensor([[[0, 3], [15, 7]]])
    with torch.no_grad():
        assert torch.equal(q.embed(codes).permute(0, 2, 3, 1), q.codebook[codes])


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([0, 16]), r"in \[0, 16\)"), (torch.tensor([-1]), r"in \[0, 16\)"),
    (torch.zeros(4), "integer codes"), (torch.zeros(2, 2, dtype=torch.long), r"\(N,\) or \(B, H, W\)"),
    (torch.zeros(4, dtype=torch.bool), "integer codes"),
])
def test_bad_codes_are_one_clear_error(bad, match):
    q, _ = trained_like("vqvae")
    with pytest.raises(ValueError, match=match):
        q.embed(bad)


def test_empty_and_narrow_integer_codes():
    q, _ = trained_like("vqvae")
    assert q.embed(torch.zeros(0, dtype=torch.long)).shape == (0, 8)
    codes = torch.tensor([1, 2, 3], dtype=torch.int32)
    assert torch.equal(q.embed(codes), q.embed(codes.long()))


def test_residual_takes_composite_and_per_stage_codes():
    torch.manual_seed(3)
    q = ResidualQuantizer(64, 4, depth=2, stage=VectorQuantizer).eval()
    z = torch.randn(2, 4, 3, 3)
    q.init_codebook(z.permute(0, 2, 3, 1).reshape(-1, 4), torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = q(z)
        per_stage = q.split_indices(out.indices)
        assert torch.equal(q.embed(out.indices), q.embed(per_stage))  # (B, H, W) and (B, H, W, K)
        assert torch.equal(q.embed(out.indices.reshape(-1)), q.embed(per_stage.reshape(-1, 2)))
        torch.testing.assert_close(q.embed(out.indices), out.z_q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="below the stage sizes"):
        q.embed(torch.tensor([[8, 0]]))  # 8 codes per stage


def test_residual_of_fsq_stages_uses_each_stages_own_dequantize():
    q = build_quantizer("rvq", num_codes=64, dim=8, stage="fsq").eval()  # 2 stages of 8 FSQ codes
    codes = torch.arange(64)
    with torch.no_grad():
        expected = sum(s.dequantize(c) for s, c in zip(q.stages, q.split_indices(codes).unbind(-1)))
        assert torch.equal(q.embed(codes), expected)
        torch.testing.assert_close(q.embed(codes), q.codebook, rtol=1e-5, atol=1e-6)
