"""Images made and decoded with tensor ops (ppp_audit.device_images), on CPU tensors: the same code as on a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from ppp_audit.device_images import counter_bits, counter_uniform, render_dead_leaves, stream_keys
from ppp_audit.engine import AuditConfig, audit
from ppp_audit.errors import ConfigError
from ppp_audit.images import (
    DeadLeavesSource, DeviceLoader, FolderSource, WindowCache, WindowDataset, load_window,
)

from test_audit import BorderBias, _info

CPU = torch.device("cpu")


def _lowbias32(x: int) -> int:
    """The reference hash in Python integers (no overflow anywhere), to check the tensor version's split products."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_counter_bits_equal_the_python_reference_bit_for_bit():
    # Exact integers: what makes the random numbers the same on every device (int64 ops have no rounding).
    seed, indices = 2**40 + 12345, torch.tensor([0, 7, 2**33 + 5])
    keys = stream_keys(seed, indices, stream=9)
    bits = counter_bits(keys, 6)
    for row, index in enumerate(indices.tolist()):
        key = _lowbias32(seed & 0xFFFFFFFF)
        for part in ((seed >> 32) & 0xFFFFFFFF, index & 0xFFFFFFFF, (index >> 32) & 0xFFFFFFFF, 9):
            key = _lowbias32(key ^ part)
        assert int(keys[row]) & 0xFFFFFFFF == key
        assert [b & 0xFFFFFFFF for b in bits[row].tolist()] == \
            [_lowbias32(key ^ _lowbias32(c ^ 0x9E3779B9)) for c in range(6)]
    big = torch.tensor([2**31 - 1, -5, 123456789, -(2**31)], dtype=torch.int32)  # products that wrap
    assert [b & 0xFFFFFFFF for b in counter_bits(big, 3).reshape(-1).tolist()] == \
        [_lowbias32((k & 0xFFFFFFFF) ^ _lowbias32(c ^ 0x9E3779B9)) for k in big.tolist() for c in range(3)]


def test_counter_uniforms_are_uniform_and_independent():
    u = counter_uniform(stream_keys(0, torch.arange(64), 1), 4096)
    assert 0.0 < float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    lag = torch.corrcoef(torch.stack([u[:, :-1].reshape(-1), u[:, 1:].reshape(-1)]))[0, 1]
    across = torch.corrcoef(u[:8])
    assert abs(float(lag)) < 0.01 and float((across - torch.eye(8)).abs().max()) < 0.06
    # Streams whose keys differ in low bits only must not hand out the same numbers in another order.
    other = counter_uniform(stream_keys(0, torch.arange(64), 2), 4096)
    assert len(set(u[0].tolist()) & set(other[0].tolist())) < 8


def test_renderer_is_deterministic_per_seed_and_index_in_any_batch():
    batch = render_dead_leaves(3, range(6), 48, scale=32)
    alone = render_dead_leaves(3, [4], 48, scale=32)
    small_chunks = render_dead_leaves(3, [4, 1], 48, scale=32, max_elements=2**14)
    assert batch.shape == (6, 3, 48, 48) and batch.dtype == torch.float32
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    # Alone or in any batch, the same bits on one device: the host's windows are the device path's (SPEC §3.5).
    assert torch.equal(alone[0], batch[4]) and torch.equal(small_chunks[0], batch[4])
    assert float((render_dead_leaves(4, [4], 48, scale=32) - alone).abs().mean()) > 0.05
    source = DeadLeavesSource(seed=3, scale=32)
    assert torch.equal(source.window(4, 48), batch[4])
    # --compile compiles the renderer's kernels: how it runs, not what it draws (aot_eager needs no C++ compiler)
    compiled = render_dead_leaves(3, range(6), 48, scale=32, compile="aot_eager")
    torch.testing.assert_close(compiled, batch, rtol=0, atol=1e-6)
    assert source.describe()["renderer"] == "torch"


def _picture_statistics(windows: torch.Tensor) -> dict[str, float]:
    grey = windows.mean(1)
    spectrum = torch.fft.rfft2(grey - grey.mean((1, 2), keepdim=True)).abs().square().mean(0)
    size = grey.shape[-1]
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    radius = torch.sqrt(fy**2 + fx**2)
    low, high = spectrum[(radius > 0.02) & (radius < 0.05)].mean(), spectrum[(radius > 0.2) & (radius < 0.4)].mean()
    return {"mean": float(windows.mean()), "contrast": float(windows.std((1, 2, 3)).mean()),
            "edges": float((grey[..., 1:] - grey[..., :-1]).abs().mean()),
            "colour": float(windows.std(1).mean()), "spectrum_slope": float(torch.log(low / high))}


NUMPY_STATISTICS = {"mean": 0.4992, "contrast": 0.2109, "edges": 0.1051, "colour": 0.0571, "spectrum_slope": 3.4218}
"""What the NumPy renderer (the host's until #27) drew at seed 5, 48 windows of 96 px, scale 64: the laws the renderer
keeps (measured with it before it was removed)."""


def test_renderer_keeps_the_statistics_of_the_laws():
    source = DeadLeavesSource(seed=5, scale=64)
    drawn = _picture_statistics(source.windows(range(48), 96, CPU))
    for name, value in NUMPY_STATISTICS.items():
        assert drawn[name] == pytest.approx(value, rel=0.1), name
    # Stationary in pixels: the crop of a larger window looks the same.
    larger = source.windows(range(48), 160, CPU)[..., 32:128, 32:128]
    for name, value in _picture_statistics(larger).items():
        assert value == pytest.approx(drawn[name], rel=0.1), name


def test_planted_signal_reads_the_same_made_on_the_host_or_on_the_device():
    amplitude, rings, size, margin = 0.4, 2, 32, 32
    torch.manual_seed(0)
    # No per-sample noise: its draws from torch's RNG would differ between the paths (a DataLoader draws its seed).
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), BorderBias(amplitude, rings, noise=0.0)).eval()
    stats = {}
    for where in ("host", "device"):
        config = AuditConfig(model="planted", num_images=64, batch_size=16, input_size=size, margin=margin,
                             layers=["1"], device="cpu", seed=1, images_on=where)
        report = audit(config, model=model, info=_info("planted", size))
        stats[where] = report.scheme("native").layer("1").stats
        assert (report.data.get("renderer"), report.data.get("images_on")) == \
            ("torch", None if where == "host" else "cpu")
    assert stats["device"].strength == pytest.approx(stats["host"].strength, rel=1e-6)
    assert stats["host"].extent_px == stats["device"].extent_px


def _photo(seed: int, size: tuple[int, int], mode: str = "RGB") -> "PIL.Image.Image":  # noqa: F821
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size, Image.BICUBIC).convert(mode)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for k in range(5):
        _photo(k, (152 + 8 * k, 136)).save(root / f"p{k}.jpg", quality=90)
    _photo(9, (144, 144), "L").save(root / "grey.jpg")
    _photo(10, (152, 144), "CMYK").save(root / "cmyk.jpg")
    _photo(11, (144, 176)).save(root / "q.png")
    return root


def test_decoded_windows_match_the_pil_path(photo_folder):
    source = FolderSource(photo_folder, scale=0.55)
    windows = source.windows(range(len(source.files)), 64, CPU)
    assert windows.shape == (len(source.files), 3, 64, 64)
    for k, path in enumerate(source.files):
        reference = load_window(path, str(path), 64, 0.55)
        # the same libjpeg family on the CPU; nvJPEG on CUDA rounds a little differently
        assert float((windows[k] - reference).abs().max()) <= 2 / 255, path.name


def test_device_loader_skips_an_unreadable_jpeg_and_names_it(photo_folder, tmp_path):
    for path in photo_folder.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "p2.jpg").write_bytes((photo_folder / "p2.jpg").read_bytes()[:300])  # truncated
    source = FolderSource(tmp_path)
    dataset = WindowDataset(source, range(len(source.files)), 64)
    loader = DeviceLoader(dataset, batch_size=4, device=CPU, skip_unreadable=True)
    batches = list(loader)
    assert sum(len(indices) for indices, _ in batches) == len(source.files) - 1
    assert [failure.position for failure in loader.skipped] == [source.files.index(tmp_path / "p2.jpg")]
    assert "p2.jpg" in str(loader.skipped[0].error)
    strict = DeviceLoader(dataset, batch_size=4, device=CPU)
    with pytest.raises(Exception, match="p2.jpg"):
        list(strict)


def test_jpeg_folder_audit_on_the_device_equals_the_host_audit(photo_folder):
    common = dict(model="resnet10t", pretrained=False, input_size=64, margin=32, num_images=8, batch_size=4,
                  device="cpu", images=str(photo_folder))
    host, device = (audit(AuditConfig(**common, images_on=where)) for where in ("host", "device"))
    assert device.data["images_on"] == "cpu" and device.data["num_images"] == host.data["num_images"] == 8
    for a, b in zip(host.scheme("native").layers, device.scheme("native").layers):
        assert b.stats.strength == pytest.approx(a.stats.strength, rel=0.02), a.name


class CountingSource(DeadLeavesSource):
    def __init__(self) -> None:
        super().__init__(seed=2, scale=32)
        object.__setattr__(self, "made", [])

    def windows(self, indices, size, device):
        self.made.extend(indices)
        return super().windows(indices, size, device)


def test_window_cache_makes_each_window_once_within_its_budget():
    source = CountingSource()
    cache = WindowCache(source, budget_bytes=10**9)
    first = cache.windows([0, 1, 2], 48, CPU)
    again = cache.windows([2, 0, 5], 48, CPU)
    assert source.made == [0, 1, 2, 5]
    torch.testing.assert_close(again[0], first[2], rtol=0, atol=0)
    tight = WindowCache(CountingSource(), budget_bytes=3 * 48 * 48 * 4)  # one window's worth
    tight.windows([0, 1], 48, CPU)
    tight.windows([0, 1], 48, CPU)
    assert tight.base.made == [0, 1, 1]
    import pickle

    assert pickle.loads(pickle.dumps(cache))._kept == {}


def test_auditor_keeps_windows_between_measurements_of_one_source():
    from ppp_audit.auditor import Auditor

    config = AuditConfig(model="resnet10t", pretrained=False, input_size=64, margin=32, num_images=4, batch_size=4,
                         device="cpu", images_on="device")
    auditor = Auditor(config)
    source = CountingSource()
    first = auditor.measure(source)  # measured once: read as it is (a plain audit's memory does not grow with N)
    second = auditor.measure(source)  # measured again: kept on the device ...
    third = auditor.measure(source)  # ... and read from there
    assert source.made == [0, 1, 2, 3] * 2
    strengths = {m.results[0].layers[-1].stats.strength for m in (first, second, third)}
    assert len(strengths) == 1


def test_images_on_is_validated():
    with pytest.raises(ConfigError, match="--images-on"):
        AuditConfig(model="resnet10t", images_on="gpu")


def test_tiled_compositing_equals_painting_the_discs_one_after_another():
    from ppp_audit.device_images import paint_discs

    rng = np.random.default_rng(0)
    count, size = 40, 37  # not a multiple of the tile
    radii = np.sort(rng.uniform(0.5, 12.0, count))[::-1].copy()
    centres = rng.uniform(-6, size + 6, (count, 2))
    colours = rng.uniform(0, 1, (count, 3))
    background = np.array([0.3, 0.5, 0.7])
    painted = paint_discs(*(torch.tensor(v, dtype=torch.float32)[None] for v in
                            (background, centres[:, 0], centres[:, 1], radii, colours)), size, budget=2**12)
    image = np.zeros((size, size, 3)) + background
    pixel = np.arange(size) + 0.5
    for (cy, cx), r, colour in zip(centres, radii, colours):  # the NumPy renderer's painter's algorithm
        alpha = np.clip(r + 0.5 - np.sqrt((pixel[:, None] - cy) ** 2 + (pixel[None, :] - cx) ** 2), 0, 1)[..., None]
        image += alpha * (colour - image)
    assert np.abs(painted[0].permute(1, 2, 0).numpy() - image).max() < 1e-5


def test_fine_tuning_measures_device_images_again_from_the_cache(tmp_path):
    import json

    from typer.testing import CliRunner

    from ppp_audit.cli import app

    out = tmp_path / "report.json"
    args = ["resnet10t", "--no-pretrained", "-p", "reflect", "--finetune-steps", "4", "--measure-every", "2",
            "--finetune-batch-size", "2", "-n", "4", "-b", "4", "--input-size", "64", "--margin", "32",
            "--images-on", "device", "--device", "cpu", "--json", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["data"]["renderer"] == "torch" and data["data"]["images_on"] == "cpu"
    ft = data["results"][1]["finetune"]
    assert ft["settings"]["train_data"]["renderer"] == "torch"  # trained on the same renderer's pictures
    assert len(ft["curve"]) >= 2


def test_auto_sends_to_a_gpu_only_what_a_device_makes_itself(photo_folder, tmp_path, monkeypatch):
    import ppp_audit.auditor as auditor_module
    from ppp_audit.auditor import images_on_device
    from ppp_audit.images import made_on_device, random_sample

    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    for path in photo_folder.glob("*.jpg"):
        (jpegs / path.name).write_bytes(path.read_bytes())
    assert made_on_device(DeadLeavesSource())
    assert made_on_device(FolderSource(jpegs)) and not made_on_device(FolderSource(photo_folder))  # it holds a PNG
    assert made_on_device(random_sample(FolderSource(jpegs), 3, seed=0, size=64))  # seen through the sample
    config = AuditConfig(model="resnet10t", device="cuda")
    monkeypatch.setattr(auditor_module, "resolve_device", lambda device: torch.device("cuda"))
    assert images_on_device(config) and images_on_device(config, FolderSource(jpegs))
    assert not images_on_device(config, FolderSource(photo_folder))  # PNGs: PIL with --workers on the host
    forced = AuditConfig(model="resnet10t", device="cuda", images_on="device")
    assert images_on_device(forced, FolderSource(photo_folder))
    monkeypatch.setattr(auditor_module, "resolve_device", lambda device: torch.device("cpu"))
    assert not images_on_device(config) and images_on_device(AuditConfig(model="resnet10t", images_on="device"))
