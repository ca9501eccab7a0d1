"""Crops tiled inside photos (ppp_audit/canvas.py ``PhotoTiles``; docs/metrics.md, "Photos: crops tiled inside each
photo"): the planner's rule, then known answers on the box stack, whose receptive field is known exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ppp_audit.auditor import Auditor, BatchStep
from ppp_audit.canvas import PhotoTiles, photo_border, photo_grid, tile_photos
from ppp_audit.config import AuditConfig
from ppp_audit.device_images import render_dead_leaves
from ppp_audit.engine import audit
from ppp_audit.errors import ConfigError, ImageSourceError
from ppp_audit.images import FolderSource, TileDataset
from ppp_audit.models import ModelInfo
from ppp_audit.render.tables import margin_note

from test_canvas import _Excited
from test_margin import INFO, RADIUS, STEM, BoxStack

S = 32
SIZES = [(160, 200), (200, 160), (120, 230), (176, 176)]


def _photos(folder: Path, sizes: list[tuple[int, int]], count: int, seed: int = 0) -> Path:
    """``count`` PNG photos (lossless: the pixels are known) of dead leaves, of the ``sizes`` in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        height, width = sizes[k % len(sizes)]
        picture = render_dead_leaves(seed, [k], max(height, width), scale=S)[0][:, :height, :width]
        Image.fromarray((picture * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(folder / f"{k:02d}.png")
    return folder


def _config(folder: Path, **settings) -> AuditConfig:
    return AuditConfig(**{"model": "box", "images": str(folder), "num_images": 16, "batch_size": 8, "input_size": S,
                          "layers": ["blocks"], "device": "cpu", **settings})


# ---- the planner ----------------------------------------------------------------------------------------------------


def test_tiles_take_the_border_the_median_photo_holds_up_to_the_reach():
    tiles, used = tile_photos(iter([(200, 200)] * 10), size=32, unit=4, reach=24, count=12, most=4, scale=1.0)
    assert tiles.border == 24 and tiles.crops == (4, 4, 4) and tiles.grids == ((2, 2),) * 3 and used == [0, 1, 2]
    assert tiles.shape(0) == (32 + 32 + 48, 32 + 32 + 48)
    assert tiles.origins(0) == [(24, 24), (24, 56), (56, 24), (56, 56)]
    assert tiles.pixels_per_image() == pytest.approx(1 + 3 * 112**2 / (12 * 32**2))
    assert tiles.pixels_per_image(12) == pytest.approx(1 + 3 * (112**2 + 88**2) / (12 * 32**2))
    # The border is the median of the first N photos' (8, 8, 16, 16, 40: 16), up to the reach; the photos that do
    # not hold it are passed over.
    assert photo_border(48, 60, 32, 4) == 8 and photo_border(30, 60, 32, 4) < 0
    sizes = [(48, 60), (200, 200), (48, 52), (64, 70), (64, 64)] + [(200, 200)] * 5
    tiles, used = tile_photos(iter(sizes), size=32, unit=4, reach=24, count=5, most=2, scale=1.0)
    assert tiles.border == 16 and used == [1, 3, 4, 5] and tiles.crops == (2, 1, 1, 1)
    # ... one odd small photo does not cut it for all
    tiles, _ = tile_photos(iter([(36, 40)] + [(200, 200)] * 9), size=32, unit=4, reach=24, count=4, most=1, scale=1.0)
    assert tiles.border == 24
    # a border given by hand (--margin) is kept
    assert tile_photos(iter([(200, 200)] * 4), size=32, unit=4, reach=24, count=4, most=4, scale=1.0,
                       border=40)[0].border == 40
    # the photos run out: the crops they hold
    assert tile_photos(iter([(40, 40)] * 3), size=32, unit=4, reach=24, count=12, most=4, scale=1.0)[0].num_crops == 3


def test_a_photo_s_crops_take_the_grid_of_fewest_pixels():
    assert photo_grid((3, 3), 4, 32, 32, 8) == (2, 2)
    assert photo_grid((1, 5), 4, 32, 32, 8) == (1, 4)
    assert photo_grid((3, 3), 3, 32, 32, 8) == (1, 3)  # as few pixels as 3 x 1; fewer rows first
    assert PhotoTiles(32, 32, 8, 1.0, ((2, 2),), (3,)).origins(0) == [(8, 8), (8, 40), (40, 8)]


# ---- known answers --------------------------------------------------------------------------------------------------


def test_tile_reference_equals_the_window_reference_on_a_stack_of_known_reach(tmp_path):
    folder = _photos(tmp_path / "photos", SIZES, 8)
    auditor = Auditor(_config(folder, margin_tolerance=1e-6), model=BoxStack().eval(), info=INFO)  # the whole reach
    tiles = auditor.tiles
    assert tiles is not None and tiles.border >= RADIUS and max(tiles.crops) > 1
    assert auditor.margin == tiles.border and not any(auditor.margins.partial)
    dataset = TileDataset(auditor.tile_sample, range(tiles.num_photos), [tiles.shape(i) for i in range(8)])
    step = BatchStep(auditor, auditor.state, [False], tiles=tiles)
    margin = tiles.border
    for position in range(3):
        index, tile = dataset[position]
        photo = auditor.tile_sample.window(index, tuple(reversed(Image.open(auditor.tile_sample.base.files[
            auditor.tile_sample.indices[index]]).size)))  # the whole photo, (height, width)
        top, left = (round((photo.shape[-2] - tile.shape[-2]) / 2), round((photo.shape[-1] - tile.shape[-1]) / 2))
        assert torch.equal(tile, photo[:, top:top + tile.shape[-2], left:left + tile.shape[-1]])
        features = step(tile[None], "native", None, [tiles.origins(position)])
        # each crop's own window of the photo, of the same margin: the window reference
        windows = torch.stack([photo[:, top + y - margin:top + y + S + margin, left + x - margin:left + x + S + margin]
                               for y, x in tiles.origins(position)])
        with torch.no_grad():
            (window_maps,) = auditor.taps(windows)
            (crop_maps,) = auditor.taps(windows[..., margin:margin + S, margin:margin + S])
        offset, side = margin // STEM, S // STEM
        expected = window_maps[..., offset:offset + side, offset:offset + side]
        torch.testing.assert_close(features.reference[0], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(features.crop[0], crop_maps, rtol=0, atol=1e-6)  # the crops are the windows'
        assert float((crop_maps - expected).abs()[..., 0, :].mean()) > 1e-3  # and the border did something


def test_photos_that_hold_less_than_the_reach_set_the_border_and_the_rest_is_partial(tmp_path):
    folder = _photos(tmp_path / "small", [(48, 56), (52, 48)], 8)  # 8 px around a 32 px crop; the reach is 22
    config = _config(folder, num_images=8, paddings=["reflect"])
    auditor = Auditor(config, model=BoxStack().eval(), info=INFO)
    assert auditor.margin == 8 and auditor.margins.partial == (True,) and auditor.second_margin == 4
    assert "within the 8 px the photos hold around a crop" in auditor.margins.chosen_by
    assert auditor.tiles is not None and auditor.tiles.crops == (1,) * 8
    report = audit(config, model=BoxStack().eval(), info=INFO)
    (layer,) = report.scheme("native").layers
    assert layer.reference_partial and layer.strength_at_smaller_margin[0] == 4
    assert layer.influence_beyond_margin > 0.01
    # at their own pixels: a larger --input-size is never made room for by shrinking the photos
    with pytest.raises(ImageSourceError, match="only 0 of the 8 images are at least 72x72"):
        Auditor(_config(folder, input_size=64), model=BoxStack().eval(), info=INFO)


def test_a_crop_shows_the_same_pixels_at_every_margin(tmp_path):
    """Photos have one scale (--photo-scale), whatever the margin and the model: until schema 1.13 they were resized
    with the window (S + 2m over the model's crop_pct), so a larger margin showed the crop smaller."""
    folder = _photos(tmp_path / "photos", SIZES, 2)
    for scale in (1.0, 0.5):
        source = FolderSource(folder, scale=scale)
        crops = [source.window(0, S + 2 * m)[:, m:m + S, m:m + S] for m in (4, 12, 24)]
        assert all(torch.equal(crops[0], crop) for crop in crops[1:])
    assert FolderSource(folder, scale=0.5).header(0)[1:3] == (100, 80)  # 200 x 160 px at half scale
    with pytest.raises(ConfigError, match="--photo-scale must be at most 1"):
        AuditConfig(model="box", photo_scale=1.5)


def test_crops_of_one_photo_share_a_jackknife_group(monkeypatch, tmp_path):
    folder = _photos(tmp_path / "photos", SIZES, 12)
    auditor = Auditor(_config(folder, num_images=20), model=BoxStack().eval(), info=INFO)
    tiles = auditor.tiles
    assert tiles.num_photos >= 8 and max(tiles.crops) == 2  # at most 20 // 8 a photo: 8 groups at least
    seen: list[torch.Tensor] = []
    from ppp_audit import auditor as module

    original = module._Sums.add

    def record(self, scheme, features, indices):
        seen.append(torch.as_tensor(indices).clone())
        assert features.crop[0].shape[0] == len(indices)
        return original(self, scheme, features, indices)

    monkeypatch.setattr(module._Sums, "add", record)
    measurement = auditor.measure()
    indices = sorted(torch.cat(seen).tolist())
    assert measurement.num_images == 20 == len(indices)
    assert indices == [i for i, count in enumerate(tiles.crops) for _ in range(count)]  # a crop's group: its photo


def test_report_says_the_tiles_and_what_they_cost(tmp_path):
    folder = _photos(tmp_path / "photos", SIZES, 8)
    config = _config(folder, paddings=["reflect"])
    report = audit(config, model=BoxStack().eval(), info=INFO)
    reference = report.geometry["reference"]
    assert reference["kind"] == "photo" and report.tiles == reference and report.canvas is None
    assert reference["crops"] == report.data["num_images"] == 16 and reference["scale"] == report.data["scale"] == 1
    assert reference["border"] == report.margin
    assert "crops tiled inside" in margin_note(report)
    assert reference["pixels_per_image"] < report.geometry["margin"]["pixels_per_image"]  # a window per crop costs more
    from ppp_audit.render.html import write_html

    page = write_html(report, tmp_path / "page", []).read_text()
    assert "tiled inside each photo" in page and "crops tiled inside" in page
    windowed = audit(AuditConfig(**{**config.__dict__, "reference": "window"}), model=BoxStack().eval(), info=INFO)
    assert windowed.geometry["reference"]["kind"] == "window" and windowed.tiles is None
    assert windowed.geometry["reference"]["why"] == "--reference window"
    # one reference is as good as the other where both are exact: the readings agree within their intervals
    for a, b in zip(report.results, windowed.results):
        (la,), (lb,) = a.layers, b.layers
        assert la.stats.strength_ci[0] <= lb.stats.strength_ci[1] and lb.stats.strength_ci[0] <= la.stats.strength_ci[1]


def test_tiles_are_refused_where_they_cannot_be_exact(tmp_path):
    folder = _photos(tmp_path / "photos", SIZES, 4)
    info = ModelInfo(name="se", architecture="se", weights="random-init", input_size=32, mean=(0.0,) * 3,
                     std=(1.0,) * 3, crop_pct=1.0)
    settings = dict(model="se", images=str(folder), num_images=4, input_size=S, layers=["out"], device="cpu")
    excited = Auditor(AuditConfig(**settings), model=_Excited().eval(), info=info)
    assert excited.tiles is None and "global modules (se) would pool over the whole tile" in excited.window_reason
    measurement = excited.measure()
    # one crop per photo, in a window of the border the median photo holds (64 px): the 120 px photo is too small
    assert excited.margin == 64 and measurement.reference["kind"] == "window" and measurement.num_images == 3
    assert measurement.data["sample"]["skipped_small"] == 1
    with pytest.raises(ConfigError, match="--reference canvas cannot tile these photos exactly: global modules"):
        Auditor(AuditConfig(**settings, reference="canvas"), model=_Excited().eval(), info=info)


def test_tiles_made_on_the_device_give_the_host_s_numbers(tmp_path):
    folder = _photos(tmp_path / "photos", SIZES, 8)
    host = audit(_config(folder, images_on="host"), model=BoxStack().eval(), info=INFO)
    device = audit(_config(folder, images_on="device"), model=BoxStack().eval(), info=INFO)
    assert host.tiles == device.tiles and device.data["images_on"] == "cpu"
    (a,), (b,) = host.results[0].layers, device.results[0].layers
    assert a.stats.strength == pytest.approx(b.stats.strength, rel=1e-9)
    assert a.stats.strength_ci == pytest.approx(b.stats.strength_ci, rel=1e-9)


def test_taps_keep_each_layer_s_layout_on_oblong_tiles():
    """A tile is oblong, so its maps' sides cannot tell channels-first from channels-last: the layout is the one read
    on a square input. resnet10t's layer1 on 256 x 192 px is 64 x 64 x 48, which the sides read as NHWC."""
    import timm

    from ppp_audit.models import FeatureTaps

    taps = FeatureTaps(timm.create_model("resnet10t", pretrained=False).eval())
    with torch.no_grad():
        maps = taps(torch.zeros(1, 3, 256, 192))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 128, 96), (64, 64, 48), (128, 32, 24), (256, 16, 12),
                                                  (512, 8, 6)]


def test_photos_of_one_crop_each_read_as_windows(tmp_path):
    """Where each photo holds one crop at the border, its tile is its window: the same photos, crops and readings."""
    folder = _photos(tmp_path / "photos", [(72, 80), (80, 72)], 8)
    config = _config(folder, num_images=8, paddings=["reflect"])
    tiled = audit(config, model=BoxStack().eval(), info=INFO)
    windowed = audit(AuditConfig(**{**config.__dict__, "reference": "window"}), model=BoxStack().eval(), info=INFO)
    assert tiled.tiles["most_crops_per_photo"] == 1 and tiled.tiles["photos"] == 8 and windowed.tiles is None
    assert tiled.margin == windowed.margin and tiled.data["num_images"] == windowed.data["num_images"] == 8
    for a, b in zip(tiled.results, windowed.results):
        (la,), (lb,) = a.layers, b.layers
        assert la.stats.strength == pytest.approx(lb.stats.strength, rel=1e-9)
        assert la.stats.strength_ci == pytest.approx(lb.stats.strength_ci, rel=1e-9)
