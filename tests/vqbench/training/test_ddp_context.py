"""vqbench/training/ddp.py's DistContext with known answers: two ranks in threads of this process
(torch's threaded test backend, which mutation testing can run; test_ddp.py trains real
torchrun-style processes), and the single-process paths, where every method is the identity."""
from __future__ import annotations

import os
import pickle
import sys
import time
from datetime import timedelta

import pytest
import torch
from torch import nn

from tests.conftest import threaded_ranks
from vqbench.errors import UserError
from vqbench.training import ddp
from vqbench.training.ddp import DistContext


def _two_ranks(body):
    """``body(ctx)`` on ranks 0 and 1, each with its own DistContext."""
    return threaded_ranks(2, lambda rank: body(DistContext(rank=rank, world_size=2)))


def test_shard_order_is_rank_0s_permutation_sliced_per_global_batch():
    def body(ctx):
        # each rank brings its own order; rank 0's is the one both shard (10 rows, global batch 4:
        # two whole steps, the last 2 rows dropped)
        order = torch.arange(10) if ctx.is_main else torch.arange(10).flip(0)
        return ctx.shard_order(order, local_batch=2).tolist()
    got = _two_ranks(body)
    assert got == {0: [0, 1, 4, 5], 1: [2, 3, 6, 7]}


def test_gather_all_sum_and_the_epoch_record():
    def body(ctx):
        r = ctx.rank
        record = {"q_mode": "hard", "epoch": 3, "step": 30, "train_loss": 1.0 + r, "train_mse": 2.0 * (r + 1),
                  "q_kl": 4.0 * r, "images_per_s": 100.0 + r, "mse": 0.5 + r, "finished": r == 0,
                  "name": f"rank{r}", "lr": 0.1 * (r + 1)}
        return (ctx.gather_objects(("obj", r)), ctx.all_sum(torch.tensor([1.0 + r, 2.0])).tolist(),
                ctx.sync_record(record))
    got = _two_ranks(body)
    for rank in (0, 1):
        gathered, summed, record = got[rank]
        assert gathered == [("obj", 0), ("obj", 1)]
        assert summed == [3.0, 4.0]
        # train losses and q_ terms averaged, throughput summed, the rest rank 0's
        assert record == {"q_mode": "hard", "epoch": 3, "step": 30, "train_loss": 1.5, "train_mse": 3.0, "q_kl": 2.0,
                          "images_per_s": 201.0, "mse": 0.5, "finished": True, "name": "rank0",
                          "lr": pytest.approx(0.1)}


def test_all_sum_returns_a_new_tensor():
    def body(ctx):
        value = torch.tensor([1.0])
        out = ctx.all_sum(value)
        return value.item(), out.item()
    assert _two_ranks(body) == {0: (1.0, 2.0), 1: (1.0, 2.0)}


def test_call_on_main_runs_once_and_hands_its_result_or_exception_to_every_rank():
    calls = []

    def body(ctx):
        result = ctx.call_on_main(lambda a, b=0: calls.append(ctx.rank) or a + b, 2, b=3)
        outcomes = []
        for error in (ValueError("disk full"), _Unpicklable("no pickle")):
            def fail(error=error):
                raise error
            try:
                ctx.call_on_main(fail)
            except BaseException as exc:  # noqa: BLE001
                outcomes.append((type(exc).__name__, str(exc)))
        return result, outcomes
    got = _two_ranks(body)
    assert calls == [0]  # rank 0 only
    assert got[0] == (5, [("ValueError", "disk full"), ("_Unpicklable", "no pickle")])  # its own exception
    # the others: the same exception where it pickles, a RuntimeError naming it where it does not
    assert got[1] == (5, [("ValueError", "disk full"), ("RuntimeError", "_Unpicklable: no pickle")])


def test_main_first_runs_on_rank_0_then_on_the_others():
    order = []

    def body(ctx):
        def fetch(tag, end=""):
            if ctx.is_main:
                time.sleep(0.2)  # a slow download: the others must wait for it
            order.append(ctx.rank)
            return f"{tag}{ctx.rank}{end}"
        return ctx.main_first(fetch, "r", end="!")
    assert _two_ranks(body) == {0: "r0!", 1: "r1!"}
    assert order == [0, 1]


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle this")


def test_prepare_model_broadcasts_rank_0s_weights_and_seeds_each_rank(monkeypatch):
    seeds = {}
    monkeypatch.setattr(torch, "manual_seed", lambda seed: seeds.setdefault(seed, True))  # threads share one RNG

    def body(ctx):
        model = nn.Linear(3, 2)
        with torch.no_grad():
            model.weight.fill_(ctx.rank + 1.0)  # different weights on each rank before wrapping
        wrapped = ctx.prepare_model(model, seed=10)
        return (wrapped.weight.detach().clone(), wrapped.out_features, type(wrapped).__name__,
                wrapped.state_dict().keys() == model.state_dict().keys())
    got = _two_ranks(body)
    assert torch.equal(got[0][0], torch.ones(2, 3)) and torch.equal(got[1][0], torch.ones(2, 3))  # rank 0's
    assert got[0][1:] == (2, "_DDP", True) == got[1][1:]  # attributes and state_dict pass through
    assert sorted(seeds) == [10, 11]  # seed + rank: each rank its own noise stream


def test_one_process_is_the_identity_everywhere():
    ctx = DistContext()
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert (DistContext(rank=1, world_size=2).enabled, DistContext(rank=1, world_size=2).is_main) == (True, False)
    model, order, value, record = nn.Linear(2, 2), torch.arange(5), torch.tensor([2.0]), {"train_loss": 1.0}
    assert ctx.prepare_model(model, seed=0) is model
    assert ctx.shard_order(order, 2) is order and ctx.all_sum(value) is value
    assert ctx.sync_record(record) is record and ctx.gather_objects("x") == ["x"]
    assert ctx.call_on_main(lambda a, b: a * b, 3, b=4) == 12 and ctx.main_first(lambda a, b: a - b, 5, b=2) == 3
    assert ctx.local_batch_size(256) == 256


def test_the_global_batch_must_divide_by_the_processes():
    share = DistContext(rank=0, world_size=4).local_batch_size(256)
    assert share == 64 and isinstance(share, int)
    with pytest.raises(UserError) as info:
        DistContext(rank=0, world_size=3).local_batch_size(256)
    assert str(info.value) == ("train.batch_size 256 is the global batch and must be divisible by the number "
                               "of processes (3); use a multiple of 3")


def test_environment_setup_shutdown_and_launch(monkeypatch):
    for key in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    assert (ddp.env_world_size(), ddp.env_rank()) == (1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert (ddp.env_world_size(), ddp.env_rank()) == (4, 2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    ctx = ddp.setup(torch.device("cpu"))  # no torchrun: a one-process context, no group
    assert (ctx.rank, ctx.world_size, ctx.device) == (0, 1, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    ddp.shutdown()  # nothing to destroy: a no-op
    assert ddp._picklable(ValueError("x")) and not ddp._picklable(_Unpicklable("x"))
    assert pickle.loads(pickle.dumps(ValueError("x"))).args == ("x",)

    ran = []

    class Done:
        returncode = 7
    monkeypatch.setattr(ddp.subprocess, "run", lambda cmd, check: ran.append((cmd, check)) or Done())
    assert ddp.launch(3, ["run", "-q", "vqvae"]) == 7
    assert ran == [([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
                     "-m", "vqbench", "run", "-q", "vqvae"], False)]

    def interrupted(cmd, check):
        raise KeyboardInterrupt
    monkeypatch.setattr(ddp.subprocess, "run", interrupted)
    assert ddp.launch(2, ["run"]) == 130


def test_prepare_model_wraps_with_these_ddp_options(monkeypatch):
    made = {}

    class Recorder:
        def __init__(self, model, **kwargs):
            made[torch.distributed.get_rank()] = kwargs
    monkeypatch.setattr(ddp, "_DDP", Recorder)
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in ddp._DDP_PARAMS else "broadcast_buffers"

    def body(ctx):
        ctx.device = torch.device("cuda", 1) if ctx.rank == 1 else torch.device("cpu")  # ids from the device
        ctx.prepare_model(nn.Linear(2, 2), seed=0)
    _two_ranks(body)
    assert made == {0: {"device_ids": None, "static_graph": True, no_sync: False},
                    1: {"device_ids": [1], "static_graph": True, no_sync: False}}


def test_the_ddp_wrapper_stands_in_for_its_model():
    def body(rank):
        model = nn.Sequential(nn.Linear(2, 2))
        model.note = "kept"
        wrapped = ddp._DDP(model, static_graph=True)
        x = torch.ones(1, 2)
        wrapped.eval()
        with torch.no_grad():
            same = torch.equal(wrapped(x), model(x))  # outside training: the model itself, no collective
        loaded = wrapped.load_state_dict({"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2)})
        return (wrapped.note, sorted(wrapped.state_dict()), sorted(wrapped.state_dict(prefix="p.")),
                same, torch.count_nonzero(model[0].weight).item(), type(loaded).__name__)
    got = threaded_ranks(1, body)[0]
    assert got == ("kept", ["0.bias", "0.weight"], ["p.0.bias", "p.0.weight"], True, 0, "_IncompatibleKeys")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # positional state_dict arguments are deprecated by torch, not refused
        got = threaded_ranks(1, lambda rank: sorted(ddp._DDP(nn.Linear(2, 2)).state_dict({}, "q.")))
    assert got[0] == ["q.bias", "q.weight"]
    # an instance whose module is not set yet (as unpickling sees it) has no module, not a recursion
    assert not hasattr(ddp._DDP.__new__(ddp._DDP), "module")


def test_setup_from_torchrun_s_environment(monkeypatch):
    calls = []
    state = {"initialized": False}
    monkeypatch.setattr(ddp.dist, "is_available", lambda: True)
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: state["initialized"])

    def init(backend, timeout):
        calls.append((backend, timeout))
        state["initialized"] = True
    monkeypatch.setattr(ddp.dist, "init_process_group", init)
    monkeypatch.setattr(ddp.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(ddp.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(ddp.dist, "destroy_process_group", lambda: calls.append("destroyed") or state.update(initialized=False))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("VQBENCH_DIST_TIMEOUT_S", "12.5")
    monkeypatch.delenv("VQBENCH_NO_PROGRESS", raising=False)
    ctx = ddp.setup(torch.device("cpu"))
    assert (ctx.rank, ctx.world_size, ctx.device) == (1, 2, torch.device("cpu"))
    assert calls == [("gloo", timedelta(seconds=12.5))]
    assert os.environ["VQBENCH_NO_PROGRESS"] == "1"  # one progress bar, rank 0's
    ddp.shutdown()
    ddp.shutdown()  # owned once: destroyed once
    assert calls[1:] == ["destroyed"]

    # a group someone else made is used, not re-made, and not destroyed
    state["initialized"] = True
    monkeypatch.delenv("VQBENCH_DIST_TIMEOUT_S")
    assert ddp.setup(torch.device("cpu")).world_size == 2
    ddp.shutdown()
    assert calls[1:] == ["destroyed"]

    # CUDA: NCCL on the LOCAL_RANK-th GPU, the default timeout; a rank without a GPU is one line
    state["initialized"] = False
    devices = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ddp.setup(torch.device("cuda")).device == torch.device("cuda", 1)
    assert devices == [torch.device("cuda", 1)] and calls[-1] == ("nccl", timedelta(seconds=1800))
    ddp.shutdown()
    monkeypatch.delenv("LOCAL_RANK")
    state["initialized"] = False
    assert ddp.setup(torch.device("cuda")).device == torch.device("cuda", 0)  # LOCAL_RANK defaults to 0
    ddp.shutdown()
    monkeypatch.setenv("LOCAL_RANK", "2")
    state["initialized"] = False
    with pytest.raises(UserError) as info:
        ddp.setup(torch.device("cuda"))
    assert str(info.value) == "local rank 2 has no GPU (2 visible); start at most one process per GPU"
    # without torchrun (WORLD_SIZE 1, no group) or without torch.distributed: one process
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert ddp.setup(torch.device("cpu")).world_size == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(ddp.dist, "is_available", lambda: False)
    assert ddp.setup(torch.device("cpu")).world_size == 1


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x, scale=1.0):
        return self.linear(x) * scale


def test_the_ddp_wrapper_communicates_only_in_training_forwards_with_grad(monkeypatch):
    from torch.nn.parallel import DistributedDataParallel
    through_ddp = []
    monkeypatch.setattr(DistributedDataParallel, "forward",
                        lambda self, *args, **kwargs: through_ddp.append((len(args), sorted(kwargs))) or self.module(*args, **kwargs))

    def body(rank):
        model = _Scaled()
        wrapped = ddp._DDP(model, static_graph=True)
        x = torch.ones(1, 2)
        outputs = []
        for training, grad in ((False, True), (True, False), (True, True)):
            wrapped.train(training)
            with torch.set_grad_enabled(grad):
                outputs.append(torch.equal(wrapped(x, scale=3.0), model(x, scale=3.0)))
        # strict=False reaches the model: a partial state dict loads
        wrapped.load_state_dict({"linear.bias": torch.zeros(2)}, strict=False)
        return outputs, torch.count_nonzero(model.linear.bias).item()
    got = threaded_ranks(1, body)[0]
    assert got == ([True, True, True], 0)
    assert through_ddp == [(1, ["scale"])]  # only the training forward with grad, its arguments intact
