"""The mask rising out of the mist (docs/metrics.md#the-mask-rising-out-of-the-mist): mean feature and PPP maps of one
layer after the first 1, 10, 100 and N images."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ppp_audit.metrics import MIST_COUNTS, PPPAccumulator, choose_mist_layer
from ppp_audit.report import SCHEMA_VERSION, LayerResult, Report, SchemeResult, check_report_dict

C, H, W = 4, 12, 12


def _features(n: int, seed: int = 0, band: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Padding-free features ``b`` (unit-variance content, the mist) and padded ones ``a = b + band + noise``, with a
    fixed one-ring border band of size ``band`` (the mask) and what the border does to each image (noise)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, C, H, W, generator=g)
    ring = torch.zeros(C, H, W)
    ring[:, 0, :] = ring[:, -1, :] = ring[:, :, 0] = ring[:, :, -1] = band
    return b + ring + 0.5 * torch.randn(n, C, H, W, generator=g), b


def _stream(a: torch.Tensor, b: torch.Tensor | None, batches: list[int], **kwargs) -> PPPAccumulator:
    acc = PPPAccumulator(groups=4, with_reference=b is not None, **kwargs)
    start = 0
    for size in batches:
        acc.update(a[start:start + size], None if b is None else b[start:start + size])
        start += size
    assert start == a.shape[0]
    return acc


def _direct(a: torch.Tensor, b: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two maps from the first ``k`` images, written out: channel mean of mean A; channel-RMS of mean Δ (or of
    mean A less each channel's spatial mean)."""
    mean_a = a[:k].double().mean(0)
    if b is None:
        pattern = mean_a - mean_a.mean(dim=(1, 2), keepdim=True)
    else:
        pattern = (a[:k].double() - b[:k].double()).mean(0)
    return mean_a.mean(0), pattern.square().mean(0).sqrt()


@pytest.mark.parametrize("batches", [[1, 9, 5, 90, 20], [3, 12, 110], [125]])
@pytest.mark.parametrize("reference", [True, False])
def test_snapshots_are_the_maps_of_the_first_k_images(batches, reference):
    """Counts reached exactly at a batch end, inside a batch (the batch's first rows), or several in one batch."""
    a, b = _features(125, band=0.7)
    stats = _stream(a, b if reference else None, batches).compute(stride_px=16.0)
    mist = stats.mist
    assert mist.counts == [*MIST_COUNTS, 125]
    for k, feature, ppp in zip(mist.counts, mist.mean_feature, mist.ppp):
        want_feature, want_ppp = _direct(a, b if reference else None, k)
        assert torch.tensor(feature, dtype=torch.float64) == pytest.approx(want_feature, abs=1e-5)
        assert torch.tensor(ppp, dtype=torch.float64) == pytest.approx(want_ppp, abs=1e-5)
        assert len(feature) == H and len(feature[0]) == W


def test_counts_below_n_then_n():
    a, b = _features(40)
    assert _stream(a, b, [16, 16, 8]).compute(stride_px=8.0).mist.counts == [1, 10, 40]
    assert _stream(a[:10], b[:10], [10]).compute(stride_px=8.0).mist.counts == [1, 10]  # 10 is N: one point
    assert _stream(a, b, [40], mist_counts=()).compute(stride_px=8.0).mist is None


def test_merge_keeps_the_first_images_of_one_accumulator():
    """Snapshots are not sums: a merge keeps this accumulator's (the other's only when it has none); N covers all."""
    a, b = _features(120, seed=3)
    first, second = _stream(a[:60], b[:60], [32, 28]), _stream(a[60:], b[60:], [60])
    merged = PPPAccumulator(groups=4).merge_(first).merge_(second).compute(stride_px=8.0).mist
    assert merged.counts == [1, 10, 120]
    assert torch.tensor(merged.mean_feature[1]) == pytest.approx(_direct(a, b, 10)[0].float(), abs=1e-5)
    assert torch.tensor(merged.ppp[-1]) == pytest.approx(_direct(a, b, 120)[1].float(), abs=1e-5)
    assert first.merge_(second).compute(stride_px=8.0).mist.counts == [1, 10, 120]


def _border_contrast(values: list[list[float]]) -> float:
    """(mean over the outer ring − mean inside it) / spread inside it: how clearly the planted band stands out."""
    m = torch.tensor(values, dtype=torch.float64)
    inner = m[1:-1, 1:-1]
    ring = torch.ones_like(m, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    return float((m[ring].mean() - inner.mean()) / inner.std())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_border_band_rises_out_of_the_mist(seed):
    """On a planted band, one image's maps are mostly content; with more images the band stands out more, in both
    rows, and at N it is several times clearer than in one image."""
    n, band = 400, 0.5
    a, b = _features(n, seed=seed, band=band)
    mist = _stream(a, b, [64] * 6 + [16]).compute(stride_px=16.0).mist
    assert mist.counts == [1, 10, 100, n]
    for maps in (mist.mean_feature, mist.ppp):
        contrast = [_border_contrast(values) for values in maps]
        assert contrast == sorted(contrast), contrast
        assert contrast[-1] > 4 * max(contrast[0], 1.0), contrast
    # The mean feature's interior spread at N is that of a channel average of N images (variance 1 + 0.5²).
    expected = band / math.sqrt((1 + 0.5**2) / C / n)
    assert _border_contrast(mist.mean_feature[-1]) == pytest.approx(expected, rel=0.25)


def test_layer_choice():
    names, strides = ["act1", "layer1", "layer2", "layer3", "layer4"], [2, 4, 8, 16, 32]
    assert choose_mist_layer(names, strides) == "layer3"
    assert choose_mist_layer(names[:3], strides[:3]) == "layer1"
    assert choose_mist_layer(["a", "b", "c", "d"], [4, 8, 32, 64]) == "c"
    assert choose_mist_layer(names, strides, "layer1") == "layer1"
    from ppp_audit.errors import PPPAuditError

    with pytest.raises(PPPAuditError, match=r"--mist-layer 'layer9' is not a tapped layer \(pick one of act1, layer1, "
                                            r"layer2, layer3, layer4\)"):
        choose_mist_layer(names, strides, "layer9")


# ---------------------------------------------------------------------------------------------------------------------
# Report: JSON round trip
# ---------------------------------------------------------------------------------------------------------------------


def _report() -> Report:
    a, b = _features(24, band=0.5)
    layers = [LayerResult(name=f"stage{k}", receptive_radius_px=10.0, reference_partial=False,
                          stats=_stream(a, b, [8, 16], mist_counts=MIST_COUNTS if k == 1 else ()).compute(8.0))
              for k in range(2)]
    result = SchemeResult(scheme="native", patch={"scheme": "native", "native_padding": "zeros"}, layers=layers)
    return Report(environment={"ppp_audit": "test"}, model={"name": "planted", "weights": "synthetic"},
                  data={"kind": "synthetic", "num_images": 24}, input_size=96, margin=16, seed=0, device="cpu",
                  precision="fp32", results=[result])


def test_json_round_trip_and_type_check():
    report = _report()
    data = json.loads(report.to_json())
    assert data["schema_version"] == SCHEMA_VERSION == "1.13"
    stage0, stage1 = data["results"][0]["layers"]
    assert stage0["mist"] is None and stage1["mist"]["counts"] == [1, 10, 24]
    assert len(stage1["mist"]["ppp"]) == 3 and len(stage1["mist"]["ppp"][0]) == H
    check_report_dict(data)
    loaded = Report.from_json(report.to_json())
    assert loaded == report
    assert loaded.results[0].layers[1].stats.mist.counts == [1, 10, 24]
    stage1["mist"]["ppp"][2][0][0] = "bright"
    with pytest.raises(TypeError, match=r"results\[0\]\.layers\[1\]\.mist\.ppp\[2\]\[0\]\[0\] must be a number"):
        check_report_dict(data)


def test_a_1_5_report_without_mist_loads_and_draws_no_mist(tmp_path):
    from ppp_audit.render import write_outputs

    data = json.loads(_report().to_json())
    data["schema_version"] = "1.5"
    for layer in data["results"][0]["layers"]:
        del layer["mist"]
    report = Report.from_dict(data)
    assert all(layer.stats.mist is None for layer in report.results[0].layers)
    outputs = write_outputs(report, tmp_path)
    assert "mist" not in [f.key for f in outputs.figures]
    assert "mask rising out of the mist" not in outputs.html.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# An audit: the chosen layer carries the maps; --out draws them and the page shows them
# ---------------------------------------------------------------------------------------------------------------------

FAST = ["--no-pretrained", "--input-size", "64", "--device", "cpu", "--no-progress"]


def test_audit_out_writes_the_mist_figure_and_page(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from ppp_audit.cli import app

    out = tmp_path / "audit"
    # 12 images in batches of 8: the count of 10 falls inside the second batch.
    result = CliRunner().invoke(app, ["resnet10t", *FAST, "-p", "reflect", "-n", "12", "-b", "8",
                                      "--mist-layer", "layer2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = Report.load(out)
    for scheme in report.results:
        carrying = [layer.name for layer in scheme.layers if layer.stats.mist is not None]
        assert carrying == ["layer2"]
        assert scheme.layer("layer2").stats.mist.counts == [1, 10, 12]
    figures = sorted(p.name for p in (out / "figures").glob("*mist*"))
    assert figures == ["mist.png"]
    with Image.open(out / "figures" / "mist.png") as image:
        image.verify()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'src="figures/mist.png"' in page and "The mask rising out of the mist" in page


def test_default_mist_layer_is_stride_16_and_an_unknown_one_is_refused():
    from typer.testing import CliRunner

    from ppp_audit.auditor import Auditor
    from ppp_audit.cli import app
    from ppp_audit.config import AuditConfig

    auditor = Auditor(AuditConfig("resnet10t", pretrained=False, input_size=64, num_images=2, device="cpu"))
    assert auditor.mist_layer == "layer3"

    result = CliRunner().invoke(app, ["resnet10t", *FAST, "-n", "2", "--mist-layer", "layer9"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--mist-layer 'layer9' is not a tapped layer — pick one of act1, layer1, layer2, " \
        "layer3, layer4" in lines[0], result.stderr


def test_mean_feature_report_draws_the_mist_figure(tmp_path):
    """Without a reference (fixed-size models) the PPP row is the mean-feature pattern; the figure has one scheme's
    two rows and one column per count."""
    from PIL import Image

    from ppp_audit.render import write_outputs
    from ppp_audit.render.figures import DPI, mist_figure_size

    a, _ = _features(24, band=0.5)
    stats = _stream(a, None, [24]).compute(8.0)
    layer = LayerResult(name="stage0", receptive_radius_px=10.0, reference_partial=False, stats=stats)
    report = _report()
    report.results = [SchemeResult(scheme="native", patch=report.results[0].patch, layers=[layer])]
    report.estimator = "mean-feature"
    outputs = write_outputs(report, tmp_path)
    figure = next(f for f in outputs.figures if f.key == "mist")
    width, height = mist_figure_size(3, 1)
    with Image.open(tmp_path / figure.filename) as image:
        assert image.size == (round(width * DPI), round(height * DPI))
    assert set(figure.panels_px) == {f"native/{row}/{k}" for row in ("mean_feature", "ppp") for k in (1, 10, 24)}
    assert "mean-feature estimator" in outputs.html.read_text(encoding="utf-8")
