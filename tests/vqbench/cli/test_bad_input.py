"""Every user mistake in `vqbench run`: one line (what was wrong, what would be right),
exit status 2, no traceback, and no run folder left behind.

The CLI's ``main`` runs in-process (a subprocess per case would cost ~3 s of imports each);
anything but a UserError would escape ``main`` and fail the test, which is the point.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from vqbench.cli import main
from vqbench.errors import UserError

TINY = ["--device", "cpu", "train.max_steps=2", "train.batch_size=4", "model.channels=8", "model.latent_dim=8",
        "quantizer.num_codes=8", "train.kmeans_samples=64", "data.test_limit=8"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad-inputs")
    rng = np.random.default_rng(0)
    np.savez(d / "good.npz", x=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8))
    (d / "garbage.npz").write_bytes(b"this is not an npz file" * 8)
    whole = (d / "good.npz").read_bytes()
    (d / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    np.savez(d / "odd.npz", x=rng.integers(0, 255, (8, 30, 30, 3), dtype=np.uint8))
    np.savez(d / "gray.npz", x=rng.integers(0, 255, (8, 32, 32), dtype=np.uint8))
    for folder, bad_name, bad_bytes in (("faces-truncated", "3.jpg", None), ("faces-garbage", "9.png", b"garbage")):
        (d / folder).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / folder / f"{i}.jpg")
        if bad_bytes is None:
            jpeg = (d / folder / "0.jpg").read_bytes()
            bad_bytes = jpeg[: len(jpeg) // 3]
        (d / folder / bad_name).write_bytes(bad_bytes)
    (d / "a-file").write_text("not a folder")
    return {"d": str(d)}


def _cases(d: str) -> dict[str, tuple[list[str], str]]:
    """name -> (run arguments, a fragment the one line must hold)."""
    tiny = ["-q", "gmvq", "-d", "cifar10-tiny", *TINY]
    npz = ["-q", "gmvq", "-d", "npz", *TINY]
    faces = ["-q", "gmvq", "-d", "celeba", "-m", "conv32", "data.image_size=32", *TINY]
    return {
        "unknown quantizer": (["-q", "gmvqq", "-d", "cifar10-tiny"], "did you mean 'gmvq'"),
        "unknown dataset": (["-q", "gmvq", "-d", "cifar100"], "did you mean 'cifar10'"),
        "unknown model": (["-q", "gmvq", "-d", "cifar10-tiny", "-m", "conv23"], "did you mean 'conv32'"),
        "unknown config key": ([*tiny, "train.epoch=3"], "unknown config key 'train.epoch'"),
        "mistyped quantizer key": ([*tiny, "quantizer.gama=0.5"], "did you mean 'gamma'"),
        "wrong type (config)": ([*tiny, "train.epochs=abc"], "train.epochs must be a whole number, got 'abc'"),
        "wrong type (quantizer)": ([*tiny, "quantizer.gamma=abc"], "gamma must be a float"),
        "negative gamma": ([*tiny, "quantizer.gamma=-1"], "gamma must be a finite number ≥ 0, got -1.0"),
        "negative beta": ([*tiny, "quantizer.beta=-0.5"], "beta must be a finite number ≥ 0"),
        "tau = 0": ([*tiny, "quantizer.tau_start=0"], "tau_start must be a finite number > 0"),
        "zero codes": ([*tiny, "quantizer.num_codes=0"], "num_codes must be a whole number ≥ 1"),
        "batch size 0": ([*tiny, "train.batch_size=0"], "train.batch_size must be ≥ 1"),
        "non-finite gamma": ([*tiny, "quantizer.gamma=.nan"], "got nan"),
        "non-finite lr": ([*tiny, "train.lr=.inf"], "train.lr must be a finite number > 0"),
        "missing npz path": ([*npz, f"data.train={d}/nope.npz", f"data.test={d}/good.npz"], "matches no file"),
        "missing image folder": ([*faces, f"data.root={d}/no-such-folder"], "is not a folder"),
        "corrupt npz": ([*npz, f"data.train={d}/garbage.npz", f"data.test={d}/good.npz"], "not a readable .npz file"),
        "truncated npz": ([*npz, f"data.train={d}/truncated.npz", f"data.test={d}/good.npz"], "not a readable .npz file (truncated"),
        "truncated jpeg": ([*faces, f"data.root={d}/faces-truncated"], "3.jpg is not a readable image"),
        "corrupt image": ([*faces, f"data.root={d}/faces-garbage"], "9.png is not a readable image"),
        "wrong image shape for model": ([*npz, f"data.train={d}/odd.npz", f"data.test={d}/odd.npz"],
                                        "conv32 needs image sides divisible by 4, got 30x30"),
        "grayscale images": ([*npz, f"data.train={d}/gray.npz", f"data.test={d}/gray.npz"], "(N, H, W, 3)"),
        "more codes than k-means samples": ([*tiny, "data.limit=1", "quantizer.num_codes=512"],
                                            "k-means needs at least 512 encoder outputs"),
        "output folder not writable": ([*tiny, "--out", f"{d}/a-file/runs"], "cannot write the run folder"),
        "--resume with no run": ([*tiny, "--resume"], "nothing to resume"),
        "CUDA graph on a CPU": ([*tiny, "train.cuda_graph=true"], "train.cuda_graph=true needs a CUDA device"),
        "unknown matmul precision": ([*tiny, "train.matmul_precision=tf32"],
                                     "train.matmul_precision must be highest, high or medium"),
        "results folder is a file": ([*tiny, f"results={d}/a-file"], "cannot write the results folder"),
        "Triton kernels on a CPU": ([*tiny, "quantizer.backend=triton"], "backend='triton' needs a CUDA device"),
        "precision option on the reference path": ([*tiny, "quantizer.backend=reference", "quantizer.logit_matmul=3xtf32"],
                                                   "logit_matmul applies to the fast backends (fused, triton) only"),
        "--device and device= disagree": ([*tiny, "device=cuda"], "--device cpu and device=cuda both set device"),
    }


CASE_NAMES = list(_cases("").keys())


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_exit_2_and_leaves_no_run_folder(name, files, tmp_path, capsys):
    argv, fragment = _cases(files["d"])[name]
    out = tmp_path / "runs"
    argv = ["run", *argv] + ([] if "--out" in argv else ["--out", str(out)])
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqbench: error: "), captured.err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists() or not os.listdir(out), f"left behind: {os.listdir(out)}"


@pytest.mark.parametrize("argv, fragment", [
    (["table", "{d}/a-file"], "is a file, not a results folder"),
    (["results", "{d}/a-file"], "is a file, not a results folder"),
    (["theory"], "name a CHECK"),
    (["experiment", "gradient-bias", "--seeds", "1", "--out", "{d}/a-file"], "cannot write the output folder"),
])
def test_other_commands_take_bad_input_in_one_line(argv, fragment, files, capsys):
    try:
        code = main([a.format(d=files["d"]) for a in argv])
    except SystemExit as exc:  # argparse's own errors exit from inside main
        code = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], (code, captured.err)


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(UserError, match="unknown quantizer"):
        main(["--debug", "run", "-q", "gmvqq", "-d", "cifar10-tiny"])


@pytest.mark.parametrize("argv, fragment", [
    (["bench_quantizers.py", "--device", "cpu", "--tokens", "0"], "argument --tokens: must be ≥ 1, got 0"),
    (["bench_train.py", "--device", "cpu", "--data", "{d}/garbage.npz"], "is not a readable .npz file"),
    (["bench_train.py", "--device", "cpu", "--json", "{d}/no-such-folder/x.json"], "does not exist"),
])
def test_benchmark_scripts_take_bad_input_in_one_line(argv, fragment, files):
    """The benchmarks keep the CLI's promise; the library's own UserErrors included."""
    import subprocess
    import sys

    script = REPO_ROOT / "benchmarks" / argv[0]
    result = subprocess.run([sys.executable, str(script), *(a.format(d=files["d"]) for a in argv[1:])],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], (result.returncode, result.stderr)


def test_a_reader_that_leaves_early_is_no_traceback(tmp_path):
    """`vqbench table | head -1`: the pipe closes while vqbench still writes."""
    import subprocess
    import sys

    code = ("import sys; from vqbench.cli import main; import vqbench.cli.list as l\n"
            "def flood(args):\n    [print('x' * 100) for _ in range(20000)]\n"
            "l.handle = flood\nsys.exit(main(['list']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # the reader is gone
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and "Traceback" not in stderr, stderr
