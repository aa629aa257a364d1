"""vqbench/training/checkpoint.py, function by function, with known answers: what a checkpoint
holds, where an epoch starts, a round trip of every RNG and counter, the legacy single-rank
layout, and each refusal's exact line. (Kills, damage and rotation: test_checkpoint_faults.py.)"""
from __future__ import annotations

import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vqbench.errors import UserError
from vqbench.training.checkpoint import (PROGRESS, ResumeWarning, _reason, checkpoint_state, epoch_start,
                                         load_checkpoint_file, restore_checkpoint, resume_checkpoint, rng_state,
                                         save_checkpoint)
from vqbench.training.ddp import DistContext

CFG = OmegaConf.create({"quantizer": {"name": "vqvae"}, "seed": 3})


def _step(lr: float = 0.1):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 1.0 / (1 + n))
    return SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler, device=torch.device("cpu"))


def _progress(step: int = 7) -> dict:
    return {"epoch": 2, "step": step, "history": [{"epoch": 1, "mse": 0.5}], "train_seconds": 1.5,
            "images_seen": 224, "resumed_from": [3]}


def _position(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"order": torch.randperm(10, generator=g), "batch": seed, "seconds": 0.25 * seed,
            "loss_sum": torch.tensor(float(seed)), "mse_sum": torch.tensor(seed / 10)}


def test_a_checkpoint_holds_weights_optimiser_scheduler_config_rngs_and_progress():
    step, generator = _step(), torch.Generator().manual_seed(0)
    own = {"rng": rng_state(generator, cuda=False), "epoch_position": _position(1)}
    state = checkpoint_state(step, CFG, _progress(), own, DistContext())
    assert set(state) == {"model", "optimizer", "per_rank", "scheduler", "config", "config_hash", "rng",
                          "epoch_position", *PROGRESS}
    assert state["per_rank"] == [own] and state["config"] == {"quantizer": {"name": "vqvae"}, "seed": 3}
    assert torch.equal(state["model"]["weight"], step.model.weight.detach())
    assert state["scheduler"] == step.scheduler.state_dict() and state["step"] == 7


def test_an_epoch_starts_from_a_fresh_permutation_or_from_the_saved_position():
    order, batch, seconds, loss_sum, mse_sum = epoch_start(None, 10, torch.Generator().manual_seed(5),
                                                           torch.device("cpu"))
    assert torch.equal(order, torch.randperm(10, generator=torch.Generator().manual_seed(5)))
    assert (batch, seconds, float(loss_sum), float(mse_sum)) == (0, 0.0, 0.0, 0.0)
    assert isinstance(seconds, float) and loss_sum.shape == () and mse_sum.shape == ()
    saved = _position(4)
    order, batch, seconds, loss_sum, mse_sum = epoch_start(saved, 10, torch.Generator(), torch.device("cpu"))
    assert torch.equal(order, saved["order"]) and (batch, seconds, float(loss_sum)) == (4, 1.0, 4.0)
    assert float(mse_sum) == pytest.approx(0.4)


def _saved(tmp_path, per_rank: bool = True):
    step, generator = _step(), torch.Generator().manual_seed(11)
    step.scheduler.step()
    torch.manual_seed(123), np.random.seed(4), random.seed(5)
    own = {"rng": rng_state(generator, cuda=False), "epoch_position": _position(2)}
    state = checkpoint_state(step, CFG, _progress(), own, DistContext())
    draws = (torch.rand(3), np.random.rand(), random.random(), torch.rand(2, generator=generator))
    if not per_rank:  # a file from before per-rank states: the top-level ones are this rank's
        state.pop("per_rank")
    else:  # the top level is rank 0's own; give it other values, so only per_rank can explain a match
        state = {**state, "rng": rng_state(torch.Generator().manual_seed(99), cuda=False),
                 "epoch_position": _position(9)}
    return step, state, draws


@pytest.mark.parametrize("per_rank", [True, False])
def test_restore_is_a_round_trip_of_weights_rngs_and_counters(tmp_path, per_rank):
    saved_step, state, draws = _saved(tmp_path, per_rank)
    step, generator = _step(lr=0.5), torch.Generator().manual_seed(0)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    progress = restore_checkpoint(state, tmp_path / "c.pt", step, generator, DistContext(), cuda_graph=False)
    assert progress == {"epoch": 2, "step": 7, "history": [{"epoch": 1, "mse": 0.5}], "train_seconds": 1.5,
                        "images_seen": 224, "resumed_from": [3, 7],
                        "resume_point": state["per_rank"][0]["epoch_position"] if per_rank else state["epoch_position"]}
    assert isinstance(progress["train_seconds"], float) and isinstance(progress["images_seen"], int)
    assert progress["resume_point"]["batch"] == 2
    again = (torch.rand(3), np.random.rand(), random.random(), torch.rand(2, generator=generator))
    assert torch.equal(again[0], draws[0]) and again[1:3] == draws[1:3] and torch.equal(again[3], draws[3])
    assert torch.equal(step.model.weight, saved_step.model.weight)
    assert step.scheduler.state_dict() == saved_step.scheduler.state_dict()
    assert step.optimizer.param_groups[0]["lr"] == saved_step.optimizer.param_groups[0]["lr"]


def test_restore_for_a_cuda_graph_turns_the_lrs_into_tensors(tmp_path):
    _, state, _ = _saved(tmp_path)
    step = _step()
    restore_checkpoint(state, tmp_path / "c.pt", step, torch.Generator(), DistContext(), cuda_graph=True)
    lr = step.optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.device.type == "cpu"


def test_a_state_that_does_not_fit_is_one_line(tmp_path):
    _, state, _ = _saved(tmp_path)
    path = tmp_path / "c.pt"
    with pytest.raises(UserError) as info:
        restore_checkpoint({**state, "model": {"weight": torch.zeros(5, 5)}}, path, _step(), torch.Generator(),
                           DistContext(), cuda_graph=False)
    message = str(info.value)
    assert message == (f"checkpoint {path} does not fit this run (RuntimeError: Error(s) in loading state_dict "
                       "for Linear:); delete it to start the run over")  # torch's first line
    assert message.endswith("); delete it to start the run over") and "\n" not in message


def test_load_refuses_damaged_foreign_and_code_carrying_files_in_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError) as info:
        load_checkpoint_file(path, "h")
    try:
        torch.load(path, weights_only=True)
    except Exception as exc:  # what torch says of it, cut to its first line's 160 characters
        from vqbench.errors import first_line

        torch_says = first_line(exc)[:160]
    assert len(torch_says) == 160  # (this torch's message is longer: the cut is tested too)
    assert str(info.value) == (f"checkpoint {path} cannot be read ({torch_says}); it is damaged or not a vqbench "
                               "checkpoint: delete it to start the run over")
    for state in ({"model": {}}, {"step": 1}, [1, 2]):
        torch.save(state, path)
        with pytest.raises(UserError) as info:
            load_checkpoint_file(path, "h")
        assert str(info.value) == (f"checkpoint {path} is not a vqbench checkpoint (no model/step); "
                                   "delete it to start the run over")
    torch.save({"model": {}, "step": 1, "config_hash": "other"}, path)
    with pytest.raises(UserError) as info:
        load_checkpoint_file(path, "mine")
    assert str(info.value) == (f"checkpoint {path} belongs to another configuration (hash other, this one is mine); "
                               "delete it or choose another name= or out=")
    torch.save({"model": {}, "step": 1, "config_hash": "mine", "payload": SimpleNamespace(x=1)}, path)
    with pytest.raises(UserError, match="cannot be read"):  # weights_only: no arbitrary object is unpickled
        load_checkpoint_file(path, "mine")
    torch.save({"model": {}, "step": 1, "config_hash": "mine"}, path)
    assert load_checkpoint_file(path, "mine")["step"] == 1


def test_the_reason_is_the_middle_of_the_line():
    from pathlib import Path

    path = Path("/r/checkpoint.pt")
    read = UserError(f"checkpoint {path} cannot be read (EOF); it is damaged or not a vqbench checkpoint: delete it to start the run over")
    assert _reason(read, path) == "cannot be read (EOF); it is damaged or not a vqbench checkpoint"
    foreign = UserError(f"checkpoint {path} does not fit this run (KeyError: 'x'); delete it to start the run over")
    assert _reason(foreign, path) == "does not fit this run (KeyError: 'x')"


def test_the_fallback_warning_points_at_the_caller(tmp_path):
    save_checkpoint(tmp_path, {"model": {}, "step": 1, "config_hash": "h"})
    save_checkpoint(tmp_path, {"model": {}, "step": 2, "config_hash": "h"})
    (tmp_path / "checkpoint.pt").write_bytes(b"damaged")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        progress = resume_checkpoint(tmp_path, "h", lambda state, path: {"step": state["step"]})
    assert progress == {"step": 1}
    [warning] = [w for w in caught if issubclass(w.category, ResumeWarning)]
    # stacklevel: the line that called resume_checkpoint (here; mutmut's trampoline when it runs this),
    # not _warn's own line nor pytest's machinery above the caller
    assert not warning.filename.endswith("training/checkpoint.py") and "_pytest" not in warning.filename


def test_set_aside_never_overwrites_an_earlier_damaged_file(tmp_path):
    from vqbench.training.checkpoint import set_aside

    for n, expected in enumerate(["checkpoint.pt.damaged", "checkpoint.pt.damaged.2", "checkpoint.pt.damaged.3"]):
        (tmp_path / "checkpoint.pt").write_bytes(bytes([n]))
        assert set_aside(tmp_path / "checkpoint.pt").name == expected
    assert [(tmp_path / name).read_bytes() for name in ("checkpoint.pt.damaged", "checkpoint.pt.damaged.2",
                                                         "checkpoint.pt.damaged.3")] == [b"\x00", b"\x01", b"\x02"]


def test_resume_restores_from_the_file_it_read_and_only_rank_0_renames(tmp_path):
    seen = []

    def restore(state, path):
        seen.append(path.name)
        return {"step": state["step"]}

    save_checkpoint(tmp_path, {"model": {}, "step": 1, "config_hash": "h"})
    save_checkpoint(tmp_path, {"model": {}, "step": 2, "config_hash": "h"})
    assert resume_checkpoint(tmp_path, "h", restore) == {"step": 2} and seen == ["checkpoint.pt"]
    (tmp_path / "checkpoint.pt").write_bytes(b"damaged")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert resume_checkpoint(tmp_path, "h", restore, is_main=False) == {"step": 1}
    assert seen[-1] == "checkpoint.prev.pt" and (tmp_path / "checkpoint.pt").is_file()  # another rank: no rename
    (tmp_path / "checkpoint.pt").unlink()  # killed between the rotation's renames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert resume_checkpoint(tmp_path, "h", restore) == {"step": 1}
    assert seen[-1] == "checkpoint.prev.pt"


def test_neither_checkpoint_usable_names_both_reasons(tmp_path):
    save_checkpoint(tmp_path, {"model": {}, "step": 1, "config_hash": "h"})
    save_checkpoint(tmp_path, {"model": {}, "step": 2, "config_hash": "h"})
    (tmp_path / "checkpoint.pt").write_bytes(b"damaged")
    torch.save({"model": {}, "step": 1, "config_hash": "other"}, tmp_path / "checkpoint.prev.pt")
    with pytest.raises(UserError) as info:
        resume_checkpoint(tmp_path, "h", lambda state, path: {"step": state["step"]})
    message = str(info.value)
    assert message.startswith(f"neither checkpoint of {tmp_path} can be used: checkpoint.pt cannot be read (")
    assert message.endswith("; checkpoint.prev.pt belongs to another configuration (hash other, this one is h); "
                            "delete its checkpoints to start the run over")
