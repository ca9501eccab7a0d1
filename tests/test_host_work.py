"""The host side of the measuring loop (docs/performance.md, "Since 2026-12-07"): the statistics in channel blocks and
with pending per-group sums, the first-batch NaN/inf check from the sums, reserved sums, the shape-probe cache and the
host allocator kept for an audit."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from ppp_audit import runtime
from ppp_audit.metrics import PPPAccumulator, batch_moments
from ppp_audit.metrics.ppp import CPU_BLOCK_BYTES, GROUPED_SUMS, PENDING_ROWS, channel_blocks
from ppp_audit.models import FeatureTaps
from ppp_audit.receptive_cache import SHAPES_FOLDER, cache_path, load_shapes, shapes_key, store_shapes


def _whole(a, b, group, groups):
    """``batch_moments`` under another name: the accumulator then reduces whole tensors (no channel blocks)."""
    return batch_moments(a, b, group, groups)


def _reference_sums(a: torch.Tensor, b: torch.Tensor, groups: int) -> dict[str, torch.Tensor]:
    """The accumulator's sums computed directly in float64 (sample i in group i mod K)."""
    a, b = a.double(), b.double()
    delta = a - b
    group = torch.arange(a.shape[0]) % groups
    by_group = lambda x: torch.stack([x[group == g].sum(0) for g in range(groups)])  # noqa: E731
    total = lambda x: by_group(x.square().flatten(1).sum(1))  # noqa: E731
    return {"count": torch.bincount(group, minlength=groups).double(), "sum_a": by_group(a), "sq_a": a.square().sum(0),
            "sum_delta": by_group(delta), "sq_delta": delta.square().sum(0), "sum_b": by_group(b),
            "sq_b": b.square().sum(0), "total_sq_a": total(a), "total_sq_delta": total(delta), "total_sq_b": total(b)}


def test_channel_blocks_cover_every_channel_once_and_whole_on_a_gpu_like_device():
    features = torch.zeros(16, 300, 40, 40)  # 102 kB per channel of the batch: ~41 channels per 4 MB block
    blocks = channel_blocks(features)
    assert len(blocks) > 1
    assert [c for block in blocks for c in range(300)[block]] == list(range(300))
    per_channel = features[:, :1].numel() * features.element_size()
    assert all((block.stop - block.start) * per_channel <= CPU_BLOCK_BYTES for block in blocks)
    assert channel_blocks(torch.zeros(2, 3, 4, 4, device="meta")) == [slice(0, 3)]


@pytest.mark.parametrize("batch", [16, 13, 64, 100])  # multiples of the groups, not, exactly and past PENDING_ROWS
def test_blocked_and_pending_sums_equal_the_float64_sums(batch):
    torch.manual_seed(batch)
    a = torch.randn(200, 96, 24, 24) + 3.0  # 221 kB per channel at batch 16: several blocks per batch
    b = a + 0.1 * torch.randn_like(a)
    blocked, whole = PPPAccumulator(8, mist_counts=()), PPPAccumulator(8, mist_counts=(), moments=_whole)
    for start in range(0, 200, batch):
        rows = slice(start, start + batch)
        blocked.update(a[rows], b[rows], torch.arange(200)[rows])
        whole.update(a[rows], b[rows], torch.arange(200)[rows])
    expected = _reference_sums(a, b, 8)
    assert sorted(blocked.state) == sorted(expected)
    for key, value in expected.items():  # float32 per batch and per pending run, float64 beyond
        torch.testing.assert_close(blocked.state[key], value, rtol=2e-6, atol=1e-4)
        torch.testing.assert_close(blocked.state[key], whole.state[key], rtol=2e-6, atol=1e-4)
    assert blocked.compute(stride_px=1.0).strength == pytest.approx(whole.compute(stride_px=1.0).strength, rel=1e-5)


def test_pending_sums_reach_every_reader():
    torch.manual_seed(0)
    a, b = torch.randn(24, 4, 6, 6), torch.randn(24, 4, 6, 6)
    acc = PPPAccumulator(8, mist_counts=())
    acc.update(a[:8], b[:8])
    assert 8 < PENDING_ROWS  # the batch is pending, not yet in the float64 sums ...
    other = PPPAccumulator(8, mist_counts=())
    other.update(a[8:], b[8:], torch.arange(8, 24))
    merged = acc.merge_(other)  # ... and a merge, the state and compute see it
    expected = _reference_sums(a, b, 8)
    for key in GROUPED_SUMS:
        torch.testing.assert_close(merged.state[key], expected[key], rtol=1e-6, atol=1e-5)
    assert merged.n == 24
    fresh = PPPAccumulator(8, mist_counts=()).merge_(other)  # a state set from outside takes batches after it too
    fresh.update(a[:8], b[:8], torch.arange(8))
    for key in GROUPED_SUMS:
        torch.testing.assert_close(fresh.state[key], expected[key], rtol=1e-6, atol=1e-5)


def test_finite_sums_catch_nan_and_inf_in_features_or_references():
    clean = torch.ones(4, 2, 3, 3)
    for broken_a, broken_b in [(float("nan"), None), (None, float("inf")), (float("-inf"), None)]:
        a, b = clean.clone(), clean.clone()
        if broken_a is not None:
            a[1, 0, 2, 2] = broken_a
        if broken_b is not None:
            b[3, 1, 0, 0] = broken_b
        acc = PPPAccumulator(2, mist_counts=())
        acc.update(a, b)
        assert not bool(acc.finite_sums())
    acc = PPPAccumulator(2, mist_counts=())
    acc.update(clean, clean * 2)
    assert bool(acc.finite_sums())


def test_reserved_sums_are_replaced_when_the_first_batch_has_other_shapes():
    acc = PPPAccumulator(4, mist_counts=()).reserve((3, 8, 8), "cpu")
    assert acc.state["sum_a"].shape == (4, 3, 8, 8)
    a = torch.randn(8, 3, 6, 6)  # a scheme that shrinks maps ("valid"): the reservation is dropped
    acc.update(a, a * 0.5)
    assert acc.state["sum_a"].shape == (4, 3, 6, 6) and acc.n == 8
    with pytest.raises(RuntimeError):  # after the first batch, another shape is an error, not a silent reset
        acc.update(torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8))


def test_the_shape_probes_are_cached_by_structure(tmp_path, monkeypatch):
    import timm

    from ppp_audit import geometry

    monkeypatch.setenv("PPP_AUDIT_CACHE", str(tmp_path))
    model = timm.create_model("resnet10t", pretrained=False).eval()
    place = {"in_chans": 3, "device": torch.device("cpu"), "dtype": torch.float32}
    probed = geometry._Runs(FeatureTaps(model), place)(64)
    assert len(list((tmp_path / SHAPES_FOLDER).glob("*.json"))) == 1
    calls = []
    monkeypatch.setattr(geometry, "probe", lambda *args, **kw: calls.append(args) or "not probed")
    again = geometry._Runs(FeatureTaps(timm.create_model("resnet10t", pretrained=False).eval()), place)
    assert again(64) == probed and not calls  # other weights, the same structure: read back
    assert again(96) == "not probed" and len(calls) == 1  # another side is probed
    key = shapes_key(FeatureTaps(model), **place)
    path = cache_path({**key, "size": 64}, SHAPES_FOLDER)
    path.write_text("{not json")
    assert load_shapes(key, 64) is None  # a damaged entry is ignored ...
    store_shapes(key, 64, probed)
    assert load_shapes(key, 64) == probed  # ... and rewritten
    assert json.loads(path.read_text())["key"]["size"] == 64
    hooked = timm.create_model("resnet10t", pretrained=False).eval()
    hooked.fc.register_forward_hook(lambda *args: None)
    assert shapes_key(FeatureTaps(hooked), **place) is None  # what a hook does, no key shows


def test_host_memory_is_kept_inside_the_block_and_given_back_after(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append(("mallopt", parameter, value.value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad.value))
            return 1

    monkeypatch.setattr(runtime, "_glibc", lambda: FakeLibc())
    monkeypatch.delenv(runtime.DEFAULT_ALLOCATOR_ENV, raising=False)
    with runtime.host_memory_kept(torch.device("cpu")):
        with runtime.host_memory_kept(torch.device("cpu")):  # nested: set once, restored once
            pass
        assert calls == [("mallopt", -1, 2**31 - 1), ("mallopt", -4, 0)]
    assert calls[2:] == [("mallopt", -1, 128 * 1024), ("mallopt", -4, 65536), ("trim", 0)]
    calls.clear()
    with runtime.host_memory_kept(torch.device("meta")):  # not a CPU run: nothing
        pass
    monkeypatch.setenv(runtime.DEFAULT_ALLOCATOR_ENV, "1")
    with runtime.host_memory_kept(torch.device("cpu")):  # switched off
        pass
    assert calls == []


def test_an_audit_gives_the_same_numbers_with_and_without_the_host_memory_kept(monkeypatch):
    from ppp_audit.engine import AuditConfig, audit
    from ppp_audit.models import ModelInfo

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    info = ModelInfo(name="tiny", architecture="tiny", weights="random", input_size=32, mean=(0.5,) * 3,
                     std=(0.25,) * 3, crop_pct=1.0)
    config = AuditConfig(model="tiny", num_images=16, batch_size=8, input_size=32, margin=32, layers=["2"],
                         device="cpu")
    kept = audit(config, model=model, info=info).scheme("native").layer("2").stats
    monkeypatch.setenv(runtime.DEFAULT_ALLOCATOR_ENV, "1")
    default = audit(config, model=model, info=info).scheme("native").layer("2").stats
    assert kept.strength == default.strength and kept.strength_ci == default.strength_ci
