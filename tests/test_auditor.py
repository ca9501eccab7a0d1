"""One auditor under every caller: the audit, fine-tuning, the pytest helpers and the baselines see the same model,
patched the same way, measured with the same options."""

from __future__ import annotations

import pytest
import torch

from ppp_audit.config import AuditConfig, FinetuneConfig
from ppp_audit.engine import audit

TINY = dict(num_images=4, batch_size=4, input_size=64, margin=32, device="cpu")


def _strengths(result) -> list[float]:
    return [layer.stats.strength for layer in result.layers]


def test_seed_gives_the_same_random_init_model_to_every_caller():
    """``--no-pretrained --seed 3``: the audit, fine-tuning (before its first step) and ``testing.measure`` build the
    same weights, so they report the same native strengths; another seed gives other weights."""
    from ppp_audit.finetune import finetune_audit
    from ppp_audit.testing import measure

    torch.manual_seed(123)  # the global generator must not matter: the config's seed does
    config = AuditConfig("resnet10t", paddings=["reflect"], pretrained=False, seed=3, **TINY)
    plain = audit(config)
    torch.manual_seed(456)
    tuned = finetune_audit(config, FinetuneConfig(steps=1, lr=0.0, batch_size=2))
    torch.manual_seed(789)
    helper = measure("resnet10t", pretrained=False, seed=3, **TINY)
    other_seed = audit(AuditConfig("resnet10t", pretrained=False, seed=4, **TINY))

    native = _strengths(plain.scheme("native"))
    assert _strengths(tuned.scheme("native")) == native
    assert _strengths(helper.scheme("native")) == native
    assert _strengths(other_seed.scheme("native")) != native


def test_include_pools_reaches_training_predictions_and_saved_models(tmp_path):
    """With ``include_pools`` the model fine-tuned, the one whose held-out outputs are scored and the one saved are
    patched like the one whose PPP is reported: pools included. ``circular`` changes resnet10t's stem max-pool (its
    wrap-around rows are not inside the pooling window), so pools patched or not give different outputs."""
    from torch.utils.data import DataLoader

    from ppp_audit.finetune import CropDataset, finetune_audit, heldout_metrics, load_finetuned, predict
    from ppp_audit.images import DeadLeavesSource
    from ppp_audit.models import build_model

    model, info = build_model("resnet10t", pretrained=False, seed=0)
    config = AuditConfig("resnet10t", paddings=["circular"], pretrained=False, include_pools=True, **TINY)
    report = finetune_audit(config, FinetuneConfig(steps=1, lr=0.0, batch_size=2, save_weights=str(tmp_path)),
                            model=model, info=info)
    ft = report.scheme("circular").finetune

    loader = DataLoader(CropDataset(DeadLeavesSource(seed=0, scale=report.input_size), range(4), report.window,
                                    report.input_size),
                        batch_size=4)
    teacher, _ = predict(model, loader, info=info)
    with_pools, _ = predict(model, loader, info=info, scheme="circular", include_pools=True)
    without_pools, _ = predict(model, loader, info=info, scheme="circular")
    assert not torch.equal(with_pools, without_pools)  # the test can tell the two apart
    assert ft.before == heldout_metrics(with_pools, teacher)
    assert ft.after == heldout_metrics(with_pools, teacher)  # lr = 0: training changed nothing
    assert ft.settings["include_pools"] is True

    loaded, _, summary = load_finetuned(tmp_path / "circular")
    assert any(site.kind in ("pool", "pool_same") for site in summary.patched)
    assert torch.equal(predict(loaded, loader, info=info)[0], with_pools)


def test_include_pools_reaches_the_baselines(monkeypatch):
    """The baselines measure the model patched exactly as the PPP audit measures it (pools included)."""
    from ppp_audit.auditor import Normalise
    from ppp_audit.metrics.baselines import runner
    from ppp_audit.models import FeatureTaps, build_model
    from ppp_audit.paddings import padding

    model, info = build_model("resnet10t", pretrained=False, seed=0)
    probe = torch.rand(2, 3, 64, 64)
    seen: list[torch.Tensor] = []

    class NoResult:
        def to_dict(self) -> dict:
            return {}

    def recording_posenet(extract, train, test, *, config, normalize, device):
        with torch.no_grad():
            seen.append(extract(normalize(probe))[-1])
        return NoResult()

    monkeypatch.setattr(runner, "posenet_probe", recording_posenet)
    config = AuditConfig("resnet10t", paddings=["circular"], pretrained=False, include_pools=True,
                         baselines=["posenet"], **TINY)
    audit(config, model=model, info=info)

    taps, normalise = FeatureTaps(model), Normalise(info, torch.device("cpu"))
    with torch.no_grad(), padding(model, "circular", include_pools=True):
        expected = taps(normalise(probe))[-1]
    with torch.no_grad(), padding(model, "circular"):
        pools_native = taps(normalise(probe))[-1]
    assert len(seen) == 2  # native, then circular
    assert not torch.equal(expected, pools_native)  # the test can tell the two apart
    assert torch.equal(seen[1], expected)


def test_config_validates_types_with_one_line():
    from ppp_audit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"paddings must be a list or tuple of str .*e\.g\. paddings=\['reflect'\]"):
        AuditConfig("resnet18", paddings="reflect")
    with pytest.raises(ConfigError, match="num_images must be a int"):
        AuditConfig("resnet18", num_images="64")
    with pytest.raises(ConfigError, match="layers must be a list or tuple of str"):
        AuditConfig("resnet18", layers="layer1")
    with pytest.raises(ConfigError, match="model must be a str"):
        AuditConfig(None)
    with pytest.raises(ValueError):  # config errors are ValueErrors too
        AuditConfig("resnet18", pretrained="no")


def test_cli_options_are_the_config_fields():
    """Every CLI-offered setting of both configs is an option of ``ppp-audit audit``, with the config's help text."""
    import dataclasses

    import typer.main

    from ppp_audit.cli import app
    from ppp_audit.config import cli_fields

    command = typer.main.get_command(app).commands["audit"]
    params = {p.name: p for p in command.params}
    for config_class in (AuditConfig, FinetuneConfig):
        for f in cli_fields(config_class):
            name = f.metadata["cli_name"] or f.name
            assert name in params, name
            assert params[name].help == f.metadata["help"], name
    assert not {"groups", "match_context", "margin_tolerance"} & set(params)  # Python-only settings
    python_only = {f.name for f in dataclasses.fields(AuditConfig)} - {f.name for f in cli_fields(AuditConfig)}
    assert python_only == {"groups", "match_context", "margin_tolerance"}


def test_an_unreadable_image_gives_the_same_line_with_and_without_workers(tmp_path):
    """A truncated PNG passes the header check and fails to decode inside the DataLoader worker: with
    ``--strict-images`` the CLI's one line is the same with ``--workers 1`` as in-process (torch would re-raise it as a
    multi-line message, hint lost). Without it the image is skipped (tests/test_data_faults.py)."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from ppp_audit.cli import app

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    whole = (tmp_path / "2.png").read_bytes()
    (tmp_path / "2.png").write_bytes(whole[: len(whole) // 2])  # header intact, pixel data cut
    lines = {}
    for workers in ("0", "1"):
        result = CliRunner().invoke(app, ["resnet10t", "--no-pretrained", "--images", str(tmp_path), "-n", "3",
                                          "-b", "1", "--input-size", "64", "--device", "cpu", "--workers", workers,
                                          "--strict-images"])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        lines[workers] = result.stderr.strip().splitlines()
    assert len(lines["0"]) == 1 and "cannot read image" in lines["0"][0] and "2.png" in lines["0"][0]
    assert lines["1"] == lines["0"]


# ---------------------------------------------------------------------------------------------------------------------
# Every architecture: a number (Δ where a window runs, the labelled fallback otherwise) or one line
# ---------------------------------------------------------------------------------------------------------------------


def _tiny_fixed_size_hybrid():
    """A conv stem under a ViT from timm's classes, built for 32 px with no registered name (timm cannot rebuild it
    with ``dynamic_img_size``): no window larger than the crop runs."""
    from functools import partial

    import torch.nn as nn
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
    return VisionTransformer(img_size=32, patch_size=1, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                             embed_layer=partial(HybridEmbed, backbone=stem)).eval()


def test_a_fixed_size_hybrid_gets_a_labelled_mean_feature_number():
    from rich.console import Console

    from ppp_audit.models import module_info
    from ppp_audit.render import render_table

    model = _tiny_fixed_size_hybrid()
    config = AuditConfig("tiny-hybrid", paddings=["reflect"], num_images=8, batch_size=8, device="cpu")
    report = audit(config, model=model, info=module_info(model, input_size=32))
    assert report.estimator == "mean-feature" and report.margin == 0
    assert "no window larger than the crop runs" in report.geometry["changes"][0]
    for result in report.results:
        for layer in result.layers:
            assert layer.stats.strength == layer.stats.mean_feature_strength and layer.stats.strength >= 0
            assert layer.stats.ppp_map is not None and not layer.reference_partial
            assert layer.stats.convergence == layer.stats.mean_feature_convergence  # follows "strength"
            assert layer.stats.convergence[-1] == (8, layer.stats.strength)
    console = Console(record=True, width=200)
    console.print(render_table(report))
    assert "mean-feature estimator" in console.export_text()


def test_a_divisibility_constrained_model_is_measured_at_a_fitted_geometry():
    """timm's test_maxvit (built for 160 px) needs sides divisible by its 5x5 partitions at stride 32: the default
    margin 64 (window 288 px) fails ("height (72) must be divisible by window (5)"), so the margin becomes 160."""
    config = AuditConfig("test_maxvit", pretrained=False, paddings=["reflect"], num_images=2, batch_size=2,
                         device="cpu")
    report = audit(config)
    assert (report.input_size, report.margin, report.estimator) == (160, 160, "delta")
    (change,) = report.geometry["changes"]
    assert change.startswith("margin 64 -> 160, window 480 px") and "must be divisible by window (5)" in change
    assert all(layer.stats.strength is not None for layer in report.scheme("reflect").layers)


def test_an_unexpected_error_is_one_line_and_exit_1(monkeypatch):
    from typer.testing import CliRunner

    from ppp_audit.auditor import Auditor
    from ppp_audit.cli import app

    def broken(self, *args, **kwargs):
        raise RuntimeError("something nobody planned for\nsecond line")

    monkeypatch.setattr(Auditor, "measure", broken)
    result = CliRunner().invoke(app, ["resnet10t", "--no-pretrained", "-n", "2", "--input-size", "64",
                                      "--device", "cpu"])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ppp-audit: error: unexpected error (RuntimeError: something nobody planned for)")
    assert "--debug" in line and "Traceback" not in result.output
