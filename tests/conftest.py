"""Shared test fixtures and helpers: hypothesis profiles, the repo root, a CLI runner, short
training runs, this checkout's registry.yaml, and fake run summaries for the results store.

``tests/`` and its folders are packages (each has an ``__init__.py``), so test modules are
imported by their full names (``tests.vqbench.cli.test_run``) and may share a basename; helpers
are imported the same way: ``from tests.conftest import run_cli``."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Fast in CI; `HYPOTHESIS_PROFILE=thorough` for many more examples. print_blob prints
# the @reproduce_failure line for every failure.
settings.register_profile(
    "fast", max_examples=40, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# Under pytest-xdist (`-n auto`, what .ci/run uses) each worker gets its share of the cores:
# torch's default, one thread per core in every worker, oversubscribes and spins at barriers.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup`` (pyproject): tests on the shared
    PostgreSQL server run in one worker, one after another (one of them stops and restarts the
    server); a module whose tests share a module-scoped fixture of ours (a trained run, a DDP
    job) runs in one worker, so that the fixture is built once, not once per worker."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        shared = [name for name, defs in (fixtures.name2fixturedefs.items() if fixtures else ())
                  if defs[-1].scope != "function" and name != "torch_one_thread"
                  and getattr(defs[-1].func, "__module__", "").startswith("tests.")]
        if item.get_closest_marker("postgres") or {"server", "postgres_url"} & set(shared):
            item.add_marker(pytest.mark.xdist_group("postgres"))
        elif shared:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """Run `python -m vqbench ARGS` in a subprocess against this checkout's code."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
    full_env.setdefault("VQBENCH_NO_PROGRESS", "1")
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "vqbench", *args], cwd=cwd or REPO_ROOT, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="module")
def torch_one_thread():
    """torch on one intra-op thread for a module of tests on tiny tensors (the property suites):
    there a second thread only waits at barriers, and on 2 busy cores it spins. Module-scoped,
    so hypothesis's @given tests may use it (``pytestmark = pytest.mark.usefixtures(...)``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def skip_unless_ci(reason: str) -> None:
    """Skip with ``reason`` on a user's machine; fail under ``CI=true``, where .ci/run installs
    and starts everything the suite needs, so a skip there means a broken install step."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must not skip: {reason}")
    pytest.skip(reason)


def import_or_skip_unless_ci(module: str, install: str):
    """``pytest.importorskip(module)`` that fails under ``CI=true`` (``install`` says how to get it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        skip_unless_ci(f"{module} is not importable ({exc}); {install}")


def shared_data_or_skip(*parts: str) -> Path:
    """A path under ../shared/data; skips where it is absent (a user's clone), never in CI."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        skip_unless_ci(f"{path} is absent (only CI and the developers' machines have shared/data)")
    return path


# A small but real recipe for tests that train: the real conv32 layout, narrower, fewer
# codes, a test subset. Tests stay within the suite's 5-minute budget on 2 cores.
FAST_RUN = {
    "train.batch_size": 32, "train.eval_batch_size": 64, "train.kmeans_samples": 1024,
    "quantizer.num_codes": 128, "model.channels": 16, "model.res_blocks": 1, "data.test_limit": 64,
}


def fast_overrides(out, steps: int = 10, **extra) -> list[str]:
    """KEY=VALUE overrides for a short training run writing under ``out``."""
    items = {**FAST_RUN, "out": str(out), "results": f"{out}/results", "train.max_steps": steps, **extra}
    return [f"{k}={v}" for k, v in items.items()]


# The registry names of GM-VQ's Table 1 rows, in the paper's order.
TABLE1_METHODS = ["vqvae", "vqvae-l2", "vqvae-replace", "vqvae-l2-replace", "vqvae-affine", "vqvae-opt",
                  "vqvae-affine-opt", "sqvae", "gumbel-vqvae", "gmvq", "gmvq-entropy"]


def registry_entries() -> dict:
    """The ``quantizers:`` section of this checkout's registry.yaml, read as plain YAML."""
    return yaml.safe_load((REPO_ROOT / "registry.yaml").read_text())["quantizers"]


def build_registered(name: str, **overrides):
    """The class that registry.yaml names for ``name`` (``module:Class``, through importlib, not
    vqbench's registry), built with the entry's defaults under ``overrides``."""
    entry = registry_entries()[name]
    module, cls = entry["class"].split(":")
    kwargs = {**entry.get("defaults", {}), **overrides}
    return getattr(importlib.import_module(module), cls)(**kwargs)


def fake_summary(cfg, mse=0.004, perplexity=100.0, epochs=100, steps=19500, train=50000, test=10000):
    """A finished run's summary for ``cfg`` without training, for the results store's tests."""
    from vqbench.config import config_hash

    h = config_hash(cfg)
    return {"run_id": f"{cfg.quantizer.name}-{cfg.data.name}-{h}-s{cfg.seed}", "config_hash": h,
            "epochs": epochs, "steps": steps, "mse": mse, "perplexity": perplexity, "code_perplexity": 50.0,
            "codes_used": 500, "num_codes": cfg.quantizer.num_codes, "train_images": train, "test_images": test,
            "images_per_s": 1000.0, "wall_s": 1.0, "device_name": "cpu", "torch": "x", "vqbench": "0.1.0",
            "run_dir": "nowhere"}


def threaded_ranks(world: int, body) -> dict:
    """``body(rank)`` on ``world`` ranks in threads of this process, under torch's test-only
    threaded backend (a ProcessLocalGroup per thread, real reductions between them)."""
    import threading

    import torch.distributed as dist
    from torch.testing._internal.distributed import multi_threaded_pg
    import torch.distributed.nn.functional  # noqa: F401 -- imported before the threads: its
    # default `group=group.WORLD` is bound at import, and inside a thread it would bind that
    # thread's group for every rank

    c10d = torch._C._distributed_c10d
    c10d._set_thread_isolation_mode(True)
    multi_threaded_pg._install_threaded_pg()
    store, got, errors = dist.HashStore(), {}, []

    def rank_thread(rank: int) -> None:
        try:
            dist.init_process_group("threaded", rank=rank, world_size=world, store=store)
            got[rank] = body(rank)
            dist.destroy_process_group()
        except BaseException as exc:  # noqa: BLE001 -- reported by the test thread below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=rank_thread, args=(r,), daemon=True) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        multi_threaded_pg._uninstall_threaded_pg()
        c10d._set_thread_isolation_mode(False)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a threaded rank hung"
    assert not dist.is_initialized()
    return got
