"""``vqbench theory albo-counterexample`` (vqbench/cli/theory.py) and the script it mirrors,
``examples/albo_counterexample.py``, print the same figures (kept together: one list of figures)."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import subprocess
import sys

from tests.conftest import REPO_ROOT

FIGURES = ("1.0371", "2.7573", "-0.4289", "-1.2495", "-0.5947", "-0.5810")


def test_example_script_prints_both_counterexamples() -> None:
    out = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "albo_counterexample.py")],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert all(f in out for f in FIGURES)


def test_theory_subcommand() -> None:
    # Loaded from its file: the CLI package itself is assembled on main.
    spec = importlib.util.spec_from_file_location("theory", REPO_ROOT / "vqbench" / "cli" / "theory.py")
    theory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theory)
    parser = argparse.ArgumentParser(prog="vqbench")
    theory.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["theory", "albo-counterexample"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert args.func(args) == 0
    assert all(f in buf.getvalue() for f in FIGURES)
    args = parser.parse_args(["theory"])
    with contextlib.redirect_stdout(io.StringIO()):
        assert args.func(args) == 2
