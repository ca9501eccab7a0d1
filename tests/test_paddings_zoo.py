"""Every scheme on 30 timm architectures (random weights, small inputs): shapes kept, nothing left silently unpatched.

For each model and scheme, one forward pass runs under :class:`PaddingRecorder`, which sees every padded ATen op and the
module it ran in. The zero padding that still executes outside the patched sites must be exactly the sites the
:class:`PatchSummary` lists as unpatched with zero fill, and padding found only by tracing must be the functional calls
known to sit in those architectures' ``forward`` methods (not a layer the patcher should have handled).
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from ppp_audit.errors import PaddingShapeError
from ppp_audit.paddings import PaddingRecorder, count_zero_padding, patch_padding

# (timm name, smallest input that works for every scheme, create_model kwargs). Each the smallest member of its family
# at the smallest input where reflect/circular padding still fit the deepest maps (a 5x5 conv needs a map >= 3 px).
MODELS = [
    ("resnet10t", 48, {}),  # ResNet (tiered stem, avg-pool downsample)
    ("resnet18d", 48, {}),  # ResNet-D
    ("resnetv2_50x1_bit", 48, {}),  # ResNetV2 / BiT: StdConv2d, ConstantPad2d stem
    ("efficientnet_b0", 80, {}),
    ("tf_efficientnet_b0", 80, {}),  # Conv2dSame (TF 'SAME', asymmetric)
    ("tf_efficientnet_lite0", 80, {}),
    ("tf_efficientnet_cc_b0_4e", 80, {}),  # CondConv2d with dynamic same padding and routing
    ("mobilenetv3_small_050", 80, {}),
    ("tf_mobilenetv3_small_minimal_100", 48, {}),
    ("tf_mixnet_s", 144, {}),  # MixedConv2d of Conv2dSame, 9x9 kernels
    ("regnetx_002", 48, {}),
    ("convnext_atto", 128, {}),  # 7x7 depthwise
    ("densenetblur121d", 64, {}),  # DenseNet + BlurPool2d (reflect inside forward)
    ("vgg11", 32, {"mlp_ratio": 1 / 64}),  # narrower head only, to build fast
    ("inception_v3", 112, {}),  # F.avg_pool2d(padding=1) inside block forwards
    ("dla46_c", 64, {}),
    ("hrnet_w18_small", 64, {}),
    ("cs3darknet_s", 48, {}),  # CSPDarkNet (cs3)
    ("ghostnet_050", 48, {}),
    ("rexnet_100", 48, {}),
    ("repvgg_a0", 32, {}),
    ("xception41", 48, {}),
    ("nf_regnet_b0", 48, {}),  # NFNet family: ScaledStdConv2d
    # DM-NFNet: ScaledStdConv2dSame (static and dynamic 'same'); depths/channels narrowed through timm's cfg overlay.
    ("dm_nfnet_f0", 48, {"depths": (1, 1, 1, 1), "channels": (32, 64, 96, 128), "num_features": 256, "group_size": 16}),
    ("mobilevit_xxs", 48, {}),
    ("coatnet_pico_rw_224", 32, {"img_size": 32}),
    ("hgnetv2_b0", 80, {}),  # F.pad inside the stem's forward
    ("poolformer_s12", 48, {}),  # AvgPool2d(count_include_pad=False) token mixers
    ("lambda_resnet26t", 32, {}),  # Conv3d with padding inside lambda layers
    ("resnest14d", 32, {}),
]

# Padding that only tracing finds (functional calls in forward): module type per architecture, read off timm's source.
FUNCTIONAL = {
    "inception_v3": {"InceptionA", "InceptionC", "InceptionE"},  # F.avg_pool2d(x, 3, 1, padding=1)
    "hgnetv2_b0": {"StemV2"},  # F.pad(x, (0, 1, 0, 1))
    "densenetblur121d": {"BlurPool2d"},  # F.pad(x, ..., mode="reflect")
}

# (scheme, include_pools). zeros without pools must reproduce the original outputs bit for bit.
CASES = [("zeros", False), ("reflect", True), ("replicate", True), ("circular", True), ("partial", True),
         ("mean", True), ("random", True)]
ZERO_FILL = {"zeros", "partial"}  # schemes whose own padding is zeros


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def zoo(request):
    import timm

    name, size, kwargs = request.param
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model(x)
    return name, model, x, reference


def _run(model, x, summary):
    try:
        with torch.inference_mode(), PaddingRecorder(model) as recorder:
            out = model(x)
    finally:
        summary.restore()
    return out, recorder.ops


@pytest.mark.parametrize("scheme,include_pools", CASES, ids=[c[0] for c in CASES])
def test_scheme_on_zoo(zoo, scheme, include_pools):
    name, model, x, reference = zoo
    summary = patch_padding(model, scheme, include_pools=include_pools, example_input=x)
    out, ops = _run(model, x, summary)

    assert out.shape == reference.shape
    if scheme == "zeros":
        assert torch.equal(out, reference), "zeros through the patcher must reproduce the original outputs exactly"
    assert summary.patched, f"{name}: nothing patched"

    patched = {site.name for site in summary.patched}
    zero_padding = count_zero_padding(ops)
    left = {module for module in zero_padding if module not in patched}
    assert left == set(summary.unpatched_zero_padding)
    assert len(summary.unpatched_zero_padding) == len(left)

    ops_in_patched = defaultdict(set)
    for op in ops:
        if op.module in patched:
            ops_in_patched[op.module].add((op.op, op.fill))
    if scheme not in ZERO_FILL:  # a patched site must not pad with zeros any more
        assert not [m for m, found in ops_in_patched.items() if any(fill == "zeros" for _, fill in found)]
    if scheme != "zeros":  # nor let a convolution pad by itself (the scheme pads before it)
        assert not [m for m, found in ops_in_patched.items() if any(op.startswith("conv") for op, _ in found)]

    traced = {site.module_type for site in summary.unpatched if "tracing" in site.reason}
    assert traced == FUNCTIONAL.get(name, set())


def test_valid_on_zoo(zoo):
    """``valid`` either keeps the model's output shape or fails up front naming a layer; the model is left intact."""
    name, model, x, reference = zoo
    try:
        summary = patch_padding(model, "valid", example_input=x)
    except PaddingShapeError as exc:
        assert exc.layer in {n or "<root>" for n, _ in model.named_modules()}
        assert f"'{exc.layer}'" in exc.message
    else:
        out, _ = _run(model, x, summary)
        assert out.shape == reference.shape
    with torch.inference_mode():
        assert torch.equal(model(x), reference), "the model must be restored after a failed or finished patch"
