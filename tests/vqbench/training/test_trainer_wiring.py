"""vqbench/training/trainer.py's wiring, in process on the tiny runs of test_trainer_loop.py:
the refusals before a run folder exists, what reaches the stepper, the evaluation, the
progress bar, the logger and the clock, a resume from an epoch-end checkpoint and from a
named checkpoint file, and a divergence before any checkpoint (the mutation subset of
docs/testing.md, with test_trainer_loop.py).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tests.vqbench.training.test_trainer_loop import Stop, tiny_trainer
from vqbench import UserError
from vqbench.rows import load_results
from vqbench.training import Trainer
from vqbench.training import trainer as trainer_module
from vqbench.training.step import DivergenceError, TrainStep


def test_resume_insists_on_a_run_to_continue(tmp_path):
    with pytest.raises(UserError, match="nothing to resume: .* holds no run; drop --resume to start it"):
        tiny_trainer(tmp_path, resume=True)
    assert not any(tmp_path.iterdir())


def test_a_bad_results_folder_is_refused_before_the_run_folder_exists(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="results folder"):
        tiny_trainer(tmp_path / "out", f"results={tmp_path / 'file'}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, message", [("train.cuda_graph=true", "train.cuda_graph=true needs a CUDA device"),
                                               ("quantizer.backend=triton", "backend='triton' needs a CUDA device")])
def test_cuda_only_options_are_refused_on_the_cpu_before_the_run_folder_exists(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        tiny_trainer(tmp_path, override, name="gmvq")
    assert not any(tmp_path.iterdir())


def test_a_cpu_run_is_deterministic_with_warnings_and_never_channels_last(tmp_path):
    torch.use_deterministic_algorithms(False)
    try:
        trainer = tiny_trainer(tmp_path, "train.channels_last=true")
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # a kernel without one warns, not fails
    finally:
        torch.use_deterministic_algorithms(False)
    assert trainer.channels_last is False  # channels_last is a CUDA layout; on the CPU it only costs
    assert all(p.is_contiguous() for p in trainer.model.parameters())


def test_the_run_s_options_reach_the_stepper_the_kmeans_init_and_the_evaluation(tmp_path, monkeypatch):
    seen = {}
    real_init, real_eval = trainer_module.init_codebook, trainer_module.evaluate
    monkeypatch.setattr(trainer_module, "init_codebook",
                        lambda *a: (seen.setdefault("init", a), real_init(*a))[1])
    monkeypatch.setattr(trainer_module, "evaluate", lambda *a: (seen.setdefault("eval", a), real_eval(*a))[1])
    trainer = tiny_trainer(tmp_path, "train.epochs=1", "train.grad_clip=0.5", "train.amp=bf16",
                           "train.eval_batch_size=8")
    trainer.fit()
    assert trainer.stepper.grad_clip == 0.5
    autocast = trainer.autocast()
    assert autocast.fast_dtype == torch.bfloat16 and autocast._enabled  # train.amp=bf16 honoured on the CPU
    model, images, cfg, generator, channels_last = seen["init"]
    assert model is trainer.model and generator is trainer.generator and channels_last is False
    assert seen["eval"] == (trainer.model, trainer.test_images, 8, False, trainer.autocast)


class Bar:
    """tqdm's part of the interface the trainer uses, recorded."""

    def __init__(self, total, desc):
        self.total, self.desc, self.updates, self.postfix, self.closed = total, desc, [], [], False

    def update(self, n):
        self.updates.append(n)

    def set_postfix(self, **kwargs):
        self.postfix.append(kwargs)

    def close(self):
        self.closed = True


def recorded_bars(monkeypatch) -> list[Bar]:
    """The trainer's progress bars from now on, as :class:`Bar` recorders."""
    bars: list[Bar] = []
    monkeypatch.setattr(trainer_module, "progress_bar", lambda total, desc: bars.append(Bar(total, desc)) or bars[-1])
    return bars


def test_the_progress_bar_counts_every_step_once_and_shows_the_epoch_and_loss(tmp_path, monkeypatch):
    bars = recorded_bars(monkeypatch)
    monkeypatch.setattr(trainer_module, "CHECK_EVERY", 2)
    trainer = tiny_trainer(tmp_path, "train.epochs=2")
    trainer.fit()
    (bar,) = bars
    assert (bar.total, bar.desc, bar.closed) == (6, "vqvae", True)
    assert bar.updates == [0, 1, 1, 1, 1, 1, 1]  # the restored steps (none), then one per step
    assert [p["epoch"] for p in bar.postfix] == [1, 2, 2]  # at steps 2, 4 and 6 (the last)
    assert all(len(p["loss"].split(".")[1]) == 4 and float(p["loss"]) > 0 for p in bar.postfix)  # 4 places


def test_the_bar_of_a_resumed_run_starts_at_the_restored_step(tmp_path, monkeypatch):
    real = Trainer.write_checkpoint

    def stop_after_epoch_1(self):
        real(self)
        if self.step == 3:
            raise Stop
    monkeypatch.setattr(Trainer, "write_checkpoint", stop_after_epoch_1)
    with pytest.raises(Stop):
        tiny_trainer(tmp_path, "train.epochs=2").fit()
    monkeypatch.setattr(Trainer, "write_checkpoint", real)
    bars, lines = recorded_bars(monkeypatch), []
    result = tiny_trainer(tmp_path, "train.epochs=2", log=lines.append).fit()
    assert bars[0].updates == [3, 1, 1, 1]
    name = result.run_dir.name
    assert lines[0] == f"resuming {name} from step 3/6"  # an epoch-end checkpoint: no batch to name
    assert result.summary["resumed_from"] == [3] and result.summary["num_codes"] == 16


def test_throughput_and_train_seconds_are_the_training_clock_s(tmp_path, monkeypatch):
    """A clock that advances 0.25 s a reading: an epoch (one reading at its start, one at its
    end) trains for 0.25 s; the checkpoints' running seconds and the summary add those up."""
    ticks = iter(range(10_000))
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: 0.25 * next(ticks)))
    positions = []
    real = Trainer.write_checkpoint
    monkeypatch.setattr(Trainer, "write_checkpoint",
                        lambda self: (positions.append(self.epoch_position and self.epoch_position["seconds"]),
                                      real(self)))
    trainer = tiny_trainer(tmp_path, "train.epochs=2", "train.checkpoint_every=2")
    result = trainer.fit()
    # epoch 1: t0, the mid-epoch checkpoint at step 2 (0.25 s in), its end (0.5 s); epoch 2 likewise
    assert positions == [0.25, None, 0.25, None]
    assert [r["images_per_s"] for r in result.history] == [3 * 16 / 0.5, 3 * 16 / 0.5]
    assert result.summary["train_seconds"] == trainer.train_seconds == 1.0
    assert result.summary["images_per_s"] == 6 * 16 / 1.0


def test_tensorboard_sees_the_trainer_after_every_epoch(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "tensorboard_log",
                        lambda cfg, is_main: calls.append(("made", is_main)) or SimpleNamespace(
                            epoch=lambda trainer: calls.append((trainer.epoch, trainer))))
    trainer = tiny_trainer(tmp_path, "train.epochs=2")
    trainer.fit()
    assert calls == [("made", True), (1, trainer), (2, trainer)]


def test_metrics_stay_empty_until_the_first_epoch_ends(tmp_path, monkeypatch):
    def stop(self, x, number):
        raise Stop
    monkeypatch.setattr(TrainStep, "__call__", stop)
    trainer = tiny_trainer(tmp_path, "train.epochs=1")
    with pytest.raises(Stop):
        trainer.fit()
    assert (trainer.run_dir / "metrics.jsonl").read_text() == ""


def test_load_checkpoint_restores_a_named_checkpoint_file(tmp_path):
    done = tiny_trainer(tmp_path / "a", "train.epochs=2").fit()
    fresh = tiny_trainer(tmp_path / "b", "train.epochs=2")
    fresh.load_checkpoint(done.run_dir / "checkpoint.pt")
    assert (fresh.step, fresh.epoch, fresh.last_checkpoint_step) == (6, 2, 6)
    assert fresh.history == done.history and fresh.resumed_from == [6]
    saved = torch.load(done.run_dir / "checkpoint.pt", weights_only=True)["model"]
    for key, value in fresh.model.state_dict().items():
        assert torch.equal(value, saved[key])


def test_a_divergence_before_any_checkpoint_says_none_was_written_and_where_it_is_marked(tmp_path, monkeypatch):
    def diverge(self, window):
        if window:
            raise DivergenceError(f"loss is nan at step {window[0][0]}", step=window[0][0], loss=float("nan"),
                                  terms=["commitment"])
    monkeypatch.setattr(TrainStep, "check_finite", diverge)
    trainer = tiny_trainer(tmp_path, "train.epochs=1")
    with pytest.raises(DivergenceError) as info:
        trainer.fit()
    path = trainer.run_dir / "summary.json"
    assert str(info.value) == f"loss is nan at step 1; no checkpoint had been written; run marked failed in {path}"
    summary = json.loads(path.read_text())
    assert summary["last_checkpoint_step"] is None and summary["status"] == "failed"
    assert summary["failed_step"] == 1 and summary["nonfinite_terms"] == ["commitment"]


def test_a_one_step_epoch_s_record_is_that_step_s(tmp_path, steps):
    result = tiny_trainer(tmp_path, "data.limit=16", "train.epochs=2").fit()
    for record, step in zip(result.history, steps):
        assert record["train_loss"] == pytest.approx(step["loss"], rel=1e-6)
        assert record["train_mse"] == pytest.approx(step["mse"], rel=1e-6)


@pytest.mark.parametrize("extra, expected", [
    (["train.checkpoint_every=3"], [(3, None), (6, None)]),  # every epoch end is every 3rd step: no mid-epoch one
    (["train.checkpoint_every=1", "train.max_steps=5"],  # the run's last step is the epoch-end checkpoint's
     [(1, 1), (2, 2), (3, None), (4, 1), (5, None)]),
])
def test_no_mid_epoch_checkpoint_where_an_epoch_end_one_follows(tmp_path, monkeypatch, extra, expected):
    written = []
    real = Trainer.write_checkpoint

    def spy(self):
        written.append((self.step, self.epoch_position and self.epoch_position["batch"]))
        real(self)
    monkeypatch.setattr(Trainer, "write_checkpoint", spy)
    tiny_trainer(tmp_path, "train.epochs=2", *extra).fit()
    assert written == expected


def test_a_named_checkpoint_that_does_not_fit_is_one_line_naming_the_file(tmp_path):
    done = tiny_trainer(tmp_path / "a", "train.epochs=1").fit()
    state = torch.load(done.run_dir / "checkpoint.pt", weights_only=True)
    del state["model"][next(iter(state["model"]))]
    damaged = tmp_path / "damaged.pt"
    torch.save(state, damaged)
    with pytest.raises(UserError, match=f"^checkpoint {damaged} does not fit this run"):
        tiny_trainer(tmp_path / "b", "train.epochs=1").load_checkpoint(damaged)


def test_the_result_row_keeps_the_run_s_curves(tmp_path):
    result = tiny_trainer(tmp_path, "train.epochs=2", f"results={tmp_path / 'results'}").fit()
    (row,) = load_results(tmp_path / "results").to_dict("records")
    assert json.loads(row["history"]) == result.history
