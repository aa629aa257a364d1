"""vqbench/training/summary.py: what a run says of itself, with known answers — the steady
throughput, a previous attempt's meaning, the row before the summary, both summaries' fields."""
from __future__ import annotations

import json

import pytest
import torch

from vqbench import resolve_config
from vqbench.config import config_hash
from vqbench.data import ImageData
from vqbench.rows import load_results
from vqbench.training import steady_throughput
from vqbench.training.step import DivergenceError
from vqbench.training.summary import (failed_summary, finished_summary, marked_failed, previous_result,
                                      run_identity, write_finished)


def test_steady_throughput_leaves_out_the_first_epoch():
    # Epoch 1 (compile, capture) at 100 img/s; epochs 2–3: 10 steps of 32 images at 400 and 200 img/s.
    history = [{"step": 10, "images_per_s": 100.0}, {"step": 20, "images_per_s": 400.0},
               {"step": 30, "images_per_s": 200.0}]
    assert steady_throughput(history, 32) == pytest.approx(640 / (320 / 400 + 320 / 200))
    assert steady_throughput(history[:1], 32) is None
    # under a second of steady epochs still counts; a rate below 1 img/s is not clamped to 1
    assert steady_throughput([{"step": 1, "images_per_s": 5.0}, {"step": 2, "images_per_s": 1000.0}], 32) == \
        pytest.approx(1000.0)
    assert steady_throughput([{"step": 1, "images_per_s": 5.0}, {"step": 2, "images_per_s": 0.5}], 32) == \
        pytest.approx(0.5)


def _cfg(tmp_path, results=True):
    return resolve_config("vqvae", "cifar10-tiny", None, [f"out={tmp_path}", "device=cpu",
                                                          f"results={tmp_path / 'results' if results else 'null'}"])


def test_identity_names_the_run_and_its_config(tmp_path):
    cfg = _cfg(tmp_path)
    ident = run_identity(cfg, tmp_path / "run-x", epochs=3, steps=30, num_codes=1024, device=torch.device("cpu"),
                         resumed_from=[10])
    assert ident == {"run_id": "run-x", "run_dir": str(tmp_path / "run-x"), "config_hash": config_hash(cfg),
                     "quantizer": "vqvae", "dataset": "cifar10-tiny", "model": "conv32", "seed": 0, "epochs": 3,
                     "steps": 30, "num_codes": 1024, "device": "cpu", "torch": torch.__version__,
                     "vqbench": ident["vqbench"], "resumed_from": [10]}


def test_finished_summary_reads_the_last_epoch_and_counts_every_rank(tmp_path):
    train = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    test = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)  # mean training image 0, test images 1: MSE 1
    history = [{"step": 5, "images_per_s": 10.0, "mse": 0.5, "perplexity": 2.0, "code_perplexity": 2.0, "codes_used": 2},
               {"step": 10, "images_per_s": 20.0, "mse": 0.25, "perplexity": 3.0, "code_perplexity": 4.0,
                "codes_used": 5, "psnr": 6.0, "ssim": 0.5, "usage": 0.1}]
    import time

    s = finished_summary({"run_id": "r"}, history, ImageData(train, test, "validation"), images_seen=100,
                         train_seconds=0.5, world_size=2, images_per_step=8, started=time.perf_counter() - 2.0,
                         device=torch.device("cpu"))
    assert (s["status"], s["run_id"], s["mse"], s["perplexity"], s["code_perplexity"], s["codes_used"]) == \
        ("finished", "r", 0.25, 3.0, 4.0, 5)
    assert (s["psnr"], s["ssim"], s["usage"]) == (6.0, 0.5, 0.1)
    assert s["mean_image_mse"] == pytest.approx(1.0)
    assert s["images_per_s"] == pytest.approx(100 * 2 / 0.5) and s["steady_images_per_s"] == pytest.approx(20.0)
    assert (s["train_images"], s["test_images"], s["eval_split"], s["world_size"], s["device_name"]) == \
        (4, 2, "validation", 2, "cpu")
    assert s["train_seconds"] == 0.5 and 2.0 <= s["wall_s"] < 3.0
    old = finished_summary({}, [{k: v for k, v in history[0].items()}], ImageData(train, test), 1, 1.0, 1, 8, 0.0,
                           torch.device("cpu"))
    assert old["psnr"] is None and old["eval_split"] == "test"  # a record from before psnr


def test_finished_summary_names_the_cuda_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"card of {device}")
    record = {"step": 1, "images_per_s": 1.0, "mse": 0.1, "perplexity": 1.0, "code_perplexity": 1.0, "codes_used": 1}
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    s = finished_summary({}, [record], ImageData(images, images), 1, 1.0, 1, 1, 0.0, torch.device("cuda", 0))
    assert s["device_name"] == "card of cuda:0"


def test_failed_summary_has_no_metrics_and_marked_failed_says_what_was_kept(tmp_path):
    exc = DivergenceError("loss is nan at step 7", step=7, loss=1e30, terms=["q_loss"])
    s = failed_summary({"run_id": "r"}, exc, last_checkpoint_step=5)
    assert s == {"status": "failed", "error": "loss is nan at step 7", "failed_step": 7, "nonfinite_terms": ["q_loss"],
                 "last_checkpoint_step": 5, "run_id": "r"}
    again = marked_failed(exc, s, tmp_path / "summary.json")
    assert str(again) == f"loss is nan at step 7; kept the last good checkpoint (step 5); run marked failed in {tmp_path / 'summary.json'}"
    assert (again.step, again.loss, again.terms, again.summary) == (7, 1e30, ["q_loss"], s)
    none_kept = marked_failed(exc, {**s, "last_checkpoint_step": None}, tmp_path / "summary.json")
    assert str(none_kept) == f"loss is nan at step 7; no checkpoint had been written; run marked failed in {tmp_path / 'summary.json'}"


def test_previous_result_finished_failed_or_none(tmp_path):
    lines: list[str] = []
    assert previous_result(tmp_path, lines.append) is None and lines == []
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "mse": 0.1}\n')
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished", "steps": 12}))
    result = previous_result(tmp_path, lines.append)
    assert result.summary["steps"] == 12 and result.history == [{"epoch": 1, "mse": 0.1}] and result.run_dir == tmp_path
    assert lines == [f"run {tmp_path.name} already finished (12 steps); not retraining (delete {tmp_path} to train it again)"]
    failed = {"status": "failed", "error": "loss is nan", "failed_step": 3, "nonfinite_terms": ["x"]}
    (tmp_path / "summary.json").write_text(json.dumps(failed))
    with pytest.raises(DivergenceError, match=f"run {tmp_path.name} already failed: loss is nan; not retrying") as info:
        previous_result(tmp_path, lines.append)
    assert (info.value.step, info.value.terms, info.value.summary) == (3, ["x"], failed)


def test_write_finished_writes_the_row_then_the_summary_and_drops_the_previous_checkpoint(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"newest")
    (run_dir / "checkpoint.prev.pt").write_bytes(b"older")
    summary = {"run_id": "run", "config_hash": config_hash(cfg), "status": "finished", "mse": 0.5, "perplexity": 2.0,
               "code_perplexity": 2.0, "codes_used": 3, "epochs": 1, "steps": 2, "train_images": 4, "test_images": 2,
               "run_dir": str(run_dir)}
    write_finished(cfg, run_dir, summary)
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert (run_dir / "checkpoint.pt").read_bytes() == b"newest" and not (run_dir / "checkpoint.prev.pt").exists()
    rows = load_results(tmp_path / "results")
    assert list(rows["run_id"]) == ["run"] and float(rows["mse"][0]) == 0.5

    quiet = _cfg(tmp_path / "q", results=False)
    (tmp_path / "q").mkdir()
    write_finished(quiet, tmp_path / "q", {**summary, "run_dir": str(tmp_path / "q")})
    assert not (tmp_path / "q" / "results").exists() and (tmp_path / "q" / "summary.json").is_file()
    # a previous checkpoint that cannot be removed costs nothing: the run is finished
    (tmp_path / "q" / "checkpoint.prev.pt").mkdir()
    write_finished(quiet, tmp_path / "q", {**summary, "run_dir": str(tmp_path / "q")})
