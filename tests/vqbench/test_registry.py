"""vqbench/registry.py: every Table 1 method registered with its citation and the paper's
numbers, names and options checked in one line, the decorator; and third-party quantizers
(issue 8): entry points, registry files, conflicts, broken plugins, the example plugin.

Fake distributions are real ones: a ``*.dist-info`` folder with ``entry_points.txt`` on
``sys.path``, exactly what pip leaves behind.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest
import torch

import vqbench.registry as R
from quantizers import Quantizer, QuantizerOutput
from tests.conftest import REPO_ROOT, registry_entries, run_cli, skip_unless_ci
from vqbench import UserError, build_quantizer, list_quantizers, register_quantizer
from vqbench.registry import get_quantizer_entry

ENTRIES = registry_entries()


# GM-VQ paper Table 1: (cifar10 MSE e-3, perplexity, celeba MSE e-3, perplexity).
TABLE1 = {
    "vqvae": ("VQVAE", 5.65, 14.0, 10.02, 16.2),
    "vqvae-l2": ("VQVAE + l_2", 3.21, 57.0, 6.49, 188.7),
    "vqvae-replace": ("VQVAE + replace", 4.07, 109.8, 4.77, 676.4),
    "vqvae-l2-replace": ("VQVAE + l_2 + replace", 3.24, 115.6, 4.93, 861.7),
    "vqvae-affine": ("VQVAE + Affine", 5.15, 69.5, 7.47, 112.6),
    "vqvae-opt": ("VQVAE + OPT", 4.73, 15.5, 7.78, 30.5),
    "vqvae-affine-opt": ("VQVAE + Affine + OPT", 4.00, 79.3, 6.60, 186.6),
    "sqvae": ("SQVAE", 3.36, 769.3, 9.17, 769.1),
    "gumbel-vqvae": ("Gumbel-VQVAE", 6.16, 20.3, 7.34, 96.7),
    "gmvq": ("GM-VQ", 3.13, 731.9, 1.38, 338.6),
    "gmvq-entropy": ("GM-VQ + Entropy", 3.11, 878.7, 0.97, 831.0),
}


def test_every_table1_method_is_registered_with_citation_and_paper_numbers():
    names = list_quantizers()
    for name in TABLE1:
        assert name in names
        entry = get_quantizer_entry(name)
        assert entry.citation and entry.table1_row
        for dataset in ("cifar10", "celeba"):
            assert entry.paper[dataset]["mse_e3"] > 0 and entry.paper[dataset]["perplexity"] >= 1


def test_registry_has_every_table1_row_with_the_papers_numbers():
    for name, (row, c_mse, c_ppl, a_mse, a_ppl) in TABLE1.items():
        entry = ENTRIES[name]
        assert entry["table1_row"] == row
        assert entry["citation"]
        assert entry["paper"] == {"cifar10": {"mse_e3": c_mse, "perplexity": c_ppl},
                                  "celeba": {"mse_e3": a_mse, "perplexity": a_ppl}}


def test_vq_variants_are_options_of_one_class():
    names = ["vqvae", "vqvae-l2", "vqvae-replace", "vqvae-l2-replace", "vqvae-affine",
             "vqvae-opt", "vqvae-affine-opt"]
    assert {ENTRIES[n]["class"] for n in names} == {"quantizers.vq:VectorQuantizer"}
    assert ENTRIES["sqvae"]["class"] == "quantizers.sqvae:SQVAE"
    assert ENTRIES["gumbel-vqvae"]["class"] == "quantizers.gumbel:GumbelQuantizer"


def test_list_quantizers_wildcard():
    assert set(list_quantizers("gmvq*")) == {"gmvq", "gmvq-bound", "gmvq-entropy"}
    assert set(list_quantizers("vqvae-l2*")) == {"vqvae-l2", "vqvae-l2-replace", "vqvae-l2-rotation"}


def test_unknown_name_suggests_close_match():
    with pytest.raises(UserError, match="did you mean 'gmvq'"):
        build_quantizer("gmvqq")


def test_unknown_keyword_names_the_valid_ones():
    with pytest.raises(UserError, match="no option 'gama'.*gamma"):
        build_quantizer("gmvq", gama=1.0)


def test_wrong_type_and_bad_value_are_clear():
    with pytest.raises(UserError, match="gamma must be a float"):
        build_quantizer("gmvq", gamma="big")
    with pytest.raises(UserError, match="gamma must be a finite number ≥ 0"):
        build_quantizer("gmvq", gamma=-1.0)
    with pytest.raises(UserError, match="num_codes must be a whole number ≥ 1"):
        build_quantizer("vqvae", num_codes=0)


def test_decorator_registers_and_builds():
    @register_quantizer("test-identity-vq")
    class Identity(Quantizer):
        """A test quantizer that passes vectors through."""

        def __init__(self, num_codes: int = 4, dim: int = 2) -> None:
            super().__init__(num_codes, dim)
            self.embedding = torch.nn.Parameter(torch.zeros(num_codes, dim))

        @property
        def codebook(self):
            return self.embedding

        def quantize(self, z):
            return QuantizerOutput(z_q=z, loss=z.new_zeros(()), indices=z.new_zeros(len(z), dtype=torch.long))

    q = build_quantizer("test-identity-vq", dim=3)
    assert isinstance(q, Identity) and q.dim == 3
    assert "test-identity-vq" in list_quantizers("test-*")
    with pytest.raises(UserError, match="registered twice"):
        register_quantizer("test-identity-vq")(type("Other", (Identity,), {}))


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.delenv(R.REGISTRY_ENV, raising=False)
    R.reset_registry()
    yield
    R.reset_registry()


def make_dist(root: Path, name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """An installed distribution under ``root``: dist-info with entry points, plus its modules."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[vqbench.quantizers]\n{lines}")
    for filename, source in modules.items():
        (root / filename).write_text(textwrap.dedent(source))
    return root


GOOD_MODULE = """
    from quantizers.vq import VectorQuantizer

    class TinyVQ(VectorQuantizer):
        '''A VQ-VAE subclass shipped by a plugin.'''
"""


def test_entry_point_plugin_is_listed_with_distribution_and_version(tmp_path, monkeypatch, capsys):
    make_dist(tmp_path, "tiny-plugin", "2.3.4", {"tiny-vq": "tiny_plugin_mod:TinyVQ"}, {"tiny_plugin_mod.py": GOOD_MODULE})
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = R.get_quantizer_entry("tiny-vq")
    assert entry.origin == {"kind": "entry point", "entry_point": "tiny-vq = tiny_plugin_mod:TinyVQ",
                            "distribution": "tiny-plugin", "version": "2.3.4"}
    assert entry.citation == "A VQ-VAE subclass shipped by a plugin."
    from vqbench.cli import main

    assert main(["list", "--json"]) == 0
    rows = {q["name"]: q for q in json.loads(capsys.readouterr().out)["quantizers"]}
    assert rows["tiny-vq"]["source"] == "entry point tiny-plugin 2.3.4"
    assert rows["gmvq"]["origin"] == {"kind": "builtin"}


def test_broken_plugin_is_one_warning_and_everything_else_works(tmp_path):
    make_dist(tmp_path, "broken-plugin", "0.1", {"broken-a": "broken_mod:A", "broken-b": "broken_mod:B"},
              {"broken_mod.py": "raise ImportError('needs libfoo')\n"})
    make_dist(tmp_path / "ok", "tiny-plugin", "1.0", {"tiny-vq": "tiny_plugin_mod:TinyVQ"},
              {"tiny_plugin_mod.py": GOOD_MODULE})
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(tmp_path), str(tmp_path / "ok")])}
    proc = run_cli("list", env=env)
    assert proc.returncode == 0, proc.stderr
    warning_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warning_lines) == 1, proc.stderr
    assert warning_lines[0].startswith("vqbench: warning: plugin entry point broken-plugin 0.1 failed to load")
    assert "broken-a" in warning_lines[0] and "broken-b" in warning_lines[0] and "needs libfoo" in warning_lines[0]
    assert "gmvq" in proc.stdout and "tiny-vq" in proc.stdout and "broken-a" not in proc.stdout


def test_plugin_that_is_not_a_quantizer_is_skipped_with_a_warning(tmp_path, monkeypatch):
    make_dist(tmp_path, "odd-plugin", "1.0", {"odd": "odd_mod:thing"}, {"odd_mod.py": "thing = 3\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(R.PluginWarning, match="odd-plugin 1.0.*not a Quantizer subclass"):
        names = R.list_quantizers()
    assert "odd" not in names and "gmvq" in names


def test_unavailable_optional_plugin_is_absent_and_says_what_to_install(tmp_path, monkeypatch, capsys):
    make_dist(tmp_path, "extra-plugin", "1.0", {"needs-extra": "extra_mod:Q"}, {"extra_mod.py": """
        from vqbench.registry import PluginUnavailable
        raise PluginUnavailable("needs somelib: pip install 'extra-plugin[all]'")
    """})
    monkeypatch.syspath_prepend(str(tmp_path))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all
        assert "needs-extra" not in R.list_quantizers()
    with pytest.raises(UserError, match=r"'needs-extra' is not available: needs somelib: pip install"):
        R.get_quantizer_entry("needs-extra")
    from vqbench.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.count("not available") == 1 and "needs-extra" in out


def test_two_sources_for_one_name_is_an_error_naming_both(tmp_path, monkeypatch):
    make_dist(tmp_path, "clash-plugin", "0.9", {"gmvq": "tiny_plugin_mod:TinyVQ"}, {"tiny_plugin_mod.py": GOOD_MODULE})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as err:
        R.list_quantizers()
    message = str(err.value)
    assert "'gmvq' is registered twice" in message
    assert "builtin (quantizers.gmvq:GMVQ)" in message and "entry point clash-plugin 0.9" in message
    assert R._QUANTIZERS == {} and not R._loaded, "a failed load must not leave a half-filled registry"


def write_yaml(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def test_yaml_same_class_other_defaults_under_a_builtin_name_is_a_conflict(tmp_path):
    same = write_yaml(tmp_path / "same.yaml", """
        quantizers:
          vqvae: {class: "quantizers.vq:VectorQuantizer", defaults: {commitment: 0.25}}
    """)
    R.add_registry_file(same)  # the identical registration is harmless
    other = write_yaml(tmp_path / "other.yaml", """
        quantizers:
          my-ok: {class: "quantizers.vq:VectorQuantizer"}
          vqvae: {class: "quantizers.vq:VectorQuantizer", defaults: {commitment: 2.0}}
    """)
    with pytest.raises(UserError, match=rf"'vqvae' is registered twice: by builtin .* by YAML file {tmp_path}"):
        R.add_registry_file(other)
    assert "my-ok" not in R.list_quantizers(), "a file registers all of its entries or none"


def test_registry_file_by_flag_and_by_environment(tmp_path):
    mine = write_yaml(tmp_path / "mine.yaml", """
        quantizers:
          my-vq: {class: "quantizers.vq:VectorQuantizer", defaults: {commitment: 0.5}, citation: "mine"}
    """)
    theirs = write_yaml(tmp_path / "theirs.yaml", """
        quantizers:
          their-vq: {class: "quantizers.vq:VectorQuantizer", defaults: {l2: true}}
    """)
    proc = run_cli("--registry", str(mine), "list", "*-vq", "--json", env={R.REGISTRY_ENV: str(theirs)})
    assert proc.returncode == 0, proc.stderr
    rows = {q["name"]: q for q in json.loads(proc.stdout)["quantizers"]}
    assert rows["my-vq"]["origin"] == {"kind": "yaml", "path": str(mine.resolve())}
    assert rows["my-vq"]["defaults"] == {"commitment": 0.5} and rows["my-vq"]["citation"] == "mine"
    assert rows["their-vq"]["source"] == f"YAML file {theirs.resolve()}"
    # And the defaults reach the built quantizer.
    R.add_registry_file(mine)
    assert R.build_quantizer("my-vq", num_codes=8, dim=4).commitment == 0.5
    missing = run_cli("--registry", str(tmp_path / "nope.yaml"), "list")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.yaml" in missing.stderr


def test_example_plugin_in_this_environment_when_installed():
    """CI installs examples/vqbench-plugin-example; elsewhere the venv test below covers it."""
    from importlib import metadata

    try:
        version = metadata.version("vqbench-plugin-example")
    except metadata.PackageNotFoundError:
        skip_unless_ci("vqbench-plugin-example is not installed here (pip install -e examples/vqbench-plugin-example)")
    entry = R.get_quantizer_entry("example-fvq")
    assert entry.source == f"entry point vqbench-plugin-example {version}"
    from vqbench.testing import check_quantizer

    check_quantizer("example-fvq")


@pytest.mark.slow
def test_fresh_venv_installs_lists_and_trains_the_example_plugin(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)  # reuse torch, pip
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VQBENCH_REGISTRY")}
    env["VQBENCH_NO_PROGRESS"] = "1"
    # A developer machine may hold another checkout installed editable in the system
    # site-packages, whose path entry would shadow this one; the plugin comes only from the venv.
    env["PYTHONPATH"] = str(REPO_ROOT)
    for path in (REPO_ROOT, REPO_ROOT / "examples" / "vqbench-plugin-example"):
        subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        "-e", str(path)], check=True, env=env, cwd=tmp_path, timeout=120)
    vqbench = [str(py), "-m", "vqbench"]  # run from tmp_path: only the installed copies are importable
    listing = subprocess.run([*vqbench, "list", "--json"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0 and listing.stderr == "", listing.stderr
    rows = {q["name"]: q for q in json.loads(listing.stdout)["quantizers"]}
    assert rows["example-fvq"]["origin"]["distribution"] == "vqbench-plugin-example"
    assert rows["example-fvq"]["origin"]["version"] == "0.1.0"
    assert rows["example-fvq"]["class"] == "vqbench_plugin_example.factorized:FactorizedVQ"
    try:
        import vector_quantize_pytorch  # noqa: F401
        assert rows["lucid-fsq"]["source"] == "entry point vqbench 0.1.0"  # our adapters: same mechanism
    except ImportError:
        assert "lucid-fsq" in json.loads(listing.stdout)["unavailable"]
    run = subprocess.run([*vqbench, "run", "--quantizer", "example-fvq", "--dataset", "cifar10-tiny",
                          "train.max_steps=60", "train.lr=0.003", "train.batch_size=32", "train.kmeans_samples=512",
                          "quantizer.num_codes=64",
                          "model.channels=16", "model.res_blocks=0",
                          "data.test_limit=64", "--out", str(tmp_path / "runs"), "--json"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["quantizer"] == "example-fvq" and summary["steps"] == 60
    # It learned (60 steps at lr 3e-3 measured 0.80 x the mean image; untrained ≈ 1.0-1.15 x).
    assert summary["mse"] < 0.9 * summary["mean_image_mse"] and summary["codes_used"] >= 1
