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
