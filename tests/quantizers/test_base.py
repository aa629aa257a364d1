"""quantizers/base.py: forward-style and quantize-style subclasses, the shared codebook
(CodebookQuantizer, k-means by type), the AnnealedQuantizer + CodebookQuantizer mixins and the
τ schedule, and bad hyperparameters refused in one line (check_positive) across the families."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantizers.functional as Fq
from quantizers import AnnealedQuantizer, CodebookQuantizer, Quantizer, QuantizerOutput
from quantizers.gmvq import GMVQ
from quantizers.gumbel import GumbelQuantizer
from quantizers.sqvae import SQVAE
from quantizers.vq import VectorQuantizer
from tests.conftest import build_registered as build
from vqbench.testing import check_quantizer

PLUGINS_MD = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def nearest_code(z, codes):
    idx = torch.cdist(z, codes).argmin(-1)
    e = codes[idx]
    return QuantizerOutput(z_q=z + (e - z).detach(), loss=F.mse_loss(e, z.detach()) + F.mse_loss(z, e.detach()),
                           indices=idx)


class ForwardStyle(CodebookQuantizer):
    seen: list = []

    def forward(self, z):
        type(self).seen.append(tuple(z.shape))
        return nearest_code(z, self.codebook)


class QuantizeStyle(CodebookQuantizer):
    def quantize(self, z):
        return nearest_code(z, self.codebook)


@pytest.mark.parametrize("cls", [ForwardStyle, QuantizeStyle])
def test_both_styles_build_pass_the_kit_and_take_both_layouts(cls):
    check_quantizer(cls)
    q = cls(num_codes=8, dim=4)
    for shape in [(2, 4, 3, 5), (7, 4)]:
        out = q(torch.randn(*shape))
        assert out.z_q.shape == shape and out.indices.shape == (shape[0], *shape[2:])
    assert q.quantize(torch.randn(7, 4)).indices.shape == (7,)  # forward-style: quantize is its forward


def test_a_forward_style_forward_receives_flat_vectors():
    ForwardStyle.seen.clear()
    ForwardStyle(num_codes=8, dim=4)(torch.randn(2, 4, 3, 5))
    assert ForwardStyle.seen == [(30, 4)]


def test_a_forward_style_subclass_can_wrap_its_parent_forward():
    class Scaled(ForwardStyle):
        def forward(self, z):
            out = super().forward(z)
            out.loss = 2 * out.loss
            return out

    q, parent = Scaled(num_codes=8, dim=4), ForwardStyle(num_codes=8, dim=4)
    parent.load_state_dict(q.state_dict())
    z = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(q(z).loss, 2 * parent(z).loss)
    assert q(z).z_q.shape == z.shape


def test_a_forward_below_a_quantize_style_class_is_an_ordinary_override():
    class Logged(QuantizeStyle):
        def forward(self, z_e):
            assert z_e.dim() == 4  # sees the input as given
            return super().forward(z_e)

    assert Logged.quantize is QuantizeStyle.quantize
    assert Logged(num_codes=8, dim=4)(torch.randn(2, 4, 3, 3)).indices.shape == (2, 3, 3)


def test_a_quantizer_with_neither_method_is_refused_by_name_and_abstract_bases_are_fine():
    class Neither(CodebookQuantizer):  # an abstract base of one's own may be defined
        pass

    with pytest.raises(TypeError, match=r"Neither implements neither quantize\(z\) nor forward\(z\)"):
        Neither(num_codes=8, dim=4)

    class Concrete(Neither):
        def forward(self, z):
            return nearest_code(z, self.codebook)

    check_quantizer(Concrete)


@pytest.mark.parametrize("style", ["Quantize-style", "Forward-style"])
def test_the_plugin_guide_examples_of_both_styles_conform(style):
    """docs/plugins.md shows one example of each style; both run as written."""
    text = PLUGINS_MD.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text[text.index(style):], re.S)
    namespace: dict = {}
    exec(compile(blocks[0], str(PLUGINS_MD), "exec"), namespace)  # noqa: S102 - our own docs
    cls = next(v for k, v in namespace.items() if isinstance(v, type) and k.startswith("My"))
    check_quantizer(cls)


@torch.no_grad()
def test_kmeans_init_targets_a_codebook_quantizer_by_type_not_by_attribute_name():
    samples = torch.randn(256, 4)

    class NamedLikeIt(Quantizer):  # a parameter called `embedding`, but no CodebookQuantizer
        def __init__(self, num_codes=8, dim=4):
            super().__init__(num_codes, dim)
            self.embedding = nn.Parameter(torch.zeros(num_codes, dim))

        @property
        def codebook(self):
            return self.embedding

        def quantize(self, z):
            return nearest_code(z, self.codebook)

    other = NamedLikeIt()
    other.init_codebook(samples, torch.Generator().manual_seed(0))
    assert torch.equal(other.embedding, torch.zeros(8, 4)) and other.codebook_parameter() is None

    q = QuantizeStyle(num_codes=8, dim=4)
    assert q.codebook_parameter() is q.embedding
    q.init_codebook(samples, torch.Generator().manual_seed(0))
    torch.testing.assert_close(q.embedding, Fq.kmeans(samples, 8, generator=torch.Generator().manual_seed(0)),
                               rtol=0, atol=0)


def test_annealed_and_codebook_mixins_combine_in_the_stochastic_quantizers():
    for cls in (GMVQ, SQVAE, GumbelQuantizer):
        assert cls.__mro__.index(AnnealedQuantizer) < cls.__mro__.index(CodebookQuantizer) \
            < cls.__mro__.index(Quantizer)
        q = cls(num_codes=16, dim=4)
        q.set_progress(1.0)  # AnnealedQuantizer's schedule
        assert float(q.tau) == pytest.approx(0.1)
        assert q.codebook is q.embedding and q.codebook_parameter() is q.embedding
    assert issubclass(VectorQuantizer, CodebookQuantizer) and not issubclass(VectorQuantizer, AnnealedQuantizer)


@pytest.mark.parametrize("cls, keys", [
    (GMVQ, ["embedding", "tau", "precision_scale", "calibrated", "weight_head.weight", "weight_head.bias"]),
    (SQVAE, ["embedding", "log_var", "tau", "calibrated"]),  # calibrated: log_var_init="auto" (issue 16)
    (GumbelQuantizer, ["embedding", "tau", "proj.weight", "proj.bias"]),
    (VectorQuantizer, ["embedding"]),
])
def test_checkpoint_keys_and_the_seeded_initial_weights_are_unchanged(cls, keys):
    """The codebook keeps its state_dict key, and a seed draws the same weights in the same
    order as before the shared codebook (Gumbel draws its projection first)."""
    torch.manual_seed(0)
    q = cls(num_codes=16, dim=4)
    assert list(q.state_dict()) == keys
    torch.manual_seed(0)
    if cls is GumbelQuantizer:
        proj = nn.Linear(4, 16)
    expected = torch.randn(16, 4) / 2.0
    assert torch.equal(q.embedding, expected)
    if cls is GumbelQuantizer:
        assert torch.equal(q.proj.weight, proj.weight) and torch.equal(q.proj.bias, proj.bias)
    if cls is GMVQ:  # the precision head's default init draws right after the codebook
        assert torch.equal(q.weight_head.weight, torch.zeros(4, 4))


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


def test_check_positive_says_what_was_wrong_and_what_would_be_right():
    from quantizers.base import check_positive

    for value in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError) as err:
            check_positive("gamma", value)
        assert str(err.value) == f"gamma must be a finite number > 0, got {value!r}"
    check_positive("beta", 0.0, allow_zero=True)
    with pytest.raises(ValueError) as err:
        check_positive("beta", -0.5, allow_zero=True)
    assert str(err.value) == "beta must be a finite number ≥ 0, got -0.5"
    for key in ("tau_start", "tau_end"):
        with pytest.raises(ValueError) as err:
            build("gumbel-vqvae", num_codes=8, dim=4, **{key: 0.0})
        assert str(err.value) == f"{key} must be a finite number > 0, got 0.0"


def test_sizes_one_code_of_one_dimension_is_the_smallest_quantizer():
    q = QuantizeStyle(num_codes=1, dim=1)
    assert (q.num_codes, q.dim) == (1, 1) and q(torch.randn(2, 1, 2, 3)).indices.shape == (2, 2, 3)
    for kwargs, message in [({"num_codes": 0, "dim": 4}, "num_codes must be a whole number ≥ 1, got 0"),
                            ({"num_codes": 2.5, "dim": 4}, "num_codes must be a whole number ≥ 1, got 2.5"),
                            ({"num_codes": 4, "dim": 0}, "dim must be a whole number ≥ 1, got 0"),
                            ({"num_codes": 4, "dim": 1.5}, "dim must be a whole number ≥ 1, got 1.5")]:
        with pytest.raises(ValueError) as err:
            QuantizeStyle(**kwargs)
        assert str(err.value) == message


class ProbsStub(CodebookQuantizer):
    """z_q = z, index n and a distinct probs row per flat position: where each lands is known."""

    def quantize(self, z):
        n = torch.arange(len(z))
        probs = torch.nn.functional.one_hot(n % self.num_codes, self.num_codes).float() + n[:, None]
        return QuantizerOutput(z_q=z, loss=z.sum() * 0, indices=n, probs=probs)


def test_the_layout_round_trip_puts_every_position_back_where_it_was():
    q = ProbsStub(num_codes=7, dim=3)
    z = torch.randn(2, 3, 4, 5)  # B=2, a non-square 4x5 grid
    out = q(z)
    assert torch.equal(out.z_q, z)
    flat = torch.arange(2 * 4 * 5).reshape(2, 4, 5)  # (b, h, w) -> b*20 + h*5 + w
    assert torch.equal(out.indices, flat)
    assert out.probs.shape == (2, 4, 5, 7)
    assert torch.equal(out.probs[1, 2, 3], q.quantize(torch.zeros(40, 3)).probs[1 * 20 + 2 * 5 + 3])
    for bad in (torch.randn(2, 4, 4, 5), torch.randn(2, 3, 4), torch.randn(3, 2, 3, 4, 5)):
        with pytest.raises(ValueError) as err:
            q(bad)
        assert str(err.value) == f"expected (B, 3, H, W) or (N, 3) input, got {tuple(bad.shape)}"


def test_embed_is_the_codebook_rows_in_the_codes_layout_and_refuses_bad_codes():
    q = QuantizeStyle(num_codes=6, dim=2)
    codes = torch.tensor([[[0, 5, 1], [2, 3, 4]]])  # (1, 2, 3): non-square
    z = q.embed(codes)
    assert z.shape == (1, 2, 2, 3)
    assert torch.equal(z[0, :, 1, 2], q.codebook[4].detach()) and torch.equal(z[0, :, 0, 1], q.codebook[5].detach())
    assert torch.equal(q.embed(torch.tensor([5, 0])), q.codebook[[5, 0]].detach())
    for bad in (torch.tensor([[1, 2]]), torch.tensor([1.0]), torch.tensor([True]), torch.tensor([1 + 0j])):
        with pytest.raises(ValueError) as err:
            q.embed(bad)
        assert str(err.value) == f"expected integer codes (N,) or (B, H, W), got {bad.dtype} {tuple(bad.shape)}"
    for bad, shown in ((torch.tensor([0, 6]), "[0, 6]"), (torch.tensor([-1, 3]), "[-1, 3]")):
        with pytest.raises(ValueError) as err:
            q.embed(bad)
        assert str(err.value) == f"codes must be in [0, 6), got {shown}"


def test_a_forward_style_grandchild_stays_forward_style():
    class Parent(Quantizer):
        @property
        def codebook(self):
            return torch.zeros(self.num_codes, self.dim)

        def forward(self, z):
            return QuantizerOutput(z_q=z, loss=z.sum() * 0, indices=torch.zeros(len(z), dtype=torch.long))

    class Child(Parent):
        seen: list = []

        def forward(self, z):
            type(self).seen.append(tuple(z.shape))
            return super().forward(z)

    out = Child(num_codes=2, dim=3)(torch.randn(2, 3, 4, 5))
    assert Child.seen == [(40, 3)] and out.z_q.shape == (2, 3, 4, 5) and out.indices.shape == (2, 4, 5)
    assert Child.quantize is Child.__dict__["quantize"]  # its forward became its quantize


def test_the_default_reconstruction_loss_is_the_pixel_mse():
    x, x_hat = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    assert QuantizeStyle(num_codes=2, dim=2).reconstruction_loss(x, x_hat) == F.mse_loss(x_hat, x)
