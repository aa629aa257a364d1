"""Print two exact cases where the GM-VQ paper's ALBO (eq. 11) exceeds log p(x).

    python examples/albo_counterexample.py      (or: vqbench theory albo-counterexample)

See docs/albo.md. The numbers come from quantizers.bounds (closed forms, float64).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from quantizers.bounds import counterexample_report  # noqa: E402

if __name__ == "__main__":
    print(counterexample_report())
