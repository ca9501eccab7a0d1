"""Same command, same numbers (SPEC §3.2, §3.5; issue #27).

The built-in images are the same pictures wherever they are made; settings that change no number (batch size,
workers, device, ...) are no part of a result's identity, so a sweep resumes across them and the leaderboard lists a
model once per result; a model with no padding is refused alike with or without ``-p``; no extent passes the farthest
position of its map from the border.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cli_helpers import fails, runner
from ppp_audit.cli import app
from ppp_audit.engine import AuditConfig, audit
from ppp_audit.errors import NothingToPatchError
from ppp_audit.leaderboard import leaderboard_html, read_leaderboard
from ppp_audit.models import ModelInfo
from ppp_audit.report import REPORT_JSON
from ppp_audit.runs import RUN_JSON, RUNS, RunRecord, iter_records, model_slug, read_record, run_folder
from ppp_audit.sweep import run_sweep, sweep_settings

from test_audit import MEAN, STD, BorderBias, _info
from test_sweep import FakeRunner

TINY = ["test_resnet", "test_efficientnet", "test_byobnet"]
SWEEP = ["--no-pretrained", "-p", "reflect", "-n", "2", "--input-size", "64", "--device", "cpu", "--no-pages",
         "--no-progress"]


def _numbers(value: Any, where: str = "") -> dict[str, float]:
    """Every number in a report's JSON, by its path (``results.0.layers.3.strength``)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _numbers(item, f"{where}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _numbers(item, f"{where}.{i}").items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {where: float(value)}
    return {}


# ---- one renderer: the same pictures on the host and on the device ---------------------------------------------------


def test_host_and_device_images_give_the_same_numbers_on_cpu():
    common = dict(model="resnet18", pretrained=False, paddings=["reflect"], input_size=64, num_images=4, batch_size=2,
                  device="cpu")
    host, device = (audit(AuditConfig(**common, images_on=where)) for where in ("host", "device"))
    assert host.data["renderer"] == device.data["renderer"] == "torch"
    assert device.data["images_on"] == "cpu" and "images_on" not in host.data
    assert {key: value for key, value in device.data.items() if key != "images_on"} == host.data
    measured = [_numbers(json.loads(report.to_json())["results"], "results") for report in (host, device)]
    assert measured[0].keys() == measured[1].keys() and len(measured[0]) > 100
    for key, value in measured[0].items():
        assert measured[1][key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


# ---- a sweep's result settings ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A real sweep of 3 tiny models at -b 4, then the same command at -b 2 --workers 1."""
    out = tmp_path_factory.mktemp("resumed")
    first = runner.invoke(app, ["sweep", *TINY, *SWEEP, "-b", "4", "--out", str(out)])
    again = runner.invoke(app, ["sweep", *TINY, *SWEEP, "-b", "2", "--workers", "1", "--out", str(out)])
    return out, first, again


def test_a_sweep_resumes_across_settings_that_change_no_number(resumed):
    out, first, again = resumed
    assert first.exit_code == 0 and "3 done, 0 failed, 0 already there" in first.stderr, first.output
    assert again.exit_code == 0 and "0 done, 0 failed, 3 already there" in again.stderr, again.output
    records = list(iter_records(out))
    assert sorted(record.model for record in records) == sorted(TINY)
    for record in records:  # how it ran is recorded, and is no part of the hash
        assert record.run_settings == {"batch_size": 4, "workers": 0, "device": "cpu", "compile": None,
                                       "images_on": "auto", "strict_images": False}
        assert not set(record.run_settings) & set(record.settings) and record.settings["renderer"] == "torch"
        assert record.folder == run_folder(out, record.model, {**record.settings, "batch_size": 2, "workers": 1})
    board = read_leaderboard(out)
    assert sorted((row["model"], row["scheme"]) for row in board.rows) == \
        sorted((model, scheme) for model in TINY for scheme in ("native", "reflect"))
    assert board.superseded == []


def _old_hash(settings: dict) -> str:
    """The settings hash of sweeps before #27: every setting, the renderer not named."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _as_recorded_before(folder: Path, root: Path, *, batch_size: int) -> Path:
    """A copy of the run folder ``folder`` under the sweep folder ``root`` as sweeps before #27 wrote it: every setting
    in ``settings`` (another batch size), the folder named by their hash, an earlier time."""
    data = json.loads((folder / RUN_JSON).read_text())
    settings = {key: value for key, value in data["settings"].items() if key != "renderer"}
    settings.update({**data.pop("run_settings"), "batch_size": batch_size})
    old = root / RUNS / model_slug(data["model"]) / _old_hash(settings)
    shutil.copytree(folder, old)
    (old / RUN_JSON).write_text(json.dumps({**data, "settings": settings, "finished": "2026-01-01T00:00:00+00:00"}))
    return old


def test_a_run_recorded_under_the_older_hash_counts_and_a_newer_one_supersedes_it(resumed, tmp_path):
    out, _, _ = resumed
    settings = sweep_settings(AuditConfig(model="sweep", pretrained=False, paddings=["reflect"], num_images=2,
                                          batch_size=2, input_size=64, device="cpu"))
    moved = tmp_path / "sweep"
    shutil.copytree(out, moved)
    old = {model: _as_recorded_before(run_folder(out, model, settings), moved, batch_size=8) for model in TINY}
    assert all(isinstance(read_record(folder), RunRecord) for folder in old.values())
    board = read_leaderboard(moved)  # one row per model, result settings and scheme: the newer run's
    assert sorted((row["model"], row["scheme"]) for row in board.rows) == \
        sorted((model, scheme) for model in TINY for scheme in ("native", "reflect"))
    assert {row["report_json"].split("/")[2] for row in board.rows} == \
        {run_folder(out, model, settings).name for model in TINY}
    assert sorted(run.path for run in board.superseded) == sorted(old[m].relative_to(moved).as_posix() for m in TINY)
    assert board.describe().endswith("; 3 superseded") and "<h2>Superseded runs" in leaderboard_html(board)
    for model in TINY:  # only the old records left: they count, but for one whose images the NumPy renderer made
        shutil.rmtree(run_folder(moved, model, settings))
    report = json.loads((old[TINY[2]] / REPORT_JSON).read_text())
    del report["data"]["renderer"]  # how a report of the NumPy renderer reads (it wrote no data.renderer)
    (old[TINY[2]] / REPORT_JSON).write_text(json.dumps(report))
    fake = FakeRunner()
    summary = run_sweep(TINY, settings, moved, audit_runner=fake)
    assert summary.skipped == TINY[:2] and [model for model, _ in fake.calls] == [TINY[2]]


def test_the_sweep_has_no_skip_existing_option(tmp_path):
    fails(["sweep", "test_resnet", "--skip-existing", "--out", tmp_path], "--skip-existing")


# ---- no padding, no PPP ----------------------------------------------------------------------------------------------


def test_a_model_without_padding_is_refused_alike_with_or_without_a_scheme():
    common = ["test_vit", "--no-pretrained", "-n", "2", "--device", "cpu", "--no-progress"]
    plain = fails(common, "model 'test_vit' has no padding")
    assert fails([*common, "-p", "reflect"], "has no padding") == plain
    assert "its position information comes from its position embeddings ('pos_embed')" in plain
    with pytest.raises(NothingToPatchError, match="has no padding"):
        audit(AuditConfig("test_vit", pretrained=False, num_images=2, device="cpu"))


class _PadsInForward(nn.Module):
    """Pads with ``F.pad`` inside its forward and convolves without padding: no layer a static look finds pads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1)))


def test_a_model_built_elsewhere_is_refused_only_without_any_padding():
    config = AuditConfig("m", num_images=4, batch_size=4, input_size=32, margin=32, layers=["conv"], device="cpu")
    with pytest.raises(NothingToPatchError, match="has no padding"):
        audit(config, model=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), info=_info("m", 32))
    report = audit(config, model=_PadsInForward().eval(), info=_info("m", 32))  # found by the traced pass
    assert report.scheme("native").layer("conv").stats.strength > 0


def test_a_vit_hybrid_that_pads_is_still_measured():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, img_size=64, depth=2).eval()
    info = ModelInfo("vit_tiny_r_s16_p8_224", "vit_tiny_r_s16_p8_224", "random-init", 64, MEAN, STD, 1.0)
    report = audit(AuditConfig("vit_tiny_r_s16_p8_224", num_images=2, batch_size=2, input_size=64, device="cpu"),
                   model=model, info=info)
    assert report.scheme("native").patch["num_patched"] > 0 and report.scheme("native").layers


# ---- extent: never beyond the farthest position ----------------------------------------------------------------------


def _bounds(stats) -> dict[str, float]:
    """The farthest a position's centre lies from the border (input px), overall and from each side."""
    rows, cols = ((stats.height - 1) // 2 + 0.5) * stats.stride_px, ((stats.width - 1) // 2 + 0.5) * stats.stride_px
    return {"all": min(rows, cols), "top": rows, "bottom": rows, "left": cols, "right": cols}


@pytest.mark.parametrize("name", ["resnet10t", "test_efficientnet"])
def test_no_extent_lies_beyond_the_farthest_position(name):
    report = audit(AuditConfig(name, pretrained=False, paddings=["reflect"], input_size=64, num_images=4,
                               batch_size=4, device="cpu"))
    reached = 0
    for result in report.results:
        for layer in result.layers:
            bound = _bounds(layer.stats)
            profiles = {"all": layer.stats.profile, **layer.stats.side_profiles}
            for side, profile in profiles.items():
                assert profile.extent_px <= bound[side] and profile.distance_px[-1] == bound[side], (layer.name, side)
                reached += profile.extent_px == bound[side]
    assert reached  # at 64 px some deep maps are patterned throughout: the bound is met, not only respected


def test_a_pattern_over_the_whole_map_reaches_exactly_the_bound():
    torch.manual_seed(0)
    # BorderBias of 16 rings covers a 32 px crop's whole map, and none of the window's block over it; the padded
    # conv after the tap is the model's padding site (a model with none is refused).
    model = nn.Sequential(nn.Conv2d(3, 6, 1), BorderBias(0.4, rings=16, noise=0.2), nn.Conv2d(6, 6, 3, padding=1))
    config = AuditConfig("planted", num_images=16, batch_size=8, input_size=32, margin=32, layers=["1"], device="cpu")
    stats = audit(config, model=model.eval(), info=_info("planted", 32)).scheme("native").layer("1").stats
    assert stats.extent_px == 15.5 == stats.profile.distance_px[-1]
    assert {side: profile.extent_px for side, profile in stats.side_profiles.items()} == \
        dict.fromkeys(("top", "bottom", "left", "right"), 15.5)
