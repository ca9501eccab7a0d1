"""The pytest plugin (docs/pytest.md) and the helpers behind it (ppp_audit.testing).

Inner pytest runs use ``pytester`` in-process (fast: torch is already imported) except the one that must prove a fresh
process never imports torch. Models are tiny: a two-stage CNN at 32 px with 8 images, or resnet10t at 32 px.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch  # imported before any pytester snapshot, so inner runs never drop and re-import it
import torch.nn as nn

from ppp_audit import testing
from ppp_audit.errors import PPPAuditError
from ppp_audit.report import Report

import plugin_tiny_cnn
from plugin_tiny_cnn import make_tiny

pytest_plugins = ["pytester"]

SMALL = dict(input_size=32, num_images=8)
CONFTEST = Path(plugin_tiny_cnn.__file__).read_text() + textwrap.dedent('''

    import pytest


    @pytest.fixture
    def tiny():
        return make_tiny
''')


@pytest.fixture(scope="module", autouse=True)
def _warm_imports():
    """Measure once before any inner run, so every lazily imported module is in pytester's sys.modules snapshot."""
    import PIL.Image  # noqa: F401 - the folder image source imports these lazily
    import torchvision.transforms.functional  # noqa: F401

    testing.measure(make_tiny(), **SMALL)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)  # inner runs load the plugin as users get it
    pytester.makeconftest(CONFTEST)
    return pytester


def _no_torch_frames(output: str) -> None:
    assert "torch/nn/modules" not in output and "ppp_audit/engine.py" not in output, output


# ---------------------------------------------------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------------------------------------------------


def test_bounds_pass_and_fail_with_a_table_and_a_saved_report(project: pytest.Pytester) -> None:
    project.makepyfile(test_bounds='''
        def test_no_padding_is_refused(ppp, tiny):
            ppp.check(tiny(padding=0), max_strength=1e-6, layers="all", input_size=32, num_images=8)

        def test_per_layer_bounds(ppp, tiny):
            ppp.check(tiny(), layers={"stage1": 1.0, "stage2": 1.0}, input_size=32, num_images=8)

        def test_padded_fails(ppp, tiny):
            ppp.check(tiny(offset=2.0), max_strength=1e-6, layers="all", input_size=32, num_images=8)
    ''')
    result = project.runpytest("--ppp-report-dir=reports")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        "*NothingToPatchError: model 'Tiny' has no padding (no convolution, pool or pad module pads): there is no PPP*",
        "*PPPBoundError: PPP strength above the bound in 2 of 2 checked layers",
        "*model Tiny (in-memory) · padding native (zeros) · N=8 dead-leaves images · S=32 m=8 · cpu",
        "*layer   stride  strength*95% CI  allowed  result",
        "*stage1       2 *1e-06    FAIL",
        "*stage2       4 *1e-06    FAIL",
        "*full report: *reports*test_bounds.py_test_padded_fails.json",
    ])
    _no_torch_frames(result.stdout.str())
    report = Report.load(project.path / "reports" / "test_bounds.py_test_padded_fails.json")
    native = report.scheme("native")
    assert [layer.name for layer in native.layers] == ["stage1", "stage2"]
    assert all(layer.stats.strength > 1e-6 for layer in native.layers)
    # the table prints the saved report's numbers
    assert f"{native.layers[0].stats.strength:.3g}" in result.stdout.str()
    # passing checks save their report too; a model with no padding has none to save
    assert Report.load(project.path / "reports" / "test_bounds.py_test_per_layer_bounds.json").scheme("native")
    assert not (project.path / "reports" / "test_bounds.py_test_no_padding_is_refused.json").exists()


def test_timm_model_by_name_last_stage(project: pytest.Pytester) -> None:
    project.makepyfile(test_timm='''
        import torch

        def test_resnet10t_last_stage(ppp):
            torch.manual_seed(0)
            ppp.check("resnet10t", pretrained=False, max_strength=0.01, layers="last", input_size=64, num_images=4)
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*PPPBoundError: PPP strength above the bound in 1 of 1 checked layers",
        "*model resnet10t (random-init) · padding native (zeros) · N=4*",
        "*act1 *–",
        "*layer4 *32 *0.01    FAIL",
    ])


# ---------------------------------------------------------------------------------------------------------------------
# Regression against a stored baseline
# ---------------------------------------------------------------------------------------------------------------------

REGRESSION_TEST = '''
    OFFSET = {offset}

    def test_drift(ppp, tiny):
        ppp.check_regression(tiny(offset=OFFSET), tolerance=0.02, input_size=32)
'''


def test_regression_create_pass_fail_regen(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nppp_num_images = 8\n")
    project.makepyfile(test_reg=REGRESSION_TEST.format(offset=0.0))
    baseline = project.path / "test_reg" / "test_drift.ppp.json"

    first = project.runpytest()
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["*PPPBaselineWritten: PPP baseline created (none existed): *test_drift.ppp.json"])
    stored = json.loads(baseline.read_text())
    assert stored["settings"]["num_images"] == 8  # from the ini key
    assert list(stored["layers"]) == ["stage1", "stage2"]

    project.runpytest().assert_outcomes(passed=1)

    project.makepyfile(test_reg=REGRESSION_TEST.format(offset=0.5))  # the model changed: a border step appears
    grown = project.runpytest()
    grown.assert_outcomes(failed=1)
    grown.stdout.fnmatch_lines([
        "*PPPRegressionError: PPP strength grew beyond the tolerance in * layers (allowed = baseline + 0.02)",
        "*layer   stride  strength*95% CI  baseline  allowed  result",
        "*stage1 *FAIL",
        "*baseline: *test_drift.ppp.json; to accept, regenerate the baseline (pytest --ppp-regen, or regen=True)",
    ])
    _no_torch_frames(grown.stdout.str())

    mismatch = project.runpytest("--ppp-num-images=4")  # the option beats the ini key
    mismatch.assert_outcomes(failed=1)
    mismatch.stdout.fnmatch_lines(["*PPPBaselineMismatch: *other settings*", "*num_images: baseline 8, now 4"])

    regen = project.runpytest("--ppp-regen")
    regen.assert_outcomes(failed=1)
    regen.stdout.fnmatch_lines(["*PPPBaselineWritten: PPP baseline regenerated: *test_drift.ppp.json"])
    assert json.loads(baseline.read_text())["layers"]["stage1"]["strength"] > stored["layers"]["stage1"]["strength"]
    project.runpytest().assert_outcomes(passed=1)


# ---------------------------------------------------------------------------------------------------------------------
# Plugin wiring: disabling, marker, options
# ---------------------------------------------------------------------------------------------------------------------


def test_ini_keys_and_options_reach_the_measurement(project: pytest.Pytester) -> None:
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    (project.path / "imgs").mkdir()
    for i in range(3):
        PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(project.path / "imgs" / f"{i}.png")
    project.makeini("[pytest]\nppp_images = imgs\nppp_device = cpu\n")
    project.makepyfile(test_settings='''
        def test_measure(ppp, tiny):
            ppp.measure(tiny(), input_size=32)
    ''')
    saved = project.path / ".pytest_cache" / "d" / "ppp_audit" / "test_settings.py_test_measure.json"

    project.runpytest().assert_outcomes(passed=1)
    report = Report.load(saved)
    assert report.data["kind"] == "folder" and report.data["path"] == str(project.path / "imgs")
    assert (report.data["num_images"], report.device) == (3, "cpu")  # all 3 images (the default N is 64)

    project.runpytest("--ppp-num-images=2").assert_outcomes(passed=1)
    assert Report.load(saved).data["num_images"] == 2
    assert Report.load(saved).data["scale"] == 1.0
    project.runpytest("--ppp-photo-scale=0.75").assert_outcomes(passed=1)  # the photos at 48 px
    assert Report.load(saved).data["scale"] == 0.75


def test_a_hugging_face_dataset_from_the_ini(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import numpy as np
    import PIL.Image

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", project.path / "hf-cache")
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    (project.path / "ds").mkdir()
    datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()})).to_parquet(
        str(project.path / "ds" / "validation.parquet"))
    project.makeini(f"[pytest]\nppp_images = hfds/{project.path / 'ds'}\nppp_images_split = validation\n"
                    "ppp_device = cpu\n")
    project.makepyfile(test_settings='''
        def test_measure(ppp, tiny):
            ppp.measure(tiny(), input_size=32)
    ''')
    project.runpytest().assert_outcomes(passed=1)
    report = Report.load(project.path / ".pytest_cache" / "d" / "ppp_audit" / "test_settings.py_test_measure.json")
    assert (report.data["kind"], report.data["split"], report.data["num_images"]) == ("hf-dataset", "validation", 3)


def test_bad_ini_value_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nppp_num_images = many\n")
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini key ppp_num_images must be an integer, not 'many'"])
    project.makeini("[pytest]\nppp_photo_scale = half\n")
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ppp-photo-scale / ppp_photo_scale must be a number, not 'half'"])
    project.makeini("[pytest]\nppp_photo_scale = 2\n")  # the config's own range check
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--photo-scale must be at most 1*"])


def test_disabled_plugin_has_no_fixture_and_no_options(project: pytest.Pytester) -> None:
    project.makepyfile(test_off='''
        def test_uses_fixture(ppp):
            pass
    ''')
    result = project.runpytest("-p", "no:ppp_audit")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'ppp' not found*"])
    assert "--ppp-num-images" not in project.runpytest("-p", "no:ppp_audit", "--help").stdout.str()
    assert "--ppp-num-images" in project.runpytest("--help").stdout.str()


def test_tests_using_the_fixture_are_marked_and_deselectable(project: pytest.Pytester) -> None:
    project.makepyfile(test_marks='''
        import pytest

        def test_fixture_user(ppp):
            pass

        @pytest.mark.ppp
        def test_explicit_marker():
            pass

        def test_plain():
            pass
    ''')
    project.runpytest("-m", "not ppp", "--strict-markers").assert_outcomes(passed=1, deselected=2)
    project.runpytest("-m", "ppp", "--strict-markers").assert_outcomes(passed=2, deselected=1)


def test_unrelated_project_never_imports_torch(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh pytest process loads the plugin from its entry point; neither it nor the fixture imports torch/timm."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile(test_unrelated='''
        import sys

        HEAVY = ("torch", "timm", "ppp_audit.engine")

        def test_plugin_loaded_from_its_entry_point(pytestconfig):
            assert pytestconfig.pluginmanager.hasplugin("ppp_audit")
            dists = {dist.project_name for _, dist in pytestconfig.pluginmanager.list_plugin_distinfo()}
            assert "ppp-audit" in dists or "ppp_audit" in dists, dists
            assert [m for m in HEAVY if m in sys.modules] == []

        def test_fixture_alone_imports_nothing_heavy(ppp):
            assert [m for m in HEAVY if m in sys.modules] == []
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


# ---------------------------------------------------------------------------------------------------------------------
# The helpers, in-process
# ---------------------------------------------------------------------------------------------------------------------


def test_measure_gives_the_cli_numbers(tmp_path) -> None:
    """The helper and ``ppp-audit MODEL --weights FILE --json -`` measure the same thing with the same code."""
    import timm
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from ppp_audit.cli import app

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False)
    weights = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    ours = testing.measure(model, input_size=64, num_images=4, device="cpu")
    cli = CliRunner().invoke(app, ["resnet10t", "--weights", str(weights), "--input-size", "64", "-n", "4",
                                   "--device", "cpu", "--no-progress", "--json", "-"])
    assert cli.exit_code == 0, cli.output
    theirs = Report.from_json(cli.stdout)
    for a, b in zip(ours.scheme("native").layers, theirs.scheme("native").layers, strict=True):
        assert a.name == b.name
        assert a.stats.strength == pytest.approx(b.stats.strength, rel=1e-9)


def test_module_without_feature_info_needs_layer_names() -> None:
    model = make_tiny(feature_info=False)
    with pytest.raises(PPPAuditError, match="no feature_info") as info:
        testing.assert_ppp(model, max_strength=1.0, **SMALL)
    assert "layers=" in info.value.hint
    report = testing.assert_ppp(model, layers={"stage2": 1.0}, reference="window", **SMALL)  # tapped with a hook
    # the same weights with stages from feature_info, on the same windows (the featureless model's margin: 2 x 32)
    twin = testing.measure(make_tiny(), margin=64, **SMALL)
    assert report.margin == twin.margin == 64
    assert report.scheme("native").layer("stage2").stats.strength == pytest.approx(
        twin.scheme("native").layer("stage2").stats.strength, rel=1e-9)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(), "pass max_strength"),
    (dict(layers={"stage1": 0.1, "stage2": None}), "no bound for stage2"),
    (dict(max_strength=-0.1), "non-negative"),
    (dict(max_strength=float("nan")), "non-negative"),
    (dict(max_strength=0.1, layers=[]), "at least one module"),
])
def test_bad_bounds_fail_before_measuring(kwargs, message, monkeypatch) -> None:
    monkeypatch.setattr(testing, "measure", lambda *a, **k: pytest.fail("measured despite a bad bound"))
    with pytest.raises(ValueError, match=message):
        testing.assert_ppp(nn.Conv2d(3, 3, 3), **kwargs)


def test_a_swapped_padding_is_what_gets_checked() -> None:
    with pytest.raises(testing.PPPBoundError) as failure:
        testing.assert_ppp(make_tiny(offset=2.0), max_strength=1e-6, padding="reflect", **SMALL)
    report = testing.measure(make_tiny(offset=2.0), padding="reflect", **SMALL)
    reflect, native = report.scheme("reflect").last_strength, report.scheme("native").last_strength
    assert "padding reflect ·" in str(failure.value)
    assert f"{reflect:.3g}" in str(failure.value) and f"{native:.3g}" not in str(failure.value)


def test_a_report_measured_once_can_be_checked_many_times() -> None:
    report = testing.measure(make_tiny(), **SMALL)
    assert testing.assert_ppp(report, layers={"stage1": 1.0, "stage2": 1.0}) is report
    with pytest.raises(testing.PPPBoundError, match="1 of 1 checked layers"):
        testing.assert_ppp(report, max_strength=1e-6, layers="stage1")
    with pytest.raises(ValueError, match="no layer 'nope'"):
        testing.assert_ppp(report, max_strength=1.0, layers=["stage1", "nope"])
    with pytest.raises(ValueError, match="no scheme 'reflect'"):
        testing.assert_ppp(report, max_strength=1.0, padding="reflect")


def test_model_mode_is_restored_and_report_returned(tmp_path) -> None:
    model = make_tiny().train()
    report = testing.assert_ppp(model, max_strength=1e3, layers="all", report_path=tmp_path / "r.json", **SMALL)
    assert model.training
    assert Report.load(tmp_path / "r.json").to_json() == report.to_json()


def test_format_table_marks_only_checked_failures() -> None:
    rows = [
        testing.LayerCheck("stage1", 2, 0.5, (0.4, 0.6), None),
        testing.LayerCheck("stage2", 4, 0.25, (0.2, 0.3), 0.3),
        testing.LayerCheck("stage3", 8, 0.35, None, 0.3),
        testing.LayerCheck("stage4", 16, math.nan, None, 0.3, reference_partial=True),
    ]
    assert testing.format_table(rows) == textwrap.dedent("""\
        layer     stride  strength      95% CI  allowed  result
        stage1         2       0.5  [0.4, 0.6]        –
        stage2         4      0.25  [0.2, 0.3]      0.3      ok
        stage3         8      0.35           –      0.3    FAIL
        stage4 *      16         –           –      0.3    FAIL
        * partial reference: more of the receptive field's influence lies beyond the margin than its tolerance""")
