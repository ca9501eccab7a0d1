"""The margin chosen from the receptive fields (docs/metrics.md, "How the margin is chosen")."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from ppp_audit.auditor import Auditor
from ppp_audit.engine import AuditConfig, audit
from ppp_audit.models import FeatureTaps, ModelInfo
from ppp_audit.render.tables import partial_note
from ppp_audit.receptive import Influence, choose_margin, influence_profiles

LAYERS = 5
STEM = 4


class BoxStack(nn.Module):
    """A 4 px patchify stem (no padding) and ``LAYERS`` zero-padded 3x3 box filters at stride 4.

    Its receptive field is known exactly: the centre position reaches ``STEM / 2 + STEM * LAYERS`` px, and the zero
    padding of the box filters plants a border signal (the borders darken) of that same reach.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, STEM, stride=STEM, padding=0, bias=False)
        nn.init.constant_(self.stem.weight, 1.0 / (3 * STEM * STEM))
        self.blocks = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False) for _ in range(LAYERS)])
        for conv in self.blocks:
            nn.init.constant_(conv.weight, 1.0 / 9)
        self.feature_info = [{"module": "blocks", "reduction": STEM, "num_chs": 4}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


RADIUS = STEM / 2 + STEM * LAYERS
INFO = ModelInfo(name="box", architecture="box", weights="random-init", input_size=32, mean=(0.0,) * 3,
                 std=(1.0,) * 3, crop_pct=1.0)


@dataclass(frozen=True)
class CentredSource:
    """Windows cut from the centre of one fixed 128 px noise picture per index: the crop sees the same pixels at
    every margin, so strengths at two margins differ only by their references."""

    seed: int = 0

    def window(self, index: int, size: int) -> torch.Tensor:
        picture = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(self.seed * 1000 + index))
        start = (128 - size) // 2
        return picture[:, start:start + size, start:start + size]

    def available(self) -> int | None:
        return None

    def describe(self) -> dict:
        return {"kind": "centred-noise", "seed": self.seed}

    def fits(self, index: int, size: int) -> bool:
        return size <= 128


def _influence(window: int = 96) -> Influence:
    model = BoxStack().eval()
    (reach,) = influence_profiles(FeatureTaps(model, ["blocks"]), window, "cpu")
    return reach


def test_probe_finds_the_exact_receptive_field():
    reach = _influence()
    assert reach.radius_px == RADIUS
    assert reach.beyond(RADIUS) == 0.0 and reach.beyond(RADIUS - 1) > 0.0
    shares = [reach.beyond(r) for r in range(int(RADIUS) + 1)]
    assert shares == sorted(shares, reverse=True) and shares[0] == pytest.approx(1.0)


def test_choose_margin_covers_fitting_layers_and_leaves_the_others_partial():
    near = Influence(10.0, tuple(1.0 - r / 10 for r in range(11)), 96)
    far = Influence(48.0, tuple(1.0 - r / 100 for r in range(49)), 96)
    choice = choose_margin([near, far], [4, 8, 12, 16], tolerance=0.05)
    assert choice.margin == 12  # near: 1 - 12/10 < 0 <= 0.05 at 12, 0.2 > 0.05 at 8
    assert choice.fits == (True, False) and choice.cap == 16
    assert choice.share_beyond[0] == 0.0 and choice.share_beyond[1] == pytest.approx(0.88)
    assert choose_margin([far], [4, 8], tolerance=0.05).margin == 4  # nothing fits: the smallest


def test_chosen_margin_covers_a_planted_reach_and_the_strength_does_not_move_beyond_it():
    tolerance = 0.01
    config = AuditConfig(model="box", num_images=8, batch_size=8, input_size=32, layers=["blocks"], device="cpu",
                         margin_tolerance=tolerance)
    auditor = Auditor(config, model=BoxStack().eval(), info=INFO)
    (reach,) = auditor.state.influence
    chosen = auditor.margin
    assert reach.radius_px == RADIUS
    assert reach.beyond(chosen) <= tolerance < reach.beyond(chosen - STEM)  # the smallest margin that covers it
    assert chosen <= RADIUS + STEM and auditor.margins.choice is not None
    assert auditor.second_margin is None  # no partial layer, so no second margin is measured

    def strength(margin: int | None) -> float:
        settings = {**{k: getattr(config, k) for k in ("model", "num_images", "batch_size", "input_size", "layers",
                                                        "device", "margin_tolerance")}, "margin": margin}
        report = audit(AuditConfig(**settings), model=BoxStack().eval(), info=INFO, source=CentredSource())
        (layer,) = report.scheme("native").layers
        return layer.stats.strength

    at_chosen, larger, too_small = strength(None), strength(chosen + 3 * STEM), strength(STEM)
    assert at_chosen == pytest.approx(larger, rel=0.02)
    assert abs(too_small / larger - 1) > 0.05  # a margin short of the reach does move it: the check can fail


def test_partial_layer_gets_a_second_margin_and_the_report_says_how_far_it_moved():
    # --input-size 16 caps m at 16 < RADIUS: the last layer cannot fit and stays partial; the second block's reach
    # (2 + 2 x 4 = 10 px) fits and sets the margin
    config = AuditConfig(model="box", num_images=8, batch_size=8, input_size=16, layers=["blocks.1", "blocks"],
                         device="cpu")
    report = audit(config, model=BoxStack().eval(), info=INFO, source=CentredSource())
    early, last = report.scheme("native").layers
    assert not early.reference_partial and early.influence_beyond_margin <= 0.01
    assert early.strength_at_smaller_margin is None  # only partial layers are measured twice
    assert last.reference_partial and last.influence_beyond_margin > 0.01
    assert report.margin == 12 and report.geometry["margin"]["chosen_by"] == "receptive fields"
    second, strength = last.strength_at_smaller_margin
    assert second == 4 and strength is not None and last.margin_change is not None
    assert f"from m=4 to m=12: blocks {100 * last.margin_change:+.0f} % (native" in partial_note(report)


def test_page_and_table_show_the_reference_of_each_layer(tmp_path):
    from rich.console import Console

    from ppp_audit.render.html import Page, render_html
    from ppp_audit.render.tables import render_reference_table

    config = AuditConfig(model="box", num_images=4, batch_size=4, input_size=16, layers=["blocks.1", "blocks"],
                         device="cpu")
    report = audit(config, model=BoxStack().eval(), info=INFO, source=CentredSource())
    console = Console(width=200, record=True)
    console.print(render_reference_table(report))
    text = console.export_text()
    assert "margin m=12" in text and "blocks *" in text and "second reference at m=4" in text
    page = render_html(report, Page(figures=[], out_dir=tmp_path))
    assert "Padding-free reference: margin and global context" in page and "influence" in page
