"""Which channels carry the pattern (docs/metrics.md#channels): padding-aware neurons in every report.

Known answers: one channel of resnet18's stem carries all of ``act1``'s pattern; a padding-free model has none to
share out; pure noise is not passed off as a concentrated pattern.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ppp_audit.config import AuditConfig
from ppp_audit.engine import audit
from ppp_audit.errors import ConfigError
from ppp_audit.metrics import PPPAccumulator
from ppp_audit.models import ModelInfo
from ppp_audit.report import ChannelShares, LayerResult, Report, SchemeResult, top_count

CHANNEL = 7


def _info(name: str, size: int) -> ModelInfo:
    return ModelInfo(name=name, architecture=name, weights="random-init", input_size=size, mean=(0.5,) * 3,
                     std=(0.25,) * 3, crop_pct=1.0)


@pytest.fixture(scope="module")
def one_channel_report():
    """resnet18 at random init with conv1 zeroed but for channel 7, a positive 7x7 box filter, measured at act1."""
    from ppp_audit.models import build_model

    model, info = build_model("resnet18", pretrained=False)
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[CHANNEL] = 1.0 / model.conv1.weight[CHANNEL].numel()
    config = AuditConfig(model="resnet18", pretrained=False, layers=["act1"], input_size=64, margin=32,
                         num_images=16, batch_size=8, device="cpu")
    return audit(config, model=model, info=info)


def test_one_box_filter_channel_carries_the_whole_pattern(one_channel_report):
    layer = one_channel_report.scheme("native").layer("act1")
    shares = layer.stats.channel_shares
    assert layer.stats.channels == 64
    channel, share, side = shares.top[0]
    assert channel == CHANNEL and share >= 0.9 and side == "ring"  # zero padding on all four sides alike
    assert len(shares.top) == 1  # the other channels are 0 in both passes: no energy at all
    assert shares.energy_share["top_1pct"] >= 0.9 and shares.energy_share["top_10pct"] >= 0.9
    assert shares.effective_channels == pytest.approx(1.0, abs=0.05)
    low, high = shares.top_ci[0]
    assert low <= share <= high <= 1.0
    assert len(shares.top_maps) == 1 and len(shares.top_maps[0]) == layer.stats.height  # 32x32: kept as is
    assert shares.cumulative[0] == (1, pytest.approx(share)) and shares.cumulative[-1][0] == 64


def test_padding_free_layers_have_no_channel_shares():
    """Valid convolutions up to the tapped layers (the padded one after them makes the model auditable): Δ = 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1)).eval()
    config = AuditConfig(model="valid", num_images=16, batch_size=8, input_size=32, margin=32, layers=["1", "3"],
                         device="cpu")
    for layer in audit(config, model=model, info=_info("valid", 32)).scheme("native").layers:
        assert layer.stats.strength < 1e-5
        shares = layer.stats.channel_shares
        assert not shares.measured and shares.top == [] and shares.top_maps == [] and shares.cumulative == []
        assert shares.energy_share == {"top_1pct": None, "top_10pct": None} and shares.effective_channels is None


def _layer(signal: torch.Tensor, n: int, seed: int, with_reference: bool = True, top_channels: int = 8):
    """Statistics of synthetic features: Gaussian content ``b`` of unit variance, ``a = b + noise + signal``."""
    generator = torch.Generator().manual_seed(seed)
    acc = PPPAccumulator(groups=8, with_reference=with_reference, top_channels=top_channels)
    for _ in range(n // 8):
        b = torch.randn(8, *signal.shape, generator=generator, dtype=torch.float64)
        a = b + torch.randn(8, *signal.shape, generator=generator, dtype=torch.float64) + signal
        acc.update(a, b if with_reference else None)
    return acc.compute(stride_px=4.0)


def test_pure_noise_is_not_passed_off_as_a_concentrated_pattern():
    """The documented rule: with no pattern significantly above the noise (the 95 % jackknife interval of the
    debiased energy reaches 0), the shares are null. Without that rule the clamped energies of pure noise would give
    the top 1 % of 100 channels (one channel) about 7 % of the energy, not 1 %; here N = 16."""
    noise = torch.zeros(100, 8, 8, dtype=torch.float64)
    measured = [_layer(noise, 16, seed).channel_shares for seed in range(20)]
    assert sum(shares.measured for shares in measured) <= 2  # one-sided 2.5 % false positives, 20 tries (1 here)
    assert all(shares.top == [] and shares.energy_share["top_1pct"] is None for shares in measured
               if not shares.measured)


def test_a_pattern_spread_over_every_channel_reads_as_spread():
    """Debiased and cross-fitted: a weak pattern shared alike by 100 channels at N = 16 gives the top 1 % and 10 %
    about 1 % and 10 % of the energy (ranked and measured on the same images, 2.2 % and 17 %)."""
    signal = torch.zeros(100, 8, 8, dtype=torch.float64)
    signal[:, 0, :] = 0.6  # the top row of every channel
    for seed in range(3):
        shares = _layer(signal, 16, seed=seed).channel_shares
        assert shares.measured
        assert shares.energy_share["top_1pct"] < 0.025 and 0.06 < shares.energy_share["top_10pct"] < 0.14
        low, high = shares.energy_share_ci["top_10pct"]
        assert low <= 0.1 <= high
        assert shares.effective_channels > 70


@pytest.mark.parametrize("side", ["top", "bottom", "left", "right"])
def test_the_side_of_a_one_sided_channel(side):
    signal = torch.zeros(100, 8, 8, dtype=torch.float64)
    rows = {"top": (0, slice(None)), "bottom": (-1, slice(None)), "left": (slice(None), 0),
            "right": (slice(None), -1)}[side]
    signal[(42, *rows)] = 3.0
    shares = _layer(signal, 16, seed=1).channel_shares
    assert shares.top[0][0] == 42 and shares.top[0][1] > 0.9 and shares.top[0][2] == side


def test_mean_feature_estimator_has_channel_shares_too():
    signal = torch.zeros(10, 8, 8, dtype=torch.float64)
    signal[3] = 2.0
    signal[3, 2:6, 2:6] = 0.0  # a ring: not along one side
    shares = _layer(signal, 32, seed=2, with_reference=False).channel_shares
    assert shares.top[0][:1] == (3,) and shares.top[0][2] == "ring"


def test_top_channels_limits_the_list_and_the_maps():
    signal = torch.zeros(20, 40, 40, dtype=torch.float64)
    for c in range(6):
        signal[c, 0, :] = 1.0 + c
    shares = _layer(signal, 16, seed=3, top_channels=5).channel_shares
    assert [c for c, _, _ in shares.top] == [5, 4, 3, 2, 1]
    assert len(shares.top_ci) == 5 and len(shares.top_maps) == 4
    assert [len(shares.top_maps[0]), len(shares.top_maps[0][0])] == [20, 20]  # 40x40 block-averaged to <= 32


def test_top_count_rounds_to_at_least_one_channel():
    assert [top_count(c, 0.01) for c in (3, 24, 64, 100, 149, 150, 1280)] == [1, 1, 1, 1, 1, 2, 13]
    assert [top_count(c, 0.1) for c in (3, 24, 64, 1280)] == [1, 2, 6, 128]


def test_top_channels_setting_bounds():
    assert AuditConfig(model="m", top_channels=3).top_channels == 3
    for bad in (0, 65, 2.5):
        with pytest.raises(ConfigError):
            AuditConfig(model="m", top_channels=bad)


def test_top_channels_setting_reaches_the_report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()).eval()
    config = AuditConfig(model="tiny", num_images=8, batch_size=8, input_size=32, margin=32, layers=["1"],
                         device="cpu", top_channels=2)
    shares = audit(config, model=model, info=_info("tiny", 32)).scheme("native").layer("1").stats.channel_shares
    assert shares.measured and len(shares.top) == 2


def _report(layers: list[LayerResult]) -> Report:
    patch = {"scheme": "native", "native_padding": "zeros", "num_patched": 1, "patched": [], "unpatched": []}
    return Report(environment={"ppp_audit": "test", "torch": "-", "timm": "-", "python": "-"},
                  model={"name": "planted", "architecture": "planted", "weights": "synthetic"},
                  data={"kind": "synthetic", "num_images": 16}, input_size=32, margin=16, seed=0, device="cpu",
                  precision="fp32", results=[SchemeResult(scheme="native", patch=patch, layers=layers)])


@pytest.fixture(scope="module")
def planted_report():
    signal = torch.zeros(20, 8, 8, dtype=torch.float64)
    signal[4, 0, :] = 3.0
    signal[9, :, -1] = 1.0
    return _report([LayerResult(name="stage0", receptive_radius_px=8.0, reference_partial=False,
                                stats=_layer(signal, 16, seed=4))])


def test_report_round_trip_and_old_reports_load(planted_report, tmp_path):
    assert isinstance(planted_report.results[0].layers[0].stats.channel_shares, ChannelShares)
    assert Report.from_json(planted_report.to_json()) == planted_report
    old = planted_report.to_dict()
    old["schema_version"] = "1.9"
    for layer in old["results"][0]["layers"]:
        del layer["channel_shares"]
    loaded = Report.from_dict(old)
    assert loaded.results[0].layers[0].stats.channel_shares is None

    from ppp_audit.render import render_table, write_outputs

    outputs = write_outputs(loaded, tmp_path / "old")
    assert not any(f.key.startswith("channel") for f in outputs.figures)
    assert "Which channels carry the pattern" not in outputs.html.read_text(encoding="utf-8")
    assert not any("top 1 %" in column.header for column in render_table(loaded).columns)


def test_table_page_and_figures_show_the_channels(planted_report, tmp_path):
    from PIL import Image
    from rich.console import Console

    from ppp_audit.render import render_table, write_outputs

    console = Console(width=200, record=True, color_system=None)
    console.print(render_table(planted_report))
    text = console.export_text()
    assert "top 1 %" in text
    share = planted_report.results[0].layers[0].stats.channel_shares.energy_share["top_1pct"]
    assert f"{100 * share:.0f} %" in text
    outputs = write_outputs(planted_report, tmp_path / "new")
    keys = [f.key for f in outputs.figures]
    assert "channels" in keys and "channel_maps/stage0" in keys
    for figure in outputs.figures:
        with Image.open(outputs.out_dir / figure.filename) as image:
            assert image.size == figure.size_px
    page = outputs.html.read_text(encoding="utf-8")
    assert "Which channels carry the pattern" in page and 'src="figures/channel_energy.png"' in page
    assert "#4" in page  # the strongest channel, listed


def test_check_asserts_on_concentration(one_channel_report):
    from ppp_audit.testing import PPPBoundError, assert_ppp

    assert_ppp(one_channel_report, max_top_share=1.0, layers="act1")
    with pytest.raises(PPPBoundError, match="top 1 %") as failed:
        assert_ppp(one_channel_report, max_top_share=0.5, layers="act1")
    assert "act1" in str(failed.value)
    with pytest.raises(ValueError, match="share"):
        assert_ppp(one_channel_report, max_top_share=1.5, layers="act1")


def test_finetune_reports_the_channels_after_training_too():
    """FinetuneResult.layers are LayerResults, so the fine-tuned model's channels come with them, and the page's
    channel table has a column for them."""
    from ppp_audit.finetune import FinetuneConfig, finetune_audit
    from ppp_audit.models import build_model
    from ppp_audit.render.tables import render_channels_table

    model, info = build_model("resnet10t", pretrained=False)
    config = AuditConfig("resnet10t", paddings=["reflect"], pretrained=False, num_images=8, batch_size=4,
                         input_size=64, margin=32, device="cpu", layers=["layer2"])
    report = finetune_audit(config, FinetuneConfig(steps=1, lr=0.0, batch_size=4), model=model, info=info)
    tuned = report.scheme("reflect").finetune
    assert all(layer.stats.channel_shares is not None for layer in tuned.layers)
    assert Report.from_json(report.to_json()) == report
    headers = [column.header for column in render_channels_table(report).columns]
    assert any("+1 steps" in header for header in headers)
