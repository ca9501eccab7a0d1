"""The canvas reference (ppp_audit/canvas.py; docs/metrics.md, "The canvas reference"): known answers first."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ppp_audit.auditor import Auditor, BatchStep
from ppp_audit.canvas import CanvasPlan, plan_canvas
from ppp_audit.config import AuditConfig
from ppp_audit.device_images import render_dead_leaves
from ppp_audit.engine import audit
from ppp_audit.errors import ConfigError
from ppp_audit.models import ModelInfo
from ppp_audit.receptive import Influence
from ppp_audit.render.tables import margin_note

from test_margin import INFO, RADIUS, STEM, BoxStack

S = 32


def _seam_and_inside(pictures: torch.Tensor) -> tuple[float, float]:
    """Mean absolute step across the wrap-around seam (last column to first) and between two inner columns."""
    seam = (pictures[..., -1] - pictures[..., 0]).abs().mean()
    inside = (pictures[..., 40] - pictures[..., 41]).abs().mean()
    return float(seam), float(inside)


def test_periodic_canvases_wrap_around_and_windows_do_not():
    canvases = render_dead_leaves(0, range(6), 96, scale=S, periodic=True)
    seam, inside = _seam_and_inside(canvases)
    assert seam == pytest.approx(inside, rel=0.25)  # the picture goes on across the edge
    windows = render_dead_leaves(0, range(6), 96, scale=S)
    seam, inside = _seam_and_inside(windows)
    assert seam > 1.5 * inside  # a window's opposite edges are unrelated pixels: the check can fail
    # the same laws at the same pixel scale: level and contrast as in windows
    assert float(canvases.mean()) == pytest.approx(float(windows.mean()), abs=0.05)
    assert float(canvases.std()) == pytest.approx(float(windows.std()), rel=0.15)


def _profile(reach: float) -> Influence:
    """A linear fall-off of the influence to 0 at ``reach`` px."""
    return Influence(reach, tuple(max(0.0, 1 - r / reach) for r in range(int(reach) + 1)), 4 * int(reach))


def test_plan_takes_the_smallest_canvas_holding_every_reach_and_at_least_a_canvas_per_group():
    plan = plan_canvas(32, 8, [_profile(20), _profile(70)], tolerance=0.01, num_images=64, groups=8)
    assert plan.per_side == 5 and plan.side == 160  # 70 px of reach: L / 2 >= 70 at 160 (k = 4 gives 64)
    assert plan.num_canvases == 8 and plan.crops == (8,) * 8 and plan.num_crops == 64
    assert plan.pixels_per_image == pytest.approx(1 + 8 * 160**2 / (64 * 32**2))
    assert not any(plan.partial) and plan.context == 80
    few = plan_canvas(32, 8, [_profile(20)], tolerance=0.01, num_images=20, groups=8)
    assert few.side == 64 and few.crops == (3, 3, 3, 3, 2, 2, 2, 2)  # 4 slots, yet 8 canvases: 8 groups
    assert plan_canvas(32, 8, [_profile(20)], tolerance=0.01, num_images=3, groups=8).crops == (1, 1, 1)
    assert plan_canvas(32, 8, [_profile(90)], tolerance=0.01, num_images=64, groups=8) is None  # past 5 S / 2
    truncated = Influence(80.0, tuple(max(0.0, 1 - r / 40) for r in range(81)), 160)  # the probe's edge: unknown
    assert plan_canvas(32, 8, [_profile(20), truncated], tolerance=0.01, num_images=64, groups=8) is None
    assert plan_canvas(32, 8, [_profile(20)], tolerance=0.01, num_images=64, groups=8,
                       runs_at=lambda side: side != 64).side == 96  # the model must run at the side
    assert CanvasPlan(32, 32, 2, (2,), 0.01, 160, (0.0,)).origins(3) == [(0, 0), (0, 32), (32, 0)]


def _box_auditor(**settings) -> Auditor:
    config = AuditConfig(**{"model": "box", "num_images": 6, "batch_size": 8, "input_size": S, "layers": ["blocks"],
                            "device": "cpu", **settings})
    return Auditor(config, model=BoxStack().eval(), info=INFO)


def test_canvas_reference_equals_the_window_reference_on_a_stack_of_known_reach():
    auditor = _box_auditor(reference="canvas")
    plan = auditor.canvas
    assert plan is not None and plan.context >= RADIUS and plan.num_canvases == 6
    step = BatchStep(auditor, auditor.state, [False], canvas=plan)
    canvases = render_dead_leaves(3, range(2), plan.side, scale=S, periodic=True)
    counts = [plan.per_side**2, 2]
    crops, (references, _) = step.canvas_pass(canvases, counts)
    # The same crops in windows of the infinite periodic picture, their border past the reach: a window reference
    # its zero padding cannot touch.
    margin = STEM * (int(RADIUS) // STEM + 2)
    tiled = canvases.repeat(1, 1, 3, 3)
    windows = torch.stack([tiled[i, :, plan.side + y - margin:plan.side + y + S + margin,
                                 plan.side + x - margin:plan.side + x + S + margin]
                           for i, count in enumerate(counts) for y, x in plan.origins(count)])
    assert torch.equal(crops, windows[..., margin:margin + S, margin:margin + S])
    with torch.no_grad():
        (window_maps,) = auditor.taps(windows)
    offset, side = margin // STEM, S // STEM
    expected = window_maps[..., offset:offset + side, offset:offset + side]
    assert references[0].shape == expected.shape
    torch.testing.assert_close(references[0], expected, rtol=0, atol=1e-6)
    # ... and the padded crops differ from it at the border: there is a pattern to measure
    with torch.no_grad():
        (crop_maps,) = auditor.taps(crops)
    assert float((crop_maps - expected).abs()[..., 0, :].mean()) > 1e-3


def test_crops_of_one_canvas_share_a_jackknife_group(monkeypatch):
    auditor = _box_auditor(num_images=20)
    plan = auditor.canvas
    assert plan is not None and plan.num_canvases == 8
    seen: list[torch.Tensor] = []
    from ppp_audit import auditor as module

    original = module._Sums.add

    def record(self, scheme, features, indices):
        seen.append(torch.as_tensor(indices).clone())
        return original(self, scheme, features, indices)

    monkeypatch.setattr(module._Sums, "add", record)
    measurement = auditor.measure()
    indices = torch.cat(seen).tolist()
    assert measurement.num_images == 20 and len(indices) == 20
    assert indices == [i for i, count in enumerate(plan.crops) for _ in range(count)]
    assert measurement.reference["kind"] == "canvas" and measurement.reference_shared


def test_report_says_which_reference_and_what_it_cost():
    config = AuditConfig(model="box", num_images=8, batch_size=8, input_size=S, layers=["blocks"], device="cpu",
                         paddings=["reflect"])
    report = audit(config, model=BoxStack().eval(), info=INFO)
    reference = report.geometry["reference"]
    assert reference["kind"] == "canvas" and report.window == reference["side"]
    assert reference["pixels_per_image"] == pytest.approx(1 + reference["canvases"] * reference["side"]**2
                                                          / (8 * S**2))
    assert report.data["periodic"] is True
    assert "periodic canvases" in margin_note(report)
    (layer,) = report.scheme("native").layers
    assert not layer.reference_partial and layer.influence_beyond_margin == 0.0
    windowed = audit(AuditConfig(**{**config.__dict__, "reference": "window"}), model=BoxStack().eval(), info=INFO)
    assert windowed.geometry["reference"] == {"kind": "window", "why": "--reference window",
                                              "pixels_per_image": windowed.geometry["margin"]["pixels_per_image"]}


class _Excited(nn.Module):
    """A padded conv, then squeeze-excitation: a global module upstream of the tapped layer."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import SqueezeExcite

        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.se = SqueezeExcite(8)
        self.out = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.se(self.conv(x)))


def test_canvas_is_refused_where_it_cannot_be_exact(tmp_path):
    info = ModelInfo(name="se", architecture="se", weights="random-init", input_size=32, mean=(0.0,) * 3,
                     std=(1.0,) * 3, crop_pct=1.0)
    settings = dict(model="se", num_images=4, input_size=S, layers=["out"], device="cpu")
    excited = Auditor(AuditConfig(**settings), model=_Excited().eval(), info=info)
    assert excited.canvas is None and "global modules (se" in excited.window_reason
    with pytest.raises(ConfigError, match="--reference canvas cannot be exact here: global modules"):
        Auditor(AuditConfig(**settings, reference="canvas"), model=_Excited().eval(), info=info)
    assert _box_auditor(margin=24).canvas is None  # a margin asked for is a window
    assert _box_auditor(margin=24).window_reason == "--margin sets the window around each crop"
    # images given to a measurement are measured in windows, whatever the auditor planned
    from test_margin import CentredSource

    measurement = _box_auditor().measure(CentredSource())
    assert measurement.reference["kind"] == "window"
    assert measurement.reference["why"] == "images given to this measurement"


def test_unknown_reference_is_one_clear_line():
    with pytest.raises(ConfigError, match="unknown --reference 'tiles'.*use one of auto, canvas, window"):
        AuditConfig(model="resnet18", reference="tiles")


def test_canvases_made_on_the_device_give_the_host_s_numbers():
    """The canvases through the device loader (``--images-on device``: tensor ops in batches; here on the CPU) are
    the host's pictures, and give the same readings."""
    host = _box_auditor(num_images=12, paddings=["reflect"], images_on="host").measure()
    device = _box_auditor(num_images=12, paddings=["reflect"], images_on="device").measure()
    assert host.reference == device.reference and host.reference["kind"] == "canvas"
    for one, other in zip(host.results, device.results):
        for a, b in zip(one.layers, other.layers):
            assert a.stats.strength == pytest.approx(b.stats.strength, rel=1e-5)
