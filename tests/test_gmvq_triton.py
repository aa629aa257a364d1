"""GM-VQ's Triton kernels on the CPU, through Triton's interpreter, in a fresh process
(``TRITON_INTERPRET=1`` must be set before Triton is first imported; the cases are in
``tests/_triton_kernel_cases.py``). Skipped where Triton is not installed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CASES = Path(__file__).with_name("_triton_kernel_cases.py")


def test_triton_kernels_match_the_plain_path_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
                            env=env, capture_output=True, text=True, timeout=600, cwd=CASES.parent.parent)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-500:]


def _triton_fit():
    """benchmarks/triton_fit.py as a module (benchmarks/ is not a package)."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import triton_fit
    finally:
        sys.path.remove(str(bench))
    if not Path(triton_fit._ptxas(90)).is_file():
        pytest.skip("Triton's bundled ptxas is absent")
    return triton_fit


@pytest.mark.parametrize("dim", [8, 64])  # the smallest and largest L that backend="triton" accepts
def test_kernels_compile_for_a100_and_h100_within_registers_and_shared_memory(dim):
    """The interpreter checks neither: the first design compiled to 352 KiB of shared memory
    on sm_90 (227 KiB allowed), which fails at launch, and a 2-return helper did not compile."""
    triton_fit = _triton_fit()
    records = [r for arch in (80, 90) for r in triton_fit.fit(arch, dim)]
    assert len(records) == 20
    assert [r for r in records if not triton_fit.fits(r)] == []


def test_the_fit_check_rejects_tiles_that_do_not_fit(monkeypatch):
    import quantizers.kernels.triton as kernels

    triton_fit = _triton_fit()
    monkeypatch.setitem(kernels.FORWARD, 9, ((128, 64), 8))
    forward = [r for r in triton_fit.fit(90, 64) if r["kernel"] == "forward sample=1 wide=0"]
    assert forward and not triton_fit.fits(forward[0]), forward
