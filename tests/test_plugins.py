"""Third-party padding plugins: the example distribution in plugins/, broken plugins, and the off switch.

The example plugin must be installed; CI runs
``pip install --no-deps --no-build-isolation -e plugins/ppp-audit-extrapolate``; without it these tests fail.
"""

from __future__ import annotations

import importlib.metadata
import json
import textwrap
import warnings

import pytest
from typer.testing import CliRunner

from ppp_audit.cli import app
from ppp_audit.errors import UnknownPaddingError
from ppp_audit.paddings import DISABLE_PLUGINS_ENV, get_padding, list_paddings
from ppp_audit.paddings.registry import _reset_discovery

PLUGIN_DIST = "ppp-audit-extrapolate"
INSTALL = "pip install --no-deps --no-build-isolation -e plugins/ppp-audit-extrapolate"
BUILT_INS = {"zeros", "reflect", "replicate", "circular", "partial", "mean", "random", "valid"}
WIDE = {"COLUMNS": "200"}  # rich wraps table cells at the default 80 columns


@pytest.fixture(autouse=True)
def fresh_discovery():
    _reset_discovery()
    yield
    _reset_discovery()


@pytest.fixture(scope="module")
def example_plugin():
    try:
        return importlib.metadata.distribution(PLUGIN_DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"the example plugin '{PLUGIN_DIST}' is not installed; run `{INSTALL}` (CI does in .ci/run)")


def test_every_built_in_is_registered_by_ppp_audit():
    infos = {info.name: info for info in list_paddings()}
    assert BUILT_INS <= set(infos)
    for name in BUILT_INS:
        assert infos[name].distribution == "ppp-audit"
        assert infos[name].description == type(get_padding(name)).description != ""


def test_paddings_command_lists_schemes_and_distributions(example_plugin):
    result = CliRunner().invoke(app, ["paddings"], env=WIDE)
    assert result.exit_code == 0, result.output
    for info in list_paddings():
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"│ {info.name} "))
        assert info.description in line and info.distribution in line
    assert "extrapolate" in result.stdout and PLUGIN_DIST in result.stdout


def test_example_plugin_is_usable_in_an_audit(example_plugin):
    result = CliRunner().invoke(app, ["resnet10t", "--no-pretrained", "-p", "extrapolate", "-n", "2", "-b", "2",
                                      "--input-size", "64", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    native, extrapolate = report["results"]
    assert (native["scheme"], extrapolate["scheme"]) == ("native", "extrapolate")
    assert extrapolate["patch"]["num_patched"] == native["patch"]["num_patched"] > 0
    assert extrapolate["layers"][0]["ppp_map"] != native["layers"][0]["ppp_map"]  # the border changed


def test_disable_env_skips_third_party_plugins(example_plugin, monkeypatch):
    monkeypatch.setenv(DISABLE_PLUGINS_ENV, "1")
    names = {info.name for info in list_paddings()}
    assert BUILT_INS <= names and "extrapolate" not in names
    with pytest.raises(UnknownPaddingError, match="unknown padding scheme 'extrapolate'"):
        get_padding("extrapolate")
    monkeypatch.setenv(DISABLE_PLUGINS_ENV, "0")
    _reset_discovery()
    assert "extrapolate" in {info.name for info in list_paddings()}


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    """A distribution with three broken entry points, put on sys.path (importlib.metadata finds its dist-info)."""
    (tmp_path / "ppp_audit_test_broken.py").write_text(textwrap.dedent('''
        from ppp_audit.paddings import PaddingScheme

        class Exploding(PaddingScheme):
            name = "explodes-on-use"
            description = "raises when created"

            def __init__(self):
                raise RuntimeError("boom")

        NOT_A_FACTORY = 42
    '''))
    info = tmp_path / "ppp_audit_broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ppp-audit-broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent('''
        [ppp_audit.paddings]
        missing-module = ppp_audit_no_such_module:Scheme
        not-a-factory = ppp_audit_test_broken:NOT_A_FACTORY
        explodes-on-use = ppp_audit_test_broken:Exploding
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ppp-audit-broken-plugin"


def test_broken_plugin_warns_by_name_and_never_crashes(broken_plugin):
    with pytest.warns(RuntimeWarning) as record:
        names = {info.name for info in list_paddings()}
    messages = [str(w.message) for w in record]
    for entry in ("missing-module", "not-a-factory"):
        assert any(f"padding plugin '{entry}' from distribution '{broken_plugin}'" in m for m in messages), messages
        assert entry not in names
    assert BUILT_INS <= names and "explodes-on-use" in names  # it loads; it only fails when used
    with pytest.raises(UnknownPaddingError, match=f"'explodes-on-use' from distribution '{broken_plugin}'"):
        get_padding("explodes-on-use")

    _reset_discovery()
    with pytest.warns(RuntimeWarning) as record:
        result = CliRunner().invoke(app, ["paddings"], env=WIDE)
    assert result.exit_code == 0 and "reflect" in result.stdout
    assert len(record) == 2 and all(broken_plugin in str(w.message) for w in record)

    result = CliRunner().invoke(app, ["resnet10t", "--no-pretrained", "-p", "explodes-on-use", "-n", "2"])
    assert result.exit_code == 2
    assert "ppp-audit-broken-plugin" in result.output and "Traceback" not in result.output


def test_disable_env_silences_broken_plugins(broken_plugin, monkeypatch):
    monkeypatch.setenv(DISABLE_PLUGINS_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = {info.name for info in list_paddings()}
    assert BUILT_INS <= names and not names & {"missing-module", "not-a-factory", "explodes-on-use"}
