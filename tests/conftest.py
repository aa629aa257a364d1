"""Shared test fixtures: hypothesis profiles, the repo root, a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def shared_data_or_skip(*parts: str) -> Path:
    """A path under ../shared/data; skips where it is absent (a user's clone), never in CI."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must have {path}")
        pytest.skip(f"{path} is absent (only CI and the developers' machines have shared/data)")
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
