"""Two checkpoints, never zero (issue 19): a run keeps the previous checkpoint beside the newest.

A newest that cannot be used (truncated, not a checkpoint, a tensor that does not fit the
model) is set aside and the run resumes from the previous one with one warning; the resumed
run still ends bit-identical to an uninterrupted one, whichever checkpoint it went back to.
A run stopped inside the rotation (between its renames) always has a whole checkpoint.
Neither usable: one line, exit 2, both files left in place.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from vqbench.cli import main
from vqbench.config import resolve_config
from vqbench.training import fit
from vqbench.training.checkpoint import ResumeWarning

# 48 images / batch 16 = 3 steps an epoch, 3 epochs = 9 steps.
ARGS = ["train.epochs=3", "data.limit=48", "train.batch_size=16", "model.channels=16", "model.latent_dim=16",
        "quantizer.num_codes=32", "train.kmeans_samples=256", "data.test_limit=32", "results=null"]
TIMING = {"images_per_s", "steady_images_per_s", "train_seconds", "wall_s", "run_dir", "resumed_from"}


class Stop(Exception):
    """Stands for a kill: raised from on_epoch, after the epoch's checkpoint is written."""


class Crash(BaseException):
    """A kill inside the checkpoint rotation (not an Exception: nothing may catch it)."""


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tests/conftest.py


def _argv(out: Path, every: int | None) -> list[str]:
    return ["-q", "gmvq", "-d", "cifar10-tiny", "--device", "cpu", "--out", str(out), *ARGS,
            *([f"train.checkpoint_every={every}"] if every else [])]


def _cfg(out: Path, every: int | None):
    return resolve_config("gmvq", "cifar10-tiny", None, [*ARGS, f"out={out}", "device=cpu",
                                                         *([f"train.checkpoint_every={every}"] if every else [])])


def _stop_after(epochs: int):
    def on_epoch(record: dict) -> None:
        if record["epoch"] == epochs:
            raise Stop
    return on_epoch


def _same(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING}


def _history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (its checkpoint frequency does not change the math)."""
    torch.set_num_threads(1)
    result = fit(_cfg(tmp_path_factory.mktemp("reference"), None), log=lambda line: None)
    return result


def _resume(capsys, out: Path, every: int | None) -> tuple[int, dict | None, str]:
    rc = main(["run", *_argv(out, every), "--json"])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return rc, (json.loads(lines[-1]) if rc == 0 else None), captured.err


def _check_identical(reference, resumed: dict) -> None:
    assert _same(resumed) == _same(reference.summary)  # exact floats
    run_dir = Path(resumed["run_dir"])
    assert _history(run_dir) == _history(reference.run_dir)
    mine = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    theirs = torch.load(reference.run_dir / "checkpoint.pt", weights_only=True)
    for key, value in theirs["model"].items():
        assert torch.equal(mine["model"][key], value), key


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_a_checkpoint(path: Path) -> None:
    torch.save([1, 2, 3], path)  # a readable torch file, but no model/step


def _wrong_shape(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state["model"].items() if v.dim() == 2)
    state["model"][key] = torch.zeros(3, 3)  # same configuration hash, a tensor the model cannot take
    torch.save(state, path)


# (how the newest is damaged, train.checkpoint_every, the step the previous checkpoint holds)
# Stopped after epoch 2 (step 6): epoch checkpoints only leave step 3 as the previous; every 2
# steps leaves step 4 (mid-epoch); every step leaves step 5 (mid-epoch, batch 2).
CASES = {"truncated": (_truncate, None, 3), "tensor shape": (_wrong_shape, 2, 4),
         "not a checkpoint": (_not_a_checkpoint, 1, 5)}


@pytest.mark.parametrize("damage", CASES)
def test_damaged_newest_resumes_from_previous_bit_identical(tmp_path, capsys, reference, damage):
    spoil, every, previous_step = CASES[damage]
    with pytest.raises(Stop):
        fit(_cfg(tmp_path, every), log=lambda line: None, on_epoch=_stop_after(2))
    (run_dir,) = tmp_path.iterdir()
    newest, previous = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    assert torch.load(newest, weights_only=True)["step"] == 6
    assert torch.load(previous, weights_only=True)["step"] == previous_step
    spoil(newest)
    damaged = newest.read_bytes()

    with pytest.warns(ResumeWarning) as warned:
        rc, resumed, stderr = _resume(capsys, tmp_path, every)
    assert rc == 0, stderr
    (warning,) = [str(w.message) for w in warned if issubclass(w.category, ResumeWarning)]
    assert "\n" not in warning and str(newest) in warning and str(previous) in warning, warning
    assert f"set aside as checkpoint.pt.damaged; resuming from {previous} (step {previous_step})" in warning
    assert f"resuming {run_dir.name} from step {previous_step}/9" in stderr
    assert (run_dir / "checkpoint.pt.damaged").read_bytes() == damaged  # set aside, never deleted
    assert resumed["resumed_from"] == [previous_step]
    _check_identical(reference, resumed)
    assert not (run_dir / "checkpoint.prev.pt").exists()  # a finished run needs no previous


def test_neither_checkpoint_usable_is_one_line_and_both_stay(tmp_path, capsys):
    with pytest.raises(Stop):
        fit(_cfg(tmp_path, None), log=lambda line: None, on_epoch=_stop_after(2))
    (run_dir,) = tmp_path.iterdir()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_dir / name).write_bytes(b"PK\x03\x04 not really a checkpoint")
    rc, _, stderr = _resume(capsys, tmp_path, None)
    assert rc == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"vqbench: error: neither checkpoint of {run_dir} can be used: checkpoint.pt cannot be "
                           "read (") and "checkpoint.prev.pt cannot be read (" in line and "delete it" in line, line
    assert {p.name for p in run_dir.glob("checkpoint*")} == {"checkpoint.pt", "checkpoint.prev.pt"}


# Where a kill may land inside save_checkpoint: while the new file is written, or after the
# newest became the previous and before the new one is renamed in. (After both renames is an
# ordinary kill after a whole checkpoint: tests/vqbench/training/test_trainer.py.)
WINDOWS = ("writing", "between renames")


@pytest.mark.parametrize("window", WINDOWS)
def test_kill_inside_the_rotation_always_leaves_a_whole_checkpoint(tmp_path, capsys, reference, monkeypatch, window):
    import vqbench.rundir as rundir

    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if window == "between renames" and calls.count("checkpoint.pt") == 5:
            raise Crash  # checkpoint.pt is now checkpoint.prev.pt; the 5th is still a temporary file
        real_replace(src, dst)

    opened = []

    def write_half(file, mode="r", *args, **kwargs):
        if Path(file).name.startswith(".checkpoint.pt."):
            opened.append(file)
            if window == "writing" and len(opened) == 5:
                with open(file, mode) as fh:
                    fh.write(b"half a checkpoint")
                raise Crash  # the 5th checkpoint is half on disk, under its temporary name
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(rundir.os, "replace", replace)
    monkeypatch.setattr(rundir, "open", write_half, raising=False)
    with pytest.raises(Crash):
        fit(_cfg(tmp_path, 1), log=lambda line: None)  # checkpoints at steps 1, 2, ...: the 5th is step 5
    monkeypatch.undo()
    (run_dir,) = tmp_path.iterdir()
    names = {p.name for p in run_dir.glob("checkpoint*")}
    expected = {"writing": ({"checkpoint.pt", "checkpoint.prev.pt"}, 4), "between renames": ({"checkpoint.prev.pt"}, 4)}[window]
    assert names == expected[0]
    if window == "between renames":
        with pytest.warns(ResumeWarning, match="checkpoint.pt is missing .*resuming from .*checkpoint.prev.pt "):
            rc, resumed, stderr = _resume(capsys, tmp_path, 1)
    else:
        rc, resumed, stderr = _resume(capsys, tmp_path, 1)
    assert rc == 0, stderr
    assert resumed["resumed_from"] == [expected[1]]
    _check_identical(reference, resumed)
