"""The report schema (``ppp_audit.report``): torch-free, one loader, one number format, one scheme label."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_without_torch

import ppp_audit
from ppp_audit.errors import ReportFileError
from ppp_audit.report import (
    NATIVE,
    REPORT_JSON,
    BorderProfile,
    LayerResult,
    LayerStats,
    Report,
    SchemeResult,
    format_number,
    report_file,
    scheme_label,
)


def _stats(strength: float | None) -> LayerStats:
    return LayerStats(n=8, stride_px=8.0, channels=4, height=2, width=2, strength=strength,
                      strength_ci=None if strength is None else (0.0, 2 * strength), relative_energy=None,
                      mean_feature_strength=0.0, mean_feature_ci=(0.0, 0.0),
                      profile=BorderProfile(distance_px=[4.0], rms=[1.0], noise_floor=[0.1], extent_px=8.0))


def _result(scheme: str, strengths: list[float | None], native_padding: str | None = "zeros") -> SchemeResult:
    patch = {"scheme": scheme} | ({"native_padding": native_padding} if native_padding else {})
    layers = [LayerResult(name=f"stage{k}", receptive_radius_px=10.0, reference_partial=False, stats=_stats(s))
              for k, s in enumerate(strengths)]
    return SchemeResult(scheme=scheme, patch=patch, layers=layers)


SOURCE = str(Path(ppp_audit.__file__).parents[1])
"""Where this ppp_audit copy lives: the subprocesses below must import the same one."""


def _report(*results: SchemeResult) -> Report:
    return Report(environment={"ppp_audit": "test"}, model={"name": "m", "weights": "random-init"},
                  data={"kind": "dead-leaves", "num_images": 8}, input_size=32, margin=16, seed=0, device="cpu",
                  precision="fp32", results=list(results))


def test_reading_reports_imports_no_torch():
    """A fresh process reads a report, its headline scores and its Hub index entry, and builds the options table,
    without loading torch or timm."""
    code = (
        "import sys\n"
        "import ppp_audit.report, ppp_audit.hub, ppp_audit.render, ppp_audit.config, ppp_audit.pytest_plugin\n"
        "heavy = [m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules]\n"
        "assert heavy == [], heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": SOURCE}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr


def test_push_command_imports_no_torch(tmp_path):
    """`ppp-audit push` (offline here, so it stops before the network) loads the report without torch or timm."""
    _report(_result(NATIVE, [0.5, 0.25]), _result("reflect", [0.1, 0.05])).save(tmp_path / REPORT_JSON)
    proc = run_without_torch(["push", tmp_path, "me/ppp-audits"], env={"HF_HUB_OFFLINE": "1"})
    assert "exit 1" in proc.stdout and "HF_HUB_OFFLINE is set: nothing was pushed" in proc.stderr


def test_format_number():
    assert format_number(None) == format_number(math.nan) == "–"
    assert format_number(0.123456) == "0.123" and format_number(0.123456, 2) == "0.12"
    assert format_number(1234.5) == "1234" and format_number(-2000.0) == "-2000"
    assert format_number(1234.5, fixed_from=None) == "1.23e+03"  # the Hub card and pytest tables keep digits
    assert format_number(0.5, 4, fixed_from=None) == "0.5" and format_number(7) == "7"


def test_scheme_label_and_padding():
    native, reflect = _result(NATIVE, [0.5]), _result("reflect", [0.1])
    assert (native.label, native.padding) == ("native (zeros)", "zeros")
    assert (reflect.label, reflect.padding) == ("reflect", "reflect")
    unknown = _result(NATIVE, [0.5], native_padding=None)
    assert (unknown.label, unknown.padding) == ("native", None)
    assert scheme_label("reflect", "zeros") == "reflect" and scheme_label(NATIVE, "zeros") == "native (zeros)"


def test_headline_scores_skip_unmeasured_and_non_finite_layers():
    result = _result("reflect", [0.2, None, 0.7, math.nan, 0.7, 0.3])
    assert result.last_strength == 0.3
    assert result.max_layer.name == "stage2" and result.max_strength == 0.7  # the first of equal maxima
    assert _result("reflect", [None, math.nan]).max_layer is None
    assert _result("reflect", [None, math.nan]).max_strength is None


def test_round_trip_and_report_file(tmp_path):
    report = _report(_result(NATIVE, [0.5, 0.25]), _result("reflect", [0.1, None]))
    saved = report.save(tmp_path / "out" / REPORT_JSON)
    assert report_file(tmp_path / "out") == saved and report_file(saved) == saved
    assert Report.load(tmp_path / "out") == report == Report.load(saved)
    assert Report.from_json(report.to_json()) == report


@pytest.mark.parametrize("content, said", [
    (None, "no report at '{file}'"),
    ("not json", "'{file}' is not valid JSON (Expecting value, line 1)"),
    ("[1, 2]", "'{file}' is not a ppp-audit report (a JSON list, not an object)"),
    ('{"schema_version": "1.0"}', "'{file}' is not a ppp-audit report (bad or missing field: 'results')"),
    (b"\xff\xfe", "cannot read report '{file}': 'utf-8' codec can't decode"),
    ("v2", "'{file}': report schema 2.0 is not readable by this ppp-audit (schema 1.13); upgrade ppp-audit"),
    ("empty", "'{file}': a report needs at least one scheme result"),
])
def test_load_says_what_is_wrong(tmp_path, content, said):
    file = tmp_path / REPORT_JSON
    good = _report(_result(NATIVE, [0.5])).to_dict()
    if content == "v2":
        content = json.dumps({**good, "schema_version": "2.0"})
    elif content == "empty":
        content = json.dumps({**good, "results": []})
    if isinstance(content, bytes):
        file.write_bytes(content)
    elif content is not None:
        file.write_text(content)
    with pytest.raises(ReportFileError) as caught:
        Report.load(tmp_path)  # the folder: its report.json is what the message names
    assert caught.value.message.startswith(said.format(file=file)), caught.value.message
    assert caught.value.hint
