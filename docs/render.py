"""Regenerate the measured parts of the docs from the committed result rows.

A generated block in a Markdown file is a ``vqbench`` command line in an HTML comment, the
command's output, and an end marker::

    <!-- vqbench table --suite modern-cifar10-short --metrics mse,perplexity -->
    ...whatever the command printed...
    <!-- end -->

``python docs/render.py docs/quantizers.md`` runs each command (in process, from the project
root, so ``published/`` is where the table reads) and replaces the block's body with its
output; ``--check`` changes nothing and exits 1 naming each block that is stale (the test
suite runs it, so a doc cannot drift from the rows it claims to show). Commands that write
files (``vqbench plot ... --out docs/img/x.png``) write them as they always do.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- (vqbench [^\n]*?) -->\n)(.*?)(<!-- end -->)", re.S)


def run_command(command: str) -> str:
    """The stdout of one ``vqbench ...`` command line, run in process from the project root."""
    from vqbench.cli import main

    out, cwd = io.StringIO(), os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            code = main(shlex.split(command)[1:])
    finally:
        os.chdir(cwd)
    if code:
        raise SystemExit(f"render: `{command}` exited {code}")
    return out.getvalue()


def render(text: str) -> tuple[str, list[str]]:
    """The text with every block's body regenerated, and the commands whose body changed."""
    stale: list[str] = []

    def body(match: re.Match) -> str:
        fresh = run_command(match.group(2)).rstrip("\n") + "\n"
        if fresh != match.group(3):
            stale.append(match.group(2))
        return match.group(1) + fresh + match.group(4)

    return BLOCK.sub(body, text), stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    failed = False
    for path in args.files:
        text = path.read_text()
        fresh, stale = render(text)
        for command in stale:
            print(f"{path}: stale block `{command}`", file=sys.stderr)
        if args.check:
            failed |= bool(stale)
        elif fresh != text:
            path.write_text(fresh)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
