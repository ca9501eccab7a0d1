"""Convergence in N (docs/metrics.md#convergence-in-n): the strength on nested subsets of the jackknife groups."""

from __future__ import annotations

import json

import pytest
import torch

from ppp_audit.metrics import PPPAccumulator, convergence_sizes, ppp_strength
from ppp_audit.report import SCHEMA_VERSION, LayerResult, Report, SchemeResult, check_report_dict

C, H, W = 4, 10, 10


def _planted(n: int, amplitude: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``a = b + pattern + noise`` with a one-ring border pattern of ``amplitude`` (unit-variance mist)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, C, H, W, generator=g, dtype=torch.float64)
    pattern = torch.zeros(C, H, W, dtype=torch.float64)
    pattern[:, 0, :] = pattern[:, -1, :] = pattern[:, :, 0] = pattern[:, :, -1] = amplitude
    return b + pattern + 0.5 * torch.randn(n, C, H, W, generator=g, dtype=torch.float64), b


def _stats(a: torch.Tensor, b: torch.Tensor | None, groups: int = 8, batch: int = 5):
    acc = PPPAccumulator(groups=groups, with_reference=b is not None)
    for i in range(0, a.shape[0], batch):
        acc.update(a[i:i + batch], None if b is None else b[i:i + batch])
    return acc.compute(stride_px=8.0)


def test_sizes_are_powers_of_two_then_all_groups():
    assert convergence_sizes(8) == [1, 2, 4, 8]
    assert convergence_sizes(6) == [1, 2, 4, 6]
    assert convergence_sizes(2) == [1, 2]
    assert convergence_sizes(16) == [1, 2, 4, 8, 16]


def test_full_n_point_is_the_reported_strength():
    a, b = _planted(16, 0.3, seed=0)
    stats = _stats(a, b)
    assert [n for n, _ in stats.convergence] == [2, 4, 8, 16]
    assert stats.convergence[-1] == (16, stats.strength)  # the same code path: exactly equal
    assert stats.mean_feature_convergence[-1] == (16, stats.mean_feature_strength)
    reference_free = _stats(a, None)  # the mean-feature estimator's strength is the mean-feature one, from compute
    assert reference_free.convergence == reference_free.mean_feature_convergence
    assert reference_free.strength == reference_free.mean_feature_strength
    assert reference_free.mean_feature_convergence[-1] == (16, reference_free.mean_feature_strength)
    assert [n for n, _ in _stats(a[:13], b[:13], groups=6).convergence] == [3, 5, 9, 13]
    few = _stats(a[:5], b[:5]).convergence  # fewer images than groups: no repeated counts
    assert [n for n, _ in few] == [1, 2, 4, 5] and few[0][1] is None


def test_points_are_the_strength_of_the_first_groups_images():
    """Each point is the Δ strength of the images in the first k groups (sample i is in group i mod K), debiased for
    that subset's n, with the noise variances of all N images (batches are reduced in float32)."""
    a, b = _planted(40, 0.2, seed=1)
    stats = _stats(a, b)
    d = a - b
    for k, (n_k, value) in zip(convergence_sizes(8), stats.convergence):
        subset = torch.arange(40) % 8 < k
        assert n_k == int(subset.sum())
        assert value == pytest.approx(ppp_strength(d[subset].mean(0), d.var(0), b.var(0), n_k), rel=1e-6)


def test_points_approach_the_full_value_on_a_planted_signal():
    """Averaged over repeats, N/8 images miss the full-N strength by more than N/2 do; more images, less spread."""
    n = 64
    far, near = [], []
    for seed in range(12):
        a, b = _planted(n, 0.15, seed=seed)
        points = dict(_stats(a, b, batch=16).convergence)
        full = points[n]
        assert full == pytest.approx(0.15 * (1 - (H - 2) * (W - 2) / (H * W)) ** 0.5, rel=0.35)
        far.append(abs(points[n // 8] - full))
        near.append(abs(points[n // 2] - full))
    assert sum(far) / len(far) > 1.5 * sum(near) / len(near)


def _report(with_convergence: bool) -> Report:
    a, b = _planted(16, 0.3, seed=2)
    stats = _stats(a, b)
    if not with_convergence:
        stats.convergence = stats.mean_feature_convergence = None
    layers = [LayerResult(name="stage0", receptive_radius_px=10.0, reference_partial=False, stats=stats)]
    result = SchemeResult(scheme="native", patch={"scheme": "native", "native_padding": "zeros"}, layers=layers)
    return Report(environment={"ppp_audit": "test"}, model={"name": "planted", "weights": "synthetic"},
                  data={"kind": "synthetic", "num_images": 16}, input_size=80, margin=16, seed=0, device="cpu",
                  precision="fp32", results=[result])


def test_json_round_trip_and_type_check():
    report = _report(with_convergence=True)
    data = json.loads(report.to_json())
    assert data["schema_version"] == SCHEMA_VERSION == "1.13"
    layer = data["results"][0]["layers"][0]
    assert [len(point) for point in layer["convergence"]] == [2, 2, 2, 2]
    check_report_dict(data)
    loaded = Report.from_json(report.to_json())
    assert loaded == report
    assert loaded.results[0].layers[0].stats.convergence[-1] == (16, report.results[0].layers[0].stats.strength)
    layer["convergence"][1] = [4, "high"]
    with pytest.raises(TypeError, match=r"results\[0\]\.layers\[0\]\.convergence\[1\]\[1\] must be a number"):
        check_report_dict(data)


def test_a_1_4_report_without_the_fields_still_loads():
    data = json.loads(_report(with_convergence=True).to_json())
    data["schema_version"] = "1.4"
    for layer in data["results"][0]["layers"]:
        del layer["convergence"], layer["mean_feature_convergence"]
    check_report_dict(data)
    stats = Report.from_dict(data).results[0].layers[0].stats
    assert stats.convergence is None and stats.mean_feature_convergence is None


def test_per_layer_fields_of_a_newer_1_x_are_ignored():
    data = json.loads(_report(with_convergence=True).to_json())
    data["schema_version"] = "1.13"
    data["results"][0]["layers"][0]["from_the_future"] = [1, 2, 3]
    expected = _report(with_convergence=True).results[0].layers[0].stats
    assert Report.from_dict(data).results[0].layers[0].stats == expected


def test_figure_is_written_and_shown(tmp_path):
    from PIL import Image

    from ppp_audit.render import write_outputs
    from ppp_audit.render.figures import DPI, convergence_figure_size

    outputs = write_outputs(_report(with_convergence=True), tmp_path / "new")
    path = tmp_path / "new" / "figures" / "convergence.png"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = convergence_figure_size(1)
        assert image.size == (round(width * DPI), round(height * DPI))
    assert "convergence" in [f.key for f in outputs.figures]
    page = outputs.html.read_text(encoding="utf-8")
    assert 'src="figures/convergence.png"' in page and "Convergence in N" in page

    old = write_outputs(_report(with_convergence=False), tmp_path / "old")  # e.g. a 1.4 report through `show`
    assert "convergence" not in [f.key for f in old.figures]
    assert not (tmp_path / "old" / "figures" / "convergence.png").exists()
    assert "Convergence in N" not in old.html.read_text(encoding="utf-8")
