"""``native`` is a registered null scheme (ppp_audit/paddings/schemes.py): patching with it lists the padding sites and
changes nothing, so the audit measures the model's own padding through the same code as every scheme."""

from __future__ import annotations

import pytest
import timm
import torch

from ppp_audit.paddings import get_padding, list_paddings, padding, patch_padding
from ppp_audit.report import NATIVE


@pytest.fixture(scope="module", params=["resnet10t", "tf_efficientnet_lite0", "mobilenetv3_small_050"])
def model(request):
    torch.manual_seed(0)
    return timm.create_model(request.param, pretrained=False).eval()


def test_native_is_registered_and_replaces_nothing():
    scheme = get_padding(NATIVE)
    assert scheme.name == NATIVE and scheme.replaces is False and scheme.keeps_shape
    assert NATIVE in {info.name for info in list_paddings()}
    assert all(get_padding(info.name).replaces for info in list_paddings() if info.name != NATIVE)


@pytest.mark.parametrize("include_pools", [False, True])
def test_native_lists_the_sites_a_scheme_replaces_and_leaves_the_model_as_it_is(model, include_pools):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    zeros = patch_padding(model, "zeros", include_pools=include_pools)  # what a scheme reaches
    zeros.restore()
    with padding(model, NATIVE, include_pools=include_pools) as native, torch.no_grad():
        assert not any("forward" in vars(module) for module in model.modules())  # no layer's forward replaced
        during = model(x)
    assert native.scheme == NATIVE
    assert [(site.name, site.kind, site.native) for site in native.patched] == \
        [(site.name, site.kind, site.native) for site in zeros.patched]
    assert [(site.name, site.reason) for site in native.unpatched] == \
        [(site.name, site.reason) for site in zeros.unpatched]
    assert torch.equal(during, before)
