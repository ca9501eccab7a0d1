"""Edges of the input that must not pass unsaid (issue #29): phone photos turned upright by their EXIF orientation on
the host and on the device alike, images smaller than the window named under the table, a ``--weights`` path that is
a folder or a pipe, and a padding plugin that fails to load or is switched off. Tiny models, small images."""

from __future__ import annotations

import os
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms.functional import center_crop, pil_to_tensor

from cli_helpers import fails, runner
from ppp_audit.cli import app
from ppp_audit.device_images import EXIF_ORIENTATION_TAG, orient
from ppp_audit.images import FolderSource, SampledSource, decode_windows, image_header, load_window, random_sample
from ppp_audit.paddings import DISABLE_PLUGINS_ENV
from ppp_audit.paddings.registry import _reset_discovery
from ppp_audit.report import Report

CPU = torch.device("cpu")
TINY = ["resnet10t", "--no-pretrained", "--input-size", "64", "--margin", "32", "-b", "2", "--device", "cpu",
        "--no-progress"]
"""A 128 px window (S=64, m=32)."""


def _asymmetric(width: int, height: int, seed: int = 0) -> Image.Image:
    """A picture with no symmetry a turn or a flip could keep: smooth ramps (JPEG keeps them) and a bright corner."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 7 + y / 13 + seed)], axis=-1)
    rgb[: height // 4, : width // 5] = 255  # top left
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def _save_oriented(path: Path, picture: Image.Image, orientation: int, **save: object) -> Path:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    picture.save(path, exif=exif, **save)
    return path


def _upright(path: Path) -> torch.Tensor:
    """The file as an EXIF-aware viewer shows it (PIL's own transpose), float (3, H, W) in [0, 1]."""
    with Image.open(path) as img:
        return pil_to_tensor(ImageOps.exif_transpose(img).convert("RGB")).float() / 255


# ---- EXIF orientation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_pixels_as_pil_exif_transpose_does(tmp_path, orientation):
    stored = _asymmetric(9, 5)
    path = _save_oriented(tmp_path / "p.png", stored, orientation)
    assert torch.equal(orient(pil_to_tensor(stored), orientation), (_upright(path) * 255).round().to(torch.uint8))


@pytest.mark.parametrize("orientation", [8, 3])
def test_an_exif_rotated_jpeg_is_read_upright_on_the_host_and_on_the_device(tmp_path, orientation):
    # Stored 72 x 48 (a sideways phone photo for 8): the window is the short side, so the crop shows which way up.
    path = _save_oriented(tmp_path / "phone.jpg", _asymmetric(72, 48), orientation, quality=95)
    upright = _upright(path)
    size = min(upright.shape[-2:])
    expected = center_crop(upright, [size, size])
    host = load_window(path, "phone.jpg", size)
    device = decode_windows([(path, "phone.jpg")], size, 1.0, CPU)[0]
    assert float((host - expected).abs().max()) <= 1 / 255
    assert float((device - expected).abs().max()) <= 2 / 255  # torchvision's libjpeg, as in test_device_images
    with Image.open(path) as img:
        as_stored = center_crop(pil_to_tensor(img).float() / 255, [size, size])
    assert float((host - as_stored).abs().mean()) > 0.1  # read as stored, it would be a different picture
    assert image_header(path, "phone.jpg")[1:] == (upright.shape[-1], upright.shape[-2], orientation)


def test_the_report_counts_images_turned_upright(tmp_path):
    for k in range(3):
        _asymmetric(128, 112, k).save(tmp_path / f"{k}.jpg")
    _save_oriented(tmp_path / "turned.jpg", _asymmetric(112, 128, 5), 6)
    folder = FolderSource(tmp_path)
    sample = random_sample(folder, 8, seed=0, size=96)  # every image is used: no "sample", but the count is kept
    assert isinstance(sample, SampledSource) and sorted(sample.indices) == [0, 1, 2, 3]
    assert sample.describe() == {**folder.describe(), "exif_rotated": 1}
    (tmp_path / "turned.jpg").unlink()  # an upright folder, all of it used: the source itself, as before
    assert random_sample(FolderSource(tmp_path), 8, seed=0, size=96) == FolderSource(tmp_path)


# ---- images smaller than the window ---------------------------------------------------------------------------------


def test_images_smaller_than_the_window_are_named_under_the_table(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        _asymmetric(144, 136, k).save(images / f"{k}.png")
    _save_oriented(images / "phone.jpg", _asymmetric(136, 144, 3), 8)
    _asymmetric(10, 7).save(images / "thumb.png")
    out = tmp_path / "r.json"
    result = runner.invoke(app, [*TINY, "-n", "8", "--images", images, "--json", out], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    report = Report.load(out)
    assert report.data["num_images"] == 4 and report.data["exif_rotated"] == 1
    assert report.data["sample"] == {"of": 5, "seed": 0, "skipped_small": 1,
                                     "small": [{"name": str(images / "thumb.png"), "width": 10, "height": 7}]}
    assert report.tiles is not None  # tiled: the note says what a photo must hold
    said = (f"1 of 5 images too small for a 64 px crop with 32 px around it: not measured ('{images / 'thumb.png'}' "
            "10x7)")
    assert "".join(said.split()) in "".join(result.stdout.split())  # the caption may wrap anywhere in a long path


# ---- --weights that is no file --------------------------------------------------------------------------------------


def test_weights_pointing_at_a_folder_names_the_file_inside(tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "model.safetensors").write_bytes(b"x")
    line = fails(["resnet10t", "--weights", saved, "-n", "2"], f"--weights '{saved}' is a folder")
    assert f"'{saved / 'model.safetensors'}'" in line and f"local-dir:{saved}" in line
    assert "does not exist" not in line


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_weights_pointing_at_a_pipe_is_not_a_regular_file(tmp_path):
    pipe = tmp_path / "weights.pipe"
    os.mkfifo(pipe)
    fails(["resnet10t", "--weights", pipe, "-n", "2"], f"--weights '{pipe}' is not a regular file (a named pipe)")


# ---- padding plugins that fail to load, or are switched off ---------------------------------------------------------


@pytest.fixture
def plugin_needing_a_library(tmp_path, monkeypatch):
    """A distribution whose padding plugin's import fails with a two-line error, put on sys.path."""
    (tmp_path / "ppp_audit_edge_plugin.py").write_text(textwrap.dedent('''
        raise ImportError("libsmooth.so.2: cannot open shared object file\\nsearched: /opt/smooth/lib")
    '''))
    info = tmp_path / "ppp_audit_edge_plugin-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ppp-audit-edge-plugin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[ppp_audit.paddings]\nsmooth = ppp_audit_edge_plugin:Smooth\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _reset_discovery()
    yield "ppp-audit-edge-plugin"
    _reset_discovery()


def test_a_plugin_that_fails_to_load_says_so_not_unknown(plugin_needing_a_library):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = fails([*TINY, "-p", "smooth", "-n", "2"], "padding plugin 'smooth' from distribution "
                     f"'{plugin_needing_a_library}' failed to load: ImportError: libsmooth.so.2: cannot open shared "
                     "object file")
    assert "unknown" not in line and "searched" not in line  # the error's first line only
    assert f"pip install --force-reinstall {plugin_needing_a_library}" in line and f"{DISABLE_PLUGINS_ENV}=1" in line
    assert not [w for w in caught if "smooth" in str(w.message)]  # said once, by the error


def test_an_unknown_scheme_says_plugins_are_disabled(plugin_needing_a_library, monkeypatch):
    monkeypatch.setenv(DISABLE_PLUGINS_ENV, "1")
    fails([*TINY, "-p", "smooth", "-n", "2"],
          f"unknown padding scheme 'smooth' (plugins are disabled by {DISABLE_PLUGINS_ENV})")
    monkeypatch.delenv(DISABLE_PLUGINS_ENV)
    _reset_discovery()
    with pytest.warns(RuntimeWarning, match="'smooth' from distribution"):  # another name: the broken one is warned of
        line = fails([*TINY, "-p", "smoth", "-n", "2"], "unknown padding scheme 'smoth'")
    assert "disabled" not in line
