"""``train.log=tensorboard`` (vqbench/training/tblog.py): scalars per epoch equal to
metrics.jsonl's, reconstruction grids every N epochs and at the last, in RUN/tb/; without the
package one line naming the extra, exit 2, before anything is trained or written."""
from __future__ import annotations

import json
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import import_or_skip_unless_ci
from tests.vqbench._tiny import TINY_RUN, listing, train_tiny
from vqbench.cli import main
from vqbench.training.tblog import TensorBoardLog, tag, tensorboard_log


def test_scalars_and_images_in_the_run_folder(tmp_path):
    import_or_skip_unless_ci("tensorboard", "pip install -e '.[test]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # 64 images / batch 32: 2 steps an epoch, 3 epochs; grids at epoch 2 (every 2) and 3 (the last).
    run = train_tiny(tmp_path, "vqvae", 6, "train.log=tensorboard", "train.log_images_every=2")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    mse = events.Scalars("test/mse")
    assert [e.step for e in mse] == [r["step"] for r in records] == [2, 4, 6]
    assert [e.value for e in mse] == pytest.approx([r["mse"] for r in records], rel=1e-6)  # float32 in TensorBoard
    assert {"test/psnr", "test/ssim", "test/usage", "train/loss", "run/lr", "quantizer/commitment"} <= \
        set(events.Tags()["scalars"])
    grids = events.Images("reconstructions")
    assert [g.step for g in grids] == [4, 6]
    assert grids[0].width > 8 * 32 and grids[0].height > 4 * 32  # 16 images above their reconstructions


def test_tags():
    assert [tag(k) for k in ("train_loss", "q_kl", "mse", "lr", "images_per_s")] == \
        ["train/loss", "quantizer/kl", "test/mse", "run/lr", "run/images_per_s"]


def test_without_the_package_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    args = ["run", "-q", "vqvae", "-d", "cifar10-tiny", "--out", str(tmp_path / "runs"), "results=null",
            "train.log=tensorboard", *TINY_RUN]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("): pip install 'vqbench[tensorboard]'\n")
    assert listing(tmp_path) == set()  # no run folder


def test_bad_log_settings_are_one_line(tmp_path, capsys):
    for bad, message in (("train.log=wandb", "train.log must be none or tensorboard"),
                         ("train.log_images_every=0", "train.log_images_every must be ≥ 1")):
        assert main(["run", "-q", "vqvae", "-d", "cifar10-tiny", "--out", str(tmp_path), bad]) == 2
        assert message in capsys.readouterr().err


class _Writer:
    def __init__(self):
        self.scalars, self.closed, self.flushed = [], 0, 0

    def add_scalar(self, name, value, step):
        self.scalars.append((name, value, step))

    def flush(self):
        self.flushed += 1

    def close(self):
        self.closed += 1


def test_an_epoch_logs_its_numbers_only_and_the_logger_closes_once():
    class Trainer:  # the two attributes epoch() reads before a grid is due
        history = [{"epoch": 1, "step": 5, "mse": 0.5, "codes_used": 3, "finished": True, "quantizer": "vqvae"}]
        epoch, epochs = 1, 2
    log = TensorBoardLog(True, images_every=100)
    log.writer = writer = _Writer()
    log.epoch(Trainer())
    # epoch and step are the axis, not scalars; a bool and a string are not numbers to plot
    assert writer.scalars == [("test/mse", 0.5, 5), ("test/codes_used", 3, 5)]
    assert (writer.flushed, writer.closed) == (1, 0)
    log.close()
    log.close()  # a second close (as __del__ does after the last epoch) is a no-op
    assert writer.closed == 1 and log.writer is None


def test_only_the_main_rank_with_train_log_tensorboard_writes():
    import_or_skip_unless_ci("tensorboard", "pip install -e '.[test]'")
    cfg = lambda log: OmegaConf.create({"train": {"log": log, "log_images_every": 3}})  # noqa: E731
    assert [tensorboard_log(cfg(log), is_main).enabled for log, is_main in
            (("tensorboard", True), ("tensorboard", False), ("none", True), ("none", False))] == [True, False, False, False]
    assert tensorboard_log(cfg("none"), True).images_every == 3
