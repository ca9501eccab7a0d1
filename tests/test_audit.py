"""Known answers of the whole audit (docs/metrics.md): padding removed -> 0, planted signal recovered, training -> more
PPP."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ppp_audit.engine import AuditConfig, audit
from ppp_audit.images import DeadLeavesSource
from ppp_audit.models import ModelInfo
from ppp_audit.report import Report

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _info(name: str, size: int) -> ModelInfo:
    return ModelInfo(name=name, architecture=name, weights="random-init", input_size=size, mean=MEAN, std=STD,
                     crop_pct=1.0)


class BorderBias(nn.Module):
    """Adds ``amplitude`` (plus per-sample noise) to every position within ``rings`` pixels of its input's border."""

    def __init__(self, amplitude: float, rings: int, noise: float) -> None:
        super().__init__()
        self.amplitude, self.rings, self.noise = amplitude, rings, noise

    def mask(self, height: int, width: int) -> torch.Tensor:
        m = torch.ones(height, width)
        m[self.rings:height - self.rings, self.rings:width - self.rings] = 0.0
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask(*x.shape[-2:]).to(x)
        return x + mask * (self.amplitude + self.noise * torch.randn(x.shape[0], 1, 1, 1))


def _small_cnn(padding: int) -> nn.Sequential:
    """Three 3x3 convolutions (the second with stride 2), all with ``padding``."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=padding), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=padding), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=padding), nn.ReLU(),
    ).eval()


def test_padding_free_model_has_zero_ppp():
    # A model that pads nowhere is refused (SPEC §3.5): the padding-free known answer is a padded net under `valid`,
    # which removes its padding (a global pool keeps the output shape that scheme must keep).
    model = nn.Sequential(*_small_cnn(padding=1), nn.AdaptiveAvgPool2d(1)).eval()
    config = AuditConfig(model="valid-vgg", paddings=["valid"], num_images=16, batch_size=8, input_size=32, margin=32,
                         layers=["1", "3", "5"], device="cpu")
    report = audit(config, model=model, info=_info("valid-vgg", 32))
    for layer in report.scheme("valid").layers:
        assert layer.stats.strength < 1e-5, layer.name
        assert max(map(max, layer.stats.ppp_map)) < 1e-5
        assert layer.stats.extent_px == 0.0
    assert report.scheme("valid").patch["num_patched"] == 3
    assert min(layer.stats.strength for layer in report.scheme("native").layers) > 1e-3


def test_planted_border_bias_is_recovered_within_ci():
    amplitude, rings, size, margin = 0.4, 2, 32, 32
    torch.manual_seed(0)
    # The padded conv after the tap is the model's padding site (one that pads nowhere is refused); "1" sees none.
    model = nn.Sequential(nn.Conv2d(3, 6, 1), BorderBias(amplitude, rings, noise=0.2), nn.Conv2d(6, 6, 3, padding=1))
    model.eval()
    config = AuditConfig(model="planted", num_images=64, batch_size=16, input_size=size, margin=margin,
                         layers=["1"], device="cpu", seed=1)
    stats = audit(config, model=model, info=_info("planted", size)).scheme("native").layer("1").stats

    # Reference: the mist computed directly from the padding-free features of the same windows.
    source = DeadLeavesSource(seed=1)
    windows = torch.stack([source.window(i, size + 2 * margin) for i in range(64)])
    with torch.no_grad():
        b = model[0]((windows - MEAN[0]) / STD[0])[..., margin:margin + size, margin:margin + size].double()
    mask = BorderBias(amplitude, rings, 0.0).mask(size, size).double()
    true_rms_p = amplitude * mask.square().mean().sqrt()
    true_strength = float(true_rms_p / b.var(0).mean().sqrt())
    lo, hi = stats.strength_ci
    assert lo <= true_strength <= hi
    assert hi - lo < 0.5 * true_strength  # the CI is informative, not vacuous
    assert stats.extent_px == rings
    assert all(profile.extent_px == rings for profile in stats.side_profiles.values())


@pytest.fixture(scope="module")
def lite0_reports(lite0_weights):
    """ImageNet-pretrained EfficientNet-Lite0 and its random-init twin, native (zeros) vs reflect."""
    common = dict(paddings=["reflect"], num_images=32, batch_size=16, device="cpu")
    pretrained = audit(AuditConfig(model="tf_efficientnet_lite0", weights=str(lite0_weights), **common))
    random_init = audit(AuditConfig(model="tf_efficientnet_lite0", pretrained=False, **common))
    return pretrained, random_init


def test_trained_model_shows_more_ppp_than_random_init_twin(lite0_reports):
    pretrained, random_init = lite0_reports
    trained = pretrained.scheme("reflect").layers
    untrained = random_init.scheme("reflect").layers
    assert [layer.stats.stride_px for layer in trained] == [2, 4, 8, 16, 32]
    for t, u in zip(trained[1:], untrained[1:]):
        assert t.stats.strength >= 2.0 * u.stats.strength, (t.name, t.stats.strength, u.stats.strength)
        assert t.stats.strength_ci[0] > u.stats.strength_ci[1], t.name


def test_delta_vanishes_where_receptive_field_misses_the_border(lite0_reports):
    checked = 0
    for report in lite0_reports:
        for result in report.results:
            for layer in result.layers:
                if layer.stats.interior_delta_rel is not None:
                    assert layer.stats.interior_delta_rel <= 1e-4, (result.scheme, layer.name)
                    checked += 1
    assert checked >= 8  # at least the three shallow stages of both models under both paddings


def test_report_json_round_trip(lite0_reports, tmp_path):
    report = lite0_reports[0]
    assert Report.from_json(report.to_json()) == report
    path = report.save(tmp_path / "r" / "report.json")
    assert Report.load(path.parent) == report
    data = report.to_dict()
    assert data["schema_version"] == "1.13" and data["window"] == 224 + 2 * data["margin"]
    assert data["geometry"]["margin"]["chosen_by"] == "receptive fields" and data["margin"] % 32 == 0
    assert data["results"][0]["patch"]["native_padding"] == "zeros"


def test_report_rejects_a_newer_major_schema_and_reads_a_newer_minor(lite0_reports):
    data = lite0_reports[0].to_dict()
    data["schema_version"] = "2.0"
    with pytest.raises(ValueError, match="upgrade ppp-audit"):
        Report.from_dict(data)
    data.update(schema_version="1.13", field_from_the_future={"x": 1})
    assert Report.from_dict(data).results == lite0_reports[0].results


def test_compiled_feature_passes_give_the_eager_numbers():
    common = dict(model="resnet10t", pretrained=False, paddings=["reflect"], num_images=4, batch_size=2,
                  input_size=64, device="cpu")
    eager = audit(AuditConfig(**common))
    compiled = audit(AuditConfig(**common, compile="aot_eager"))  # inductor compiles the same graphs, slower to build
    for e, c in zip(eager.results, compiled.results):
        for el, cl in zip(e.layers, c.layers):
            assert cl.stats.strength == pytest.approx(el.stats.strength, rel=1e-4, abs=1e-7), (e.scheme, el.name)


class Records(nn.Module):
    """Identity that records ``what(x)`` for every input it sees (its dtype, the precision flags in force, ...)."""

    def __init__(self, what) -> None:
        super().__init__()
        self.what = what
        self.seen: set = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(self.what(x))
        return x

    def __deepcopy__(self, memo: dict) -> "nn.Module":
        return self  # a spy: the audit's own copy of the model (it never runs the caller's) records into this one


def _fp32_math_flags(x: torch.Tensor | None = None) -> tuple[str, str]:
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def test_fp32_audits_measure_in_ieee_fp32_and_restore_the_flags():
    recorder = Records(_fp32_math_flags)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), recorder).eval()
    before = _fp32_math_flags()
    config = AuditConfig(model="recorder", num_images=4, batch_size=4, input_size=16, margin=32, layers=["1"],
                         device="cpu")
    audit(config, model=model, info=_info("recorder", 16))
    assert ("ieee", "ieee") in recorder.seen  # the measuring passes ran with TF32 off
    assert _fp32_math_flags() == before


def test_bf16_autocast_measures_in_bf16_and_agrees_with_fp32():
    """The GPU's bf16 path, run on CPU: features really are bf16, statistics still float64, strengths close to fp32."""
    torch.manual_seed(0)
    recorder = Records(lambda x: x.dtype)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          recorder).eval()
    common = dict(model="two-convs", paddings=["reflect"], num_images=16, batch_size=8, input_size=32, margin=32,
                  layers=["1", "3"], device="cpu")
    fp32 = audit(AuditConfig(**common), model=model, info=_info("two-convs", 32))
    assert recorder.seen == {torch.float32}
    recorder.seen.clear()
    bf16 = audit(AuditConfig(**common, precision="bf16"), model=model, info=_info("two-convs", 32))
    # The receptive-field probe (one-off, backward pass) stays fp32; the measuring passes are bf16.
    assert torch.bfloat16 in recorder.seen and bf16.precision == "bf16"
    for f, b in zip(fp32.results, bf16.results):
        for fl, bl in zip(f.layers, b.layers):
            assert bl.stats.strength == pytest.approx(fl.stats.strength, rel=0.05, abs=1e-3), (f.scheme, fl.name)
            assert bl.stats.strength != fl.stats.strength or fl.stats.strength == 0.0  # really computed in bf16


def test_tf32_is_switched_off_with_the_flags_of_older_torch_too(monkeypatch):
    """torch < 2.9 has no per-backend fp32_precision: the legacy allow_tf32 flags are set, then restored."""
    from types import SimpleNamespace

    from ppp_audit.auditor import ieee_fp32

    cudnn, matmul = SimpleNamespace(allow_tf32=True), SimpleNamespace(allow_tf32=True)
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    monkeypatch.setattr(torch.backends.cuda, "matmul", matmul)
    with ieee_fp32(True):
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
    assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)


def _padded_cnn() -> nn.Sequential:
    return _small_cnn(padding=1)


def test_schemes_share_one_window_pass_when_the_reference_does_not_depend_on_the_padding(monkeypatch):
    from ppp_audit.auditor import Auditor

    model = _padded_cnn()
    passes = []
    model[0].register_forward_hook(lambda m, a, out: passes.append(out.shape[-1]))
    config = AuditConfig(model="padded", num_images=8, batch_size=8, input_size=32, margin=32, layers=["1", "3", "5"],
                         device="cpu", paddings=["reflect", "circular"])
    auditor = Auditor(config, model=model, info=_info("padded", 32))
    passes.clear()
    shared = auditor.measure()
    assert shared.reference_shared is True
    assert sorted(passes) == [32, 32, 32, 96]  # three crop passes, one window pass
    assert audit(config, model=model, info=_info("padded", 32)).geometry["reference_shared"] is True
    monkeypatch.setattr(Auditor, "shares_reference", lambda self, schemes, model=None: False)
    passes.clear()
    separate = auditor.measure()
    assert sorted(passes) == [32, 32, 32, 96, 96, 96] and separate.reference_shared is False
    # The window's border does not reach the crop's block: the references, and so every number, are the same.
    for a, b in zip(shared.results, separate.results):
        for la, lb in zip(a.layers, b.layers):
            assert la.stats.strength == pytest.approx(lb.stats.strength, rel=1e-6), (a.scheme, la.name)


def test_a_partial_layer_a_global_module_or_a_single_scheme_keeps_a_window_pass_per_scheme(monkeypatch):
    from ppp_audit.auditor import Auditor

    config = AuditConfig(model="padded", input_size=32, margin=32, layers=["1"], device="cpu", paddings=["reflect"])
    auditor = Auditor(config, model=_padded_cnn(), info=_info("padded", 32))
    assert auditor.shares_reference(auditor.schemes) and not auditor.shares_reference(["native"])
    monkeypatch.setattr(auditor, "partial", lambda model=None: [True])
    assert not auditor.shares_reference(auditor.schemes)
    with_se = Auditor(AuditConfig(model="seresnext26d_32x4d", pretrained=False, input_size=64, margin=64,
                                  num_images=2, device="cpu", paddings=["reflect"]))
    assert with_se.state.context.modules and not with_se.shares_reference(with_se.schemes)
