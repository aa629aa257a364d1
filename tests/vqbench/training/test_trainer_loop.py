"""vqbench/training/trainer.py's epoch loop against known answers, in process and in well
under a second a run (the mutation subset of docs/testing.md): which batches each step sees,
the epoch record's numbers against the steps that made them, where checkpoints land, the
step cap, the callbacks, the files, and a resume from a mid-epoch checkpoint equal to the
uninterrupted run. The SIGKILL, finished-run and divergence lifetimes are test_trainer.py.
"""
from __future__ import annotations

import json
import pytest
import torch
from omegaconf import OmegaConf

from vqbench import resolve_config
from vqbench.training import Trainer
from vqbench.training import trainer as trainer_module
from vqbench.training.optim import lr_factor
from vqbench.training.step import TrainStep

# 48 images / batch 16: 3 steps an epoch.
TINY = ["device=cpu", "data.limit=48", "train.batch_size=16", "model.channels=8", "model.res_blocks=1",
        "model.latent_dim=8", "quantizer.num_codes=16", "train.kmeans_samples=128", "data.test_limit=16",
        "results=null"]
TIMING = ("images_per_s",)


def tiny_trainer(tmp_path, *extra: str, name: str = "vqvae", log=None, **kwargs) -> Trainer:
    cfg = resolve_config(name, "cifar10-tiny", None, [*TINY, f"out={tmp_path}", *extra])
    return Trainer(cfg, log=log or (lambda line: None), **kwargs)




def test_every_epoch_visits_each_training_image_once_in_a_new_order(tmp_path, steps):
    # without k-means (which samples from it first) the generator draws only the permutations
    history = tiny_trainer(tmp_path, "train.epochs=2", "train.kmeans_init=false").fit().history
    assert [s["step"] for s in steps] == [0, 1, 2, 3, 4, 5]
    assert all(len(s["indices"]) == 16 for s in steps)
    epochs = [torch.cat([s["indices"] for s in steps[e * 3:(e + 1) * 3]]) for e in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(48))
    assert not torch.equal(epochs[0], epochs[1])
    # the permutation is the run's seeded generator's, one an epoch
    g = torch.Generator().manual_seed(0)
    expected = [torch.randperm(48, generator=g) for _ in range(2)]
    assert torch.equal(epochs[0], expected[0]) and torch.equal(epochs[1], expected[1])
    assert [r["epoch"] for r in history] == [1, 2] and [r["step"] for r in history] == [3, 6]


def test_the_epoch_record_is_the_mean_of_its_steps_and_the_schedule_s_last_lr(tmp_path, steps):
    trainer = tiny_trainer(tmp_path, "train.epochs=2")
    history = trainer.fit().history
    for e, record in enumerate(history):
        mine = steps[e * 3:(e + 1) * 3]
        assert record["train_loss"] == pytest.approx(sum(s["loss"] for s in mine) / 3, rel=1e-6)
        assert record["train_mse"] == pytest.approx(sum(s["mse"] for s in mine) / 3, rel=1e-6)
        assert record["images_per_s"] > 0
    # the schedule's value after the epoch's steps: warm-up + cosine to zero at the last of 6
    train = trainer.cfg.train
    expected = [train.lr * lr_factor(s, 6, train.warmup_fraction, train.warmup_start_factor) for s in (3, 6)]
    assert [r["lr"] for r in history] == pytest.approx(expected, rel=1e-6)
    assert expected[0] > 0 and expected[1] == 0.0
    assert set(history[0]) >= {"mse", "perplexity", "code_perplexity", "codes_used", "psnr", "q_commitment"}
    assert trainer.images_seen == 6 * 16
    assert trainer.epoch == 2 and trainer.step == 6


def test_the_evaluation_in_the_record_is_the_trained_model_s(tmp_path):
    trainer = tiny_trainer(tmp_path, "train.epochs=1")
    history = trainer.fit().history
    again = trainer.evaluate()
    assert {k: history[-1][k] for k in again} == again


def test_max_steps_stops_inside_an_epoch(tmp_path, steps):
    trainer = tiny_trainer(tmp_path, "train.epochs=3", "train.max_steps=4")
    history = trainer.fit().history
    assert len(steps) == 4 and [r["step"] for r in history] == [3, 4]
    assert history[1]["train_loss"] == pytest.approx(steps[3]["loss"], rel=1e-6)  # one step's mean
    assert trainer.images_seen == 4 * 16
    assert trainer.fit().summary["steps"] == 4  # finished: the summary, not a retrain


def test_checkpoints_land_mid_epoch_every_k_steps_and_at_every_epoch_end(tmp_path, monkeypatch):
    written = []
    real = Trainer.write_checkpoint

    def spy(self):
        position = self.epoch_position
        written.append((self.step, None if position is None else position["batch"]))
        real(self)
    monkeypatch.setattr(Trainer, "write_checkpoint", spy)
    tiny_trainer(tmp_path, "train.epochs=2", "train.checkpoint_every=2").fit()
    # steps 2 and 4 mid-epoch (next batch 2 of epoch 1, 1 of epoch 2); 3 and 6 at epoch ends
    assert written == [(2, 2), (3, None), (4, 1), (6, None)]


def test_no_mid_epoch_checkpoint_without_checkpoint_every(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(Trainer, "write_checkpoint", lambda self: written.append(self.step))
    tiny_trainer(tmp_path, "train.epochs=2", "train.checkpoint_every=null").fit()
    assert written == [3, 6]


class Stop(Exception):
    pass


def test_a_resume_from_a_mid_epoch_checkpoint_ends_where_the_whole_run_does(tmp_path, monkeypatch):
    whole = tiny_trainer(tmp_path / "whole", "train.epochs=2", "train.checkpoint_every=2").fit()

    seen = []
    real = Trainer.write_checkpoint

    def stop_after_step_4(self):
        real(self)
        if self.step == 4:
            raise Stop  # as if killed right after the mid-epoch checkpoint of epoch 2
    monkeypatch.setattr(Trainer, "write_checkpoint", stop_after_step_4)
    with pytest.raises(Stop):
        tiny_trainer(tmp_path / "cut", "train.epochs=2", "train.checkpoint_every=2").fit()
    monkeypatch.setattr(Trainer, "write_checkpoint", real)
    lines = []
    resumed = tiny_trainer(tmp_path / "cut", "train.epochs=2", "train.checkpoint_every=2",
                           on_epoch=seen.append, resume=True, log=lines.append).fit()
    assert any("from step 4/6, batch 1 of epoch 2" in line for line in lines), lines

    def strip(history):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in history]
    assert strip(resumed.history) == strip(whole.history)
    assert strip(seen) == strip(whole.history)  # the restored epoch first, then the new one, once each
    assert resumed.summary["mse"] == whole.summary["mse"]
    for a, b in zip(torch.load(whole.run_dir / "checkpoint.pt", weights_only=True)["model"].values(),
                    torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)["model"].values()):
        assert torch.equal(a, b)


def test_the_run_folder_holds_the_config_the_history_and_the_summary(tmp_path):
    trainer = tiny_trainer(tmp_path, "train.epochs=2")
    records = []
    trainer.on_epoch = records.append
    result = trainer.fit()
    run_dir = result.run_dir
    assert (run_dir / "config.yaml").read_text() == OmegaConf.to_yaml(trainer.cfg)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history == records
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mse"] == result.history[-1]["mse"] and summary["steps"] == 6 and summary["epochs"] == 2
    assert summary["status"] == "finished"
    assert summary["images_per_s"] == pytest.approx(6 * 16 / trainer.train_seconds, rel=1e-6)


def test_the_log_says_each_epoch_s_numbers(tmp_path):
    lines = []
    result = tiny_trainer(tmp_path, "train.epochs=2", log=lines.append).fit()
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    r = result.history[0]
    assert epoch_lines[0] == (f"epoch 1/2  step 3  loss {r['train_loss']:.5f}  test mse {r['mse']:.5f}  "
                              f"perplexity {r['perplexity']:.1f}  codes {r['codes_used']}  "
                              f"{r['images_per_s']:.0f} img/s")
    assert epoch_lines[1].startswith("epoch 2/2  step 6  ")


def test_kmeans_init_sets_the_codebook_before_the_first_step_and_only_when_asked(tmp_path, monkeypatch):
    calls = []
    real = trainer_module.init_codebook
    monkeypatch.setattr(trainer_module, "init_codebook", lambda *a, **k: (calls.append(a[0]), real(*a, **k)))
    trainer = tiny_trainer(tmp_path / "on", "train.epochs=1", "train.max_steps=1")
    trainer.fit()
    assert calls == [trainer.model]
    calls.clear()
    off = tiny_trainer(tmp_path / "off", "train.epochs=1", "train.max_steps=1", "train.kmeans_init=false")
    off.fit()
    assert calls == []


def test_a_cpu_run_asks_for_deterministic_kernels(tmp_path):
    torch.use_deterministic_algorithms(False)
    try:
        tiny_trainer(tmp_path)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_finiteness_is_checked_every_ten_steps_and_at_the_end(tmp_path, monkeypatch):
    checked = []
    real = TrainStep.check_finite
    monkeypatch.setattr(TrainStep, "check_finite",
                        lambda self, window: (checked.append([s for s, _, _ in window]), real(self, window)))
    trainer = tiny_trainer(tmp_path, "train.epochs=1", "data.limit=208", "train.checkpoint_every=null")
    trainer.fit()  # 13 steps: the window at step 10 and at the last, then the epoch end's (empty)
    assert trainer_module.CHECK_EVERY == 10
    assert checked == [list(range(1, 11)), [11, 12, 13], []]
