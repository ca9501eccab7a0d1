"""The benchmark scripts run, and the report comparison the GPU check relies on catches a disagreement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ppp_audit.engine import AuditConfig, audit

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)


def test_bench_audit_measures_overhead_on_cpu():
    done = _run("bench_audit.py", "--model", "resnet10t", "--batch-size", "2", "--num-images", "4",
                "--input-size", "64", "--repeats", "1", "--rounds", "2", "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["input_size"] == 64 and result["precision"] == "fp32" and result["paddings"] == ["native"]
    assert result["overhead_factor_loop"] > 0 and result["overhead_factor_total"] >= result["overhead_factor_loop"]
    low, high = result["overhead_factor_loop_range"]
    assert result["rounds"] == 2 and low <= result["overhead_factor_loop"] <= high
    assert result["bare_forward_images_per_s"] > 0 and result["peak_cuda_mib"] is None


@pytest.fixture(scope="module")
def saved_report(tmp_path_factory):
    config = AuditConfig(model="resnet10t", pretrained=False, paddings=["reflect"], num_images=4, batch_size=4,
                         input_size=64, device="cpu")
    return audit(config).save(tmp_path_factory.mktemp("compare") / "cpu.json")


def test_compare_reports_passes_equal_reports_and_fails_a_disagreement(saved_report, tmp_path):
    data = json.loads(saved_report.read_text())
    same = tmp_path / "same.json"
    same.write_text(json.dumps(data))
    last = data["results"][1]["layers"][-1]
    last["strength"] *= 1.01  # 1 % off in one layer
    off = tmp_path / "off.json"
    off.write_text(json.dumps(data))

    agree = _run("compare_reports.py", str(saved_report), f"{same}:1e-6")
    assert agree.returncode == 0, agree.stdout + agree.stderr
    assert "max relative difference 0.00e+00" in agree.stdout

    assert _run("compare_reports.py", str(saved_report), f"{off}:0.02").returncode == 0
    disagree = _run("compare_reports.py", str(saved_report), f"{off}:1e-3")
    assert disagree.returncode == 1
    assert "max relative difference 1.00e-02 (tolerance 0.001): FAIL" in disagree.stdout


def test_gpu_check_script_runs_every_step_on_cpu(tmp_path):
    """The GPU check has had no GPU to run on yet: its smoke mode runs each of its commands on the CPU at toy sizes."""
    import os

    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_SMOKE": "1", "OUT": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], cwd=BENCHMARKS.parent, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("GPU check passed")
    assert done.stdout.count("max relative difference") == 3 and "peak memory N=4" in done.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"cpu.json", "device.json", "device_bf16.json", "device_host.json",
                                                   "pipeline.txt", "pipeline.jsonl", "large.json"}
    pipeline = (tmp_path / "pipeline.txt").read_text()
    for row in ("a_bare_forwards", "b_preloaded", "c_built_in_on_device", "d_jpeg_folder_on_device"):
        assert pipeline.count(row) == 2, row  # bf16 and fp32
    assert "% of the limit" in pipeline and "large audit: N=16 in" in done.stdout
    assert "acceptance: resnet10t bf16 audit with the built-in images at" in done.stdout
    assert len((tmp_path / "pipeline.jsonl").read_text().splitlines()) == 2


def test_image_timing_runs():
    done = _run("image_timing.py", "--count", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("dead leaves") == 2 and "torchvision.io" in done.stdout
