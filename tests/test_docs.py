"""The measured tables in the docs are the output of the commands they name, over the rows
committed under published/ (docs/render.py): a page cannot drift from the rows it shows."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = sorted(p for p in (ROOT / "docs").glob("*.md") if "<!-- vqbench " in p.read_text())


def _render_module():
    spec = importlib.util.spec_from_file_location("docs_render", ROOT / "docs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_some_docs_are_generated():
    assert [p.name for p in GENERATED] and "quantizers.md" in [p.name for p in GENERATED]


@pytest.mark.parametrize("page", GENERATED, ids=lambda p: p.name)
def test_generated_blocks_match_the_committed_rows(page):
    fresh, stale = _render_module().render(page.read_text())
    assert not stale, f"run `python docs/render.py docs/{page.name}`: stale blocks {stale}"


def test_render_replaces_a_stale_body_and_reports_it():
    render = _render_module().render
    text = "x\n<!-- vqbench table --suite modern-cifar10-short --metrics mse -->\nold\n<!-- end -->\ny\n"
    fresh, stale = render(text)
    assert stale and "old" not in fresh and "| fsq |" in fresh and fresh.endswith("<!-- end -->\ny\n")
    assert render(fresh)[1] == []
