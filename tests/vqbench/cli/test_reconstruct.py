"""``vqbench reconstruct``: a PNG of images above their reconstructions; bad input is one
line, exit 2, and nothing written."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from tests.vqbench._tiny import listing
from vqbench.cli import main


def test_writes_a_png_grid(run, tmp_path, capsys):
    out = tmp_path / "figs" / "grid.png"
    assert main(["reconstruct", str(run), "--n", "10", "--device", "cpu", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: 10 test images of vqvae-fake") and "psnr" in line and "mse" in line
    image = np.asarray(Image.open(out))
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300  # 2 x 2 rows of 8 at 4x, a title


def test_defaults_into_the_run_folder_and_clamps_n(run, capsys):
    assert main(["reconstruct", str(run), "--n", "1000", "--split", "train", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert (run / "reconstructions-train.png").is_file()
    assert "has 64 images; showing all of them" in captured.err


@pytest.mark.parametrize("case", ["missing", "no-checkpoint", "damaged", "n0", "out-is-dir", "not-png", "foreign"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run, tmp_path, capsys, case):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    args = ["reconstruct", str(target), "--device", "cpu"]
    if case == "missing":
        args[1] = str(tmp_path / "nope")
    elif case == "no-checkpoint":
        (target / "checkpoint.pt").unlink()
    elif case == "damaged":
        (target / "checkpoint.pt").write_bytes(b"\x00garbage")
    elif case == "n0":
        args += ["--n", "0"]
    elif case == "out-is-dir":
        (tmp_path / "adir").mkdir()
        args += ["--out", str(tmp_path / "adir")]
    elif case == "not-png":
        args += ["--out", str(tmp_path / "grid.jpg")]
    elif case == "foreign":
        shutil.rmtree(target)
        target.mkdir()
        (target / "notes.txt").write_text("not a run")
    before = listing(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqbench: error: ") and err.count("\n") == 1, err
    assert listing(tmp_path) == before
