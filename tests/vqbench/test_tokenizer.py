"""vqbench/tokenizer.py: a run folder as a tokenizer. For every registered quantizer
decode(encode(x)) is reconstruct(x) exactly and within float rounding of the model's own eval
forward; a trained run reproduces its summary's metrics; bad folders are one line each."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

import vqbench
from tests.vqbench._tiny import TINY_MODEL, fake_run, train_tiny
from vqbench import UserError, list_quantizers, load_run
from vqbench.config import resolve_config
from vqbench.data import load_cifar10_tiny
from vqbench.tokenizer import Tokenizer
from vqbench.training import build_model, evaluate


@pytest.fixture(scope="module")
def images():
    return load_cifar10_tiny(None).test


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs"), "vqvae", 2)


def tokenizer_for(name: str, images: torch.Tensor) -> Tokenizer:
    """An untrained model of ``name`` with its codebook initialised from encoder outputs."""
    cfg = resolve_config(name, "cifar10-tiny", overrides=[*TINY_MODEL, "device=cpu"])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        z = model.encode(images[:16].float() / 255)
    model.quantizer.init_codebook(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), torch.Generator().manual_seed(0))
    return Tokenizer(model, cfg, batch_size=8)


@pytest.mark.parametrize("name", list_quantizers())
def test_decode_of_encode_is_reconstruct_for_every_quantizer(name, images):
    tok = tokenizer_for(name, images)
    x = images[:12, :, :16, :16]  # 16x16 crops (the model is convolutional): batches of 8 and 4, 4x4 codes
    codes = tok.encode(x)
    assert codes.shape == (12, 4, 4) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < tok.num_codes
    reconstruction = tok.reconstruct(x)
    assert torch.equal(tok.decode(codes), reconstruction)
    with torch.no_grad():
        x_hat, out = tok.model(x.float() / 255)  # the model's own eval forward, in one batch
    assert torch.equal(out.indices, codes)
    torch.testing.assert_close(reconstruction, x_hat, rtol=0, atol=1e-5)


def test_inputs_uint8_or_float_and_token_file_codes(images):
    tok = tokenizer_for("gmvq", images)
    x = images[:4]
    codes = tok.encode(x)
    assert torch.equal(tok.encode(x.float() / 255), codes) and torch.equal(tok.encode(x.numpy()), codes)
    assert torch.equal(tok.decode(codes.numpy().astype(np.uint16)), tok.decode(codes))  # a token file's dtype


def test_a_trained_run_reproduces_its_summary(trained, images):
    tok = load_run(trained, device="cpu")
    assert isinstance(tok, vqbench.Tokenizer) and tok.run_dir == trained and tok.summary["status"] == "finished"
    assert tok.config.quantizer.name == "vqvae" and tok.config_hash == tok.summary["config_hash"]
    assert tok.codebook.shape == (16, 8) and not tok.codebook.requires_grad and tok.device.type == "cpu"
    metrics = evaluate(tok.model, images[:32], tok.config.train.eval_batch_size)
    for key in ("mse", "psnr", "ssim", "perplexity", "code_perplexity", "codes_used", "usage"):
        assert metrics[key] == tok.summary[key], key  # the very weights and reconstructions of the run
    codes = tok.encode(images[:32])
    assert torch.equal(tok.decode(codes), tok.reconstruct(images[:32]))
    assert "vqvae" in repr(tok) and "16 codes" in repr(tok)


def test_devices(trained, images):
    tok = load_run(trained, device=torch.device("cpu"), batch_size=7)
    assert tok.batch_size == 7 and tok.to("cpu").device.type == "cpu"
    if torch.cuda.is_available():
        gpu = load_run(trained, device="cuda")
        assert gpu.encode(images[:4]).device.type == "cuda"
        assert gpu.decode(gpu.encode(images[:4])).device.type == "cuda"


def test_a_plugin_quantizers_run_loads(tmp_path, images):
    run = fake_run(tmp_path, "example-fvq")
    tok = load_run(run, device="cpu")
    assert type(tok.model.quantizer).__name__ == "FactorizedVQ"
    assert torch.equal(tok.decode(tok.encode(images[:4])), tok.reconstruct(images[:4]))


def test_a_ddp_checkpoint_loads(tmp_path, images):
    run = fake_run(tmp_path)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    plain = load_run(run, device="cpu").reconstruct(images[:2])
    state["model"] = {f"module.{k}": v for k, v in state["model"].items()}  # DistributedDataParallel's keys
    torch.save(state, run / "checkpoint.pt")
    assert torch.equal(load_run(run, device="cpu").reconstruct(images[:2]), plain)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_refused_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist") as e:
        load_run(tmp_path / "nope")
    _one_line(e)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a run folder"):
        load_run(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a vqbench run folder"):
        load_run(tmp_path / "empty")
    run = fake_run(tmp_path / "r")
    (run / "checkpoint.pt").unlink()
    with pytest.raises(UserError, match="has no checkpoint.pt"):
        load_run(run)


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_bytes(b"not a checkpoint"), "cannot be read"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "cannot be read"),  # truncated
    (lambda p: torch.save(torch.zeros(3), p), "not a vqbench checkpoint"),
    (lambda p: torch.save({"model": {"encoder.0.weight": torch.zeros(1)}, "step": 0}, p), "does not fit"),
])
def test_damaged_checkpoints_are_one_line(tmp_path, damage, match):
    run = fake_run(tmp_path)
    damage(run / "checkpoint.pt")
    with pytest.raises(UserError, match=match) as e:
        load_run(run, device="cpu")
    _one_line(e)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_only_runs_no_code(tmp_path):
    run = fake_run(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(run / "checkpoint.pt", "wb") as fh:
        pickle.dump({"model": Payload()}, fh)
    with pytest.raises(UserError, match="cannot be read"):
        load_run(run, device="cpu")
    assert not marker.exists()


def test_foreign_and_mismatched_configurations(tmp_path):
    run = fake_run(tmp_path / "a")
    (run / "config.yaml").write_text("learning_rate: 3\n")
    with pytest.raises(UserError, match="not a vqbench run configuration"):
        load_run(run)
    run = fake_run(tmp_path / "b")
    text = (run / "config.yaml").read_text().replace("seed: 0", "seed: 1")
    (run / "config.yaml").write_text(text)
    with pytest.raises(UserError, match="belongs to another configuration"):
        load_run(run)
    other = fake_run(tmp_path / "c")
    shutil.copy(fake_run(tmp_path / "d", "vqvae", "quantizer.num_codes=25") / "checkpoint.pt", other / "checkpoint.pt")
    with pytest.raises(UserError, match="another configuration"):
        load_run(other)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 32, 32, 3, dtype=torch.uint8), r"permute\(0, 3, 1, 2\)"),
    (torch.zeros(3, 32, 32, dtype=torch.uint8), r"images\[None\]"),
    (torch.full((1, 3, 32, 32), 255.0), r"\[0, 1\] scale"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.int64), "uint8"),
    (torch.zeros(1, 3, 30, 30, dtype=torch.uint8), "divisible by 4"),
    (torch.zeros(0, 3, 32, 32, dtype=torch.uint8), "empty"),
    ([[1, 2]], "tensor or an array"),
])
def test_bad_images_are_one_line(bad, match, images):
    tok = tokenizer_for("vqvae", images)
    with pytest.raises(UserError, match=match):
        tok.encode(bad)


def test_bad_codes_are_one_line(images):
    tok = tokenizer_for("vqvae", images)
    with pytest.raises(UserError, match=r"cannot decode these codes: codes must be in \[0, 16\)"):
        tok.decode(torch.full((1, 8, 8), 16))
    with pytest.raises(UserError, match=r"\(B, h, w\)"):
        tok.decode(torch.zeros(8, 8, dtype=torch.long))
