"""Mutation-test one module: ``python tools/mutate.py MODULE [TEST ...] [--jobs N] [--show]``.

MODULE is a path (``quantizers/fsq.py``, ``vqbench/training/evaluation.py``). The tests run
against each mutant are the module's mirrored test files (``tests/<package>/test_<stem>.py`` and
``test_<stem>_*.py`` beside it) unless TEST paths are given (``tests/...py`` or ``-k``-free node
ids). mutmut 3 runs the tests once to learn which test reaches which function, then runs each
mutant in a forked worker with only the tests that reach the mutated function.

The work happens in ``.mutation/<module>/`` (git-ignored): a copy of the tree with a
``[tool.mutmut]`` section for this module, so nothing in the checkout is touched and the cache
is rebuilt on every run (mutmut's cached results and test map would otherwise outlive a changed
test file); ``--summary`` prints the last run's results again.

Prints killed / survived / timed out / no tests and the score: killed + timed out over all
mutants ("no tests": no selected test reaches the mutated function; it counts against the
score); with ``--show``, the diff of every survivor. ``--survivors`` runs only the last run's
survivors again, against the tests as they are now (minutes instead of a whole run), and
counts the earlier run's killed mutants as still killed; it refuses a module that changed since
(its mutants would be other ones). Exit 0 always; the score is for a human (docs/testing.md),
not a gate. Needs ``pip install -e '.[mutation]'``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout: vqbench's one-line errors

from vqbench.errors import OneLineParser, positive_int  # noqa: E402

MUTATED = ("quantizers", "vqbench")  # the packages mutmut may mutate (its source_paths)
COPIED = ["quantizers", "vqbench", "tests", "registry.yaml", "sweeps", "pyproject.toml", "examples", "docs", "benchmarks"]
# the console script, not `python -m mutmut` (mutmut warns that -m re-executes its __main__)
MUTMUT = [shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"]
STATUSES = "statuses.json"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "*.egg-info")


def default_tests(module: Path) -> list[str]:
    folder = REPO / "tests" / module.parent
    found = sorted({*folder.glob(f"test_{module.stem}.py"), *folder.glob(f"test_{module.stem}_*.py")})
    return [str(p.relative_to(REPO)) for p in found]


def prepare(work: Path, module: Path, tests: list[str]) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src, dst = REPO / name, work / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=IGNORE)
        elif src.exists():
            shutil.copy2(src, dst)
    section = "\n".join([
        "", "[tool.mutmut]",
        f"source_paths = {json.dumps(list(MUTATED))}",
        f'only_mutate = ["{module.as_posix()}"]',
        'also_copy = ["registry.yaml", "sweeps", "examples", "docs", "benchmarks"]',
        f"pytest_add_cli_args_test_selection = {tests!r}".replace("'", '"'),
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "--no-header"]',
        "timeout_multiplier = 5.0",
        "timeout_constant = 5.0",
        "",
    ])
    with open(work / "pyproject.toml", "a") as f:
        f.write(section)


def statuses(work: Path, env: dict) -> dict[str, str]:
    """mutant name → mutmut's status, as ``mutmut results`` reports the work folder's last run."""
    if not (work / "mutants").is_dir():
        return {}
    out = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=work, env=env,
                         capture_output=True, text=True).stdout
    return dict(re.findall(r"^\s+(\S+): (.+)$", out, flags=re.M))


def last_statuses(work: Path, env: dict) -> dict[str, str]:
    """The last run's statuses: a --survivors run's merged ones (mutmut's own know only the
    mutants that run took), else mutmut's."""
    saved = work / STATUSES
    return json.loads(saved.read_text()) if saved.exists() else statuses(work, env)


def summarise(work: Path, env: dict, show: bool) -> None:
    status = last_statuses(work, env)
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    killed, timeout = counts.get("killed", 0), counts.get("timeout", 0)
    print(f"mutants {len(status)}: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    if status:  # a mutant no selected test reaches ("no tests") counts as not killed
        print(f"score {(killed + timeout) / len(status):.1%} (killed + timed out over all {len(status)} mutants)")
    for name, s in sorted(status.items()):
        if s in ("killed",):
            continue
        print(f"  {s}: {name}")
        if show and s != "timeout":
            diff = subprocess.run([*MUTMUT, "show", name], cwd=work, env=env,
                                  capture_output=True, text=True).stdout
            print("\n".join("      " + line for line in diff.splitlines()[1:] if line[:1] in "+-@"))


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="mutate", description=__doc__.splitlines()[0])
    parser.add_argument("module", type=Path)
    parser.add_argument("tests", nargs="*")
    parser.add_argument("--jobs", type=positive_int, default=2, help="forked mutant workers (default 2)")
    parser.add_argument("--show", action="store_true", help="print every survivor's diff")
    parser.add_argument("--summary", action="store_true", help="only print the last run's results")
    parser.add_argument("--survivors", action="store_true",
                        help="run only the last run's survivors again (with the tests as they are now); "
                             "the score counts the earlier run's killed mutants as killed")
    args = parser.parse_args(argv)
    if args.module.suffix != ".py" or not args.module.is_file():
        parser.error(f"module {str(args.module)!r} is not a Python file; name one, e.g. quantizers/gmvq.py")
    module = Path(os.path.relpath(Path(args.module).resolve(), REPO))
    if module.parts[0] not in MUTATED:
        parser.error(f"module {str(args.module)!r} is outside quantizers/ and vqbench/, which are what it mutates")
    tests = args.tests or default_tests(module)
    if not tests and not args.summary:  # --summary reads the last run; it runs no tests
        parser.error(f"no tests/{module.parent}/test_{module.stem}*.py; name the tests to run")
    work = REPO / ".mutation" / module.with_suffix("").as_posix().replace("/", ".")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VQBENCH_NO_PROGRESS": "1",
           "PYTHONPATH": ""}
    if not args.summary:
        before: dict[str, str] = {}
        if args.survivors:
            before = last_statuses(work, env)
            if not before:
                parser.error(f"no earlier run in {work} to take the survivors of; run without --survivors first")
            if (work / module).read_bytes() != (REPO / module).read_bytes():
                parser.error(f"{module} changed since the run in {work}; its mutants are other ones, "
                             "so run without --survivors")
        again = sorted(name for name, s in before.items() if s not in ("killed", "timeout"))
        if args.survivors and not again:  # `mutmut run` without names would run every mutant
            print(f"the last run of {module} left no survivors")
            summarise(work, env, args.show)
            return
        prepare(work, module, tests)  # the same source gives the same mutant names
        print(f"mutating {module} with {' '.join(tests)} in {work}"
              + (f" ({len(again)} survivors of the last run)" if args.survivors else ""), flush=True)
        log = work / "mutmut.log"  # mutmut's spinner output; its last lines say why a run stopped
        with open(log, "w") as f:
            rc = subprocess.run([*MUTMUT, "run", "--max-children", str(args.jobs), *again], cwd=work, env=env,
                                stdout=f, stderr=subprocess.STDOUT).returncode
        if args.survivors:
            now = statuses(work, env)
            (work / STATUSES).write_text(json.dumps({**before, **{n: now.get(n, "not checked") for n in again}}))
        tail = re.sub(r"[^\n]*\r", "", log.read_bytes().decode(errors="replace")).splitlines()[-8:]
        speed = [line for line in tail if "mutations/second" in line]
        print(speed[0] if speed and rc == 0 else f"mutmut exited {rc}; the end of {log}:\n" + "\n".join(tail))
    summarise(work, env, args.show)


if __name__ == "__main__":
    main()
