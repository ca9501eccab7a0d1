"""Global context matched between the crop and window passes (docs/metrics.md, "Global context is not padding")."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ppp_audit.context import CONTEXT_MATCHES, ContextMatcher, Pooling, is_global, is_matched, qualified_name
from ppp_audit.engine import AuditConfig, audit
from ppp_audit.models import ModelInfo

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _matched_instances() -> list[tuple[nn.Module, torch.Tensor]]:
    """One instance of every built-in matched class, with an input of its layout."""
    from timm.layers import EffectiveSEModule, SEModule
    from timm.layers.grn import GlobalResponseNorm
    from timm.layers.eca import CecaModule, EcaModule
    from timm.layers.selective_kernel import SelectiveKernelAttn
    from timm.layers.squeeze_excite import SqueezeExciteCl
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models.senet import SEModule as LegacySEModule

    torch.manual_seed(0)
    grn_last, grn_first = GlobalResponseNorm(16), GlobalResponseNorm(16, channels_last=False)
    for grn in (grn_last, grn_first):  # zeros at init would make the module the identity, whatever it pools
        nn.init.normal_(grn.weight)
        nn.init.normal_(grn.bias)
    nchw = torch.randn(2, 16, 9, 11)
    return [
        (SqueezeExcite(16, rd_ratio=0.25), nchw),
        (SEModule(16, rd_ratio=0.25), nchw),
        (SEModule(16, rd_ratio=0.25, add_maxpool=True), nchw),
        (EffectiveSEModule(16), nchw),
        (SqueezeExciteCl(16, rd_ratio=0.25), nchw.permute(0, 2, 3, 1)),
        (EcaModule(16), nchw),
        (CecaModule(16), nchw),
        (SelectiveKernelAttn(16, num_paths=2), torch.randn(2, 2, 16, 9, 11)),
        (grn_last, nchw.permute(0, 2, 3, 1)),
        (grn_first, nchw),
        (LegacySEModule(16, reduction=4), nchw),
    ]


@pytest.mark.parametrize("index", range(11))
def test_matched_forward_equals_the_module_over_the_whole_map(index):
    module, x = _matched_instances()[index]
    module.eval()
    entry = CONTEXT_MATCHES.entry(qualified_name(module))
    dims = entry.metadata["spatial_dims"](module)
    with torch.no_grad():
        expected = module(x)
        matched = entry.obj(module, x, Pooling(dims))
        # over a centred block, the statistics differ: the matched forward does use the region it is given
        block = entry.obj(module, x, Pooling(dims, x.shape[dims[0]] - 4, x.shape[dims[1]] - 4))
    torch.testing.assert_close(matched, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(block, expected, atol=1e-4)


def test_every_built_in_match_is_tested():
    tested = {qualified_name(module) for module, _ in _matched_instances()}
    assert set(CONTEXT_MATCHES.names()) == tested


def test_a_class_named_as_a_matched_one_is_global_but_not_matched():
    class SEModule(nn.Module):  # not timm's: same name, unknown forward
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x.mean((2, 3), keepdim=True))

    module = SEModule()
    assert is_global(module) and not is_matched(module)
    holder = nn.Sequential(nn.Conv2d(3, 3, 1), module)
    assert ContextMatcher(holder).unmatched == ["1"]


def test_matching_leaves_modules_the_crop_pass_did_not_run():
    model = ValidSE().eval()
    context = ContextMatcher(model)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad(), context.matching():  # nothing recorded (the crop pass stopped before it): as it is
        matched = model(x)
    torch.testing.assert_close(matched, model(x).detach())


class ValidSE(nn.Module):
    """No padding anywhere, and a squeeze-excitation block whose gates depend on the content."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import SEModule

        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=0)
        self.se = SEModule(8, rd_ratio=0.5)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=0)
        nn.init.normal_(self.se.fc2.weight, std=2.0)  # strong gates: the context size would show at once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.se(torch.relu(self.conv1(x)))))


def _delta(model: nn.Module, matched: bool) -> float:
    windows = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    windows[..., :8, :] += 1.0  # context unlike the crop: the gates of a 48 px and a 32 px view differ
    crops = windows[..., 8:40, 8:40]
    context = ContextMatcher(model)
    with torch.no_grad(), context.recording():
        a = model(crops)
    with torch.no_grad(), (context.matching() if matched else torch.no_grad()):
        b = model(windows)
    off = (b.shape[-1] - a.shape[-1]) // 2
    return float((a - b[..., off:off + a.shape[-2], off:off + a.shape[-1]]).abs().max() / b.abs().max())


def test_padding_free_model_with_squeeze_excitation_matches_to_float_precision():
    model = ValidSE().eval()
    assert _delta(model, matched=True) < 1e-6
    assert _delta(model, matched=False) > 1e-3  # the window's gates see more content: not padding, yet Δ ≠ 0


class FramedSource:
    """Noise windows whose surroundings are brighter than the crop (as a photo's centred subject differs from its
    background): the content around the crop differs systematically from the crop's own."""

    def window(self, index: int, size: int) -> torch.Tensor:
        window = torch.rand(3, size, size, generator=torch.Generator().manual_seed(index))
        frame = (size - 32) // 2
        if frame > 0:
            window[:, :frame] += 0.5
            window[:, size - frame:] += 0.5
        return window.clamp(0, 1)

    def available(self) -> int | None:
        return None

    def describe(self) -> dict:
        return {"kind": "framed-noise"}

    def fits(self, index: int, size: int) -> bool:
        return True


def test_audit_of_padding_free_squeeze_excitation_gives_zero():
    info = ModelInfo(name="valid-se", architecture="valid-se", weights="random-init", input_size=32, mean=MEAN,
                     std=STD, crop_pct=1.0)
    strengths = {}
    for match in (True, False):
        config = AuditConfig(model="valid-se", num_images=8, batch_size=8, input_size=32, margin=32,
                             layers=["0.se", "0.conv2"], device="cpu", match_context=match)
        # The padded conv after the taps is the model's padding site (one that pads nowhere is refused).
        model = nn.Sequential(ValidSE(), nn.Conv2d(8, 8, 3, padding=1)).eval()
        report = audit(config, model=model, info=info, source=FramedSource())
        strengths[match] = [layer.stats.strength for layer in report.scheme("native").layers]
        for layer in report.scheme("native").layers:
            assert layer.context_matched == (["0.se"] if match else [])
            assert layer.context_unmatched == ([] if match else ["0.se"])
            if match:  # the probe follows local paths: the reach is the two convolutions', not the whole window
                assert layer.receptive_radius_px < 8
    assert max(strengths[True]) < 1e-5
    assert min(strengths[False]) > 0.05  # without matching, the brighter surroundings pass for padding


def test_efficientnet_b0_reports_matched_and_unmatched_modules_per_layer():
    import timm

    from ppp_audit.auditor import Auditor

    model = timm.create_model("efficientnet_b0", pretrained=False).eval()
    info = ModelInfo(name="efficientnet_b0", architecture="efficientnet_b0", weights="random-init", input_size=64,
                     mean=MEAN, std=STD, crop_pct=1.0)
    auditor = Auditor(AuditConfig(model="efficientnet_b0", num_images=2, input_size=64, device="cpu"),
                      model=model, info=info)
    influence = auditor.state.influence
    context = auditor.state.context
    assert len(context.matched) == 16 and context.unmatched == ["global_pool"]
    counts = [len(reach.upstream) for reach in influence]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] == 16  # every SE before each stage
    assert all(name in context.matched for reach in influence for name in reach.upstream)  # the head's pool is not
    # local reach: deeper stages reach further, and the shallow ones stay well inside the probe window
    radii = [reach.radius_px for reach in influence]
    assert radii == sorted(radii) and radii[0] < auditor.probe_window / 4


class GatedByCbam(nn.Module):
    """A padded conv followed by a CBAM block: global pooling with no matching forward."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers.cbam import CbamModule

        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.cbam = CbamModule(8, rd_ratio=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbam(torch.relu(self.conv(x)))


def test_unmatched_global_module_is_named_in_the_report():
    model = GatedByCbam().eval()
    info = ModelInfo(name="cbam", architecture="cbam", weights="random-init", input_size=32, mean=MEAN, std=STD,
                     crop_pct=1.0)
    config = AuditConfig(model="cbam", num_images=4, batch_size=4, input_size=32, margin=32, layers=["conv", "cbam"],
                         device="cpu")
    report = audit(config, model=model, info=info)
    conv, cbam = report.scheme("native").layers
    assert conv.context_unmatched == [] and cbam.context_unmatched == ["cbam.channel"]
    assert cbam.reference_partial  # its reference still sees the window's whole content
