"""Ctrl-C (README, "Bad input"): the first one stops after the current batch and keeps what was measured, exactly; a second one
aborts; the CLI saves the partial report and exits 130."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from ppp_audit.engine import AuditConfig, audit
from ppp_audit.errors import AuditInterrupted
from ppp_audit.images import DeadLeavesSource
from ppp_audit.models import ModelInfo
from ppp_audit.report import Report

SIZE, MARGIN = 32, 32
INFO = ModelInfo(name="padded", architecture="padded", weights="random-init", input_size=SIZE, mean=(0.5,) * 3,
                 std=(0.25,) * 3, crop_pct=1.0)


@dataclass(frozen=True)
class CtrlCWhileLoading:
    """Dead-leaves windows; loading window ``at`` presses Ctrl-C (``times`` times) on the auditing process."""

    at: tuple[int, ...]
    times: int = 1
    from_worker: bool = False

    def available(self) -> int | None:
        return None

    def describe(self) -> dict:
        return DeadLeavesSource(seed=3).describe()

    def window(self, index: int, size: int) -> torch.Tensor:
        if index in self.at:
            if self.from_worker:
                os.kill(os.getpid(), signal.SIGINT)  # the worker itself must ignore Ctrl-C ...
                os.kill(os.getppid(), signal.SIGINT)  # ... and leave it to the auditing process
            else:
                for _ in range(self.times):
                    os.kill(os.getpid(), signal.SIGINT)
        return DeadLeavesSource(seed=3).window(index, size)


@pytest.fixture(scope="module")
def padded() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.ReLU()).eval()


def _config(**overrides) -> AuditConfig:
    settings = dict(model="padded", paddings=["reflect"], num_images=16, batch_size=4, input_size=SIZE, margin=MARGIN,
                    layers=["1", "3"], device="cpu", seed=3)
    return AuditConfig(**{**settings, **overrides})


def _strengths(report: Report) -> list[float]:
    return [layer.stats.strength for result in report.results for layer in result.layers]


def test_first_ctrl_c_stops_after_the_batch_with_exact_statistics(padded):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(AuditInterrupted) as stopped:
        audit(_config(), model=padded, info=INFO, source=CtrlCWhileLoading(at=(5,)))
    report = stopped.value.report
    # Window 5 sits in the second batch of 4: that batch is finished, the third is never started.
    assert report.data["num_images"] == 8
    assert "after 8 of 16 images" in report.interrupted
    assert {layer.stats.n for result in report.results for layer in result.layers} == {8}
    complete = audit(_config(num_images=8), model=padded, info=INFO, source=DeadLeavesSource(seed=3))
    assert _strengths(report) == _strengths(complete)
    assert Report.from_json(report.to_json()).interrupted == report.interrupted
    assert signal.getsignal(signal.SIGINT) is before


def test_second_ctrl_c_aborts_at_once(padded):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as aborted:
        audit(_config(), model=padded, info=INFO, source=CtrlCWhileLoading(at=(5,), times=2))
    assert not isinstance(aborted.value, AuditInterrupted)
    assert signal.getsignal(signal.SIGINT) is before


def test_nothing_usable_before_the_stop_gives_no_report(padded):
    with pytest.raises(AuditInterrupted) as stopped:
        audit(_config(batch_size=1), model=padded, info=INFO, source=CtrlCWhileLoading(at=(0,)))
    assert stopped.value.report is None


def test_dataloader_workers_leave_ctrl_c_to_the_auditing_process(padded):
    with pytest.raises(AuditInterrupted) as stopped:
        audit(_config(workers=1), model=padded, info=INFO, source=CtrlCWhileLoading(at=(5,), from_worker=True))
    report = stopped.value.report
    measured = report.data["num_images"]
    # The worker loads ahead, so where the loop stops depends on timing; whole batches only, and the numbers are
    # those of a complete audit of that many images.
    assert measured % 4 == 0 and measured >= 4
    complete = audit(_config(num_images=measured), model=padded, info=INFO, source=DeadLeavesSource(seed=3))
    assert _strengths(report) == _strengths(complete)


def test_ctrl_c_during_baselines_keeps_the_ppp_statistics(padded, monkeypatch):
    def interrupted_baselines(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ppp_audit.metrics.baselines.run_baselines", interrupted_baselines)
    with pytest.raises(AuditInterrupted) as stopped:
        audit(_config(num_images=8, baselines=["uneven"]), model=padded, info=INFO)
    report = stopped.value.report
    assert report.baselines == {} and "during the baselines" in report.interrupted
    assert report.data["num_images"] == 8 and "baselines_s" not in report.timings


def test_ctrl_c_during_fine_tuning_keeps_the_audit():
    from ppp_audit.finetune import FinetuneConfig, finetune_audit
    from ppp_audit.models import build_model

    calls = []

    def interrupted_training(*args, **kwargs):
        calls.append(args[1])
        raise KeyboardInterrupt

    torch.manual_seed(0)
    model, info = build_model("resnet10t", pretrained=False)
    config = AuditConfig("resnet10t", paddings=["reflect"], pretrained=False, num_images=4, batch_size=4,
                         input_size=64, margin=32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ppp_audit.finetune.finetune", interrupted_training)
        with pytest.raises(AuditInterrupted) as stopped:
            finetune_audit(config, FinetuneConfig(steps=2, batch_size=2), model=model, info=info)
    report = stopped.value.report
    assert calls == ["reflect"]
    assert [r.scheme for r in report.results] == ["native", "reflect"]
    assert all(r.finetune is None for r in report.results)
    assert all(layer.stats.n == 4 for r in report.results for layer in r.layers)
    assert "while fine-tuning with 'reflect'" in report.interrupted


# a window per crop: window 5 is the sixth image (the canvases of the default reference hold several)
CLI_ARGS = ["resnet10t", "--no-pretrained", "-p", "reflect", "--input-size", "64", "-n", "12", "-b", "4",
            "--device", "cpu", "--reference", "window"]


@pytest.fixture
def ctrl_c_at_window_5(monkeypatch):
    original = DeadLeavesSource.window

    def window(self, index: int, size: int) -> torch.Tensor:
        if index == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, index, size)

    monkeypatch.setattr(DeadLeavesSource, "window", window)


@pytest.mark.parametrize("where", ["--out", "--json", "default"])
def test_cli_saves_the_partial_report_and_exits_130(ctrl_c_at_window_5, tmp_path, monkeypatch, where):
    from ppp_audit.cli import app

    monkeypatch.chdir(tmp_path)
    extra = {"--out": ["--out", "run"], "--json": ["--json", "run.json"], "default": []}[where]
    result = CliRunner().invoke(app, [*CLI_ARGS, *extra])
    assert result.exit_code == 130, result.output
    default = tmp_path / "ppp-audit-reports" / "resnet10t@random-init" / "native+reflect" / "report.json"
    saved = {"--out": tmp_path / "run" / "report.json", "--json": tmp_path / "run.json", "default": default}[where]
    assert saved.is_file(), sorted(str(p) for p in tmp_path.rglob("*"))
    data = json.loads(saved.read_text())
    assert data["data"]["num_images"] == 8 and "after 8 of 12 images" in data["interrupted"]
    assert "interrupted" in result.output and str(saved.relative_to(tmp_path)) in " ".join(result.output.split())

    shown = CliRunner().invoke(app, ["show", str(saved)])
    assert shown.exit_code == 0, shown.output
    assert "interrupted: stopped by Ctrl-C after 8 of 12 images" in " ".join(shown.output.split())


def test_an_interrupted_run_never_replaces_an_earlier_report(ctrl_c_at_window_5, tmp_path, monkeypatch):
    """The default folder may hold a finished report still waiting to be pushed: the partial one goes beside it."""
    from ppp_audit.cli import app

    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "ppp-audit-reports" / "resnet10t@random-init" / "native+reflect" / "report.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("the finished report")
    result = CliRunner().invoke(app, CLI_ARGS)
    assert result.exit_code == 130, result.output
    assert earlier.read_text() == "the finished report"
    partial = earlier.parent.with_name("native+reflect-2") / "report.json"
    assert "after 8 of 12 images" in json.loads(partial.read_text())["interrupted"]
    assert str(partial.relative_to(tmp_path)) in " ".join(result.output.split())
