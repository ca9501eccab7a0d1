"""The built-in schemes against their definitions; the patcher on pools, functional padding and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ppp_audit.errors import PaddingShapeError, PPPAuditError
from ppp_audit.paddings import PaddingScheme, SiteGeometry, get_padding, padding, patch_padding, trace_padding


def partial_conv_reference(conv: nn.Conv2d, x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Liu et al. 2018, eq. 1-2, with the mask ratio from convolving a ones map: W·(X⊙M)·sum(1)/sum(M) + b, and 0
    where the window holds no real pixel."""
    mask = F.pad(torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype), pad)
    window = torch.ones(1, 1, *conv.kernel_size, dtype=x.dtype)
    valid = F.conv2d(mask, window, stride=conv.stride, dilation=conv.dilation)
    raw = F.conv2d(F.pad(x, pad), conv.weight, None, conv.stride, 0, conv.dilation, conv.groups)
    ratio = window.sum() / valid.clamp(min=1)
    bias = conv.bias.view(1, -1, 1, 1) if conv.bias is not None else 0.0
    return torch.where(valid > 0, raw * ratio + bias, torch.zeros_like(raw))


CONVS = {
    "3x3": dict(in_channels=3, out_channels=4, kernel_size=3, padding=1),
    "3x3-stride2-odd": dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1),
    "5x5-dilated": dict(in_channels=2, out_channels=3, kernel_size=5, dilation=2, padding=4),
    "3x5-rect-nobias": dict(in_channels=3, out_channels=2, kernel_size=(3, 5), padding=(1, 2), bias=False),
    "7x7-depthwise-stride2": dict(in_channels=4, out_channels=4, kernel_size=7, stride=2, padding=3, groups=4),
    "same": dict(in_channels=2, out_channels=2, kernel_size=4, padding="same"),
}


@pytest.mark.parametrize("config", CONVS.values(), ids=CONVS.keys())
def test_partial_matches_definition(config):
    torch.manual_seed(0)
    conv = nn.Conv2d(**config).double()
    x = torch.randn(2, conv.in_channels, 11, 9, dtype=torch.float64)
    if config["padding"] == "same":  # PyTorch puts the odd pixel of 'same' padding right/bottom
        pad = (1, 2, 1, 2)
    else:
        ph, pw = conv.padding
        pad = (pw, pw, ph, ph)
    expected = partial_conv_reference(conv, x, pad)
    with torch.no_grad(), padding(conv, "partial"):
        out = conv(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    interior = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    if conv.stride == (1, 1) and max(conv.kernel_size) <= 3:  # far from the border partial == zeros
        with torch.no_grad():
            torch.testing.assert_close(out[interior], conv(x)[interior])


def test_partial_on_tf_same_conv_and_per_sample_bias():
    from timm.layers import CondConv2d, Conv2dSame

    torch.manual_seed(0)
    conv = Conv2dSame(3, 4, 3, stride=2).double()  # TF 'SAME' on 8x8: pads (0, 1, 0, 1)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad(), padding(conv, "partial"):
        torch.testing.assert_close(conv(x), partial_conv_reference(conv, x, (0, 1, 0, 1)), rtol=1e-12, atol=1e-12)

    cond = CondConv2d(3, 4, 3, padding=1, bias=True, num_experts=3).double()
    nn.init.normal_(cond.bias)
    routing = torch.softmax(torch.randn(2, 3, dtype=torch.float64), -1)
    with torch.no_grad(), padding(cond, "partial"):
        out = cond(x, routing)
    for i in range(2):  # each sample is a plain conv with its routed weight and bias
        plain = nn.Conv2d(3, 4, 3, padding=1).double()
        with torch.no_grad():
            plain.weight.copy_((routing[i] @ cond.weight).view(4, 3, 3, 3))
            plain.bias.copy_(routing[i] @ cond.bias)
            torch.testing.assert_close(out[i:i + 1], partial_conv_reference(plain, x[i:i + 1], (1, 1, 1, 1)))


def test_partial_on_avg_pool_is_count_include_pad_false():
    x = torch.randn(2, 3, 9, 10)
    pool = nn.AvgPool2d(3, stride=2, padding=1)  # counts the zero padding
    with padding(pool, "partial", include_pools=True) as summary:
        out = pool(x)
    assert [(s.kind, s.native) for s in summary.patched] == [("pool", "zeros")]
    torch.testing.assert_close(out, F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_partial_keeps_dtype(dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).to(dtype)
    x = torch.randn(1, 3, 6, 6).to(dtype)
    with torch.no_grad(), padding(conv, "partial"):
        out = conv(x)
    assert out.dtype == dtype
    expected = partial_conv_reference(conv.double(), x.double(), (1, 1, 1, 1))
    tolerance = 1e-12 if dtype == torch.float64 else 5e-2
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)


def test_partial_compiles_to_one_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.AvgPool2d(3, 1, 1))
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad(), padding(model, "partial", include_pools=True):
        eager = model(x)
        # fullgraph=True fails on any graph break; aot_eager traces through AOTAutograd without a C++ compiler.
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)


def test_mean_padding_fills_with_channel_means():
    x = torch.randn(2, 3, 5, 6)
    padded = get_padding("mean").pad(x, (1, 2, 3, 1))
    assert padded.shape == (2, 3, 9, 9)
    assert torch.equal(padded[..., 3:8, 1:7], x)
    border = torch.ones(9, 9, dtype=torch.bool)
    border[3:8, 1:7] = False
    means = x.mean(dim=(-2, -1))
    torch.testing.assert_close(padded[..., border], means[..., None].expand(2, 3, int(border.sum())))


def test_random_padding_matches_moments_and_changes_per_call():
    torch.manual_seed(0)
    scale, shift = torch.tensor([0.5, 3.0]).view(1, 2, 1, 1), torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    x = torch.randn(1, 2, 64, 64) * scale + shift
    scheme = get_padding("random")
    first, second = scheme.pad(x, (16, 16, 16, 16)), scheme.pad(x, (16, 16, 16, 16))
    assert torch.equal(first[..., 16:80, 16:80], x)
    assert not torch.equal(first, second)
    border = torch.ones(96, 96, dtype=torch.bool)
    border[16:80, 16:80] = False
    values = first[0][:, border]  # 5120 draws per channel
    torch.testing.assert_close(values.mean(-1), x.mean(dim=(0, 2, 3)), atol=0.1, rtol=0)
    torch.testing.assert_close(values.std(-1), x.std(dim=(0, 2, 3)), atol=0.1, rtol=0.05)


def test_zeros_through_the_patcher_is_exact_on_every_site_kind():
    from timm.layers import Conv2dSame, StdConv2dSame

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), nn.ZeroPad2d((1, 0, 2, 1)), StdConv2dSame(4, 4, 3, stride=2),
                          nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.AvgPool2d(3, 1, 1)).eval()
    x = torch.randn(2, 3, 15, 17)
    with torch.no_grad():
        reference = model(x)
        with padding(model, "zeros") as summary:
            out = model(x)
    assert [s.kind for s in summary.patched] == ["conv_same", "pad_module", "conv_same", "conv"]
    assert summary.patched[3].native == "reflect" and not torch.equal(out, reference)  # reflect -> zeros changes it
    with torch.no_grad():
        del model[3]
        reference = model(x)
        with padding(model, "zeros", include_pools=True):
            assert torch.equal(model(x), reference)  # avg pool counted its zeros already
        assert torch.equal(model(x), reference)


def test_pools_patched_only_on_request():
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

    model = nn.Sequential(nn.MaxPool2d(3, 2, 1), MaxPool2dSame(3, 2), AvgPool2dSame(2, 2), nn.MaxPool2d(3, 2, 1,
                                                                                                     ceil_mode=True))
    x = -torch.rand(1, 2, 21, 21) - 1.0  # all negative: -inf padding and zero padding give different maxima
    with padding(model, "zeros") as summary:
        native = model(x)
    assert not summary.patched
    assert [(s.module_type, s.native) for s in summary.unpatched] == [
        ("MaxPool2d", "-inf"), ("MaxPool2dSame", "-inf (tf-same)"), ("AvgPool2dSame", "zeros (tf-same)"),
        ("MaxPool2d", "-inf")]
    with padding(model, "zeros", include_pools=True) as summary:
        out = model(x)
    assert [s.kind for s in summary.patched] == ["pool", "pool_same", "pool_same"]
    assert "ceil_mode" in summary.unpatched[0].reason
    expected = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)  # 21 -> 11
    expected = F.max_pool2d(F.pad(expected, (1, 1, 1, 1)), 3, 2)  # TF same on 11, stride 2: pad 2 -> 6
    expected = F.avg_pool2d(expected, 2, 2)  # TF same on 6, stride 2, k 2: no pad -> 3
    expected = F.max_pool2d(expected, 3, 2, 1, ceil_mode=True)
    torch.testing.assert_close(out, expected)
    assert out.shape == native.shape and not torch.equal(out, native)


class _FunctionalPadding(nn.Module):
    """Pads inside forward, where no patch reaches (like Inception-v3's blocks and HGNet's stem)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        x = F.avg_pool2d(self.conv(x), 3, 1, padding=1)
        return F.pad(x, (0, 1, 0, 1))[..., :-1, :-1]


def test_functional_padding_is_reported_by_tracing():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), _FunctionalPadding())
    x = torch.randn(1, 3, 8, 8)
    summary = patch_padding(model, "reflect", example_input=x)
    try:
        assert [s.name for s in summary.patched] == ["1.conv"]
        assert [(s.name, s.module_type, s.native) for s in summary.unpatched] == [("1", "_FunctionalPadding", "zeros")]
        assert "avg_pool2d" in summary.unpatched[0].reason and "pad" in summary.unpatched[0].reason
        assert summary.unpatched_zero_padding == ["1"]
        assert {op.module for op in trace_padding(model, x) if op.fill == "zeros"} == {"1"}
    finally:
        summary.restore()
    assert not patch_padding(model, "reflect").unpatched  # without an example input only static sites are known


def test_valid_fails_up_front_on_a_residual_net_and_restores_it():
    import timm

    model = timm.create_model("resnet10t", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    with pytest.raises(PaddingShapeError) as info:
        patch_padding(model, "valid", example_input=x)
    assert info.value.layer == "layer1.0"
    assert "'valid'" in info.value.message and "'layer1.0' (BasicBlock)" in info.value.message
    with pytest.raises(PaddingShapeError, match="layer1.0"):  # no example input: one at the pretrained size
        patch_padding(model, "valid")
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_valid_works_on_vgg():
    import timm

    model = timm.create_model("vgg11", pretrained=False, mlp_ratio=1 / 64).eval()
    x = torch.randn(1, 3, 160, 160)  # 8 unpadded 3x3 convs and 5 pools leave a 1x1 map
    with torch.no_grad():
        reference = model(x)
        with padding(model, "valid", example_input=x) as summary:
            out = model(x)
            features = model.forward_features(x)
    assert len(summary.patched) == 8 and out.shape == reference.shape
    assert features.shape[-2:] == (1, 1)  # 5x5 with padding


def test_valid_audit_of_a_vgg_has_no_position_pattern():
    """Known answer (docs/metrics.md): without padding, crop features are exact crops of window features, so P = 0."""
    from timm.models.vgg import VGG

    from ppp_audit.engine import AuditConfig, audit
    from ppp_audit.models import ModelInfo

    torch.manual_seed(0)
    model = VGG([8, "M", 16, "M", 16, "M"], num_classes=4, mlp_ratio=0.25)
    info = ModelInfo("tiny-vgg", "vgg", "random-init", 48, (0.5,) * 3, (0.5,) * 3, 1.0)
    report = audit(AuditConfig("tiny-vgg", paddings=["valid"], pretrained=False, num_images=4, batch_size=4,
                               device="cpu", input_size=48, margin=16, groups=2), model=model, info=info)
    native, valid = report.results
    assert valid.scheme == "valid" and valid.patch["num_patched"] == 3
    def peak(layer):  # largest channel-RMS of the PPP map P
        return max(max(row) for row in layer.stats.ppp_map)

    assert [peak(layer) for layer in valid.layers] == [0.0] * len(valid.layers)
    assert min(peak(layer) for layer in native.layers) > 1e-3


def test_scheme_that_breaks_shapes_is_caught():
    class Cropping(PaddingScheme):
        name = "cropping"

        def pad(self, x, pad):
            return x

    conv = nn.Conv2d(1, 1, 3, padding=1)
    with pytest.raises(PaddingShapeError, match="keeps_shape"), padding(conv, Cropping()):
        conv(torch.randn(1, 1, 4, 4))


def test_reflect_on_too_small_maps_fails_up_front_naming_the_layer():
    import timm

    model = timm.create_model("resnet10t", pretrained=False).eval()
    with pytest.raises(PaddingShapeError) as info:
        patch_padding(model, "reflect", example_input=torch.randn(1, 3, 32, 32))
    assert info.value.layer == "layer4.0.conv2" and "(1, 1)" in info.value.message
    assert all("forward" not in vars(m) for m in model.modules())  # restored


def test_patching_twice_is_refused_and_leaves_the_first_patch():
    conv = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1))
    with padding(conv, "reflect") as first:
        with pytest.raises(PPPAuditError, match="already patched with scheme 'reflect'"):
            patch_padding(conv, "replicate")
        assert len(first.patched) == 2 and all("forward" in vars(m) for m in conv)
    assert all("forward" not in vars(m) for m in conv)


def test_output_hook_sees_site_geometry():
    seen = []

    class Recording(PaddingScheme):
        name = "recording"

        def pad(self, x, pad):
            return F.pad(x, pad)

        def adjust_output(self, out, site):
            seen.append(site)
            return out

    model = nn.Sequential(nn.Conv2d(2, 3, (3, 5), stride=(2, 1), padding=(1, 2), dilation=1), nn.ZeroPad2d(1))
    with padding(model, Recording()) as summary:
        model(torch.randn(1, 2, 7, 8))
    assert [s.name for s in summary.unpatched] == ["1"]  # a pad module has no output to re-weight
    (site,) = seen
    assert isinstance(site, SiteGeometry)
    assert (site.input_size, site.pad, site.kernel_size, site.stride, site.dilation) == (
        (7, 8), (2, 2, 1, 1), (3, 5), (2, 1), (1, 1))
    assert site.bias is model[0].bias
