"""Residual quantization (SoundStream; RQ-VAE): stage k quantizes the residual of stages
< k, any registered quantizer as the stage, composite and per-stage codes, one gradient path."""
from __future__ import annotations

import pytest
import torch

from quantizers.residual import ResidualQuantizer
from quantizers.vq import VectorQuantizer
from vqbench.errors import UserError
from vqbench.registry import build_quantizer


def plain(num_codes: int = 64, dim: int = 4, depth: int = 2) -> ResidualQuantizer:
    return ResidualQuantizer(num_codes, dim, depth=depth, stage=VectorQuantizer)


def test_each_stage_quantizes_what_the_earlier_ones_left():
    """ẑ = Σ_k Q_k(r_k), r_{k+1} = r_k − Q_k(r_k): checked stage by stage against the stages
    called directly. Fails if a stage quantizes z (or anything else) instead of its residual."""
    torch.manual_seed(0)
    q = plain(512, 4, depth=3).eval()
    z = torch.randn(200, 4)
    with torch.no_grad():
        out = q(z)
        residual, total, codes = z, torch.zeros_like(z), []
        for s in q.stages:
            o = s(residual)
            total, residual = total + o.z_q, residual - o.z_q
            codes.append(o.indices)
    torch.testing.assert_close(out.z_q, total)
    assert torch.equal(q.split_indices(out.indices), torch.stack(codes, -1))


def test_more_stages_quantize_finer():
    """After stage-wise k-means, each extra stage lowers the error (it codes the residual)."""
    torch.manual_seed(0)
    z = torch.randn(2000, 4)
    errors = []
    for depth in (1, 2, 3):
        q = ResidualQuantizer(8**depth, 4, depth=depth, stage=VectorQuantizer).eval()
        q.init_codebook(z, torch.Generator().manual_seed(0))
        with torch.no_grad():
            errors.append((q(z).z_q - z).pow(2).mean().item())
    assert errors[1] < 0.6 * errors[0] and errors[2] < 0.7 * errors[1], errors


def test_composite_and_per_stage_codes():
    torch.manual_seed(1)
    q = plain(64, 4).eval()  # 2 stages x 8 codes
    assert [s.num_codes for s in q.stages] == [8, 8] and q.codebook.shape == (64, 4)
    z = torch.randn(7, 4, 3, 3)
    with torch.no_grad():
        out = q(z)
    codes = q.split_indices(out.indices)
    assert codes.shape == (7, 3, 3, 2) and int(codes.max()) < 8
    assert torch.equal(out.indices, codes[..., 0] * 8 + codes[..., 1])  # stage 1 most significant
    assert torch.equal(q.join_indices(codes), out.indices)
    torch.testing.assert_close(out.z_q.permute(0, 2, 3, 1), q.codebook[out.indices])
    with torch.no_grad():
        torch.testing.assert_close(q.embed(codes), out.z_q)  # (B, H, W, K) -> (B, D, H, W)
        torch.testing.assert_close(q.embed(codes.reshape(-1, 2)), out.z_q.permute(0, 2, 3, 1).reshape(-1, 4))
        assert torch.equal(q.embed(out.indices), q.embed(codes))  # composite codes, as every quantizer's
    with pytest.raises(ValueError, match="per-stage codes"):
        q.embed(codes.reshape(-1, 1, 2).expand(-1, 3, 2).reshape(-1, 3))  # 3 codes per position: not (N, 2)


def test_gradient_to_z_is_one_straight_through_path():
    """For straight-through stages ∂ẑ/∂z = I (RQ-VAE eq. 6), not K·I; each stage's commitment
    term is RQ-VAE's ‖z − sg(ẑ^(k))‖² on the partial sum."""
    torch.manual_seed(2)
    q = plain(64, 4, depth=2)
    z = torch.randn(30, 4, requires_grad=True)
    out = q(z)
    (g,) = torch.autograd.grad(out.z_q.sum(), z, retain_graph=True)
    torch.testing.assert_close(g, torch.ones_like(g))
    with torch.no_grad():
        first = q.stages[0](z).z_q
    torch.testing.assert_close(out.terms["stage2.commitment"],
                               (z.detach() - first - q.stages[1].codebook.detach()[q.split_indices(out.indices)[:, 1]])
                               .pow(2).mean())


def test_hooks_fan_out_to_the_stages():
    q = ResidualQuantizer(16, 4, depth=2, stage=VectorQuantizer, stage_options={"replace_window": 2})
    assert not q.cuda_graph_safe  # replacement keeps Python state in a stage
    assert plain().cuda_graph_safe
    params = [p for g in q.param_groups() for p in g["params"]]
    assert len(params) == 2 and all(p is s.embedding for p, s in zip(params, q.stages))


@pytest.mark.parametrize("kwargs, fragment", [
    ({"depth": 0}, "depth must be a whole number ≥ 1"),
    ({"depth": 1.5}, "depth must be a whole number ≥ 1"),
    ({"num_codes": 1000}, "1000 is not a perfect power 2"),
    ({"stage": "vqvae-l2"}, "registered names such as 'vqvae-l2' are resolved by vqbench"),
    ({"stage": "quantizers.vq:Nope"}, "cannot be imported"),
    ({"stage_options": [1]}, "stage_options must be a mapping"),
])
def test_bad_hyperparameters_are_one_line(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        ResidualQuantizer(**{"num_codes": 64, "dim": 4, "stage": VectorQuantizer, **kwargs})
    assert fragment in str(err.value) and "\n" not in str(err.value)


# --- through the registry: stages by name ---------------------------------------------------
def test_rvq_default_is_two_l2_stages_of_32_codes():
    q = build_quantizer("rvq", num_codes=1024, dim=64)
    assert q.depth == 2 and [s.num_codes for s in q.stages] == [32, 32] and q.num_codes == 1024
    assert all(isinstance(s, VectorQuantizer) and s.l2 and s.commitment == 0.25 for s in q.stages)
    out = q(torch.randn(2, 64, 4, 4))
    assert out.z_q.shape == (2, 64, 4, 4) and q.split_indices(out.indices).shape == (2, 4, 4, 2)


def test_rvq_of_any_registered_quantizer():
    fsq = build_quantizer("rvq", num_codes=1024, dim=16, stage="fsq")
    assert [s.levels for s in fsq.stages] == [[6, 5], [6, 5]] and fsq.num_codes == 900  # FSQ rounds 32 to 30
    lfq = build_quantizer("rvq", num_codes=256, dim=16, depth=2, stage="lfq", stage_options={"commitment": 0.0})
    assert [s.bits for s in lfq.stages] == [4, 4] and lfq.stages[0].commitment == 0.0
    out = lfq(torch.randn(10, 16))
    assert set(out.terms) >= {"stage1.batch_entropy", "stage2.commitment"}


@pytest.mark.parametrize("kwargs, fragment", [
    ({"stage": "vqvae-l3"}, "did you mean 'vqvae-l2'"),
    ({"stage_options": {"comitment": 1.0}}, "did you mean 'commitment'"),
    ({"stage_options": {"commitment": -1.0}}, "commitment must be a finite number ≥ 0"),
    ({"depth": 0}, "depth must be a whole number ≥ 1"),
])
def test_registry_errors_name_the_stage(kwargs, fragment):
    with pytest.raises(UserError) as err:
        build_quantizer("rvq", num_codes=64, dim=4, **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("quantizer 'rvq'")


@pytest.mark.parametrize("stage", ["vqvae-l2", "fsq", "simvq"])
def test_conformance(stage):
    from vqbench.testing import check_quantizer

    check_quantizer("rvq", kwargs={"stage": stage})


@pytest.mark.parametrize("kwargs, message", [
    ({"num_codes": 1000}, r"1000 is not a perfect power 2 \(e\.g\. num_codes=1024\)$"),
    ({"num_codes": 3}, r"3 is not a perfect power 2 \(e\.g\. num_codes=4\)$"),
    ({"num_codes": 8, "depth": 3, "dim": 4}, None),  # 2 codes per stage: the smallest
    ({"stage": "quantizers.vq:VectorQuantizer:x"}, r"^stage 'quantizers.vq:VectorQuantizer:x' cannot be imported"),
    ({"stage": lambda num_codes, dim: torch.nn.Linear(1, 1)}, r"^stage <function .*> did not build a Quantizer of dim 4$"),
    ({"stage": lambda num_codes, dim: VectorQuantizer(num_codes, dim + 1)}, r"did not build a Quantizer of dim 4$"),
    ({"stage": 3}, r"^stage must be a Quantizer class, a factory or 'module:Class', got 3 \(registered names such as "
                   r"'vqvae-l2' are resolved by vqbench's build_quantizer\('rvq', \.\.\.\)\)$"),
])
def test_sizes_and_stages_are_checked_with_their_messages(kwargs, message):
    args = {"num_codes": 64, "dim": 4, "stage": VectorQuantizer, **kwargs}
    if message is None:
        assert ResidualQuantizer(**args).sizes.tolist() == [2, 2, 2]
        return
    with pytest.raises(ValueError, match=message):
        ResidualQuantizer(**args)


def test_defaults_buffers_repr_loss_and_per_stage_code_checks():
    q = ResidualQuantizer()
    assert (q.num_codes, q.dim, q.depth) == (1024, 64, 2) and type(q.stages[0]) is VectorQuantizer
    q = ResidualQuantizer(64, 4, depth=2, stage="quantizers.vq:VectorQuantizer")
    assert q.radix.dtype == torch.long and q.sizes.tolist() == [8, 8] and q.radix.tolist() == [8, 1]
    assert not any(k.startswith(("radix", "sizes")) for k in q.state_dict())
    assert "depth=2, num_codes=64 (8 x 8), dim=4" in repr(q)
    torch.manual_seed(0)
    z = torch.randn(10, 4)
    out = q(z)
    parts = [q.stages[0](z)]
    parts.append(q.stages[1](z - parts[0].z_q.detach()))
    torch.testing.assert_close(out.loss, parts[0].loss + parts[1].loss)
    one = ResidualQuantizer(8, 4, depth=1, stage=VectorQuantizer)
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(one(zz).z_q.sum(), zz)
    torch.testing.assert_close(grad, torch.ones_like(z))  # one stage: the plain straight-through
    assert one(z).indices.shape == (10,)
    for bad in (torch.tensor([[0, 8]]), torch.tensor([[-1, 0]])):
        with pytest.raises(ValueError, match=r"^per-stage codes must be below the stage sizes \[8, 8\]$"):
            q.embed(bad)
    torch.testing.assert_close(q.embed(torch.tensor([[7, 7]])), q.codebook[63:64])


def test_set_progress_and_check_device_reach_every_stage():
    seen = []

    class Spy(VectorQuantizer):
        def set_progress(self, fraction):
            seen.append(("progress", fraction))

        def check_device(self, device):
            seen.append(("device", device))

    q = ResidualQuantizer(16, 4, depth=2, stage=Spy)
    q.set_progress(0.25)
    q.check_device(torch.device("cpu"))
    assert seen == [("progress", 0.25)] * 2 + [("device", torch.device("cpu"))] * 2
