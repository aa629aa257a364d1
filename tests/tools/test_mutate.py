"""tools/mutate.py's refusals: one line, exit 2, before anything is copied or run."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("mutate", Path(__file__).parents[2] / "tools" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutate)


@pytest.mark.parametrize("argv, line", [
    (["quantizers/nosuch.py"], "module 'quantizers/nosuch.py' is not a Python file; name one, e.g. quantizers/gmvq.py"),
    (["registry.yaml"], "module 'registry.yaml' is not a Python file"),
    (["tools/collapse_trace.py"], "module 'tools/collapse_trace.py' is outside quantizers/ and vqbench/"),
    (["quantizers/gmvq.py", "--jobs", "two"], "argument --jobs: must be a whole number >= 1, got 'two'"),
    (["quantizers/gmvq.py", "--jobs", "0"], "argument --jobs: must be a whole number >= 1, got '0'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, line, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[2])
    monkeypatch.setattr(mutate, "prepare", lambda *a: pytest.fail("prepared a run for bad input"))
    with pytest.raises(SystemExit) as exit_:
        mutate.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mutate: error: {line}") and err.endswith("(see mutate --help)\n")
