"""Bad input by the thousand (issue 19): random command lines for ``vqbench run``, ``sweep``,
``suite`` and ``table`` — random keys, values, types, paths, flags, sweep files and registry
files — through the real parser and configuration code, in process.

Training never starts: ``fit``, the dataset loader, the sweep's ``open_study`` and ``report``
are replaced by a stub that records what it was given (a valid configuration, or a sweep
whose base run resolves) and stops. For every case exactly one of: that stub is reached; the
command ends by itself (exit 0: a table, a plan, a list); or one ``vqbench ...: error:`` line
with exit 2 (a UserError or argparse). Any other exception, a traceback or a message of more
than one line fails the test, and hypothesis shrinks it to the smallest command line.

CI runs ``VQBENCH_FUZZ_EXAMPLES`` (default 200, about 10 s) cases; run it by the thousand with
``VQBENCH_FUZZ_EXAMPLES=5000 python -m pytest tests/vqbench/cli/test_fuzz_inputs.py``.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

import vqbench.data
import vqbench.sweep
import vqbench.sweep.study
import vqbench.training
import vqbench.training.ddp
from vqbench.cli import main
from tests.conftest import fake_summary
from vqbench.config import RunConfig, config_hash, resolve_config
from vqbench.registry import reset_registry
from vqbench.rows import append_row
from vqbench.rundir import check_run_dir
from vqbench.sweep.worker import make_pruner, make_sampler

EXAMPLES = int(os.environ.get("VQBENCH_FUZZ_EXAMPLES", 200))
TRIED = {"cases": 0, "reached": 0, "exit 0": 0, "one line": 0}


class Reached(Exception):
    """The stub at the end of parsing and resolution: the input was valid."""


def _flat_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, DictConfig):
            yield from _flat_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


CONFIG_KEYS = sorted(_flat_keys(OmegaConf.structured(RunConfig)))
QUANTIZER_KEYS = ["quantizer.gamma", "quantizer.beta", "quantizer.num_codes", "quantizer.tau_start",
                  "quantizer.tau_end", "quantizer.sigma2", "quantizer.latreg", "quantizer.commitment",
                  "quantizer.l2", "quantizer.replace_window", "quantizer.levels", "quantizer.depth",
                  "quantizer.stage", "quantizer.backend", "quantizer.kernel", "quantizer.dim", "quantizer.eps",
                  "quantizer.entropy_weight", "quantizer.spherical", "quantizer.name"]
QUANTIZERS = ["gmvq", "gmvq-entropy", "vqvae", "vqvae-l2-replace", "sqvae", "gumbel-vqvae", "fsq", "lfq", "bsq",
              "rvq", "simvq", "ibq", "vqvae-ema"]
DATASETS = ["cifar10", "cifar10-tiny", "npz", "celeba"]
SUITES = ["table1-cifar10", "table1-cifar10-short", "modern-cifar10-short"]
SWEEPS = ["gamma", "beta", "gamma-beta"]

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
special = st.sampled_from(["", " ", "null", "~", "???", "${oc.env:HOME}", "${nope}", "${train.epochs}",
                           "[1, 2]", "{a: 1}", "[", "{", "}", "a: b", "'", '"', "1e309", "-0", "0x10", ".nan",
                           ".inf", "-.inf", "true", "yes", "no", "\n", "a\nb", "\x00", "\\", "=", "==", ",",
                           "!!python/object:os.system", "*alias", "&anchor x", "%", "@", "-1", "0", "1", "2",
                           "1024", "9" * 30, "1.5", "-1e-300", "gmvq", "cpu", "cuda", "cuda:7", "bf16", "sampled",
                           "aggregated", "bound", "fused", "triton", "reference"])
value = st.one_of(special, text, st.integers(-2**70, 2**70).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr), st.booleans().map(str))
key = st.one_of(st.sampled_from(CONFIG_KEYS + QUANTIZER_KEYS), st.sampled_from(CONFIG_KEYS).map(lambda k: k + "x"),
                st.sampled_from(CONFIG_KEYS).map(lambda k: k.rsplit(".", 1)[0]),
                st.sampled_from(["", ".", "..", "a..b", "train.", ".train", "quantizer.name.x", "data.0", "0",
                                 "train[0]", "train.epochs.x", "$x", "model.name"]), text)
override = st.one_of(st.builds(lambda k, v: f"{k}={v}", key, value), text,
                     st.sampled_from(["=", "=1", "x", "a=b=c", "train.epochs==3", " =1", "-x=1", "--y=2"]))
# Near-valid overrides: a real key and a value of about the right kind (deeper code runs).
_DEFAULTS = OmegaConf.to_container(OmegaConf.structured(RunConfig))


def _default(k: str):
    node = _DEFAULTS
    for part in k.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _plausible_value(k: str) -> st.SearchStrategy[str]:
    d = _default(k)
    if isinstance(d, bool):
        return st.sampled_from(["true", "false", "1", "yes"])
    if isinstance(d, int) or k.endswith(("steps", "limit", "every", "num_codes", "depth", "window")):
        return st.integers(-2, 70000).map(str)
    if isinstance(d, float) or k.startswith("quantizer."):
        return st.one_of(st.floats(-10, 10).map(repr), st.floats(1e-6, 1e3).map(repr), st.integers(-1, 8).map(str),
                         st.sampled_from(["sampled", "aggregated", "bound", "fused", "triton", "reference", "vqvae-l2",
                                          "[8, 5, 5, 5]", "[2, 2]", "null"]))
    return st.one_of(st.sampled_from(["null", "cpu", "auto", "none", "bf16", "high", "medium", "tensorboard", "conv32",
                                      "cifar10-tiny", "npz", "runs", "x"]), text)


plausible = st.sampled_from(CONFIG_KEYS + QUANTIZER_KEYS).flatmap(
    lambda k: _plausible_value(k).map(lambda v: f"{k}={v}"))
# A real key and a value YAML cannot parse or refuses to build (each a yaml.* exception inside
# OmegaConf): drawn often enough that every 200-case run meets dozens, not by chance.
unparsable = st.sampled_from(["[", "{", "}", "'", '"', "%", "@", "*alias", "!!python/object:os.system", "\t-",
                              "a\x1bb", "!!binary x", "[1, 2", "{a: 1"])
unparsable_override = st.sampled_from(CONFIG_KEYS + QUANTIZER_KEYS).flatmap(
    lambda k: unparsable.map(lambda v: f"{k}={v}"))
override = st.one_of(plausible, plausible, plausible, plausible, override, override, unparsable_override)
name = st.one_of(st.sampled_from(QUANTIZERS + DATASETS + SUITES + SWEEPS + ["conv32", "conv128"]), text,
                 st.sampled_from(QUANTIZERS).map(lambda q: q + "x"))
number = st.one_of(st.sampled_from(["1", "2", "3"]), st.sampled_from(["1", "2"]), st.integers(-3, 5).map(str),
                   st.sampled_from(["x", "", "1.5", "1e3", "-0", "9" * 25]))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "empty").mkdir()
    (d / "a-file").write_text("not a folder")
    (d / "bad.yaml").write_text("train: [unclosed\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "config.yaml").write_text("train: {epochs: 2}\nquantizer: {gamma: 0.5}\n")
    (d / "weird-config.yaml").write_text("train: {epochs: [1]}\nnope: 1\n")
    (d / "registry.yaml").write_text(yaml.safe_dump({
        "quantizers": {"fuzz-vq": {"class": "quantizers.vq:VectorQuantizer", "defaults": {"commitment": 0.5}}},
        "suites": {"fuzz-suite": {"dataset": "cifar10-tiny", "quantizers": ["vqvae"], "seeds": [0]}}}))
    (d / "registry-bad-class.yaml").write_text(yaml.safe_dump({"quantizers": {"fuzz-bad": {"class": "no.such:Thing"}}}))
    (d / "registry-suites-list.yaml").write_text("suites: [1, 2]\n")
    (d / "registry-not-a-map.yaml").write_text("[1, 2]\n")
    (d / "sweeps").mkdir()
    for q in ("gmvq", "vqvae"):  # ./results holds two finished rows, so that `table` has something to read
        cfg = resolve_config(q, "cifar10", overrides=[])
        append_row(d / "results", cfg, fake_summary(cfg))
    return {"d": d, "counter": itertools.count()}


def path_in(files) -> st.SearchStrategy[str]:
    d = files["d"]
    fixed = [str(d / n) for n in ("empty", "a-file", "bad.yaml", "list.yaml", "config.yaml", "weird-config.yaml",
                                  "nowhere", "nowhere/deeper", "a-file/below", "registry.yaml")]
    fixed += ["", "/dev/null", "~", "~nosuchuser/x", "-", "-x", str(d / ("x" * 300)), str(d / "a\nb"),
              str(d / "sp ace"), str(d / "nul\x00l")]
    return st.one_of(st.sampled_from(fixed), text.map(lambda t: str(d / "rand" / t) if t else str(d)))


@st.composite
def sweep_file(draw, files) -> str:
    """A random sweep YAML document on disk (mostly almost-right, sometimes anything)."""
    param = st.one_of(
        st.fixed_dictionaries({"low": st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.none()),
                               "high": st.one_of(st.floats(), st.integers(), st.none())},
                              optional={"type": st.sampled_from(["float", "int", "categorical", "bool", 3]),
                                        "log": st.one_of(st.booleans(), st.integers(), st.text(max_size=2)),
                                        "step": st.one_of(st.floats(), st.integers(), st.none(), st.booleans())}),
        st.fixed_dictionaries({"choices": st.one_of(st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=4),
                                                                       st.booleans(), st.none()), max_size=3),
                                                    st.text(max_size=3), st.none())},
                              optional={"type": st.sampled_from(["categorical", "float"])}),
        st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.none(), st.booleans(), st.lists(st.integers())))
    named = st.one_of(st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["tpe", "random", "nsga2", "qmc", "median", "percentile",
                                            "successive-halving", "hyperband", "none"]), st.text(max_size=4))},
        optional={"seed": st.one_of(st.integers(), st.text(max_size=2), st.booleans()),
                  "options": st.one_of(st.dictionaries(st.sampled_from(
                      ["n_startup_trials", "multivariate", "seed", "qmc_type", "n_warmup_steps", "percentile",
                       "min_resource", "reduction_factor", "max_resource", "bogus", "population_size",
                       "consider_endpoints", "scramble", "interval_steps", "n_min_trials"]),
                      st.one_of(st.integers(-5, 5), st.floats(), st.text(max_size=4), st.booleans(), st.none()),
                      max_size=3), st.lists(st.integers()), st.none())}),
        st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2))
    doc = draw(st.fixed_dictionaries(
        {"base": st.one_of(st.fixed_dictionaries(
            {"quantizer": st.one_of(st.sampled_from(QUANTIZERS), st.text(max_size=4), st.integers())},
            optional={"dataset": st.one_of(st.sampled_from(DATASETS), st.text(max_size=4), st.integers()),
                      "model": st.one_of(st.sampled_from(["conv32", "conv128"]), st.none(), st.text(max_size=3)),
                      "overrides": st.one_of(st.lists(override, max_size=3), st.text(max_size=3))}),
            st.text(max_size=3), st.none()),
         "space": st.one_of(st.dictionaries(st.sampled_from(QUANTIZER_KEYS + CONFIG_KEYS), param, max_size=2),
                            st.lists(st.integers(), max_size=2), st.none()),
         "objectives": st.one_of(st.lists(st.fixed_dictionaries(
             {"metric": st.one_of(st.sampled_from(["mse", "perplexity", "codes_used", "psnr"]), st.text(max_size=3)),
              "direction": st.one_of(st.sampled_from(["minimize", "maximize"]), st.text(max_size=3))}),
             max_size=2), st.text(max_size=3), st.none())},
        optional={"sampler": named, "pruner": named,
                  "n_trials": st.one_of(st.integers(-2, 5), st.floats(), st.text(max_size=2), st.booleans()),
                  "description": st.one_of(st.text(max_size=5), st.integers()), "extra": st.integers()}))
    if not chance(draw, 3):  # a good sweep with one section drawn at random: the deeper checks run
        good = {"base": {"quantizer": "gmvq", "dataset": "cifar10-tiny", "overrides": ["quantizer.beta=1.0"]},
                "space": {"quantizer.gamma": {"low": 1e-4, "high": 1.0, "log": True}},
                "objectives": [{"metric": "mse", "direction": "minimize"}], "n_trials": 3}
        section = draw(st.sampled_from(sorted(doc)))
        doc = {**good, section: doc[section]}
    path = files["d"] / "sweeps" / f"s{next(files['counter'])}.yaml"
    raw = draw(st.booleans()) and draw(st.sampled_from(["a: [", "!!binary x", "\t-", "{", "---\n---\n", "- 1"]))
    path.write_text(raw if raw else yaml.safe_dump(doc, allow_unicode=True))
    return str(path)


def chance(draw, one_in: int) -> bool:
    """True about once in ``one_in`` draws (hypothesis' integers lean towards their bounds)."""
    return draw(st.sampled_from(range(one_in))) == 0


@st.composite
def command(draw, files) -> list[str]:
    paths = path_in(files)
    argv: list[str] = []
    if chance(draw, 10):
        argv += ["--registry", draw(st.one_of(paths, st.sampled_from(
            [str(files["d"] / f) for f in ("registry.yaml", "registry-bad-class.yaml", "registry-suites-list.yaml",
                                           "registry-not-a-map.yaml")])))]
    which = draw(st.sampled_from(["run", "sweep", "suite", "table"]))
    argv.append(which)
    opts: list[list[str]] = []
    if which == "run":
        if not chance(draw, 10):
            opts.append(["-q" if draw(st.booleans()) else "--quantizer",
                         draw(st.one_of(st.sampled_from(QUANTIZERS), name))])
        if draw(st.booleans()):
            opts.append(["-d", draw(st.sampled_from(DATASETS))])
        for flag, strategy in (("-d", name), ("-m", name), ("--out", paths),
                               ("--device", st.sampled_from(["auto", "cpu", "cuda", "gpu", ""])),
                               ("--config", paths), ("--nproc", number)):
            if chance(draw, 4):
                opts.append([flag, draw(strategy)])
        opts += [[f] for f in ("--json", "--resume") if chance(draw, 4)]
    elif which == "sweep":
        opts.append([draw(st.one_of(st.sampled_from(SWEEPS), sweep_file(files), sweep_file(files), name, paths))])
        for flag, strategy in (("--dataset", name), ("--workers", number), ("--n-trials", number),
                               ("--study", text), ("--out", paths),
                               ("--storage", st.one_of(paths, st.sampled_from(
                                   ["postgresql://u:pw@127.0.0.1:1/x", "sqlite:///x.db", "mysql://x", "redis://x",
                                    "journal:" + str(files["d"] / "j.journal"), "http://x", "postgresql://"])))):
            if chance(draw, 4):
                opts.append([flag, draw(strategy)])
        if chance(draw, 5):
            opts.append(["--report"])
    elif which == "suite":
        if not chance(draw, 10):
            opts.append([draw(st.one_of(st.sampled_from(SUITES + ["fuzz-suite"]), name))])
        if chance(draw, 4):
            opts.append(["--seeds", *draw(st.lists(number, min_size=0, max_size=3))])
        if chance(draw, 4):
            opts.append(["--only", *draw(st.lists(name, min_size=0, max_size=2))])
        if draw(st.booleans()):
            opts.append(["--dry-run"])
    else:
        if draw(st.booleans()):
            opts.append([draw(paths)])
        for flag, strategy in (("--suite", st.one_of(st.sampled_from(SUITES), name)),
                               ("--format", st.sampled_from(["markdown", "csv", "html"])),
                               ("--metrics", st.one_of(st.sampled_from(["mse,perplexity", "psnr,ssim", "usage", ",",
                                                                        "mse,mse", ""]), text))):
            if chance(draw, 4):
                opts.append([flag, draw(strategy)])
    if which != "table":
        opts += [[o] for o in draw(st.lists(override, max_size=3))]
    if chance(draw, 10):  # a flag that no command has, or a stray argument
        opts.append([draw(st.sampled_from(["--nope", "-z", "--", "--out", "-q", "---", "--json=1"]))])
    for group in draw(st.permutations(opts)):
        argv += group
    return argv


def _stub(kind: str):
    def stop(*args, **kwargs):
        raise Reached(kind, args, kwargs)
    return stop


def _reached_open_study(spec, url, name, base_hash):
    make_sampler(spec, 0)  # what each worker builds next: bad sampler/pruner options are the user's too
    make_pruner(spec)
    raise Reached("sweep", spec, url)


def _reached_fit(cfg, **kwargs):
    assert isinstance(cfg, DictConfig) and cfg.quantizer.name and config_hash(cfg)
    check_run_dir(cfg, kwargs.get("resume", False))  # the trainer's first, read-only check of the run folder
    raise Reached("fit", cfg)


@pytest.fixture
def stubs(monkeypatch):
    monkeypatch.setattr(vqbench.training, "fit", _reached_fit)
    monkeypatch.setattr(vqbench.training.ddp, "launch", _stub("launch"))
    monkeypatch.setattr(vqbench.data, "load_dataset", _stub("load_dataset"))
    monkeypatch.setattr(vqbench.sweep.study, "open_study", _reached_open_study)
    monkeypatch.setattr(vqbench.sweep, "report", _stub("report"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("CI") == "true",
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_random_command_lines_give_a_config_or_one_line(files, stubs, data, monkeypatch):
    argv = data.draw(command(files), label="argv")
    monkeypatch.chdir(files["d"])  # relative paths (results, runs, sweeps/) stay in the scratch folder
    out, err = io.StringIO(), io.StringIO()
    TRIED["cases"] += 1
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse
                rc = exc.code
            except Reached:
                TRIED["reached"] += 1
                return
        lines = err.getvalue().rstrip("\n").split("\n")  # what a terminal shows as lines
        assert "Traceback" not in err.getvalue() and "\r" not in err.getvalue()
        for w in caught:
            assert "\n" not in str(w.message).strip(), f"a warning of several lines: {w.message!r}"
        if rc == 0:
            TRIED["exit 0"] += 1
            return
        assert rc == 2, f"exit {rc}: {err.getvalue()!r}"
        assert len(lines) == 1 and lines[0].startswith("vqbench") and ": error: " in lines[0], err.getvalue()
        TRIED["one line"] += 1
        if os.environ.get("VQBENCH_FUZZ_LOG"):
            with open(os.environ["VQBENCH_FUZZ_LOG"], "a") as fh:
                fh.write(lines[0][:90] + "\n")
    finally:
        if "--registry" in argv:
            reset_registry()


def teardown_module(module) -> None:
    print(f"\nfuzz: {TRIED['cases']} command lines: {TRIED['reached']} valid (stub reached), "
          f"{TRIED['exit 0']} exit 0, {TRIED['one line']} one error line")
