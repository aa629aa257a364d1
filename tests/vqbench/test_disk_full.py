"""A full disk costs nothing already written (issue 19).

A write that fails with ENOSPC or EIO (checkpoint, metrics, summary, result row, sweep
report) leaves every file written before it as it was, removes its temporary file, and is
one line naming the file and the reason, exit 1 (the machine failed, not the request), no
traceback. The fault is injected at the write call; where this machine lets us mount a small
tmpfs, a real full file system fills up mid-checkpoint as well.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
import torch

import vqbench.rundir as rundir
from vqbench.cli import main
from vqbench.config import config_hash
from vqbench.sweep import load_sweep, open_study
from vqbench.sweep.storage import make_storage

# 32 images / batch 16 = 2 steps an epoch, 2 epochs: two checkpoints, two metrics records.
ARGS = ["-q", "vqvae", "-d", "cifar10-tiny", "--device", "cpu", "train.epochs=2", "data.limit=32",
        "train.batch_size=16", "model.channels=8", "model.latent_dim=8", "quantizer.num_codes=16",
        "train.kmeans_samples=64", "data.test_limit=16"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tests/conftest.py


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp")}


class FullDisk:
    """``open`` for vqbench.rundir whose ``nth`` file named ``target`` gets half its bytes,
    then OSError(code), as a disk that fills up mid-write would do. Records what was on
    disk at that moment."""

    def __init__(self, root: Path, target: str, nth: int, code: int) -> None:
        self.root, self.target, self.nth, self.code = root, target, nth, code
        self.seen, self.before, self.tmp = 0, None, None

    def __call__(self, file, mode="r", *args, **kwargs):
        fh = open(file, mode, *args, **kwargs)
        name = Path(file).name  # .NAME.PID.NS.tmp
        if name.startswith(".") and name.endswith(".tmp") and (name[1:].startswith(self.target)):
            self.seen += 1
            if self.seen == self.nth:
                self.before, self.tmp = _files(self.root), Path(file)
                real_write, code = fh.write, self.code

                def write(data):
                    real_write(data[: len(data) // 2])
                    raise OSError(code, os.strerror(code))
                fh.write = write
        return fh


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vqbench") and not line.startswith("vqbench: warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _check_intact(disk: FullDisk, changing: tuple[str, ...] = ()) -> None:
    assert disk.before is not None, "the fault was never injected"
    assert not disk.tmp.exists(), "the half-written temporary file is left behind"
    after = _files(disk.root)
    for path, data in disk.before.items():
        assert path.name in changing or after.get(path) == data, f"{path} changed"
    assert not [p for p in disk.root.rglob("*.tmp")]


# (file, which write of it fails, errno): the 2nd checkpoint and metrics write (the first
# ones exist then), the summary and the result row at the end.
FAULTS = [("checkpoint.pt", 2, errno.ENOSPC), ("checkpoint.pt", 2, errno.EIO), ("metrics.jsonl", 3, errno.ENOSPC),
          ("summary.json", 1, errno.ENOSPC), ("vqvae-cifar10-tiny", 1, errno.ENOSPC)]


@pytest.mark.parametrize("target, nth, code", FAULTS, ids=[f"{t}-{errno.errorcode[c]}" for t, _, c in FAULTS])
def test_a_failed_write_during_a_run_is_one_line_and_keeps_every_earlier_file(tmp_path, capsys, monkeypatch,
                                                                              target, nth, code):
    disk = FullDisk(tmp_path, target, nth, code)
    monkeypatch.setattr(rundir, "open", disk, raising=False)
    rc = main(["run", *ARGS, "--out", str(tmp_path / "runs"), f"results={tmp_path / 'results'}"])
    line = _one_error_line(capsys)
    final = disk.tmp.parent / disk.tmp.name[1:].rsplit(".", 3)[0]
    assert rc == 1
    assert line == f"vqbench: error: could not write {final}: {os.strerror(code)}; the files written before it are intact"
    _check_intact(disk)
    if target == "checkpoint.pt":  # the earlier checkpoint is whole: the same command resumes and finishes
        monkeypatch.undo()
        assert torch.load(final, weights_only=True)["step"] == 2
        assert main(["run", *ARGS, "--out", str(tmp_path / "runs"), f"results={tmp_path / 'results'}"]) == 0
        assert "resuming" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["trials.csv", "history.png"])
def test_a_failed_sweep_report_write_is_one_line(tmp_path, capsys, monkeypatch, target):
    spec = load_sweep("gamma")
    name = f"gamma-{uuid.uuid4().hex[:6]}"
    study, _ = open_study(spec, str(tmp_path / "optuna.journal"), name, base_hash=config_hash(spec.base_config()))
    dist = {"quantizer.gamma": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    for i in range(3):
        study.add_trial(optuna.trial.create_trial(value=0.01 * (i + 1), distributions=dist,
                                                  params={"quantizer.gamma": 10.0 ** -(i + 1)}))
    disk = FullDisk(tmp_path, target, 1, errno.ENOSPC)
    monkeypatch.setattr(rundir, "open", disk, raising=False)
    rc = main(["sweep", "gamma", "--report", "--out", str(tmp_path), "--study", name])
    line = _one_error_line(capsys)
    assert rc == 1 and line.startswith("vqbench: error: could not write ") and target in line
    assert line.endswith(": No space left on device; the files written before it are intact")
    _check_intact(disk)
    if target == "history.png":  # the tables came first and are whole
        assert {p.name for p in (tmp_path / "reports" / name).iterdir()} == {"trials.csv", "trials.parquet"}


def _mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, timeout=30)
    return proc.returncode == 0


def test_a_real_full_file_system_mid_checkpoint(tmp_path, capsys):
    """A tmpfs with room for two checkpoints and a bit: the third epoch's checkpoint (the
    newest, the previous and the new one's temporary file at once) does not fit."""
    argv = [*ARGS, "train.epochs=3", "results=null"]
    assert main(["run", *argv, "--out", str(tmp_path / "sized")]) == 0
    (sized,) = (tmp_path / "sized").iterdir()
    size = (sized / "checkpoint.pt").stat().st_size
    capsys.readouterr()
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, int(size * 2.6) // 4096 * 4096):
        pytest.skip("cannot mount a tmpfs here (needs root and mount privileges); the injected faults above cover it")
    try:
        rc = main(["run", *argv, "--out", str(disk)])
        line = _one_error_line(capsys)
        (run_dir,) = disk.iterdir()
        assert rc == 1
        assert line == (f"vqbench: error: could not write {run_dir / 'checkpoint.pt'}: No space left on device; "
                        "the files written before it are intact")
        assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
        assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 4
        assert torch.load(run_dir / "checkpoint.prev.pt", weights_only=True)["step"] == 2
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
        # Free space (move the run to a bigger disk) and the same command finishes it.
        shutil.copytree(run_dir, tmp_path / "bigger" / run_dir.name)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)
    assert main(["run", *argv, "--out", str(tmp_path / "bigger")]) == 0
    assert "resuming" in capsys.readouterr().err


def test_a_full_disk_in_a_sweep_trial_stops_the_worker_and_the_trial_is_retried(tmp_path, capsys, monkeypatch):
    """Not a bad point: the trial fails without a `failure` (so it is re-queued, not counted as
    a result), the worker stops with the one line, and the next `vqbench sweep` finishes it."""
    sweep = ["sweep", "gamma", "--dataset", "cifar10-tiny", "--out", str(tmp_path), "--n-trials", "2",
             "device=cpu", "data.limit=32", "data.test_limit=16", "model.channels=4", "model.res_blocks=0",
             "model.latent_dim=4", "quantizer.num_codes=8", "train.kmeans_samples=64", "train.max_steps=2",
             "train.batch_size=16", "train.eval_batch_size=16"]
    disk = FullDisk(tmp_path, "sweep_trial.json", 2, errno.ENOSPC)  # the second trial's folder
    monkeypatch.setattr(rundir, "open", disk, raising=False)
    rc = main(sweep)
    line = _one_error_line(capsys)
    assert rc == 1 and line.startswith("vqbench: error: could not write ") and "trial-0001/sweep_trial.json" in line
    _check_intact(disk, changing=("optuna.journal",))  # the study records the lost trial
    monkeypatch.undo()
    journal = make_storage(str(tmp_path / "optuna.journal"))
    study = optuna.load_study(study_name="gamma-cifar10-tiny", storage=journal)
    (lost,) = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert "failure" not in lost.user_attrs
    assert main(sweep) == 0
    assert "re-queued lost trials [1]" in capsys.readouterr().err
    states = [t.state for t in optuna.load_study(study_name="gamma-cifar10-tiny",
                                                 storage=make_storage(str(tmp_path / "optuna.journal"))).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
