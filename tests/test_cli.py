"""The command line: exit codes, one-line reasons, JSON on stdout."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ppp_audit.cli import app
from ppp_audit.report import Report

runner = CliRunner()
FAST = ["--no-pretrained", "--input-size", "64", "-n", "4", "-b", "4", "--device", "cpu"]


def test_audit_is_the_default_command_and_json_dash_prints_only_json(tmp_path):
    result = runner.invoke(app, ["resnet10t", "--padding", "reflect", "-p", "circular", *FAST, "--json", "-",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = Report.from_json(result.stdout)  # stdout is the JSON and nothing else
    assert [r.scheme for r in report.results] == ["native", "reflect", "circular"]
    assert report.data["num_images"] == 4 and report.input_size == 64
    assert Report.load(tmp_path) == report


def test_table_output():
    result = runner.invoke(app, ["resnet10t", "-p", "replicate", *FAST])
    assert result.exit_code == 0, result.output
    assert "native (zeros)" in result.stdout and "replicate" in result.stdout and "layer4" in result.stdout


def test_paddings_lists_builtins_with_distribution():
    result = runner.invoke(app, ["paddings"])
    assert result.exit_code == 0
    for name in ("zeros", "reflect", "replicate", "circular"):
        assert name in result.stdout
    assert "ppp-audit" in result.stdout


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["resnet5O", *FAST], "unknown model 'resnet5O'"),
        (["resnet10t", "-p", "bogus", *FAST], "unknown padding scheme 'bogus' —"),
        (["resnet10t", "-p", "reflct", *FAST], "unknown padding scheme 'reflct' (did you mean 'reflect'?)"),
        (["resnet10t", "--images", "{empty}", *FAST], "holds no images"),
        (["resnet10t", "-n", "4"], "cannot load pretrained weights for 'resnet10t': HF_HUB_OFFLINE is set"),
        (["resnet10t", "--weights", "{empty}/missing.safetensors"], "does not exist"),
        (["resnet10t", "--margin", "48", *FAST], "not a multiple of the model's largest stride 32"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, args, reason):
    args = [a.replace("{empty}", str(tmp_path)) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppp-audit: error:") and reason in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_json_file_written(tmp_path):
    target = tmp_path / "out.json"
    result = runner.invoke(app, ["resnet10t", *FAST, "--json", str(target)])
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["model"]["name"] == "resnet10t"
