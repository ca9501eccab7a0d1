"""The public Python API (``ppp_audit.padding`` / ``ppp_audit.patch_padding``), --include-pools, and models with
nothing to patch (a pure ViT)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import ppp_audit
from ppp_audit.cli import app
from ppp_audit.errors import NothingToPatchError


@pytest.fixture(scope="module")
def resnet():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        return model, x, model(x)


def test_lazy_exports_are_the_patcher():
    from ppp_audit.paddings import padding, patch_padding

    assert ppp_audit.padding is padding and ppp_audit.patch_padding is patch_padding


def test_context_manager_patches_and_restores(resnet):
    model, x, reference = resnet
    with torch.no_grad():
        with ppp_audit.padding(model, "reflect") as summary:
            patched = model(x)
        restored = model(x)
    assert summary.scheme == "reflect" and len(summary.patched) == 11  # 3 stem convs + 4 BasicBlocks x 2
    assert [s.module_type for s in summary.unpatched] == ["MaxPool2d"]  # pools keep theirs by default
    assert not torch.allclose(patched, reference)
    assert torch.equal(restored, reference)


def test_patch_padding_takes_an_instance_and_round_trips(resnet):
    from ppp_audit.paddings import PatchSummary
    from ppp_audit.paddings.schemes import ReplicatePadding

    model, x, reference = resnet
    summary = ppp_audit.patch_padding(model, ReplicatePadding(), include_pools=True)
    try:
        assert {s.kind for s in summary.patched} == {"conv", "pool"} and not summary.unpatched
        data = json.loads(json.dumps(summary.to_dict()))
        assert PatchSummary.from_dict(data).to_dict() == data
    finally:
        summary.restore()
        summary.restore()  # idempotent
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_include_pools_flag_reaches_the_report():
    result = CliRunner().invoke(app, ["resnet10t", "--no-pretrained", "-p", "reflect", "--include-pools", "-n", "2",
                                      "-b", "2", "--input-size", "64", "--json", "-"])
    assert result.exit_code == 0, result.output
    reflect = json.loads(result.stdout)["results"][1]["patch"]
    assert [s["name"] for s in reflect["patched"] if s["kind"] == "pool"] == ["maxpool"]
    assert reflect["unpatched"] == []


def test_vit_has_nothing_to_patch():
    import timm

    from ppp_audit.engine import AuditConfig, audit

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    summary = ppp_audit.patch_padding(vit, "reflect", include_pools=True, example_input=torch.randn(1, 3, 224, 224))
    assert summary.patched == [] and summary.unpatched == []  # the patch-embedding conv has stride = kernel, no padding
    with pytest.raises(NothingToPatchError):
        audit(AuditConfig("vit_tiny_patch16_224", paddings=["reflect"], pretrained=False, num_images=2))


def test_vit_cli_exit_code_and_message():
    result = CliRunner().invoke(app, ["vit_tiny_patch16_224", "--no-pretrained", "-p", "reflect", "-n", "2"])
    assert result.exit_code == 2
    assert "model 'vit_tiny_patch16_224' has no padding (no convolution, pool or pad module pads)" in result.output
    assert "its position information comes from its position embeddings ('pos_embed'), not from padding" in \
        result.output
    # Without --padding the same line (tests/test_same_numbers.py, on timm's test_vit).
