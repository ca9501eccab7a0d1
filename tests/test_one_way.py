"""One way for each thing (#25): torch-free configs, one error line, one atomic write, one stride and one grid."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import ppp_audit
from ppp_audit import files
from ppp_audit.baseline_options import BUILTIN_BASELINES
from ppp_audit.config import OPTIMIZERS
from ppp_audit.errors import ConfigError, PaddingShapeError, ReportFileError, describe_error, first_line, one_line

PACKAGE = Path(ppp_audit.__file__).parent


# ---- configs are torch-free ----------------------------------------------------------------------------------------


def test_configs_with_baselines_and_an_optimiser_import_neither_torch_nor_timm():
    """A fresh process builds an AuditConfig with every built-in baseline and their options (parsed as the CLI parses
    them), a FinetuneConfig with an optimiser and every common option, and the output, push, sweep, show and
    leaderboard configs (repo ids checked), and refuses bad ones, without loading torch or timm."""
    code = """
import math, sys
from ppp_audit.baseline_options import parse_baseline_options
from ppp_audit.config import (AuditConfig, FinetuneConfig, LeaderboardConfig, OutputConfig, PushConfig, ShowConfig,
                              SweepConfig)
from ppp_audit.errors import ConfigError

options = parse_baseline_options(["posenet.steps=50", "posenet.grid=none", "fconv.borders=0,64", "fconv.alpha=0.05"])
assert options == {"posenet": {"steps": 50, "grid": None}, "fconv": {"borders": (0, 64), "alpha": 0.05}}, options
audit = AuditConfig(model="resnet18", paddings=["reflect"], baselines=["posenet", "fconv", "uneven", "posenet"],
                    baseline_options=options, num_images=8, batch_size=4, input_size=64, device="cpu")
assert audit.baselines == ["posenet", "fconv", "uneven"], audit.baselines
ft = FinetuneConfig(steps=20, lr=1e-3, optimizer="SGD", batch_size=4, weight_decay=1e-4, momentum=0.8, bn="train",
                    labels="folder", distill_loss="mse", temperature=2.0, measure_every=5, train_images=16,
                    save_weights="out", repair=True, repair_weight=0.5, repair_layers=["stages.1"],
                    repair_compare=True)
assert ft.optimizer == "sgd" and FinetuneConfig(optimizer="adamw").optimizer == "adamw"
OutputConfig(json_out="-", out="report", progress=False, overwrite=True)
PushConfig(push_to_hub="me/audits", model_pr=True, model_repo="timm/resnet18.a1_in1k", private=True,
           revision="dev", create_pr=True)
SweepConfig(model_list=["models.txt"], out="sweep", force=True, retry_failed=True, timeout=60, pages=False,
            progress=False)
ShowConfig(out="figures", figures=False, overwrite=True, embed=True)
LeaderboardConfig(join="results.csv", top=0, push_to_hub="me/board", private=True, revision="dev", create_pr=True)
bad = [lambda: FinetuneConfig(optimizer="adamx"), lambda: AuditConfig(model="m", baselines=["posnet"]),
       lambda: parse_baseline_options(["posenet.stepz=1"]), lambda: parse_baseline_options(["uneven.x=1"]),
       lambda: AuditConfig(model="m", baselines=["posenet"], baseline_options={"posenet": {"steps": 0}}),
       lambda: AuditConfig(model="m", baselines=["uneven"], baseline_options={"fconv": {"alpha": 0.1}}),
       lambda: SweepConfig(timeout=math.nan), lambda: PushConfig(push_to_hub="bad id!"),
       lambda: LeaderboardConfig(top=-1), lambda: OutputConfig(progress="no"), lambda: ShowConfig(out=1)]
for make in bad:
    try:
        make()
    except ConfigError:
        pass
    else:
        raise AssertionError("accepted a bad setting")
heavy = [m for m in ("torch", "timm") if m in sys.modules]
assert heavy == [], heavy
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_built_in_baselines_are_declared_as_their_runners_are_registered():
    """The torch-free declarations (what configs check) are what the runners register with, in the same order."""
    from ppp_audit.metrics.baselines import BASELINE_RUNNERS, runner

    entries = BASELINE_RUNNERS.entries()
    assert [e.name for e in entries[:len(BUILTIN_BASELINES)]] == list(BUILTIN_BASELINES)
    for entry in entries[:len(BUILTIN_BASELINES)]:
        assert dict(entry.metadata) == BUILTIN_BASELINES[entry.name]
        assert entry.obj.__module__ == runner.__name__ and entry.distribution == "ppp-audit"


def test_the_optimiser_list_is_timms_and_fine_tuning_asks_timm(monkeypatch):
    """Every optimiser this timm has is accepted; one the installed timm lacks is refused before fine-tuning."""
    import timm.optim

    from ppp_audit.finetune import check_optimizer

    missing = sorted(set(timm.optim.list_optimizers()) - set(OPTIMIZERS))
    assert not missing, f"add {missing} to ppp_audit.config.OPTIMIZERS (this timm has them)"
    check_optimizer("adamw")
    monkeypatch.setattr(timm.optim, "list_optimizers", lambda: ["adamw"])
    with pytest.raises(ConfigError, match=r"timm .* has no optimizer 'sgd'"):
        check_optimizer("sgd")


# ---- one error line --------------------------------------------------------------------------------------------------


class _BrokenText(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize("exc, line, described", [
    (KeyError(), "KeyError", "KeyError"),  # str(KeyError()) is "": indexing its lines raised IndexError
    (RuntimeError(""), "RuntimeError", "RuntimeError"),
    (ValueError("  \n\t \n"), "ValueError", "ValueError"),
    (ValueError("\n  first line  \nsecond\nthird"), "first line", "ValueError: first line"),
    (OSError("one"), "one", "OSError: one"),
    (_BrokenText(), "_BrokenText", "_BrokenText"),
])
def test_first_line_and_describe_error(exc, line, described):
    assert first_line(exc) == line
    assert describe_error(exc) == described


def test_text_and_long_lines():
    assert first_line("") == "" and first_line("  \n ") == ""  # blank text is no line (only exceptions have a type)
    assert first_line("a\nb") == "a"
    long = "x" * 1000
    assert first_line(long) == "x" * 300 and first_line(long, limit=10) == "x" * 10
    assert describe_error(RuntimeError(long + "\nmore")) == "RuntimeError: " + "x" * 300
    assert one_line("a\n  b\t c\n") == "a b c" and one_line(long) == long  # all of it, on one line
    assert one_line(OSError()) == "OSError" and one_line("") == ""


def test_former_index_error_sites_say_the_type():
    """Sites that read ``str(exc).splitlines()[0]`` now say the type of an exception with an empty message."""
    from ppp_audit.geometry import probe
    from ppp_audit.paddings import PaddingScheme
    from ppp_audit.paddings.patcher import _checked_pad

    def forward(x):
        raise RuntimeError()

    assert probe(forward, 8) == "RuntimeError"

    class Silent(PaddingScheme):
        name = "silent-test"

        def pad(self, x, pad):
            raise RuntimeError()

    with pytest.raises(PaddingShapeError, match=r"\(left, right, top, bottom\): RuntimeError"):
        _checked_pad(Silent(), torch.zeros(1, 1, 4, 4), (1, 1, 1, 1), "conv")


# ---- one atomic write ------------------------------------------------------------------------------------------------


def test_no_hand_written_temp_file_and_rename():
    """Every write through a temporary file goes through files.atomic_write."""
    pattern = re.compile(r"os\.(replace|rename)\(|\btmp\w*\.(replace|rename)\(|\.tmp\"\)|\+ \"\.tmp\"")
    found = [f"{path.relative_to(PACKAGE)}:{k}" for path in PACKAGE.rglob("*.py") if path.name != "files.py"
             for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == []


def _failing_rename(monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.os, "replace", refuse)


def test_report_page_is_written_atomically(tmp_path, monkeypatch):
    from test_report import _report, _result

    from ppp_audit.render import write_html

    page = write_html(_report(_result("native", [0.1])), tmp_path, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == [page.name]  # no temporary file left beside it
    before = page.read_text(encoding="utf-8")
    _failing_rename(monkeypatch)
    with pytest.raises(OSError):
        write_html(_report(_result("native", [0.2])), tmp_path, [])
    assert page.read_text(encoding="utf-8") == before and sorted(p.name for p in tmp_path.iterdir()) == [page.name]


def test_leaderboard_and_baseline_files_are_written_atomically(tmp_path, monkeypatch):
    from ppp_audit.leaderboard import _atomic
    from ppp_audit.testing import _write_json

    _atomic(tmp_path / "board.html", "old")
    _write_json(tmp_path / "base.json", {"a": 1})
    _failing_rename(monkeypatch)
    with pytest.raises(ReportFileError, match="could not write"):
        _atomic(tmp_path / "board.html", lambda tmp: tmp.write_text("new"))
    with pytest.raises(OSError):
        _write_json(tmp_path / "base.json", {"a": 2})
    assert (tmp_path / "board.html").read_text() == "old" and (tmp_path / "base.json").read_text() == '{\n "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json", "board.html"]


# ---- one largest stride, one common stride, one grid ---------------------------------------------------------------


class _Staged(nn.Module):
    def __init__(self, reductions: list[int] | None) -> None:
        super().__init__()
        if reductions is not None:
            self.feature_info = [{"module": f"s{k}", "reduction": r} for k, r in enumerate(reductions)]


def test_one_largest_stride_everywhere():
    from ppp_audit import auditor, engine, geometry

    assert auditor.largest_stride is geometry.largest_stride and engine.largest_stride is geometry.largest_stride
    assert geometry.largest_stride(_Staged([2, 4, 8, 16])) == 16
    assert geometry.largest_stride(_Staged(None)) == geometry.DEFAULT_STRIDE == 32


def test_common_stride_covers_the_model_and_the_taps():
    from ppp_audit.geometry import common_stride

    assert common_stride(_Staged([4, 8, 16])) == 16
    assert common_stride(_Staged([4, 8, 16]), [4, 32]) == 32  # a tap deeper than the last stage
    assert common_stride(_Staged([8]), [4, 6]) == 24  # every map shifts by whole positions only at lcm(8, 4, 6)
    assert common_stride(_Staged([12]), [17]) == 17  # no small common multiple: the largest (the probe decides)
    assert common_stride(_Staged(None), [4]) == 32


def test_on_grid():
    from ppp_audit.geometry import on_grid

    assert [on_grid(v, 32) for v in (0, 15, 16, 47, 48, 100)] == [32, 32, 32, 32, 64, 96]
    assert [on_grid(v, 32, "up") for v in (0, 1, 32, 33)] == [32, 32, 32, 64]
    assert [on_grid(v, 32, "down") for v in (0, 31, 32, 95)] == [0, 0, 32, 64]
    with pytest.raises(ValueError, match="rounding"):
        on_grid(5, 4, "sideways")


def test_map_offset_is_the_alignment_rule():
    """The window's map lines up with the crop's when it grew by the same even count in height and width."""
    from ppp_audit.geometry import map_offset

    assert map_offset((1, 8, 4, 4), (1, 8, 8, 8)) == 2
    assert [map_offset((4, 4), window) for window in ((4, 4), (7, 7), (8, 6), (2, 2))] == [None] * 4
