"""One classification of padded layers (``paddings.layers.padding_kind``), shared by the patcher and the uneven check."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ppp_audit.metrics.baselines import layer_geometry
from ppp_audit.paddings import padding_kind, patch_padding, same_padding, static_padding


def _timm_layers():
    from timm.layers.cond_conv2d import CondConv2d
    from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
    from timm.layers.std_conv import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

    return [
        (Conv2dSame(3, 4, 3, stride=2), "conv_same"),
        (Conv2dSameExport(3, 4, 3, stride=2), "conv_same"),
        (StdConv2dSame(3, 4, 3, stride=2), "conv_same"),  # padding 'SAME' with stride 2: dynamic
        (StdConv2dSame(3, 4, 3, stride=1), "conv"),  # static 'SAME' at stride 1
        (ScaledStdConv2dSame(3, 4, 3, stride=2), "conv_same"),
        (StdConv2d(3, 4, 3, padding=1), "conv"),
        (ScaledStdConv2d(3, 4, 3, padding=1), "conv"),
        (CondConv2d(3, 4, 3, stride=2, padding="same"), "conv_same"),
        (CondConv2d(3, 4, 3, padding=1), "conv"),
        (MaxPool2dSame(3, 2), "pool_same"),
        (AvgPool2dSame(3, 2), "pool_same"),
    ]


def test_padding_kind_names_every_layer_type():
    torch_layers = [
        (nn.Conv2d(3, 4, 3, padding=1), "conv"), (nn.Conv2d(3, 4, 1), "conv"),  # unpadded layers are still layers
        (nn.MaxPool2d(3, 2, 1), "pool"), (nn.AvgPool2d(2), "pool"),
        (nn.ZeroPad2d(1), "pad_module"), (nn.ConstantPad2d(1, 0.5), "pad_module"), (nn.ReflectionPad2d(1), "pad_module"),
        (nn.Conv1d(3, 4, 3, padding=1), None), (nn.Linear(3, 4), None), (nn.AdaptiveAvgPool2d(1), None),
    ]
    for module, kind in [*torch_layers, *_timm_layers()]:
        assert padding_kind(module) == kind, type(module).__name__


def test_conv2d_same_export_is_patched_as_a_same_conv():
    """It used to be skipped as "padded by its ZeroPad2d child", a child made lazily by the first forward: the padding
    of a model that had not run yet was never patched (and the uneven check counted it as a same conv all along)."""
    from timm.layers.conv2d_same import Conv2dSameExport

    torch.manual_seed(0)
    conv = Conv2dSameExport(3, 4, 3, stride=2)
    x = torch.randn(1, 3, 9, 9)
    pad = same_padding(9, 9, (3, 3), (2, 2), (1, 1))
    expected = F.conv2d(F.pad(x, pad, mode="replicate"), conv.weight, conv.bias, stride=2)
    model = nn.Sequential(conv)
    with torch.no_grad():
        summary = patch_padding(model, "replicate")
        assert [(s.name, s.kind) for s in summary.patched] == [("0", "conv_same")] and not summary.unpatched
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        summary.restore()
        native = model(x)  # creates the cached ZeroPad2d child
        assert isinstance(conv.pad, nn.ZeroPad2d)
        summary = patch_padding(model, "replicate")  # the child no longer runs, so it is no site of its own
        assert [(s.name, s.kind) for s in summary.patched] == [("0", "conv_same")] and not summary.unpatched
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        summary.restore()
        torch.testing.assert_close(model(x), native, rtol=0, atol=0)
    assert [(g.name, g.kind, g.declared) for g in layer_geometry(model, 9)] == [("0", "conv_same", pad)]


# (timm name, input size, create_model kwargs): Conv2dSame; CondConv2d with dynamic padding; StdConv2d with a
# ConstantPad2d stem; ScaledStdConv2dSame (static and dynamic) with AvgPool2d(Same) shortcuts.
MODELS = [
    ("tf_efficientnet_lite0", 64, {}),
    ("tf_efficientnet_cc_b0_4e", 64, {}),
    ("resnetv2_50x1_bit", 48, {}),
    ("dm_nfnet_f0", 48, {"depths": (1, 1, 1, 1), "channels": (32, 64, 96, 128), "num_features": 256, "group_size": 16}),
]


@pytest.mark.parametrize(("name", "size", "kwargs"), MODELS, ids=[m[0] for m in MODELS])
def test_uneven_check_examines_the_layers_the_patcher_classifies(name, size, kwargs):
    import timm

    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    modules = dict(model.named_modules())
    classified = {n: padding_kind(m) for n, m in modules.items() if padding_kind(m) not in (None, "pad_module")}
    examined = {g.name: g.kind for g in layer_geometry(model, size)}
    assert examined == classified
    assert any(kind.endswith("_same") for kind in examined.values()) or name == "resnetv2_50x1_bit"

    summary = patch_padding(model, "replicate", include_pools=True)
    try:
        assert not summary.unpatched
        patched = {s.name: s.kind for s in summary.patched if s.kind != "pad_module"}
        assert patched.items() <= examined.items()  # every patched conv/pool is examined, as the same kind
        for layer in examined.keys() - patched.keys():  # the rest add no padding of their own
            assert examined[layer] in ("conv", "pool") and not any(static_padding(modules[layer])), layer
        pad_modules = {s.name for s in summary.patched if s.kind == "pad_module"}
        assert pad_modules == {n for n, m in modules.items() if padding_kind(m) == "pad_module"}
        assert bool(pad_modules) == (name == "resnetv2_50x1_bit")
    finally:
        summary.restore()
