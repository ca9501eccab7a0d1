"""Baselines (docs/baselines.md): PosENet probe, F-Conv location test and the static uneven-padding check, on known answers."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn as nn

from ppp_audit.errors import PPPAuditError
from ppp_audit.metrics.baselines import (
    TARGETS,
    LocationConfig,
    PosENetConfig,
    PosENetReadout,
    binomial_sf,
    layer_geometry,
    location_test,
    parse_baseline_options,
    paste,
    position_targets,
    posenet_probe,
    rankdata,
    spearman,
    uneven_layers,
    used_padding,
    validate_baselines,
)

MEAN, STD = 0.5, 0.25


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def horizontal_ramp(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): the x coordinate of every position, 0 at the left edge to 1 at the right."""
    width = x.shape[-1]
    ramp = (torch.arange(width, dtype=x.dtype) + 0.5) / width
    return ramp.view(1, 1, 1, -1).expand(x.shape[0], 1, x.shape[-2], width)


class PlantedGradient(nn.Module):
    """Position-free content features plus one planted channel that is the horizontal gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.content = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.cat([self.content(x), horizontal_ramp(x)], dim=1)]


class PlantedBorderDistance(nn.Module):
    """Content features, and the same scaled by the distance to the left border: pooled, their ratio is the content's
    mean x position, so location is linearly readable at any border width."""

    def __init__(self) -> None:
        super().__init__()
        self.content = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        content = torch.relu(self.content(x))
        return [torch.cat([content, content * horizontal_ramp(x)], dim=1)]


class Taps(nn.Module):
    """A plain network whose output is the one tapped map."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.net(x)]


def _pointwise() -> Taps:
    torch.manual_seed(0)
    return Taps(nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 1))).eval()


def _small_receptive_field() -> Taps:
    """Zero-padded convs, receptive field 5 px (radius 2 px after the first conv, 2 more after the second)."""
    torch.manual_seed(0)
    return Taps(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2),
                              nn.ReLU())).eval()


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    """48 dead-leaves crops of 64 px (centre of a larger window, as the audit takes them)."""
    from ppp_audit.images import DeadLeavesSource

    source = DeadLeavesSource(seed=3)
    return torch.stack([source.window(i, 96)[..., 16:80, 16:80] for i in range(48)])


# ---------------------------------------------------------------------------------------------------------------------
# PosENet
# ---------------------------------------------------------------------------------------------------------------------


def test_rankdata_averages_ties_and_spearman_matches_hand_values():
    assert rankdata(torch.tensor([10.0, 20.0, 20.0, 30.0])).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert rankdata(torch.tensor([3.0, 1.0, 2.0])).tolist() == [3.0, 1.0, 2.0]
    up = torch.arange(6.0)
    assert float(spearman(up, up)) == pytest.approx(1.0)
    assert float(spearman(-up, up)) == pytest.approx(-1.0)
    assert float(spearman(up.square(), up)) == pytest.approx(1.0)  # ranks, not values
    # Hand value: x = [1, 2, 3, 4, 5], y = [2, 1, 4, 3, 5]: sum d^2 = 4, rho = 1 - 6*4 / (5*24) = 0.8.
    assert float(spearman(torch.tensor([2.0, 1, 4, 3, 5]), torch.arange(1.0, 6))) == pytest.approx(0.8)
    # Ties in the target (a gradient map repeats each column): Pearson of average ranks, by hand = 0.8944.
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 1.0, 2.0, 2.0])
    assert float(spearman(x, y)) == pytest.approx(2 / 5**0.5, abs=1e-6)
    assert float(spearman(torch.full((5,), 0.3), up[:5])) == 0.0  # a constant prediction has no ranking
    assert float(spearman(0.3 + 1e-9 * up, up, tol=1e-6)) == 0.0  # nor one that is constant up to rounding


def test_position_targets_are_the_documented_maps():
    maps = position_targets(8)
    assert maps.shape == (len(TARGETS), 8, 8)
    assert maps.min() >= 0 and maps.max() <= 1
    horizontal, vertical, gaussian, h_stripes, v_stripes = maps
    assert torch.equal(horizontal, vertical.T) and torch.equal(h_stripes, v_stripes.T)
    assert (horizontal[:, 1:] > horizontal[:, :-1]).all() and (horizontal == horizontal[0]).all()
    assert gaussian[3:5, 3:5].min() > gaussian[0, 0] and torch.allclose(gaussian, gaussian.flip(0).flip(1))
    assert (h_stripes == h_stripes[:, :1]).all()  # horizontal stripes vary with y only


def test_readout_conv_is_a_valid_3x3_conv():
    from ppp_audit.metrics.baselines.posenet import conv3x3_valid

    x, weight, bias = torch.randn(2, 7, 9, 11), torch.randn(5, 7, 3, 3), torch.randn(5)
    expected = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=0)
    got = conv3x3_valid(x.double().permute(0, 2, 3, 1).contiguous(), weight.double(), bias.double())
    assert got.shape == expected.shape == (2, 5, 7, 9)
    assert torch.allclose(got, expected, atol=1e-12)


def test_readout_has_no_padding():
    readout = PosENetReadout(4, len(TARGETS), torch.zeros(4), torch.ones(4)).eval()
    assert readout.conv.padding == (0, 0) and readout.conv.kernel_size == (3, 3)
    features = torch.randn(1, 4, 1, 1).expand(2, 4, 10, 10).contiguous()  # constant over space
    out = readout(features)
    assert out.shape == (2, len(TARGETS), 8, 8)
    assert torch.allclose(out, out[..., :1, :1].expand_as(out))  # so nothing it outputs can depend on position


def test_posenet_position_free_features_give_spc_near_zero(crops):
    config = PosENetConfig(num_train=32, num_test=16, steps=150, grid=16)
    result = posenet_probe(_pointwise(), crops[:32], crops[32:], config=config, normalize=normalize)
    held_out = result.scores["held_out"]
    assert set(held_out) == set(TARGETS)
    assert all(abs(held_out[t]["spc"]) < 0.2 for t in TARGETS), held_out
    assert abs(result.mean_spc) < 0.1
    for constant in ("black", "white"):  # 1x1 convs of a constant image are constant: no ranking at all
        assert all(score["spc"] == 0.0 for score in result.scores[constant].values())


def test_posenet_planted_horizontal_gradient_gives_spc_near_one(crops):
    torch.manual_seed(0)
    config = PosENetConfig(num_train=32, num_test=16, steps=150, grid=16)
    result = posenet_probe(PlantedGradient().eval(), crops[:32], crops[32:], config=config, normalize=normalize)
    assert result.scores["held_out"]["horizontal"]["spc"] > 0.95
    assert result.scores["held_out"]["horizontal"]["mae"] < 0.1
    assert result.scores["black"]["horizontal"]["spc"] > 0.95  # the plant needs no content
    assert abs(result.scores["held_out"]["vertical"]["spc"]) < 0.2  # and says nothing about y


# ---------------------------------------------------------------------------------------------------------------------
# F-Conv location test
# ---------------------------------------------------------------------------------------------------------------------


def test_paste_puts_content_b_pixels_from_the_nearest_edges():
    content = torch.ones(1, 3, 4, 4)
    top_left, bottom_right = paste(content, 2, "top_left"), paste(content, 2, "bottom_right")
    assert top_left.shape == bottom_right.shape == (1, 3, 12, 12)
    assert top_left[0, 0, 2:6, 2:6].eq(1).all() and top_left.sum() == 3 * 16
    assert bottom_right[0, 0, 6:10, 6:10].eq(1).all() and bottom_right.sum() == 3 * 16
    assert torch.equal(bottom_right, top_left.flip(-1).flip(-2))


def test_binomial_rule():
    assert binomial_sf(0, 10) == pytest.approx(1.0)
    assert binomial_sf(10, 10) == pytest.approx(0.5**10)
    assert binomial_sf(8, 10) == pytest.approx((45 + 10 + 1) / 1024)


def test_location_is_at_chance_when_the_receptive_field_is_smaller_than_the_border(crops):
    content = crops[..., 16:48, 16:48]  # 32 px, a multiple of the network's stride 2
    config = LocationConfig(borders=(0, 8, 16, 32), num_train=16, num_test=16)
    result = location_test(_small_receptive_field(), content[:16], content[16:32], config=config,
                           normalize=normalize)
    for border, accuracy, decodable in zip(result.borders, result.accuracy, result.decodable):
        if border > 5:  # the receptive field (5 px) cannot reach the canvas edge from the content
            assert accuracy == pytest.approx(0.5, abs=0.1) and not decodable, (border, accuracy)
    assert result.decodable[0]  # touching the zero-padded edge, it can tell the corners apart
    assert result.largest_decodable_border == 0


def test_location_is_near_perfect_with_a_planted_border_signal(crops):
    torch.manual_seed(0)
    content = crops[..., 16:48, 16:48]
    config = LocationConfig(borders=(0, 64), num_train=16, num_test=16)
    result = location_test(PlantedBorderDistance().eval(), content[:16], content[16:32], config=config,
                           normalize=normalize)
    assert min(result.accuracy) >= 0.95, result.accuracy
    assert result.decodable_at_all_borders and result.largest_decodable_border == 64


class SubResolutionPlant(PlantedBorderDistance):
    """The planted border-distance signal riding on a constant, at 1e-6 of it: above float32 rounding, below the
    test's resolution (1e-4), like the placement-dependent rounding in a real network's near-constant channels."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [1.0 + 1e-6 * super().forward(x)[0]]


def test_location_ignores_differences_below_its_resolution(crops):
    torch.manual_seed(0)
    model, content = SubResolutionPlant().eval(), crops[..., 16:48, 16:48]
    blind = LocationConfig(borders=(16,), num_train=16, num_test=16, resolution=0.0)
    assert location_test(model, content[:16], content[16:32], config=blind, normalize=normalize).accuracy[0] > 0.9
    default = LocationConfig(borders=(16,), num_train=16, num_test=16)
    result = location_test(model, content[:16], content[16:32], config=default, normalize=normalize)
    assert not result.decodable[0], result.accuracy


# ---------------------------------------------------------------------------------------------------------------------
# Static uneven-padding check
# ---------------------------------------------------------------------------------------------------------------------


def _meta_timm(name: str) -> nn.Module:
    import timm

    with torch.device("meta"):  # no weights, no init cost: the check only needs shapes
        return timm.create_model(name)


# Hand computation for timm resnet50 (conv1 7x7/s2/p3, maxpool 3x3/s2/p1, stride 2 on each stage's first 3x3 conv
# (p1) and its 1x1 downsample (p0)), r = (H + 2p - (k-1) - 1) mod 2:
#   H=224: conv1 223 -> r=1 (out 112); maxpool 111 -> 1 (56); layer2.0.conv2 55 -> 1 (28), downsample 55 -> 1;
#          layer3.0.conv2 27 -> 1 (14), downsample 27 -> 1; layer4.0.conv2 13 -> 1 (7), downsample 13 -> 1.
#   H=225: conv1 224 -> 0 (113); maxpool 112 -> 0 (57); layer2 56 -> 0 (29); layer3 28 -> 0 (15); layer4 14 -> 0 (8).
# Every stride-1 layer has r = 0.
RESNET50_UNEVEN_224 = {
    "conv1": (3, 2, 3, 2),  # (left, right, top, bottom) padding read
    "maxpool": (1, 0, 1, 0),
    "layer2.0.conv2": (1, 0, 1, 0),
    "layer2.0.downsample.0": (0, -1, 0, -1),  # no padding: the last input row/col is never read
    "layer3.0.conv2": (1, 0, 1, 0),
    "layer3.0.downsample.0": (0, -1, 0, -1),
    "layer4.0.conv2": (1, 0, 1, 0),
    "layer4.0.downsample.0": (0, -1, 0, -1),
}


def test_uneven_check_matches_hand_computation_for_resnet50():
    model = _meta_timm("resnet50")
    found = {g.name: g.used for g in uneven_layers(model, 224)}
    assert found == RESNET50_UNEVEN_224
    assert uneven_layers(model, 225) == []


# tf_efficientnet_lite0 pads TF 'SAME' (dynamic) on its stride-2 convs: total = (ceil(H/s)-1)s + k - H, odd pixel
# bottom/right. H=224: conv_stem k3 -> 1 (0/1); blocks.1.0 k3 at 112 -> 1 (0/1); blocks.2.0 k5 at 56 -> 3 (1/2);
# blocks.3.0 k3 at 28 -> 1 (0/1); blocks.5.0 k5 at 14 -> 3 (1/2). H=225: totals 2, 2, 4, 2, 4: all even.
LITE0_UNEVEN_224 = {
    "conv_stem": (0, 1, 0, 1),
    "blocks.1.0.conv_dw": (0, 1, 0, 1),
    "blocks.2.0.conv_dw": (1, 2, 1, 2),
    "blocks.3.0.conv_dw": (0, 1, 0, 1),
    "blocks.5.0.conv_dw": (1, 2, 1, 2),
}


def test_uneven_check_handles_tf_same_convs():
    model = _meta_timm("tf_efficientnet_lite0")
    geometry = {g.name: g for g in layer_geometry(model, 224)}
    assert geometry["conv_stem"].kind == "conv_same" and geometry["conv_stem"].module_type == "Conv2dSame"
    assert {g.name: g.used for g in geometry.values() if g.uneven} == LITE0_UNEVEN_224
    assert uneven_layers(model, 225) == []


def test_used_padding_matches_the_formula_and_real_output_sizes():
    for size, pad, kernel, stride, dilation in itertools.product((7, 8, 13), (0, 1, 2), (1, 3, 4), (1, 2, 3), (1, 2)):
        if size + 2 * pad < dilation * (kernel - 1) + 1:
            continue
        conv = nn.Conv2d(1, 1, kernel, stride, pad, dilation)
        out = conv(torch.zeros(1, 1, size, size)).shape[-1]
        top, bottom = used_padding(size, pad, pad, kernel, stride, dilation, out)
        assert top == pad
        assert bottom == pad - (size + 2 * pad - dilation * (kernel - 1) - 1) % stride


def test_uneven_check_folds_explicit_pads_and_same_pools():
    from timm.layers.pool2d_same import MaxPool2dSame

    model = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 4, 3, stride=2), MaxPool2dSame(3, 2),
                          nn.MaxPool2d(2, ceil_mode=True))
    geometry = layer_geometry(model, 8)
    conv, same_pool, ceil_pool = geometry
    # ZeroPad2d + valid conv: input 8 padded to 9, (9 - 3) mod 2 = 0: reads the one padded row/col (bottom/right only).
    assert conv.name == "1" and conv.input_hw == (8, 8) and conv.declared == (0, 1, 0, 1) and conv.used == (0, 1, 0, 1)
    # SAME pool at 4: total (2-1)*2 + 3 - 4 = 1 -> bottom/right.
    assert same_pool.kind == "pool_same" and same_pool.used == (0, 1, 0, 1)
    # ceil-mode 2x2/2 pool at 2 -> 1: even, nothing hangs over.
    assert ceil_pool.used == (0, 0, 0, 0) and not ceil_pool.uneven
    assert layer_geometry(nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), 5)[0].used == (0, 1, 0, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Options, engine, report, CLI
# ---------------------------------------------------------------------------------------------------------------------


def test_options_are_parsed_and_validated():
    options = parse_baseline_options(["posenet.steps=50", "fconv.borders=0,64", "posenet.grid=none"])
    assert options == {"posenet": {"steps": 50, "grid": None}, "fconv": {"borders": (0, 64)}}
    assert validate_baselines(["uneven", "posenet", "posenet"], {"posenet": {"steps": 50}}) == ["uneven", "posenet"]
    for bad in (lambda: validate_baselines(["posenet", "posnet"]),
                lambda: validate_baselines(["uneven"], {"posenet": {"steps": 5}}),
                lambda: validate_baselines(["posenet"], {"posenet": {"steps": 0}}),
                lambda: parse_baseline_options(["posenet.stepz=5"]),
                lambda: parse_baseline_options(["fconv.alpha=high"])):
        with pytest.raises(PPPAuditError):
            bad()


class _FewImages:
    """A finite source: window ``i`` is filled with ``i``."""

    def __init__(self, count: int) -> None:
        self.count = count

    def available(self) -> int:
        return self.count

    def window(self, index: int, size: int) -> torch.Tensor:
        return torch.full((3, size, size), float(index))


def test_image_bank_takes_the_audits_crops_and_shrinks_splits_for_small_folders():
    from ppp_audit.metrics.baselines import ImageBank

    bank = ImageBank(_FewImages(6), window=12, margin=2, size=8)
    train, test = bank.split(64, 32, "posenet")
    assert train.shape == (4, 3, 8, 8) and test.shape == (2, 3, 8, 8)  # 6 images: 2 held out (1/3), 4 to train
    assert train[:, 0, 0, 0].tolist() == [0, 1, 2, 3] and test[:, 0, 0, 0].tolist() == [4, 5]
    with pytest.raises(PPPAuditError, match="at least 4 images"):
        ImageBank(_FewImages(3), window=12, margin=2, size=8).split(64, 32, "fconv")


@pytest.fixture(scope="module")
def tiny_report():
    from ppp_audit.engine import AuditConfig, audit
    from ppp_audit.models import ModelInfo

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1)).eval()
    info = ModelInfo(name="tiny", architecture="tiny", weights="random-init", input_size=32, mean=(MEAN,) * 3,
                     std=(STD,) * 3, crop_pct=1.0)
    config = AuditConfig(
        model="tiny", paddings=["circular"], num_images=8, batch_size=8, input_size=32, margin=32, layers=["0", "2"],
        device="cpu", baselines=["posenet", "fconv", "uneven"],
        baseline_options={"posenet": {"num_train": 8, "num_test": 4, "steps": 20, "grid": 8},
                          "fconv": {"num_train": 4, "num_test": 4, "borders": (0, 16)}},
    )
    return audit(config, model=model, info=info)


def test_audit_runs_baselines_per_scheme_and_round_trips(tiny_report):
    from ppp_audit.render import render_baselines
    from ppp_audit.report import Report

    base = tiny_report.baselines
    assert set(base) == {"posenet", "fconv", "uneven"}
    assert set(base["posenet"]) == set(base["fconv"]) == {"native", "circular"}
    assert base["uneven"]["num_uneven"] == 1 and base["uneven"]["layers"][0]["name"] == "2"  # 32 + 2 - 3 odd
    assert base["fconv"]["native"]["borders"] == [0, 16] and base["posenet"]["circular"]["num_train"] == 8
    # circular padding on a black canvas: the constant input stays constant everywhere, so PosENet reads nothing
    assert all(s["spc"] == 0.0 for s in base["posenet"]["circular"]["scores"]["black"].values())
    assert "baselines_s" in tiny_report.timings
    again = Report.from_json(tiny_report.to_json())
    assert again.baselines == json.loads(json.dumps(base))
    assert len(render_baselines(again)) == 4
    old = tiny_report.to_dict()
    del old["baselines"]  # a report written before baselines existed still loads
    assert Report.from_dict(old).baselines == {}


def test_cli_rejects_an_unknown_baseline():
    from typer.testing import CliRunner

    from ppp_audit.cli import app

    result = CliRunner().invoke(app, ["resnet18", "--no-pretrained", "--baselines", "posenet,nope"])
    assert result.exit_code != 0
    assert "unknown baseline 'nope'" in result.output
