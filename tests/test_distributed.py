"""Accumulators are sums: a 2-process gloo audit (torchrun) equals the single-process audit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ppp_audit.engine import AuditConfig, audit
from ppp_audit.report import Report

ARGS = ["resnet10t", "--no-pretrained", "--input-size", "64", "-n", "6", "-b", "2", "-p", "reflect", "--device", "cpu"]


@pytest.mark.parametrize("reference", ["window", "canvas"])  # canvases are sharded whole, their crops with them
def test_two_process_gloo_audit_matches_single_process(tmp_path, reference):
    out = tmp_path / "dist.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ppp_audit", *ARGS, "--reference", reference, "--json", str(out), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = Report.load(out)
    assert distributed.timings["processes"] == 2

    single = audit(AuditConfig(model="resnet10t", pretrained=False, input_size=64, num_images=6, batch_size=2,
                               paddings=["reflect"], device="cpu", reference=reference))
    assert distributed.data["num_images"] == single.data["num_images"] == 6
    assert distributed.geometry["reference"] == single.geometry["reference"]
    assert single.geometry["reference"]["kind"] == reference
    for d, s in zip(distributed.results, single.results):
        for dl, sl in zip(d.layers, s.layers):
            assert dl.stats.strength == pytest.approx(sl.stats.strength, rel=1e-5, abs=1e-9), (d.scheme, dl.name)
            assert dl.stats.strength_ci == pytest.approx(sl.stats.strength_ci, rel=1e-5, abs=1e-9)
            assert dl.stats.extent_px == sl.stats.extent_px
            # Mist snapshots stay per rank and rank 0 writes the report: its first image is window 0, as in one
            # process; the N point comes from the all-reduced sums.
            assert (dl.stats.mist is None) == (sl.stats.mist is None) == (dl.name != "layer3")
            if sl.stats.mist is not None:
                assert dl.stats.mist.counts == sl.stats.mist.counts == [1, 6]
                for row in ("mean_feature", "ppp"):
                    assert torch.tensor(getattr(dl.stats.mist, row)) == pytest.approx(
                        torch.tensor(getattr(sl.stats.mist, row)), rel=1e-4, abs=1e-5), (d.scheme, row)


def test_two_process_gloo_audit_of_photo_tiles_matches_single_process(tmp_path):
    """Photos are sharded whole, the crops of their tiles with them."""
    from test_photo_tiles import _photos

    folder = _photos(tmp_path / "photos", [(200, 264), (264, 200)], 10)
    out = tmp_path / "dist.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*ARGS, "-n", "16", "--images", str(folder)]  # the last -n wins: 16 crops, 2 a photo
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ppp_audit", *args, "--json", str(out), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = Report.load(out)
    single = audit(AuditConfig(model="resnet10t", pretrained=False, input_size=64, num_images=16, batch_size=2,
                               paddings=["reflect"], device="cpu", images=str(folder)))
    assert distributed.timings["processes"] == 2
    assert single.geometry["reference"]["kind"] == "photo" and single.geometry["reference"]["most_crops_per_photo"] == 2
    assert distributed.geometry["reference"] == single.geometry["reference"]
    assert distributed.data["num_images"] == single.data["num_images"] == 16
    for d, s in zip(distributed.results, single.results):
        for dl, sl in zip(d.layers, s.layers):
            assert dl.stats.strength == pytest.approx(sl.stats.strength, rel=1e-5, abs=1e-9), (d.scheme, dl.name)
            assert dl.stats.strength_ci == pytest.approx(sl.stats.strength_ci, rel=1e-5, abs=1e-9)
