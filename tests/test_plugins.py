"""Third-party quantizers (issue 8): entry points, registry files, conflicts, broken plugins.

Fake distributions are real ones: a ``*.dist-info`` folder with ``entry_points.txt`` on
``sys.path``, exactly what pip leaves behind.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

import vqbench.registry as R
from conftest import REPO_ROOT, run_cli
from vqbench.errors import UserError


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
        if os.environ.get("CI") == "true":
            pytest.fail("CI must `pip install -e examples/vqbench-plugin-example`")
        pytest.skip("vqbench-plugin-example is not installed here")
    entry = R.get_quantizer_entry("example-fvq")
    assert entry.source == f"entry point vqbench-plugin-example {version}"
    from vqbench.testing import check_quantizer

    check_quantizer("example-fvq")
