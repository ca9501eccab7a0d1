"""The on-disk cache of the receptive-field probe (ppp_audit/receptive_cache.py, docs/performance.md)."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import torch.nn as nn

from ppp_audit.context import ContextMatcher
from ppp_audit.models import FeatureTaps, cache_dir
from ppp_audit.paddings import padding
from ppp_audit.receptive import influence_profiles
from ppp_audit.receptive_cache import FOLDER

WINDOW = 96  # a 64 px crop with a 16 px margin


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder per test (conftest's session-wide PPP_AUDIT_CACHE would carry entries across tests)."""
    monkeypatch.setenv("PPP_AUDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / FOLDER


@pytest.fixture(scope="module")
def tiny():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False).eval()


def _profiles(model: nn.Module, window: int = WINDOW, layers: list[str] | None = None, **kw):
    taps = FeatureTaps(model, layers)
    return influence_profiles(taps, window, "cpu", context=ContextMatcher(model), cache=True, **kw)


def _entries(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []


def test_cached_profile_equals_the_probed_one_and_lands_in_the_cache_folder(tiny, cache):
    probed = _profiles(tiny)
    assert probed.obtained == "probed" and probed.seconds > 0
    assert cache_dir() == cache.parent and cache.parent == type(cache)(os.environ["PPP_AUDIT_CACHE"])
    (entry,) = _entries(cache)
    cached = _profiles(tiny)
    assert cached.obtained == "cache" and set(cached.summary()) == {"obtained", "seconds"}
    assert len(cached) == len(probed) == 5
    for a, b in zip(probed, cached):  # every field, bit for bit
        fields = ("radius_px", "share_beyond", "window", "upstream")
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
        assert all(type(v) is float for v in b.share_beyond) and type(b.radius_px) is float
    assert list(cached) == list(probed) == list(influence_profiles(FeatureTaps(tiny), WINDOW, "cpu"))
    assert _entries(cache) == [entry]  # a hit writes nothing


def _bump_first_conv(model: nn.Module) -> None:
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] += 1e-3


def _bump_a_buffer(model: nn.Module) -> None:
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_var[0] += 1e-3


def _reflect_first_conv(model: nn.Module) -> None:
    next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.padding != (0, 0)).padding_mode = "reflect"


@pytest.mark.parametrize("change", [_bump_first_conv, _bump_a_buffer, _reflect_first_conv, nn.Module.train],
                         ids=["weight", "buffer", "padding-mode", "train-mode"])
def test_a_changed_model_misses_the_cache(tiny, cache, change):
    model = copy.deepcopy(tiny)
    first = _profiles(model)
    change(model)
    again = _profiles(model)
    assert (first.obtained, again.obtained) == ("probed", "probed") and len(_entries(cache)) == 2
    if change is not nn.Module.train:  # a probe in train mode moves the batch norms' statistics: a new model each time
        assert _profiles(model).obtained == "cache"


def test_another_window_layers_or_input_misses_the_cache(tiny, cache):
    assert _profiles(tiny).obtained == "probed"
    assert _profiles(tiny, window=WINDOW + 32).obtained == "probed"
    assert _profiles(tiny, layers=["layer1", "layer2"]).obtained == "probed"
    assert _profiles(tiny, images=1).obtained == "probed"
    assert _profiles(tiny, seed=1).obtained == "probed"
    assert len(_entries(cache)) == 5
    assert _profiles(tiny, layers=["layer1", "layer2"]).obtained == "cache"


def test_the_same_class_name_with_another_forward_misses_the_cache(cache):
    def make(scale: float) -> nn.Module:
        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
                nn.init.constant_(self.conv.weight, 0.1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.conv(x * scale)

        return Net().eval()

    assert _profiles(make(1.0), layers=["conv"]).obtained == "probed"
    assert _profiles(make(2.0), layers=["conv"]).obtained == "probed"  # same weights and qualname, other closure
    assert _profiles(make(2.0), layers=["conv"]).obtained == "cache"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no-layers", "wrong-type", "nan", "other-key",
                                    "wrong-window"])
def test_a_damaged_cache_file_is_recomputed_and_rewritten(tiny, cache, damage):
    probed = _profiles(tiny)
    (path,) = cache.glob("*.json")
    text = path.read_text()
    data = json.loads(text)
    if damage == "garbage":
        path.write_bytes(b"\x00\xff not json")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "no-layers":
        path.write_text(json.dumps({**data, "layers": data["layers"][:-1]}))
    elif damage == "wrong-type":
        data["layers"][2]["share_beyond"] = ["0.5"]
        path.write_text(json.dumps(data))
    elif damage == "nan":
        data["layers"][1]["share_beyond"][3] = float("nan")
        path.write_text(json.dumps(data))
    elif damage == "other-key":
        path.write_text(json.dumps({**data, "key": {**data["key"], "window": 1}}))
    else:
        data["layers"][0]["window"] = WINDOW + 1
        path.write_text(json.dumps(data))
    again = _profiles(tiny)
    assert again.obtained == "probed" and list(again) == list(probed)
    rewritten = json.loads(path.read_text())
    assert {**rewritten, "probe_seconds": None} == {**json.loads(text), "probe_seconds": None}  # rewritten whole
    assert _profiles(tiny).obtained == "cache"


def test_a_patched_model_is_probed_and_never_cached(tiny, cache):
    # a 64 px probe: the deep layers' influence reaches its border, where the patch changes it
    native = _profiles(tiny, window=64)
    with padding(tiny, "reflect"):
        patched = [_profiles(tiny, window=64), _profiles(tiny, window=64)]
    assert [p.obtained for p in patched] == ["probed", "probed"] and len(_entries(cache)) == 1
    assert list(patched[0]) == list(patched[1]) != list(native)
    assert _profiles(tiny, window=64).obtained == "cache"


def test_an_unwritable_cache_is_skipped(tiny, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PPP_AUDIT_CACHE", str(blocker))
    assert [_profiles(tiny).obtained, _profiles(tiny).obtained] == ["probed", "probed"]


def test_an_auditor_reads_its_model_from_the_cache_but_not_a_fine_tuned_copy(cache):
    from ppp_audit.auditor import Auditor
    from ppp_audit.engine import AuditConfig
    from ppp_audit.models import build_model

    model, info = build_model("resnet10t", pretrained=False, device="cpu")
    config = AuditConfig(model="resnet10t", pretrained=False, num_images=4, batch_size=4, input_size=64,
                         device="cpu", paddings=["reflect"])
    first = Auditor(config, model=model, info=info)
    second = Auditor(config, model=model, info=info)
    assert (first.state.influence.obtained, second.state.influence.obtained) == ("probed", "cache")
    assert list(first.state.influence) == list(second.state.influence)
    assert second.margin == first.margin and second.margins.choice == first.margins.choice
    entries = _entries(cache)
    copied = copy.deepcopy(model)
    _bump_first_conv(copied)
    assert second.model_state(copied).influence.obtained == "probed" and _entries(cache) == entries
