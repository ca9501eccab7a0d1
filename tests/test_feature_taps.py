"""FeatureTaps on every kind of model: stages from what the model returns, maps always (N, C, H, W)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ppp_audit.errors import FeatureError
from ppp_audit.models import FeatureTaps, as_nchw


def _maps(taps: FeatureTaps, side: int) -> list[torch.Tensor]:
    with torch.no_grad():
        return taps(torch.zeros(1, 3, side, side))


def test_hrnet_stages_come_from_forward_intermediates_not_module_names() -> None:
    import timm

    model = timm.create_model("hrnet_w18_small", pretrained=False).eval()
    assert "stem" not in dict(model.named_modules())  # feature_info names a stage no module carries
    taps = FeatureTaps(model)
    maps = _maps(taps, 64)
    assert taps.names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert taps.strides == [2, 4, 8, 16, 32]
    assert [tuple(m.shape[-3:]) for m in maps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4),
                                                    (1024, 2, 2)]


def test_mvitv2_stages_are_read_although_feature_info_names_no_module() -> None:
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    torch.manual_seed(0)
    cfg = MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=(16, 32, 64, 128), num_heads=(1, 1, 1, 1))
    model = MultiScaleVit(cfg, img_size=64, num_classes=0).eval()
    assert "block.0" not in dict(model.named_modules())
    taps = FeatureTaps(model)
    maps = _maps(taps, 64)  # its relative positions fit 64 px only: the first call settles the names
    assert taps.names == ["block.0", "block.1", "block.2", "block.3"]
    assert taps.strides == [4, 8, 16, 32]
    assert [tuple(m.shape[-3:]) for m in maps] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]


def test_names_read_before_a_call_say_why_the_model_did_not_run() -> None:
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    cfg = MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=(16, 32, 64, 128), num_heads=(1, 1, 1, 1))
    model = MultiScaleVit(cfg, img_size=64, num_classes=0).eval()  # no pretrained_cfg: probed at timm's 224
    with pytest.raises(FeatureError, match="at its input size 224 px: IndexError") as info:
        FeatureTaps(model).names
    assert "before reading their names" in info.value.hint


def test_a_channels_last_stage_tapped_by_name_is_the_map_forward_intermediates_gives() -> None:
    import timm

    model = timm.create_model("test_mambaout", pretrained=False).eval()
    assert model.output_fmt == "NHWC"
    (hooked,) = _maps(FeatureTaps(model, ["stages.1"]), 64)
    stages = _maps(FeatureTaps(model), 64)
    assert hooked.shape == (1, 32, 8, 8)
    torch.testing.assert_close(hooked, stages[1], rtol=0, atol=0)


def test_a_token_sequence_tapped_by_name_is_folded_into_its_grid() -> None:
    import timm

    model = timm.create_model("test_vit", pretrained=False).eval()  # a class token before 4 x 4 patches
    (hooked,) = _maps(FeatureTaps(model, ["blocks.2"]), 64)
    stages = _maps(FeatureTaps(model), 64)
    assert hooked.shape == (1, 64, 4, 4)
    torch.testing.assert_close(hooked, stages[2], rtol=0, atol=0)


@pytest.mark.parametrize(("output", "message"), [
    (torch.zeros(2, 10), "not a spatial"),
    (torch.zeros(2, 35, 4), "35 tokens, not a square grid"),
    ((torch.zeros(2, 3, 4, 4), torch.zeros(2, 3)), "a tuple of 2, not one feature map"),
])
def test_outputs_that_are_no_map_are_refused(output, message) -> None:
    with pytest.raises(FeatureError, match=message):
        as_nchw(output, "layer")


def test_token_grids_find_their_prefix_and_channels_last_maps_their_layout() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # one prefix token, a 2 x 2 grid
    grid = as_nchw(tokens, "blocks")
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[:, :, 0, 1], tokens[:, 2])
    nhwc = torch.randn(1, 4, 4, 8)
    assert torch.equal(as_nchw(nhwc, "stage"), nhwc.permute(0, 3, 1, 2))
    cube = torch.randn(1, 4, 4, 4)  # every side equal: the model's declared layout decides
    assert torch.equal(as_nchw(cube, "stage"), cube)
    assert torch.equal(as_nchw(cube, "stage", channels_last=True), cube.permute(0, 3, 1, 2))


def test_a_pooled_head_tapped_by_name_is_refused() -> None:
    import timm

    model = timm.create_model("test_resnet", pretrained=False).eval()
    with pytest.raises(FeatureError, match="'fc' returns a \\(1, 1000\\) tensor"):
        _maps(FeatureTaps(model, ["fc"]), 64)


def test_a_model_without_stages_is_tapped_at_the_end_of_each_map_size() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, 2, 1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    taps = FeatureTaps(model)
    assert taps.names == ["1", "3", "5"]  # the ReLUs closing each size; the 1 x 1 pool is no map
    assert taps.strides == [1, 2, 4]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        maps = taps(x)
        assert torch.equal(maps[1], model[:4](x))


class _Disagreeing(nn.Module):
    """Stride-2 convolutions whose forward_intermediates returns one map each, whatever feature_info says."""

    def __init__(self, feature_info: list[dict], depth: int = 3) -> None:
        super().__init__()
        self.feature_info = feature_info
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 4, 4, 3, 2, 1) for i in range(depth))

    def forward_intermediates(self, x: torch.Tensor, intermediates_only: bool = False) -> list[torch.Tensor]:
        maps = []
        for conv in self.convs:
            x = conv(x)
            maps.append(x)
        return maps


def test_maps_that_feature_info_does_not_list_are_named_by_position() -> None:
    taps = FeatureTaps(_Disagreeing([dict(module="a", reduction=2), dict(module="b", reduction=4)]))
    maps = _maps(taps, 32)
    assert taps.names == ["stage_0", "stage_1", "stage_2"]
    assert taps.strides == [2, 4, 8]
    assert [m.shape[-1] for m in maps] == [16, 8, 4]


def test_a_declared_reduction_the_maps_contradict_gives_way_to_the_measured_stride() -> None:
    # like tresnet, which declares 2 for its stride-4 stem
    taps = FeatureTaps(_Disagreeing([dict(module="stem", reduction=1), dict(module="body", reduction=4)], depth=2))
    maps = _maps(taps, 299)
    assert [m.shape[-1] for m in maps] == [150, 75]
    assert taps.names == ["stem", "body"]
    assert taps.strides == [2, 4]  # 150 px is no map at stride 1: measured; 75 px is 299 / 4 rounded up: kept
