"""``vqbench list`` (vqbench/cli/list.py): every Table 1 method in its JSON."""
from __future__ import annotations

import json

from tests.conftest import TABLE1_METHODS as TABLE1


def test_cli_list(cli):
    proc = cli("list", "--json")
    names = {q["name"] for q in json.loads(proc.stdout)["quantizers"]}
    assert set(TABLE1) <= names
