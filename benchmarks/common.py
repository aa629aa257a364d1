"""What the benchmark scripts share: a user mistake is one line and exit status 2 (as in the
CLI), a failing variant is one line in the table, and every report ends the same way."""
from __future__ import annotations

import argparse
import ctypes
import json
from pathlib import Path
from typing import Callable, NoReturn

import torch


def fail(script: str, message: str) -> NoReturn:
    from vqbench.errors import print_error

    print_error(message, script)
    raise SystemExit(2)


def arg_parser(script: str, doc: str | None) -> argparse.ArgumentParser:
    """argparse whose usage mistakes are one line and exit 2, as in the CLI."""
    from vqbench.errors import OneLineParser

    return OneLineParser(prog=script, description=(doc or script).splitlines()[0])


def count(text: str) -> int:
    """argparse type: a whole number ≥ 1 (sizes, rounds, steps, threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def run_script(script: str, main: Callable[[], int]) -> int:
    """``main()``, with the library's own user errors (a bad override, compile mode, data file)
    as one line and exit 2 instead of a traceback."""
    from vqbench.errors import UserError

    try:
        return main()
    except UserError as exc:
        fail(script, str(exc))


def check_json_path(script: str, path: Path | None) -> None:
    """Before the benchmark runs, not after: its report would be lost."""
    if path is not None and not path.parent.is_dir():
        fail(script, f"--json {path}: the folder {path.parent} does not exist")


def device_defaults(args: argparse.Namespace, **per_device: tuple[object, object]) -> None:
    """Each argument left unset (None) takes its (CUDA, CPU) default for ``args.device``."""
    for name, (on_cuda, on_cpu) in per_device.items():
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if args.device == "cuda" else on_cpu)


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work, so a timer reads what it ran."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def require_device(script: str, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        fail(script, "--device cuda but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        fail(script, f"--device must be cpu or cuda, got {device!r}")


def describe(exc: Exception) -> str:
    """The exception's first line and its last lines that name an error (a compile worker's
    exception wraps the real one)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    named = [line for line in lines[1:] if "Error" in line][-2:]
    return " | ".join([f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300], *(x[:200] for x in named)])


def finish(report: dict, print_table: Callable[[dict], None], json_path: Path | None) -> int:
    print_table(report)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def steady_allocator() -> None:
    """Serve large CPU temporaries from the heap, not a fresh mmap per allocation (glibc).

    An N×C fp32 temporary at N = 4096 is 16 MiB, above glibc's starting mmap threshold, so
    every step maps and page-faults it anew, unless an earlier free of a larger block has
    raised the threshold. Which quantizers ran before therefore changed a step's time up to
    2× (VectorQuantize's step: 20–28 ms after the other variants, 43–46 ms alone). Fixing
    the thresholds gives every variant the same allocator. A no-op where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep freed memory for the next step
