"""``vqbench encode``: the token grid of every image in a .npz (uint16 where the codes fit)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.vqbench._tiny import listing
from vqbench import load_run
from vqbench.cli import main
from vqbench.tokens import token_dtype


def test_writes_every_split_with_what_the_codes_are(run, tmp_path, capsys):
    out = tmp_path / "tokens.npz"
    assert main(["encode", str(run), "--device", "cpu", "--out", str(out), "data.test_limit=20"]) == 0
    assert "train (64, 8, 8), test (20, 8, 8) uint16" in capsys.readouterr().out
    with np.load(out) as tokens:  # no pickle needed
        assert tokens["train"].dtype == np.uint16 and tokens["test"].shape == (20, 8, 8)
        assert int(tokens["num_codes"]) == 16 and str(tokens["run"]) == "vqvae-fake"
        assert str(tokens["dataset"]) == "cifar10-tiny" and str(tokens["quantizer"]) == "vqvae"
        tok = load_run(run, device="cpu")
        assert str(tokens["config_hash"]) == tok.config_hash
        from vqbench.data import load_cifar10_tiny

        test = load_cifar10_tiny(None).test[:20]
        assert torch.equal(torch.from_numpy(tokens["test"].astype(np.int64)), tok.encode(test))
        assert torch.equal(tok.decode(tokens["test"]), tok.reconstruct(test))  # tokens back to images


def test_another_dataset(run, tmp_path, capsys):
    from vqbench.data import load_cifar10_tiny

    images = load_cifar10_tiny(None).test[:6].permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "mine.npz", x=images)
    out = tmp_path / "mine-tokens.npz"
    assert main(["encode", str(run), "-d", "npz", f"data.train={tmp_path / 'mine.npz'}",
                 f"data.test={tmp_path / 'mine.npz'}", "--device", "cpu", "--out", str(out)]) == 0
    with np.load(out) as tokens:
        assert tokens["train"].shape == (6, 8, 8) and str(tokens["dataset"]) == "npz"


def test_token_dtype():
    assert token_dtype(1024) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.int32


@pytest.mark.parametrize("args, match", [
    (["--out", "t.txt"], "must end in .npz"),
    (["--out", "t.npz", "train.lr=1"], "only data.KEY=VALUE"),
    (["--out", "t.npz", "-d", "cifar100"], "unknown dataset"),
    (["--out", "t.npz", "data.nope=1"], "bad data override"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run, tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    assert main(["encode", str(run), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    assert listing(tmp_path) == before
