"""Numbers, layer names and input files that are bad input (issue #29): one line and exit 2, before any work.

Every numeric setting is checked finite and in range by one mechanism (the bounds declared in ``setting(...)``), so
the tests below also walk every number field of both configs instead of listing them. Most cases fail before any
model is built; those that need one use a random-init resnet10t at 64 px with two images.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from cli_helpers import fails, runner
from ppp_audit.cli import app
from ppp_audit.config import MAX_SIDE, AuditConfig, FinetuneConfig
from ppp_audit.errors import ConfigError, PPPAuditError
from ppp_audit.sweep import read_model_list

pytest_plugins = ["pytester"]
TINY = ["resnet10t", "--no-pretrained", "-n", "2", "-b", "2", "--input-size", "64", "--no-progress"]
FINETUNE = [*TINY, "--finetune-steps", "2"]


# ---- numbers: finite and in range ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "cause"), [
    (["--lr", "inf"], "--lr must be a finite number (got inf) — pass e.g. --lr"),
    (["--lr", "nan"], "--lr must be a finite number (got nan)"),
    (["--weight-decay", "-1"], "--weight-decay must be at least 0 (got -1.0)"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number (got inf)"),
    (["--momentum", "1"], "--momentum must be below 1 (got 1.0)"),
    (["--momentum", "-inf"], "--momentum must be a finite number (got -inf)"),
    (["--temperature", "nan"], "--temperature must be a finite number (got nan)"),
    (["--temperature", "1e300"], "--temperature must be at most 100 (got 1e+300)"),
    (["--temperature", "0"], "--temperature must be above 0 (got 0.0)"),
    (["--repair", "--repair-weight", "nan"], "--repair-weight must be a finite number (got nan)"),
    (["--finetune-batch-size", "0"], "--finetune-batch-size must be at least 1 (got 0)"),
    (["--finetune-batch-size", str(10**9)], "--finetune-batch-size must be at most 4096 (got 1000000000)"),
    (["--measure-every", str(10**12)], "--measure-every must be at most 1000000"),
    (["--train-images", str(2**40)], "--train-images must be at most 1000000"),
])
def test_finetune_numbers_are_checked_before_any_work(args, cause):
    fails([*FINETUNE, *args], cause)


@pytest.mark.parametrize(("args", "cause"), [
    (["--num-images", str(10**12)], "--num-images must be at most 1000000 (got 1000000000000)"),
    (["--margin", str(10**7)], f"--margin must be at most {MAX_SIDE} px (got 10000000) — leave it out to choose it"),
    (["--margin", "0"], "--margin must be at least 1 px (got 0)"),
    (["--input-size", "5000"], f"--input-size must be at most {MAX_SIDE} px (got 5000) — leave it out for the"),
    (["--input-size", str(2**63)], f"--input-size must be at most {MAX_SIDE} px"),
    (["--batch-size", str(2**31)], "--batch-size must be at most 4096 (got 2147483648)"),
    (["--workers", "100000"], "--workers must be at most 256 (got 100000)"),
])
def test_sizes_have_a_stated_bound(args, cause):
    fails([*TINY, *args], cause)


def test_the_help_states_the_size_bounds():
    result = runner.invoke(app, ["audit", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if "--input-size" in line)
    assert f"at most {MAX_SIDE} px" in line


def _bad_numbers() -> list[tuple[str, float]]:
    """(field, value) for every number field of both configs: NaN and +-inf, and for counts and sizes (the int
    fields) a value far beyond any use either way."""
    cases = []
    for config_class in (AuditConfig, FinetuneConfig):
        for f in dataclasses.fields(config_class):
            types = set(f.metadata["types"] or ())
            if types & {int, float}:
                sizes = [10**30, -(10**30)] if float not in types else []
                cases += [(f.name, value) for value in [math.nan, math.inf, -math.inf, *sizes]]
    return cases


@pytest.mark.parametrize(("name", "value"), _bad_numbers())
def test_every_number_setting_refuses_non_finite_and_unbounded_values(name, value):
    """One mechanism for every number of both configs: NaN and +-inf (float fields; int fields refuse them by type),
    and counts and sizes far beyond any use, are ConfigErrors naming the setting."""
    config_class = AuditConfig if name in {f.name for f in dataclasses.fields(AuditConfig)} else FinetuneConfig
    kwargs = {"model": "resnet10t"} if config_class is AuditConfig else {}
    if config_class is FinetuneConfig and name.startswith("repair"):
        kwargs["repair"] = True
    with pytest.raises(ConfigError) as caught:
        config_class(**kwargs, **{name: value})
    assert name in caught.value.message or name.replace("_", "-") in caught.value.message
    assert caught.value.hint


@pytest.mark.parametrize(("config_class", "setting", "cause"), [
    (AuditConfig, {"margin_tolerance": math.inf}, "margin_tolerance must be a finite number (got inf)"),
    (AuditConfig, {"margin_tolerance": 1}, "margin_tolerance must be below 1 (got 1)"),
    (AuditConfig, {"groups": 10**6}, "groups must be at most 64 (got 1000000)"),
    (AuditConfig, {"input_size": MAX_SIDE + 1}, f"--input-size must be at most {MAX_SIDE} px"),
    (FinetuneConfig, {"steps": 10**9}, "--finetune-steps must be at most 1000000"),
    (FinetuneConfig, {"lr": -1e-3}, "--lr must be at least 0 (got -0.001)"),
    (FinetuneConfig, {"momentum": math.nan}, "--momentum must be a finite number (got nan)"),
])
def test_bad_numbers_in_python_are_config_errors(config_class, setting, cause):
    kwargs = {"model": "resnet10t"} if config_class is AuditConfig else {}
    with pytest.raises(ConfigError) as caught:
        config_class(**kwargs, **setting)
    assert cause in caught.value.message and caught.value.hint


def test_bounds_themselves_are_accepted():
    config = AuditConfig("resnet10t", input_size=MAX_SIDE, margin=MAX_SIDE, margin_tolerance=0.5, seed=2**64 - 1)
    assert (config.input_size, config.margin) == (MAX_SIDE, MAX_SIDE)
    assert FinetuneConfig(momentum=0.0, temperature=100, lr=0, weight_decay=0).momentum == 0.0


# ---- layers --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("layers", "cause"), [
    ("layer1,nosuch2", "model has no module named 'nosuch2'"),
    ("global_pool.flatten", "layer 'global_pool.flatten' returns a (1, 512) tensor, not a spatial (N, C, H, W) map"),
])
def test_a_bad_named_layer_is_bad_input(layers, cause):
    fails([*TINY, "--layers", layers], cause, code=2)


def test_a_layer_named_twice_is_measured_once():
    result = runner.invoke(app, [*TINY, "--layers", "conv1,layer2,conv1", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [layer["name"] for layer in report["results"][0]["layers"]] == ["conv1", "layer2"]


@pytest.mark.parametrize(("args", "cause"), [
    (["--layers", ","], "--layers names no layer"),
    (["--finetune-steps", "2", "--repair", "--repair-layers", " ,, "], "--repair-layers names no layer"),
])
def test_a_layer_list_that_names_nothing_is_refused(args, cause):
    """Read as "not given", an empty list would silently mean every layer."""
    fails([*TINY, *args], cause)


def test_layer_lists_in_python():
    assert AuditConfig("resnet10t", layers=("layer2", "layer1", "layer2")).layers == ["layer2", "layer1"]
    with pytest.raises(ConfigError, match="--layers names no layer"):
        AuditConfig("resnet10t", layers=[])
    with pytest.raises(ConfigError, match="--repair-layers names no layer"):
        FinetuneConfig(repair=True, repair_layers=[])


# ---- model lists ---------------------------------------------------------------------------------------------------


def test_a_model_list_in_latin_1_is_refused(tmp_path):
    path = tmp_path / "models.txt"
    path.write_bytes("# modèles à auditer\nresnet18\n".encode("latin-1"))
    line = fails(["sweep", "--model-list", path, "--out", tmp_path / "sweep"], "is not UTF-8 text")
    assert str(path) in line and "save it as UTF-8" in line
    assert not (tmp_path / "sweep").exists()


def test_a_model_list_with_a_byte_order_mark_reads_its_first_name(tmp_path):
    path = tmp_path / "models.txt"
    path.write_text("efficientnet_b0\n# a comment\nmobilenetv3_small_100\n", encoding="utf-8-sig")
    assert read_model_list(path) == ["efficientnet_b0", "mobilenetv3_small_100"]


def test_a_model_list_error_is_a_ppp_audit_error(tmp_path):
    path = tmp_path / "models.txt"
    path.write_bytes(b"resnet18\n\xff\xfe\n")
    with pytest.raises(PPPAuditError, match="save it as UTF-8"):
        read_model_list(path)


# ---- pytest --ppp-report-dir ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "cause"), [
    ("afile", "--ppp-report-dir * is a file, not a folder*"),
    ("afile/reports", "--ppp-report-dir * cannot be created: *"),
])
def test_a_report_dir_that_cannot_be_a_folder_is_a_usage_error(pytester, monkeypatch, target, cause):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)  # the plugin loads as users get it
    (pytester.path / "afile").write_text("not a folder")
    pytester.makepyfile(test_nothing="def test_nothing(ppp):\n    pass\n")
    result = pytester.runpytest(f"--ppp-report-dir={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {cause}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
