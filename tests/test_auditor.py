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

    loader = DataLoader(CropDataset(DeadLeavesSource(seed=0), range(4), report.window, report.input_size),
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
    assert "groups" not in params  # a Python-only setting
    assert {f.name for f in dataclasses.fields(AuditConfig)} - {f.name for f in cli_fields(AuditConfig)} == {"groups"}


def test_an_unreadable_image_gives_the_same_line_with_and_without_workers(tmp_path):
    """A truncated PNG passes the header check and fails to decode inside the DataLoader worker: the CLI's one line
    is the same with ``--workers 1`` as in-process (torch would re-raise it as a multi-line message, hint lost)."""
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
                                          "-b", "1", "--input-size", "64", "--device", "cpu", "--workers", workers])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        lines[workers] = result.stderr.strip().splitlines()
    assert len(lines["0"]) == 1 and "cannot read image" in lines["0"][0] and "2.png" in lines["0"][0]
    assert lines["1"] == lines["0"]
