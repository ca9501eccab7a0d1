"""The pytest plugin (``pytest11`` entry point ``ppp_audit``): the ``ppp`` fixture, the ``ppp`` marker, the options.

Thin on purpose, like pytest-regressions: importing it loads neither torch nor timm, so installing ppp-audit costs
other projects' test runs nothing. The fixture imports the measurement code (:mod:`ppp_audit.testing`) when a test
uses it. Disable the plugin with ``-p no:ppp_audit``.

Settings, strongest first: arguments of ``ppp.check(...)``, command-line options, ini keys, the CLI's defaults.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

MARKER = "ppp"
_SETTINGS = pytest.StashKey[dict]()


_MEASUREMENT_FIELDS = {"images": "DIR|hfds/NAME", "images_split": "SPLIT", "photo_scale": "SCALE", "num_images": "N",
                       "device": "DEVICE"}
"""The :class:`~ppp_audit.config.AuditConfig` settings a test run can set (``--ppp-<field>`` and ini ``ppp_<field>``);
their help text is the config's, so the pytest options cannot drift from the CLI's."""


def _measurement_fields() -> dict[str, Any]:
    import dataclasses

    from ppp_audit.config import AuditConfig  # torch-free

    return {f.name: f for f in dataclasses.fields(AuditConfig) if f.name in _MEASUREMENT_FIELDS}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ppp_audit", "PPP bounds on models (ppp-audit)")
    for name, f in _measurement_fields().items():
        flag, ini = f"--ppp-{name.replace('_', '-')}", f"ppp_{name}"
        default = f.default if f.default is not None else "the built-in dead-leaves images"
        group.addoption(flag, metavar=_MEASUREMENT_FIELDS[name], default=None,
                        type=int if f.type in ("int", int) else None,
                        help=f"PPP checks: {f.metadata['help']} (default: {default}). ini: {ini}")
        parser.addini(ini, f"PPP checks: {f.metadata['help']}", default="")
    group.addoption("--ppp-report-dir", metavar="DIR", default=None,
                    help="folder for the JSON report of every PPP check (default: in .pytest_cache). "
                    "ini: ppp_report_dir")
    group.addoption("--ppp-regen", action="store_true", default=False,
                    help="regenerate the baselines of ppp.check_regression (those tests fail once, like a first run)")
    parser.addini("ppp_report_dir", "folder for the JSON reports of PPP checks, relative to the ini file", default="")


def _ini_path(config: pytest.Config, value: str) -> Path:
    base = config.inipath.parent if config.inipath else config.rootpath
    return base / value


def _settings(config: pytest.Config) -> dict[str, Any]:
    """Options over ini keys; paths from the command line are relative to where pytest was started. Checked with
    the config's own validation, so a bad value stops pytest once with a usage error instead of failing every test."""
    from ppp_audit.config import AuditConfig, parse_hfds
    from ppp_audit.errors import PPPAuditError

    invoked = config.invocation_params.dir
    option, ini = config.getoption, config.getini
    settings: dict[str, Any] = {}
    images = option("ppp_images") or ini("ppp_images")
    try:
        is_dataset = parse_hfds(images) is not None  # a dataset name, not a path (the CLI's rule)
    except PPPAuditError as exc:
        raise pytest.UsageError(f"--ppp-images / ppp_images: {exc}") from None
    if is_dataset:
        settings["images"] = images
    elif option("ppp_images"):
        settings["images"] = invoked / option("ppp_images")
    elif ini("ppp_images"):
        settings["images"] = _ini_path(config, ini("ppp_images"))
    if option("ppp_images_split") or ini("ppp_images_split"):
        settings["images_split"] = option("ppp_images_split") or ini("ppp_images_split")
    if option("ppp_num_images") is not None:
        settings["num_images"] = option("ppp_num_images")
    elif ini("ppp_num_images"):
        try:
            settings["num_images"] = int(ini("ppp_num_images"))
        except ValueError:
            value = ini("ppp_num_images")
            raise pytest.UsageError(f"ini key ppp_num_images must be an integer, not {value!r}") from None
    if option("ppp_device") or ini("ppp_device"):
        settings["device"] = option("ppp_device") or ini("ppp_device")
    scale = option("ppp_photo_scale") or ini("ppp_photo_scale")
    if scale:
        try:
            settings["photo_scale"] = float(scale)
        except ValueError:
            raise pytest.UsageError(f"--ppp-photo-scale / ppp_photo_scale must be a number, not {scale!r}") from None
    try:
        AuditConfig("pytest-options", **{k: str(v) if k == "images" else v for k, v in settings.items()})
    except PPPAuditError as exc:
        raise pytest.UsageError(f"ppp-audit options: {exc}") from None
    return settings


def _report_dir(config: pytest.Config) -> Path | None:
    if config.getoption("ppp_report_dir"):
        return config.invocation_params.dir / config.getoption("ppp_report_dir")
    if config.getini("ppp_report_dir"):
        return _ini_path(config, config.getini("ppp_report_dir"))
    return None


def _check_report_dir(config: pytest.Config) -> None:
    """Create the report dir now, so that a path that is a file or cannot be made stops pytest once with a usage error,
    instead of failing each check after its measurement (with a trace ending in a misleading "File exists")."""
    report_dir = _report_dir(config)
    if report_dir is None:
        return
    where = "--ppp-report-dir" if config.getoption("ppp_report_dir") else "ini key ppp_report_dir"
    if report_dir.exists() and not report_dir.is_dir():
        raise pytest.UsageError(f"{where} {report_dir} is a file, not a folder (name a folder for the JSON reports)")
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise pytest.UsageError(f"{where} {report_dir} cannot be created: {exc.strerror or exc} "
                                "(name a folder you can write to)") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: measures a model's PPP (slow; deselect with -m 'not {MARKER}'); added automatically to "
        "tests that use the ppp fixture",
    )
    config.stash[_SETTINGS] = _settings(config)
    _check_report_dir(config)


@pytest.hookimpl(tryfirst=True)  # before the mark plugin applies -m
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MARKER in getattr(item, "fixturenames", ()) and item.get_closest_marker(MARKER) is None:
            item.add_marker(MARKER)


@pytest.fixture
def ppp(request: pytest.FixtureRequest):
    """Assert PPP bounds: ``ppp.check(model, max_strength=0.1, layers="last")``, ``ppp.check_regression(model)``.

    Returns a :class:`ppp_audit.testing.PPPChecker` using this run's ``--ppp-*`` options and ini keys. Every
    measurement's full JSON report is saved to the report dir; baselines live in ``<test dir>/<module name>/``.
    """
    from ppp_audit.testing import PPPChecker, safe_name

    config = request.config
    report_dir = _report_dir(config)
    if report_dir is None:
        cache = getattr(config, "cache", None)
        report_dir = (cache.mkdir("ppp_audit") if cache is not None
                      else request.getfixturevalue("tmp_path_factory").getbasetemp() / "ppp_audit")
    return PPPChecker(
        defaults=config.stash[_SETTINGS], report_dir=Path(report_dir), report_stem=safe_name(request.node.nodeid),
        baseline_dir=request.path.parent / request.path.stem, basename=re.sub(r"\W", "_", request.node.name),
        regen=config.getoption("ppp_regen"),
    )
