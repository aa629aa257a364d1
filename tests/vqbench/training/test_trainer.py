"""vqbench/training/trainer.py, a run over its lifetime. Nothing lost: a run SIGKILLed at a
random moment and resumed ends bit-identical to an uninterrupted one; a finished run is not
retrained; a diverged run stops at the exact step, keeps its last good checkpoint and is
marked failed; a foreign checkpoint is one line.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from vqbench.cli import main

# 48 images / batch 16 = 3 steps an epoch, 3 epochs: kills land mid-epoch and at epoch ends.
TINY = ["-q", "gmvq", "-d", "cifar10-tiny", "--device", "cpu", "train.epochs=3", "data.limit=48",
        "train.batch_size=16", "model.channels=16", "model.latent_dim=16", "quantizer.num_codes=32",
        "train.kmeans_samples=256", "data.test_limit=32", "train.checkpoint_every=1"]
TOTAL_STEPS = 9
TIMING = {"images_per_s", "steady_images_per_s", "train_seconds", "wall_s", "run_dir", "resumed_from"}


def _popen(out: Path, *extra: str) -> subprocess.Popen:
    # One thread: no spinning against the other process on 2 cores (and the same math in all three).
    env = dict(os.environ, VQBENCH_NO_PROGRESS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "vqbench", "run", *TINY, "--out", str(out), "--json", *extra],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoint_step(out: Path, seen: dict) -> int:
    """The step of the newest checkpoint (atomic renames: always a whole file), or -1;
    read only when a new file has replaced it (a stat per poll, not a load)."""
    paths = list(out.glob("*/checkpoint.pt"))
    try:
        ident = paths[0].stat().st_ino, paths[0].stat().st_mtime_ns
        if ident != seen.get("ident"):
            seen["step"] = int(torch.load(paths[0], map_location="cpu", weights_only=True)["step"])
            seen["ident"] = ident
    except (IndexError, OSError, RuntimeError, EOFError):  # none yet, or replaced between glob and open
        pass
    return seen.get("step", -1)


def _finished(proc: subprocess.Popen) -> tuple[dict, str]:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1]), stderr


def _history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _kill_after(out: Path, step: int, delay: float) -> tuple[int, str]:
    """Start the run, SIGKILL it ``delay`` s after its checkpoint reaches ``step``."""
    victim, seen = _popen(out), {}
    while _checkpoint_step(out, seen) < step and victim.poll() is None:
        time.sleep(0.005)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    _, stderr = victim.communicate()
    return victim.returncode, stderr


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """Two real kills: the first just after a mid-epoch checkpoint (so the permutation and
    batch position must be restored), the second at any moment of the resumed run."""
    rng = random.Random()  # fresh kill points every run; printed for reproduction
    reference = _popen(tmp_path / "ref")  # runs beside the killed one: 2 cores, half the wall time
    out = tmp_path / "killed"
    first = rng.choice([1, 4])  # steps 1..2 and 4..5 sit inside an epoch (3 steps each)
    rc, _ = _kill_after(out, first, 0.0)
    assert rc == -signal.SIGKILL, "the run finished before the first kill"
    (run_dir,) = out.iterdir()
    second, delay = rng.randint(first + 2, TOTAL_STEPS - 1), rng.uniform(0.0, 0.05)
    print(f"kills after checkpoint steps {first} and {second} + {delay * 1e3:.0f} ms")
    rc, log = _kill_after(out, second, delay)
    resumed_at = int(log.split("resuming ")[1].split("from step ")[1].split("/")[0])
    assert resumed_at in (first, first + 1) and ", batch " in log, log  # a mid-epoch resume
    # A kill that lands after summary.json is written kills a finished run.
    killed_twice = rc == -signal.SIGKILL and not (run_dir / "summary.json").exists()
    print(f"resumed at step {resumed_at}; second kill {'landed' if killed_twice else 'came after the end'}")

    resumed, log = _finished(_popen(out))
    assert ("resuming" in log) == killed_twice, log
    expected, _ = _finished(reference)

    same = {k: v for k, v in expected.items() if k not in TIMING}
    assert {k: v for k, v in resumed.items() if k not in TIMING} == same  # exact floats, not approx
    assert resumed["resumed_from"][0] == resumed_at and len(resumed["resumed_from"]) == 1 + killed_twice
    assert _history(run_dir) == _history(Path(expected["run_dir"]))
    mine = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    theirs = torch.load(Path(expected["run_dir"]) / "checkpoint.pt", weights_only=True)
    for key, value in theirs["model"].items():
        assert torch.equal(mine["model"][key], value), key
    assert torch.equal(mine["rng"]["torch"], theirs["rng"]["torch"])


@pytest.fixture
def one_thread():
    """In-process runs on one thread: on 2 shared cores a second one mostly spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in-process (saves a subprocess's imports; the code path is the same)."""
    rc = main(["run", *TINY, *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_finished_run_is_not_retrained_and_foreign_checkpoint_is_one_line(tmp_path, capsys, one_thread):
    out = ["--out", str(tmp_path), "train.epochs=1"]
    rc, stdout, _ = _main(capsys, *out, "--json")
    assert rc == 0
    first = json.loads(stdout.splitlines()[-1])
    rc, stdout, stderr = _main(capsys, *out, "--json")
    assert rc == 0
    assert "already finished (3 steps); not retraining" in stderr
    assert "epoch 1/1" not in stderr
    assert json.loads(stdout.splitlines()[-1]) == first

    run_dir = Path(first["run_dir"])
    (run_dir / "summary.json").unlink()
    (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    rc, _, stderr = _main(capsys, *out)
    assert rc == 2
    assert stderr.strip().splitlines() == [stderr.strip()] and "Traceback" not in stderr
    assert "checkpoint.pt cannot be read" in stderr and "delete it" in stderr

    # Another configuration pointed at this folder by name= is refused, not mixed in.
    rc, _, stderr = _main(capsys, "--out", str(tmp_path), "train.epochs=2", f"name={run_dir.name}")
    assert rc == 2 and "holds a run of another configuration" in stderr


def test_divergence_stops_at_the_step_keeps_last_good_checkpoint_and_marks_failed(tmp_path, capsys, one_thread):
    # lr = 1e6 makes GM-VQ's loss NaN at step 2 on this data (measured); step 1 is checkpointed.
    rc, _, stderr = _main(capsys, "train.lr=1e6", "--out", str(tmp_path))
    assert rc == 1
    (line,) = stderr.strip().splitlines()
    assert line.startswith("vqbench: run failed: loss became nan at step 2 (non-finite terms: "), line
    assert "kept the last good checkpoint (step 1)" in line
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_step"] == 2 and summary["nonfinite_terms"]
    assert "mse" not in summary  # a failed run offers no score to read
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["step"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    rc, _, stderr = _main(capsys, "train.lr=1e6", "--out", str(tmp_path))
    assert rc == 1 and "already failed" in stderr and "not retrying" in stderr
