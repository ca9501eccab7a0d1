"""The patcher on real timm models, proved by counting the padding that really executes."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from ppp_audit.errors import PaddingShapeError, UnknownPaddingError
from ppp_audit.paddings import count_zero_padding, padding, patch_padding, trace_padding

MODELS = ["resnet50", "tf_efficientnet_b0", "resnetv2_50x1_bit", "nfnet_l0"]


@pytest.fixture(scope="module", params=MODELS)
def model_and_input(request):
    torch.manual_seed(0)
    model = timm.create_model(request.param, pretrained=False).eval()
    return request.param, model, torch.randn(2, 3, 96, 96)


def test_reflect_leaves_no_zero_padding_executing(model_and_input):
    name, model, x = model_and_input
    assert sum(count_zero_padding(trace_padding(model, x)).values()) > 0  # the model did pad with zeros
    with padding(model, "reflect") as summary:
        executed = trace_padding(model, x)
    assert count_zero_padding(executed) == {}, name
    assert summary.patched and summary.native_padding == "zeros"
    # Patched sites now pad by reflection; what still pads otherwise (with -inf, in max-pools) is exactly what the
    # summary reports as unpatched: nothing more, nothing less.
    assert {op.module for op in executed if op.fill == "reflect"} == {site.name for site in summary.patched}
    assert {op.module for op in executed if op.fill != "reflect"} == {site.name for site in summary.unpatched}


def test_zeros_reapplied_equals_original_and_restore_is_exact(model_and_input):
    name, model, x = model_and_input
    with torch.no_grad():
        original = model(x)
        with padding(model, "zeros"):
            assert torch.equal(model(x), original), name
        with padding(model, "reflect"):
            changed = model(x)
        assert not torch.allclose(changed, original)
        assert changed.shape == original.shape
        assert torch.equal(model(x), original)  # the context manager restored everything


def test_schemes_pad_as_named():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.zeros_(conv.weight)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 1.0  # output(y, x) = input(y - 1, x - 1): shows the padded row/col
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    expected_first_row = {"zeros": [0, 0, 0], "reflect": [5, 4, 5], "replicate": [1, 1, 2], "circular": [9, 7, 8]}
    for scheme, row in expected_first_row.items():
        with padding(conv, scheme), torch.no_grad():
            assert conv(x)[0, 0, 0].tolist() == row, scheme


def test_scheme_that_cannot_pad_names_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 3, 5, padding=2)).eval()
    with padding(model, "reflect"), pytest.raises(PaddingShapeError, match="layer '0'"):
        model(torch.randn(1, 3, 2, 2))


def test_unknown_scheme_lists_the_available_ones():
    with pytest.raises(UnknownPaddingError, match="available: .*reflect"):
        patch_padding(nn.Conv2d(1, 1, 3, padding=1), "bogus")
