"""vqbench/adapters/lucid.py: the vector-quantize-pytorch adapters (issue 8), registered by
entry points, conformant, trainable."""
from __future__ import annotations

import tomllib
from importlib.metadata import EntryPoint

import pytest

import vqbench.registry as R
from tests.conftest import REPO_ROOT, import_or_skip_unless_ci

import_or_skip_unless_ci("vector_quantize_pytorch", "pip install 'vqbench[lucid]'")
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
OURS = PYPROJECT["project"]["entry-points"]["vqbench.quantizers"]
LUCID = sorted(n for n in OURS if n.startswith("lucid-"))


@pytest.fixture(autouse=True)
def our_entry_points(monkeypatch):
    """The entry points this checkout's pyproject declares (the installed metadata may be older)."""
    monkeypatch.delenv(R.REGISTRY_ENV, raising=False)
    monkeypatch.setattr(R, "_entry_points", lambda: [EntryPoint(n, v, R.ENTRY_POINT_GROUP) for n, v in OURS.items()])
    R.reset_registry()
    yield
    R.reset_registry()


def test_all_five_methods_are_declared():
    assert LUCID == ["lucid-fsq", "lucid-lfq", "lucid-rvq", "lucid-simvq", "lucid-vq-ema"]


@pytest.mark.parametrize("name", LUCID)
def test_adapter_passes_the_conformance_kit(name):
    from vqbench.testing import check_quantizer

    check_quantizer(name)


def test_default_mapping_of_64_dims_and_1024_codes():
    from vqbench.adapters import lucid as L

    fsq = R.build_quantizer("lucid-fsq")
    assert fsq.levels == [8, 5, 5, 5] and fsq.num_codes == 1000 and fsq.codebook.shape == (1000, 64)
    assert R.build_quantizer("lucid-lfq").bits == 10
    rvq = R.build_quantizer("lucid-rvq")
    assert (rvq.num_quantizers, rvq.per_stage, tuple(rvq.codebook.shape)) == (2, 32, (1024, 64))
    assert L.fsq_levels(100) == [5, 5, 4] and L.fsq_levels(16) == [4, 4]
    with pytest.raises(R.UserError, match="power of two"):
        R.build_quantizer("lucid-lfq", num_codes=1000)
    with pytest.raises(R.UserError, match="perfect power"):
        R.build_quantizer("lucid-rvq", num_codes=1000)


def test_residual_index_names_the_sum_of_stage_codes():
    import torch

    q = R.build_quantizer("lucid-rvq", num_codes=64, dim=8).eval()
    z = torch.randn(50, 8)
    with torch.no_grad():
        out = q(z)
        _, stage_idx, _ = q.inner(z[None])
    expected = sum(q.inner.layers[s].codebook[stage_idx[0, :, s]] for s in range(2))
    torch.testing.assert_close(out.z_q, expected)
    torch.testing.assert_close(q.codebook[out.indices], expected)


@pytest.mark.parametrize("name", LUCID)
def test_adapter_trains_on_cifar10_tiny(name, tmp_path):
    from vqbench.config import resolve_config
    from vqbench.training import fit

    # At the dataset's lr 1e-2 these small runs settle on the mean image (test MSE 1.00-1.02x
    # the mean image's after 20-60 steps); at 3e-3, 60 steps measured 0.39 (fsq), 0.49 (lfq),
    # 0.58 (rvq), 0.70 (simvq), 0.47 (vq-ema) x the mean image.
    cfg = resolve_config(name, "cifar10-tiny", None, [
        "train.max_steps=60", "train.lr=0.003", "train.batch_size=32", "train.kmeans_samples=512",
        "quantizer.num_codes=256", "model.channels=16", "model.res_blocks=0", "data.test_limit=64", f"out={tmp_path}"])
    result = fit(cfg, log=lambda line: None)
    s = result.summary
    assert s["steps"] == 60 and s["mse"] < 0.9 * s["mean_image_mse"], (s["mse"], s["mean_image_mse"])
    assert 1 <= s["codes_used"] <= s["num_codes"]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
