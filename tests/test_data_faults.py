"""Faults in the data path keep a finished audit: unreadable images are skipped, counted and named (``--strict-images``
fails instead), and layers whose features hold NaN/inf are marked while the others keep their numbers; a model that
gives NaN/inf everywhere fails on the first batch. Tiny models (resnet10t at 64 px, small nn.Sequentials), N <= 8."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from cli_helpers import fails, runner
from ppp_audit.auditor import Auditor
from ppp_audit.cli import app
from ppp_audit.config import AuditConfig
from ppp_audit.engine import audit
from ppp_audit.errors import FeatureError, ImageSourceError
from ppp_audit.images import FolderSource, WindowDataset, image_loader, random_sample
from ppp_audit.models import ModelInfo
from ppp_audit.report import SKIPPED_LISTED, Report, SkippedImage, SkippedImages, check_report_dict

TINY = ["resnet10t", "--no-pretrained", "--input-size", "64", "--margin", "32", "-b", "2", "--device", "cpu"]
"""A 128 px window (S=64, m=32)."""


def _photo(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (140, 150, 3), dtype=np.uint8))


def _truncated_png(seed: int) -> bytes:
    """A PNG whose header is intact and whose pixel data is cut in half: only decoding it fails."""
    file = io.BytesIO()
    _photo(seed).save(file, format="PNG")
    return file.getvalue()[: len(file.getvalue()) // 2]


def _good_folder(root: Path, count: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        _photo(k).save(root / f"{k}.png")
    return root


def _faulty_folder(root: Path) -> Path:
    """4 good images (the same as :func:`_good_folder`'s) + a text file named .jpg + a truncated PNG; sorted, the good
    ones come first, so they are windows 0..3 of the sample, as in the clean folder."""
    _good_folder(root)
    (root / "x.jpg").write_text("text, not a JPEG")
    (root / "trunc.png").write_bytes(_truncated_png(9))
    return root


# ---- unreadable images ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_report(tmp_path_factory) -> Report:
    root = tmp_path_factory.mktemp("clean")
    out = root / "r.json"
    result = runner.invoke(app, [*TINY, "-n", "8", "--images", str(_good_folder(root / "images")), "--json", str(out)])
    assert result.exit_code == 0, result.output
    return Report.load(out)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_unreadable_images_are_skipped_counted_and_named(tmp_path, clean_report, workers):
    folder = _faulty_folder(tmp_path / "images")
    out = tmp_path / "r.json"
    result = runner.invoke(app, [*TINY, "-n", "8", "--images", folder, "--json", out, "--workers", workers])
    assert result.exit_code == 0, result.output
    report = Report.load(out)
    assert report.skipped_images == SkippedImages(count=2, tried=6, first=[
        SkippedImage(str(folder / "x.jpg"), "not an image (PIL cannot identify its format)"),  # found while sampling
        SkippedImage(str(folder / "trunc.png"), "image file is truncated"),  # found while decoding
    ])
    assert report.data["num_images"] == 4
    for result_ in report.results:
        assert all(layer.stats.n == 4 for layer in result_.layers)  # the statistics use the images measured
    # The 4 measured are the clean folder's 4 windows, with the same jackknife groups: the same numbers.
    assert report.to_dict()["results"] == clean_report.to_dict()["results"]
    shown = "".join(result.stdout.split())  # the caption may wrap anywhere in a long path
    for said in (f"2 of 6 images skipped (unreadable): '{folder / 'x.jpg'}': not an image",
                 f"'{folder / 'trunc.png'}': image file is truncated", "the statistics cover the 4 measured"):
        assert "".join(said.split()) in shown


def test_the_progress_count_reaches_its_total_with_skipped_images(tmp_path):
    """An image dropped while decoding is done with too: the measuring phase ends at its total, not one short."""
    import io as text_io

    from ppp_audit.progress import ProgressReporter

    config = AuditConfig("resnet10t", pretrained=False, images=str(_faulty_folder(tmp_path / "images")), num_images=8,
                         batch_size=2, input_size=64, margin=32, device="cpu")
    reporter = ProgressReporter(live=False, stream=text_io.StringIO(), quiet_s=0, heartbeat_s=0)
    audit(config, progress=reporter)
    measuring = [line for line in reporter.stream.getvalue().splitlines() if "measuring native" in line]
    assert measuring and "5/5" in measuring[-1], measuring


def test_strict_images_fails_with_one_line_naming_the_file(tmp_path):
    folder = _faulty_folder(tmp_path / "images")
    line = fails([*TINY, "-n", "8", "--images", folder, "--strict-images"], "cannot read image")
    # the photos' sizes are read first (to tile their crops): x.jpg's header is not an image
    assert f"'{folder / 'x.jpg'}': not an image" in line
    (folder / "x.jpg").unlink()  # then the pixels: trunc.png's header reads, its pixels do not
    line = fails([*TINY, "-n", "8", "--images", folder, "--strict-images"], "cannot read image")
    assert f"'{folder / 'trunc.png'}': image file is truncated" in line


def test_a_folder_of_unreadable_images_fails_with_one_line(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for k in range(3):
        (bad / f"{k}.jpg").write_text("text")
    (bad / "z.png").write_bytes(_truncated_png(0))  # its header is readable, its pixels are not
    fails([*TINY, "-n", "8", "--images", bad],
          f"all 4 images are unreadable; the first: cannot read image '{bad / '0.jpg'}': not an image")
    one = _good_folder(tmp_path / "one", count=1)
    (one / "x.jpg").write_text("text")
    (one / "y.png").write_bytes(_truncated_png(1))
    line = fails([*TINY, "-n", "8", "--images", one], "only 1 of the 3 images can be measured: 2 unreadable")
    assert f"(the first: cannot read image '{one / 'x.jpg'}'" in line and "a variance needs at least 2" in line


def test_sampling_replaces_an_image_whose_header_cannot_be_read(tmp_path):
    folder = _good_folder(tmp_path, count=8)
    clean = FolderSource(folder)
    assert random_sample(clean, 4, 0, 96, skip_unreadable=True).indices == random_sample(clean, 4, 0, 96).indices
    (folder / "b.jpg").write_text("text")  # sorted last: index 8
    source = FolderSource(folder)
    sample = random_sample(source, 9, seed=0, size=96, skip_unreadable=True)
    assert list(sample.indices) == list(range(8))
    assert sample.unreadable == (SkippedImage(str(folder / "b.jpg"), "not an image (PIL cannot identify its format)"),)
    assert sample.describe()["sample"] == {"of": 9, "seed": 0, "skipped_small": 0}
    assert random_sample(source, 9, seed=0, size=96) is source  # not skipping: reading it will report it, as before
    four = random_sample(source, 4, seed=0, size=96, skip_unreadable=True)
    assert len(four.indices) == 4 and 8 not in four.indices


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_skips_unreadable_items_and_says_which(tmp_path, workers):
    folder = _faulty_folder(tmp_path)  # sorted: 0..3.png, trunc.png, x.jpg
    dataset = WindowDataset(FolderSource(folder), range(6), 96)
    loader = image_loader(dataset, batch_size=4, workers=workers, skip_unreadable=True)
    batches = list(loader)
    assert [indices.tolist() for indices, _ in batches] == [[0, 1, 2, 3]]  # the batch of two bad ones is dropped
    assert [(f.position, f.error.image) for f in loader.skipped] == [(4, str(folder / "trunc.png")),
                                                                   (5, str(folder / "x.jpg"))]
    with pytest.raises(ImageSourceError, match="trunc.png': image file is truncated"):
        list(image_loader(dataset, batch_size=4, workers=workers))


# ---- the report field ------------------------------------------------------------------------------------------------


def test_skipped_images_round_trip_and_are_type_checked(clean_report):
    skipped = SkippedImages.of([SkippedImage(f"{k}.jpg", "not an image") for k in range(25)], tried=64)
    assert skipped.count == 25 and len(skipped.first) == SKIPPED_LISTED == 20
    assert skipped.summary() == ("25 of 64 images skipped (unreadable): '0.jpg': not an image; '1.jpg': not an image; "
                                 "'2.jpg': not an image; and 22 more (report.json names up to 20)")
    assert SkippedImages.of([], tried=64) is None
    report = Report.from_dict({**clean_report.to_dict(), "skipped_images": json.loads(json.dumps(
        {"count": 25, "tried": 64, "first": [vars(image) for image in skipped.first]}))})
    assert report.skipped_images == skipped and Report.from_json(report.to_json()) == report
    data = report.to_dict()
    data["skipped_images"]["count"] = "25"
    with pytest.raises(TypeError, match="skipped_images.count must be an integer"):
        check_report_dict(data)
    # A 1.3 report (no skipped_images, no non_finite) still reads.
    old = clean_report.to_dict()
    old["schema_version"] = "1.3"
    del old["skipped_images"]
    for result in old["results"]:
        for layer in result["layers"]:
            del layer["non_finite"]
    assert Report.from_dict(old).skipped_images is None
    assert not any(layer.stats.non_finite for r in Report.from_dict(old).results for layer in r.layers)


# ---- NaN/inf features ------------------------------------------------------------------------------------------------


def _info(name: str, size: int) -> ModelInfo:
    return ModelInfo(name=name, architecture=name, weights="random-init", input_size=size, mean=(0.5,) * 3,
                     std=(0.5,) * 3, crop_pct=1.0)


class _Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class _AbsPlusOne(nn.Module):
    def forward(self, x):
        return x.abs() + 1


def _log_of_padding() -> nn.Sequential:
    """Layer '1' is finite under any padding; layer '2' is log of a conv that reads only the top-left neighbour, so
    zero padding gives log(0) = -inf along the top and left border, and reflect padding gives finite values."""
    corner = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        corner.weight.zero_()
        corner.weight[:, :, 0, 0] = 1.0
    return nn.Sequential(_AbsPlusOne(), corner, _Log()).eval()


def test_a_layer_that_is_non_finite_under_one_scheme_is_marked_and_the_rest_kept(tmp_path):
    from rich.console import Console

    from ppp_audit.render import render_table

    config = AuditConfig("logpad", paddings=["reflect"], num_images=4, batch_size=2, input_size=16, margin=32,
                         layers=["1", "2"], device="cpu")
    report = audit(config, model=_log_of_padding(), info=_info("logpad", 16))
    native, reflect = report.results
    assert native.non_finite_layers == ["2"] and reflect.non_finite_layers == []
    bad = native.layer("2").stats
    assert bad.non_finite and bad.n == 4 and (bad.height, bad.width, bad.channels) == (16, 16, 4)
    assert bad.strength is bad.mean_feature_strength is bad.ppp_map is bad.profile is None
    assert math.isfinite(native.layer("1").stats.strength) and native.layer("1").stats.strength > 0
    assert all(math.isfinite(layer.stats.strength) for layer in reflect.layers)
    assert native.max_strength == native.layer("1").stats.strength and native.last_strength is None
    text = report.save(tmp_path / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    assert Report.load(tmp_path / "report.json") == report
    console = Console(width=200, record=True)
    console.print(render_table(report))
    shown = console.export_text()
    assert "non-finite" in [cell.strip() for cell in shown.splitlines()[6].split("│")]  # layer 2, native
    assert "NaN/inf features from '2' with native (zeros); their statistics are left out" in " ".join(shown.split())


class _Counted(nn.Module):
    """Multiplies by ``factor`` (NaN: every output NaN) and counts its forward calls."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor, self.calls = factor, 0

    def __deepcopy__(self, memo: dict) -> "nn.Module":
        return self  # a spy: the audit's own copy of the model (it never runs the caller's) records into this one

    def forward(self, x):
        self.calls += 1
        return x * self.factor


def test_a_model_that_is_non_finite_everywhere_fails_on_the_first_batch():
    poison = _Counted(float("nan"))
    model = nn.Sequential(poison, nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    config = AuditConfig("nan", paddings=["reflect"], num_images=8, batch_size=2, input_size=16, margin=32,
                         layers=["1", "2"], device="cpu")
    auditor = Auditor(config, model=model, info=_info("nan", 16))
    poison.calls = 0
    with pytest.raises(FeatureError, match=r"^every tapped layer produced NaN/inf features on the first batch, with "
                       r"every padding \(native, reflect\) \(check the weights, or use --precision fp32\)$"):
        auditor.measure()
    assert auditor.shares_reference(auditor.schemes)
    assert poison.calls == 1 + 2  # one batch: the shared window pass and a crop pass per scheme, not 4 batches of N=8


class _InfFromSecondBatch(nn.Module):
    """Passes its input through on the first call (the first batch's crop pass), then adds inf."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __deepcopy__(self, memo: dict) -> "nn.Module":
        return self  # a spy: the audit's own copy of the model (it never runs the caller's) records into this one

    def forward(self, x):
        self.calls += 1
        return x if self.calls == 1 else x + float("inf")


def test_a_layer_that_turns_non_finite_after_the_first_batch_is_marked_at_the_end():
    late = _InfFromSecondBatch()
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), late).eval()
    config = AuditConfig("late", num_images=4, batch_size=2, input_size=16, margin=32, layers=["1", "3"],
                         device="cpu")
    auditor = Auditor(config, model=model, info=_info("late", 16))
    late.calls = 0
    measurement = auditor.measure()
    (result,) = measurement.results
    assert result.non_finite_layers == ["3"] and math.isfinite(result.layer("1").stats.strength)
    assert late.calls == 4  # the scheme was not stopped: two batches, crop and window passes


def test_the_cli_saves_a_report_whose_deep_stage_is_non_finite(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False).eval()
    with torch.no_grad():
        model.layer4[0].conv1.weight[0, 0, 0, 0] = float("nan")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "report"
    result = runner.invoke(app, ["resnet10t", "--weights", tmp_path / "w.safetensors", "--input-size", "64",
                                 "--margin", "32", "-n", "2", "-b", "2", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = Report.load(out)
    (native,) = report.results
    assert native.non_finite_layers == ["layer4"]
    assert all(math.isfinite(layer.stats.strength) for layer in native.layers[:-1])
    assert (out / "report.html").is_file() and "non-finite" in " ".join(result.stdout.split())


def test_baselines_get_the_measured_images_only(tmp_path):
    """What the measurement hands on (to the baselines) leaves the skipped images out: every window reads."""
    folder = _faulty_folder(tmp_path)
    config = AuditConfig("resnet10t", pretrained=False, images=str(folder), num_images=8, batch_size=2,
                         input_size=64, margin=32, device="cpu")
    measurement = Auditor(config).measure()
    assert measurement.num_images == 4 and measurement.skipped.count == 2
    assert measurement.source.available() == 4
    windows = torch.stack([measurement.source.window(i, 128) for i in range(4)])
    clean = FolderSource(folder)  # as the audit reads it (its own pixels); 0..3.png come first
    assert torch.equal(windows, torch.stack([clean.window(i, 128) for i in range(4)]))


def test_the_pytest_helper_names_a_non_finite_layer(tmp_path):
    """A bound on a layer whose features held NaN/inf fails, and the table says why instead of a bare "–"."""
    from ppp_audit.testing import PPPBoundError, assert_ppp

    config = AuditConfig("logpad", num_images=4, batch_size=2, input_size=16, margin=32, layers=["1", "2"],
                         device="cpu")
    report = audit(config, model=_log_of_padding(), info=_info("logpad", 16))
    with pytest.raises(PPPBoundError) as failed:
        assert_ppp(report, max_strength=10.0, layers=["1", "2"])
    rows = {cells[0]: cells for cells in map(str.split, str(failed.value).splitlines()) if cells[:1] in (["1"], ["2"])}
    assert rows["2"][2] == "non-finite" and rows["2"][-1] == "FAIL"
    assert rows["1"][-1] == "ok"


def test_the_hub_summary_says_how_many_images_were_skipped(clean_report):
    """The commit and pull-request text on the Hub carries the count, so a published score says what it covers."""
    import dataclasses

    from ppp_audit.hub import _summary

    assert "skipped" not in _summary(clean_report)
    skipped = SkippedImages.of([SkippedImage("a.jpg", "not an image"), SkippedImage("b.png", "truncated")], tried=10)
    assert _summary(dataclasses.replace(clean_report, skipped_images=skipped)).endswith(
        " 2 of 10 images were skipped as unreadable.")
