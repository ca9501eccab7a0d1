"""fit_geometry: the crop and window sizes a model runs, the estimator they allow, and what was changed."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn as nn

from ppp_audit.errors import PPPAuditError
from ppp_audit.geometry import DELTA, MEAN_FEATURE, Geometry, apply_geometry, fit_geometry, window_units
from ppp_audit.models import FeatureTaps


def _timm(name: str, **kwargs) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _assert_runs(model: nn.Module, geometry: Geometry) -> None:
    """The model runs at the crop and the window, and every map of the window is the crop's grown by m / stride."""
    taps = FeatureTaps(model)
    with torch.no_grad():
        crops = taps(torch.zeros(1, 3, geometry.size, geometry.size))
        windows = taps(torch.zeros(1, 3, geometry.window, geometry.window))
    for crop, window, stride in zip(crops, windows, taps.strides, strict=True):
        assert window.shape[-1] - crop.shape[-1] == window.shape[-2] - crop.shape[-2] == 2 * geometry.margin // stride


@pytest.mark.parametrize(("size", "margin"), [(64, None), (70, 96)])
def test_a_plain_cnn_keeps_the_requested_geometry(size, margin) -> None:
    model = _timm("test_resnet")
    geometry = fit_geometry(model, 160, size, margin)
    assert geometry == Geometry(size, margin or 64, DELTA, (), {}, None, (2, 4, 8, 16, 32))
    assert not geometry.changes_model
    _assert_runs(model, geometry)


def test_a_margin_off_the_stride_is_the_users_to_fix() -> None:
    with pytest.raises(PPPAuditError, match="--margin 48 is not a multiple of the model's largest stride 32") as info:
        fit_geometry(_timm("test_resnet"), 160, 64, 48)
    assert info.value.hint == "use --margin 64"


def test_window_attention_gets_sides_divisible_by_its_partition() -> None:
    model = _timm("test_maxvit", img_size=96)  # 3 x 3 partitions at stride 32: sides must divide by 96
    assert window_units(model, FeatureTaps(model), 96) == {f"stages.{k}.blocks.0.{kind}": 3 * 2 ** (k + 2)
                                                            for k in range(4) for kind in ("attn_block", "attn_grid")}
    geometry = fit_geometry(model, 96)
    assert (geometry.size, geometry.margin, geometry.estimator) == (96, 96, DELTA)
    (change,) = geometry.changes
    assert change.startswith("margin 64 -> 96, window 288 px (224 px: AssertionError: height (56) must be divisible")
    assert "needs input sides divisible by 96" in change
    _assert_runs(model, geometry)
    rounded = fit_geometry(model, 96, 100)
    assert (rounded.size, rounded.margin) == (96, 96)
    assert rounded.changes[0].startswith("crop size 100 -> 96 and margin 64 -> 96, window 288 px (100 px:")


def test_a_fixed_size_timm_hybrid_is_rebuilt_to_take_a_window() -> None:
    model = _timm("vit_tiny_r_s16_p8_224", img_size=64, depth=2)  # a ResNet stem under a ViT, built for 64 px
    with pytest.raises(Exception):
        FeatureTaps(model)(torch.zeros(1, 3, 192, 192))
    geometry = fit_geometry(model, 64)
    assert (geometry.size, geometry.margin, geometry.estimator) == (64, 64, DELTA)
    assert geometry.constructor_kwargs == {"dynamic_img_size": True} and geometry.changes_model
    assert geometry.changes[0].startswith("rebuilt with dynamic_img_size=True to run at 64 and 192 px (built for 64")
    assert "position embeddings are resampled to each size" in geometry.changes[0]
    rebuilt = apply_geometry(model, geometry)
    assert rebuilt is not model and not rebuilt.training and rebuilt.pretrained_cfg is model.pretrained_cfg
    _assert_runs(rebuilt, geometry)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the same weights: at the size it was built for it computes the same features
        for a, b in zip(FeatureTaps(rebuilt)(x), FeatureTaps(model)(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _tiny_hybrid() -> nn.Module:
    """A conv stem under a ViT, made from timm's classes (no registered name, so timm cannot rebuild it)."""
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
    return VisionTransformer(img_size=32, patch_size=1, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                             embed_layer=partial(HybridEmbed, backbone=stem)).eval()


def test_a_fixed_size_hybrid_that_cannot_be_rebuilt_falls_back_to_the_mean_feature_estimator() -> None:
    model = _tiny_hybrid()
    geometry = fit_geometry(model, 32)
    assert (geometry.size, geometry.margin, geometry.estimator, geometry.window) == (32, 0, MEAN_FEATURE, 32)
    (reason,) = geometry.changes
    assert reason.startswith("no window larger than the crop runs (48 px: RuntimeError: The size of tensor a (145)")
    assert "mean-feature estimator on crops only" in reason
    assert not geometry.changes_model


def test_a_crop_the_model_was_not_built_for_is_taken_through_set_input_size() -> None:
    model = _tiny_hybrid()
    geometry = fit_geometry(model, 32, 24)
    assert (geometry.size, geometry.estimator, geometry.input_size) == (24, MEAN_FEATURE, 24)
    assert geometry.changes[0] == "resized to 24 px with set_input_size (built for 32 px)"
    with torch.no_grad():
        FeatureTaps(model)(torch.zeros(1, 3, 32, 32))  # the probe resized a copy, not the model
        maps = FeatureTaps(apply_geometry(model, geometry))(torch.zeros(1, 3, 24, 24))
    assert [m.shape[-1] for m in maps] == [6, 6]


def test_probes_leave_the_random_streams_and_the_training_mode_alone() -> None:
    model = _timm("test_vit", dynamic_img_size=False).train()
    torch.manual_seed(1)
    geometry = fit_geometry(model, 160)
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(3))
    assert model.training
    assert geometry.constructor_kwargs == {"dynamic_img_size": True}
    assert geometry.to_dict()["changes"] == list(geometry.changes)
