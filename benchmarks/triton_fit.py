"""Do GM-VQ's Triton kernels fit a GPU? Compiles them ahead of time for sm_80 (A100) and
sm_90 (H100/H200) on any machine, no GPU needed, and reports per kernel the shared memory,
registers per thread and register spills (``ptxas -v``, the ptxas bundled with Triton).

    python benchmarks/triton_fit.py                 # L = 64, the tiles in quantizers/kernels/triton.py
    python benchmarks/triton_fit.py --dim 32 --json fit.json

A kernel that needs more shared memory than an SM block may have fails at launch ("out of
resources"); one that spills registers runs, slowly. The Triton interpreter, which the tests
use on the CPU, checks neither. ``tests/quantizers/test_kernels.py`` asserts that every kernel fits
with no spills.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import arg_parser, check_json_path, fail, finish, run_script  # noqa: E402

# Shared memory one block may use (bytes): CUDA C Programming Guide, compute capabilities table.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
MAX_REGISTERS = 255


def _ptxas(arch: int) -> str:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(arch).path
    except (ImportError, AttributeError):  # older Triton: the bundled binary
        import triton

        return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")


INT64_POINTERS = ("seed_ptr", "idx_ptr")  # the Philox seed and the code indices; other pointers fp32


def signature(kernel) -> dict[str, str]:
    """Triton's compile signature of a GM-VQ kernel, from its parameter names: ``*_ptr``
    pointers, constexpr parameters, and int32 sizes and strides otherwise."""
    return {p.name: "constexpr" if p.is_constexpr else
            ("*i64" if p.name in INT64_POINTERS else "*fp32") if p.name.endswith("_ptr") else "i32"
            for p in kernel.params}


def kernels(dim: int, arch: int) -> list[tuple[str, object, dict, dict, dict]]:
    """(name, kernel, signature, constexprs, launch options) for every variant GM-VQ launches
    on a GPU of compute capability ``arch`` (80, 90)."""
    import quantizers.kernels.triton as G  # tiles and launch options
    import quantizers.kernels.triton_jit as J  # the kernels

    fwd_sig, grad_sig = signature(J.forward), signature(J.logit_grad)
    out = []
    for wide in (False, True):
        for sample in (True, False):
            (bn, bc), warps = G.FORWARD[arch // 10]
            out.append((f"forward sample={int(sample)} wide={int(wide)}", J.forward, fwd_sig,
                        {"K": 2 * dim, "BN": bn, "BC": bc, "SAMPLE": sample, "DOT": G.DOT_PRECISION, "WIDE": wide},
                        {"num_warps": warps, "num_stages": G.STAGES}))
        for sample, has_gp in ((True, True), (True, False), (False, True)):
            (bn, bc), warps = G.LOGIT_GRAD[arch // 10]
            out.append((f"logit_grad sample={int(sample)} gp={int(has_gp)} wide={int(wide)}", J.logit_grad,
                        grad_sig, {"L": dim, "BN": bn, "BC": bc, "SAMPLE": sample, "HAS_GP": has_gp,
                                   "DOT": G.DOT_PRECISION, "WIDE": wide},
                        {"num_warps": warps, "num_stages": G.STAGES}))
    return out


def fit(arch: int, dim: int, only: str | None = None) -> list[dict]:
    """Compile every kernel variant for ``sm_<arch>`` (or just the one named ``only``); one
    record per variant."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    records = []
    target = GPUTarget("cuda", arch, 32)
    gpu_name = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path = Path(tmp) / "kernel.ptx"
        for name, kernel, signature, constexprs, options in kernels(dim, arch):
            if only is not None and name != only:
                continue
            record = {"arch": arch, "kernel": name, "tile": f"{constexprs['BN']}x{constexprs['BC']}", **options}
            try:
                compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=target, options=options)
            except Exception as exc:  # noqa: BLE001 - reported per kernel
                records.append({**record, "error": str(exc).strip().splitlines()[-1][:300]})
                continue
            ptx_path.write_text(compiled.asm["ptx"])
            ptxas = subprocess.run([_ptxas(arch), "-v", f"--gpu-name={gpu_name}", str(ptx_path), "-o",
                                    str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True)
            registers = re.findall(r"Used (\d+) registers", ptxas.stderr)
            spills = re.findall(r"(\d+) bytes spill stores", ptxas.stderr)
            records.append({**record, "shared_bytes": int(compiled.metadata.shared),
                            "shared_limit": SHARED_LIMIT[arch],
                            "registers": int(registers[0]) if registers else None,
                            "spill_bytes": int(spills[0]) if spills else None,
                            **({"error": ptxas.stderr.strip()[-300:]} if ptxas.returncode else {})})
    return records


def fits(record: dict) -> bool:
    return ("error" not in record and record["shared_bytes"] <= record["shared_limit"]
            and record["registers"] is not None and record["registers"] <= MAX_REGISTERS
            and record["spill_bytes"] == 0)


def print_table(report: dict) -> None:
    print(f"# GM-VQ Triton kernels compiled ahead of time, L={report['dim']}, Triton {report['triton']}")
    print(f"{'arch':<7}{'kernel':<36}{'tile':>7}{'warps':>6}{'shared KiB':>12}{'regs':>6}{'spill B':>9}  fits")
    for r in report["results"]:
        if "shared_bytes" not in r:
            print(f"sm_{r['arch']:<4}{r['kernel']:<36}{r['tile']:>7}{r['num_warps']:>6}  FAILED {r['error']}")
            continue
        print(f"sm_{r['arch']:<4}{r['kernel']:<36}{r['tile']:>7}{r['num_warps']:>6}"
              f"{r['shared_bytes'] / 1024:>7.0f}/{r['shared_limit'] // 1024:<4}{r['registers']!s:>6}"
              f"{r['spill_bytes']!s:>9}  {'yes' if fits(r) else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    p = arg_parser("triton_fit", __doc__)
    p.add_argument("--dim", type=int, default=64, help="L, the latent dimension (K = 2L)")
    p.add_argument("--arch", type=int, nargs="+", default=sorted(SHARED_LIMIT), choices=sorted(SHARED_LIMIT))
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args(argv)
    check_json_path("triton_fit", args.json)
    if args.dim < 8 or args.dim & (args.dim - 1):
        fail("triton_fit", f"--dim must be a power of two ≥ 8 (tl.dot and tl.arange need it), got {args.dim}")
    try:
        import triton
    except ImportError:
        fail("triton_fit", "Triton is not installed (it comes with torch's CUDA builds on Linux)")
    results = [r for arch in args.arch for r in fit(arch, args.dim)]
    report = {"dim": args.dim, "triton": triton.__version__, "results": results,
              "all_fit": all(fits(r) for r in results)}
    finish(report, print_table, args.json)
    return 0 if report["all_fit"] else 1


if __name__ == "__main__":
    sys.exit(run_script("triton_fit", main))
