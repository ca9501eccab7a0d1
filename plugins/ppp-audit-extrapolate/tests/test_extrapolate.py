"""Tests of the example plugin: registration through the entry point, exactness on affine maps, use by the patcher."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ppp_audit.paddings import get_padding, list_paddings, patch_padding
from ppp_audit_extrapolate import ExtrapolatePadding


def affine(height: int, width: int, offset: int = 0) -> torch.Tensor:
    """An affine map a·i + b·j + c per channel, on the grid shifted by ``offset`` (2 channels, different slopes)."""
    i = torch.arange(-offset, height - offset, dtype=torch.float64)[:, None]
    j = torch.arange(-offset, width - offset, dtype=torch.float64)[None, :]
    return torch.stack([0.5 * i - 2.0 * j + 3.0, -1.5 * i + 0.25 * j - 1.0])[None]


def test_registered_through_the_entry_point():
    dist = importlib.metadata.distribution("ppp-audit-extrapolate")
    assert any(ep.group == "ppp_audit.paddings" and ep.name == "extrapolate" for ep in dist.entry_points)
    assert isinstance(get_padding("extrapolate"), ExtrapolatePadding)
    info = {i.name: i for i in list_paddings()}["extrapolate"]
    assert info.distribution == "ppp-audit-extrapolate"
    assert info.description == ExtrapolatePadding.description


def test_exact_on_affine_maps():
    padded = ExtrapolatePadding().pad(affine(5, 4), (2, 3, 1, 2))
    # The padded map is the same affine function evaluated on the larger grid (origin moved by left/top).
    i = torch.arange(-1, 5 + 2, dtype=torch.float64)[:, None]
    j = torch.arange(-2, 4 + 3, dtype=torch.float64)[None, :]
    expected = torch.stack([0.5 * i - 2.0 * j + 3.0, -1.5 * i + 0.25 * j - 1.0])[None]
    torch.testing.assert_close(padded, expected, rtol=0, atol=1e-12)


def test_single_pixel_is_replicated_and_zero_pad_is_identity():
    x = torch.randn(2, 3, 1, 4)
    padded = ExtrapolatePadding().pad(x, (0, 0, 2, 1))
    assert torch.equal(padded, F.pad(x, (0, 0, 2, 1), mode="replicate"))
    assert torch.equal(ExtrapolatePadding().pad(x, (0, 0, 0, 0)), x)


def test_a_patched_conv_sees_no_border_on_affine_content():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 5, padding=2).double()
    x = affine(8, 9)
    summary = patch_padding(conv, "extrapolate")
    try:
        with torch.no_grad():
            out = conv(x)
    finally:
        summary.restore()
    assert [s.name for s in summary.patched] == ["<root>"] and not summary.unpatched
    # Without padding, on the affine map continued by 2 pixels: the same numbers, border included.
    with torch.no_grad():
        reference = F.conv2d(affine(12, 13, offset=2), conv.weight, conv.bias)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-10)
    # Zero padding, by contrast, shows the border.
    with torch.no_grad():
        assert not torch.allclose(conv(x), reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keeps_dtype_and_shape(dtype):
    x = torch.randn(1, 4, 6, 7).to(dtype)
    padded = ExtrapolatePadding().pad(x, (1, 2, 3, 0))
    assert padded.dtype == dtype and padded.shape == (1, 4, 9, 10)
