"""Bad input in the data and model layers, through the command line: a non-zero exit, one line on stderr naming the
real cause, never a traceback. Tiny models (resnet10t at 64 px, N=2) or none at all."""

from __future__ import annotations

import io
import json
import pickle
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import center_crop

from cli_helpers import fails, runner
from ppp_audit.cli import app
from ppp_audit.config import AuditConfig
from ppp_audit.errors import ConfigError, ImageSourceError
from ppp_audit.images import IMAGE_MODES, image_array, load_window
from ppp_audit.report import REPORT_JSON, Report

TINY = ["resnet10t", "--no-pretrained", "--input-size", "64", "--margin", "32", "-n", "2", "-b", "2", "--device", "cpu"]
"""A 128 px window (S=64, m=32)."""
ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Pickled code: unpickling it with pickle would call print."""

    def __reduce__(self):
        return (print, ("code ran",))


# ---- images --------------------------------------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A 1-bit PNG that claims ``width x height`` pixels in a few bytes: what a decompression bomb looks like to a
    reader of its header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _grey(seed: int, size: int = 160) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size + 20), dtype=np.uint8)


def _saved(image: Image.Image, fmt: str = "PNG") -> io.BytesIO:
    file = io.BytesIO()
    image.save(file, format=fmt)
    file.seek(0)
    return file


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16B", "TIFF"), ("I;16", "TIFF"), ("I", "TIFF"),
                                           ("F", "TIFF")])
def test_deep_greyscale_is_scaled_by_its_bit_depth(mode, fmt):
    grey = _grey(0)
    eight = load_window(_saved(Image.fromarray(grey)), "8-bit", 96)
    # The 8-bit value v is 257 v in 16 bits; up to 256 more (what 8 bits cannot hold) must stay below 1/255.
    noise = np.random.default_rng(1).integers(0, 257, grey.shape)
    sixteen = np.minimum(grey.astype(np.int64) * 257 + noise, 65535).astype(np.uint16)
    if mode == "I;16B":
        image = Image.frombytes("I;16B", grey.shape[::-1], sixteen.astype(">u2").tobytes())
    elif mode == "I":
        image = Image.fromarray(sixteen.astype(np.int32))
    elif mode == "F":
        image = Image.fromarray(sixteen.astype(np.float32) / 65535)
    else:
        image = Image.fromarray(sixteen)
    file = _saved(image, fmt)
    assert Image.open(file).mode == image.mode
    window = load_window(file, mode, 96)
    assert window.shape == eight.shape == (3, 96, 96)
    assert float((window - eight).abs().max()) <= 1 / 255 + 1e-6  # not saturated: within one 8-bit step
    assert float(window.max()) < 1.0 + 1e-6 and float((window >= 1.0).float().mean()) < 0.01


def _rgba(seed: int) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    alpha = np.zeros((100, 120, 1), dtype=np.uint8)
    alpha[:, 60:] = 255
    return np.concatenate([rgb, alpha], axis=2)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P+transparency"])
def test_transparency_is_composited_on_black(mode):
    rgba = _rgba(2)
    image = Image.fromarray(rgba)
    if mode == "LA":
        image = image.convert("LA")
    elif mode in ("PA", "P+transparency"):
        palette = image.convert("RGB").quantize(64)
        if mode == "PA":
            image = palette.convert("PA")
            image.putalpha(Image.fromarray(rgba[..., 3]))
        else:
            # Palette index 0 is transparent: pixels of that index become black, the others keep their colour.
            image = palette
            image.info["transparency"] = 0
    if mode == "PA":  # PIL writes no PA files, but a plugin may open one: read the image itself
        window = center_crop(image_array(image, mode), [100, 100])
        opened = image
    else:
        window = load_window(_saved(image, "PNG"), mode, 100)  # all 100 rows, columns 10..109
        opened = Image.open(_saved(image, "PNG"))
        assert opened.mode == image.mode and (mode != "P+transparency" or "transparency" in opened.info)
    expected = torch.from_numpy(np.asarray(opened.convert("RGBA"), dtype=np.float32))
    expected = (expected[..., :3] * expected[..., 3:] / (255.0 * 255.0)).permute(2, 0, 1)[:, :, 10:110]
    assert torch.allclose(window, expected, atol=1e-6)
    if mode == "P+transparency":
        transparent = torch.from_numpy(np.asarray(image)[:, 10:110] == 0)
        assert bool(transparent.any()) and float(window[:, transparent].abs().max()) == 0.0
        assert float(window[:, ~transparent].mean()) > 0.2
    else:
        assert float(window[:, :, :50].abs().max()) == 0.0  # alpha 0: black, whatever colour is stored
        assert float(window[:, :, 50:].mean()) > 0.2


@pytest.mark.parametrize(("mode", "fmt"), [("1", "PNG"), ("L", "PNG"), ("P", "PNG"), ("CMYK", "TIFF"),
                                           ("YCbCr", "JPEG"), ("RGB", "PNG")])
def test_eight_bit_modes_are_pil_s_rgb(mode, fmt):
    image = Image.fromarray(_rgba(3)[..., :3]).convert(mode)
    file = _saved(image, fmt)
    opened = Image.open(_saved(image, fmt))
    window = load_window(file, mode, 100)
    expected = torch.from_numpy(np.asarray(opened.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(window, expected[:, :, 10:110])


@pytest.mark.parametrize(("make", "cause"), [
    (lambda: Image.fromarray(np.full((64, 64), 70000, np.int32)), "values outside 0..65535"),
    (lambda: Image.fromarray(np.full((64, 64), 2.0, np.float32)), "a float image with values outside [0, 1]"),
    (lambda: Image.new("LAB", (64, 64)), "PIL mode 'LAB' is not supported"),
])
def test_modes_that_cannot_be_scaled_are_refused(make, cause):
    with pytest.raises(ImageSourceError, match=r"cannot read image 'x.tif': ") as caught:
        load_window(_saved(make(), "TIFF"), "x.tif", 32)
    assert cause in caught.value.message
    assert "LAB" not in IMAGE_MODES


def test_sixteen_bit_pngs_audit_like_their_eight_bit_copies(tmp_path):
    """The symptom: 16-bit PNGs read as saturated 8-bit gave strengths ~20x too high."""
    strengths = {}
    for depth in (8, 16):
        folder = tmp_path / f"d{depth}"
        folder.mkdir()
        for k in range(2):
            grey = _grey(10 + k)
            image = Image.fromarray(grey if depth == 8 else grey.astype(np.uint16) * 257)
            image.save(folder / f"{k}.png")
        out = tmp_path / f"r{depth}.json"
        result = runner.invoke(app, [*TINY, "--images", str(folder), "--json", str(out)])
        assert result.exit_code == 0, result.output
        strengths[depth] = [layer.stats.strength for layer in Report.load(out).results[0].layers]
    assert np.allclose(strengths[16], strengths[8], rtol=1e-4, atol=1e-6), strengths


@pytest.mark.parametrize(("content", "cause"), [
    (b"hello, I am text\n", "not an image (PIL cannot identify its format)"),
    (_png_header(20000, 20000), "too many pixels (400,000,000 pixels, over PIL's limit of 89,478,485"),
    (_png_header(10000, 10000), "too many pixels (100,000,000 pixels"),  # PIL itself only warns about this one
    (_saved(Image.new("LAB", (200, 200)), "TIFF").getvalue(), "PIL mode 'LAB' is not supported"),
])
def test_unreadable_images_name_the_file_and_the_cause(tmp_path, content, cause):
    for k in range(3):
        (tmp_path / f"{k}.jpg").write_bytes(content)
    line = fails([*TINY, "--images", tmp_path], cause)
    assert f"cannot read image '{tmp_path}" in line and "smaller than" not in line


# ---- models --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """``local-dir:`` folders: a good one, and one per way a folder can be broken."""
    import timm

    root = tmp_path_factory.mktemp("models")
    good = root / "good"
    timm.models.save_for_hf(timm.create_model("resnet10t", pretrained=False), good)
    config = (good / "config.json").read_text()
    for name in ("no-config", "bad-arch", "bad-json", "pickled", "no-weights"):
        (root / name).mkdir()
    (root / "bad-arch" / "config.json").write_text(json.dumps({**json.loads(config), "architecture": "nosuchnet"}))
    (root / "bad-json" / "config.json").write_text("{not json")
    (root / "pickled" / "config.json").write_text(config)
    torch.save({"conv1.weight": _Payload()}, root / "pickled" / "pytorch_model.bin")
    (root / "no-weights" / "config.json").write_text(config)
    (root / "weights").mkdir()
    torch.save({"state_dict": _Payload()}, root / "weights" / "pickled.pth")
    pickle.dump({"state_dict": _Payload()}, open(root / "weights" / "pickled-protocol-5.pth", "wb"), protocol=5)
    (root / "weights" / "empty.pth").write_bytes(b"")
    (root / "weights" / "text.safetensors").write_text("not weights")
    return root


@pytest.mark.parametrize(("args", "cause"), [
    (["local-dir:{root}/missing"], "model folder '{root}/missing' does not exist"),
    (["local-dir:{root}/no-config"], "model folder '{root}/no-config' has no config.json"),
    (["local-dir:{root}/bad-json"], "cannot read '{root}/bad-json/config.json': Expecting property name"),
    (["local-dir:{root}/bad-arch"], "'{root}/bad-arch/config.json' names architecture 'nosuchnet', which timm"),
    (["local-dir:{root}/bad-arch", "--no-pretrained"], "names architecture 'nosuchnet'"),
    (["local-dir:{root}/pickled"], "the weights file in model folder '{root}/pickled' holds pickled data that "
     "torch.load(weights_only=True) refuses (Unsupported global: GLOBAL print"),
    (["local-dir:{root}/no-weights"], "model folder '{root}/no-weights' holds no weights file"),
    (["resnet10t", "--weights", "{root}/weights/pickled.pth"], "weights file '{root}/weights/pickled.pth' holds "
     "pickled data that torch.load(weights_only=True) refuses (Unsupported global: GLOBAL print was not an allowed "
     "global by default): ppp-audit never runs pickled code — if you trust the file"),
    (["resnet10t", "--weights", "{root}/weights/pickled-protocol-5.pth"],
     "holds pickled data that torch.load(weights_only=True) refuses (Unsupported operand"),
    (["resnet10t", "--weights", "{root}/weights/empty.pth"], "weights file '{root}/weights/empty.pth' is empty"),
    (["resnet10t", "--weights", "{root}/weights/text.safetensors"], "is not a readable safetensors file (Error while "
     "deserializing header: header too large) — save or download the weights again"),
    (["resnet18.bogus_tag", "--no-pretrained"], "unknown pretrained tag 'bogus_tag' for resnet18 — its tags: "
     "a1_in1k, a2_in1k"),
    (["resnet18.a1_in1", "--no-pretrained"], "did you mean resnet18.a1_in1k?"),
    (["resnet10t.bogus_tag"], "its tags: c3_in1k"),
])
def test_model_failures_name_the_real_cause(model_folders, capfd, args, cause):
    args = [arg.format(root=model_folders) for arg in args]
    line = fails([*args, "--input-size", "64", "-n", "2", "--device", "cpu"], cause.format(root=model_folders))
    assert "Hub is unreachable" not in line and "does not fit" not in line
    assert "code ran" not in capfd.readouterr().out


@pytest.fixture
def silent_hub(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE, a Hub endpoint on a closed port (nothing answers), and an empty Hugging Face cache."""
    import huggingface_hub.constants

    endpoint = "http://127.0.0.1:9"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


def test_a_hub_that_does_not_answer_fails_in_seconds(silent_hub):
    start = time.monotonic()
    fails(["resnet10t", "--input-size", "64", "-n", "2", "--device", "cpu"],
          "cannot load pretrained weights for 'resnet10t': the Hugging Face Hub (http://127.0.0.1:9) does not answer "
          "and they are not in the local cache — pass --weights FILE")
    assert time.monotonic() - start < 10  # was a minute of retries
    assert not huggingface_hub_offline()  # the offline switch is put back


def huggingface_hub_offline() -> bool:
    import huggingface_hub.constants

    return huggingface_hub.constants.HF_HUB_OFFLINE


def test_a_hub_that_does_not_answer_still_serves_cached_weights(silent_hub):
    import timm
    from safetensors.torch import save_file

    from ppp_audit.models import build_model

    torch.manual_seed(5)
    cached = timm.create_model("resnet10t", pretrained=False).state_dict()
    commit = "0" * 40
    repo = silent_hub / "models--timm--resnet10t.c3_in1k"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file(cached, str(repo / "snapshots" / commit / "model.safetensors"))
    start = time.monotonic()
    model, info = build_model("resnet10t")
    assert time.monotonic() - start < 10 and info.weights == "hub"
    assert all(torch.equal(value, cached[key]) for key, value in model.state_dict().items())


def test_hub_reachable_answers_quickly():
    from ppp_audit.hubenv import hub_reachable

    start = time.monotonic()
    assert not hub_reachable("http://127.0.0.1:9", timeout=1.0)
    assert time.monotonic() - start < 5


# ---- settings ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "cause"), [
    (["--workers", "-1"], "--workers must be at least 0 (got -1)"),
    (["--seed", "-1"], "--seed must be at least 0 (got -1)"),
    (["--seed", str(2**64)], "--seed must be at most 2**64 - 1"),
    (["--compile", "bogus_backend"], "--compile: unknown torch.compile backend 'bogus_backend' — use one of inductor"),
    (["--device", "cudax"], "unknown device 'cudax'"),
    (["--images-on", "gpu"], "unknown --images-on 'gpu' — use one of auto, host, device"),
])
def test_bad_settings_are_one_line(args, cause):
    fails([*TINY, *args], cause)


@pytest.mark.parametrize("size", ["7", "16", "48"])
def test_one_input_size_rule_for_every_too_small_crop(size):
    """7 and 16 px used to meet different fates (refused / a silent 1x1 last stage): one rule now, from the taps."""
    args = [arg for arg in TINY if arg not in ("--margin", "32")]
    args[args.index("--input-size") + 1] = size
    fails(args, f"--input-size {size} is too small for resnet10t: its deepest tapped layer (stride 32) would see fewer "
                "than 2x2 positions — use --input-size 64 or more")


def test_the_input_size_rule_follows_the_tapped_layers():
    result = runner.invoke(app, [*TINY[:3], "32", "--layers", "layer2", *TINY[6:]])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("setting", "cause"), [
    ({"groups": -1}, "groups must be at least 2 (got -1)"),
    ({"workers": -3}, "--workers must be at least 0"),
    ({"seed": -1}, "--seed must be at least 0"),
    ({"compile": "bogus"}, "unknown torch.compile backend 'bogus'"),
])
def test_bad_settings_in_python_are_config_errors(setting, cause):
    with pytest.raises(ConfigError) as caught:
        AuditConfig("resnet10t", **setting)
    assert cause in caught.value.message and caught.value.hint


def test_a_real_compile_backend_is_accepted():
    assert AuditConfig("resnet10t", compile="eager").compile == "eager"


# ---- reports -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / REPORT_JSON
    result = runner.invoke(app, [*TINY, "--json", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def _set(path: str, value):
    def change(data):
        *parents, last = path.split(".")
        for key in parents:
            data = data[int(key)] if isinstance(data, list) else data[key]
        data[int(last) if isinstance(data, list) else last] = value
    return change


def _drop(path: str):
    def change(data):
        *parents, last = path.split(".")
        for key in parents:
            data = data[int(key)] if isinstance(data, list) else data[key]
        del data[last]
    return change


@pytest.mark.parametrize(("change", "cause"), [
    (_set("input_size", "abc"), "input_size must be an integer (got a string 'abc')"),
    (_set("results", 3), "results must be a list (got a number 3)"),
    (_set("results.0.layers.1.strength", "high"), "results[0].layers[1].strength must be a number or null "
     "(got a string 'high')"),
    (_set("results.0.layers.0", 7), "results[0].layers[0] must be an object (got a number 7)"),
    (_set("results.0.layers.0.strength_ci", [1.0]), "results[0].layers[0].strength_ci must be a list of 2 items"),
    (_set("results.0.layers.0.profile.rms", "x"), "results[0].layers[0].profile.rms must be a list"),
    (_set("results.0.patch", None), "results[0].patch must be an object (got null)"),
    (_set("model", "resnet10t"), "model must be an object (got a string 'resnet10t')"),
    (_drop("model.name"), "'model.name'"),
    (_set("data.num_images", "2"), "data.num_images must be an integer"),
    (_set("seed", True), "seed must be an integer (got a boolean True)"),
    (_drop("results.0.layers.0.n"), "'results[0].layers[0].n'"),
])
def test_show_on_a_report_with_wrong_field_types_is_one_line(saved_report, tmp_path, change, cause):
    data = json.loads(json.dumps(saved_report))
    change(data)
    file = tmp_path / REPORT_JSON
    file.write_text(json.dumps(data))
    line = fails(["show", file, "--no-figures"], f"'{file}' is not a ppp-audit report (bad or missing field: {cause}")
    assert "pass a report.json written by ppp-audit" in line


def test_the_saved_report_itself_loads(saved_report, tmp_path):
    file = tmp_path / REPORT_JSON
    file.write_text(json.dumps(saved_report))
    assert runner.invoke(app, ["show", str(file), "--no-figures"]).exit_code == 0


# ---- packaging -----------------------------------------------------------------------------------------------------


def test_dependencies_have_no_upper_caps_and_a_hub_floor_that_fits_the_imports():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement
    from packaging.version import Version

    requirements = {Requirement(line).name: Requirement(line)
                    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name in ("torch", "torchvision"):
        assert all(spec.operator == ">=" for spec in requirements[name].specifier), requirements[name]
    floor = min(Version(spec.version) for spec in requirements["huggingface-hub"].specifier if spec.operator == ">=")
    assert floor >= Version("1.2.1")  # huggingface_hub.constants.is_offline_mode appeared in 1.2.1
    import huggingface_hub.constants
    import huggingface_hub.errors

    assert callable(huggingface_hub.constants.is_offline_mode) and huggingface_hub.errors.RemoteEntryNotFoundError


# ---- outputs: checked before the audit; a finished report is never lost nor silently replaces another ------------


@pytest.mark.parametrize(("make", "args", "cause"), [
    (None, ["--json", "/proc/x.json"], "--json '/proc/x.json' cannot be written"),
    ("file", ["--out", "{path}"], "is a file, not a folder"),
    ("dir", ["--json", "{path}"], "is a folder — name a file"),
    (None, ["--json", "ok.json", "--out", "/proc/x"], "--out '/proc/x' cannot be written"),
    ("file", ["--json", "{path}/x.json"], "is a file, not a folder"),
])
def test_unwritable_outputs_fail_before_the_audit(tmp_path, monkeypatch, make, args, cause):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "existing"
    if make == "file":
        path.write_text("not a folder")
    elif make == "dir":
        path.mkdir()
    measured = []
    monkeypatch.setattr("ppp_audit.engine.audit", lambda *a, **k: measured.append(1))
    fails([*TINY, *[arg.format(path=path) for arg in args]], cause)
    assert not measured, "the audit ran before its outputs were checked"
    assert sorted(p.name for p in tmp_path.iterdir()) == ([path.name] if make else [])  # nothing left (no DIR.tmp)


def test_a_folder_holding_another_audit_is_not_replaced_without_overwrite(tmp_path):
    out = tmp_path / "run"
    first = runner.invoke(app, [*TINY, "-p", "reflect", "--out", str(out)])
    assert first.exit_code == 0, first.output
    earlier = (out / REPORT_JSON).read_text()
    stage_maps = {p.name for p in (out / "figures").glob("ppp_map_*.png")}
    assert len(stage_maps) == 5
    line = fails([*TINY, "--out", out], "already holds the report of an earlier audit (resnet10t, native + reflect")
    assert "--overwrite" in line and (out / REPORT_JSON).read_text() == earlier
    again = runner.invoke(app, [*TINY, "--out", str(out), "--overwrite", "--layers", "layer4"])
    assert again.exit_code == 0, again.output
    assert [r["scheme"] for r in json.loads((out / REPORT_JSON).read_text())["results"]] == ["native"]
    left = {p.name for p in (out / "figures").glob("ppp_map_*.png")}
    assert left == {"ppp_map_00_layer4.png"}, "figures of the earlier audit were left beside the new page"


def test_a_write_that_fails_after_the_audit_keeps_the_report(tmp_path, monkeypatch):
    """The paths passed the check, then writing failed anyway (disk full, folder removed): the report goes to the
    default folder and the error line says where."""
    monkeypatch.chdir(tmp_path)
    original = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name.startswith(".wanted.json.") and self.suffix == ".tmp":  # atomic_write's temporary file
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    line = fails([*TINY, "--json", "wanted.json"], "could not write the report to 'wanted.json': No space left")
    saved = tmp_path / "ppp-audit-reports" / "resnet10t@random-init" / "native" / REPORT_JSON
    assert saved.is_file() and str(saved.relative_to(tmp_path)) in line


def test_report_save_cleans_up_and_names_the_path(saved_report, tmp_path):
    report = Report.from_dict(saved_report)
    target = tmp_path / "folder"
    target.mkdir()
    with pytest.raises(OSError, match="could not write the report to .*folder.*: is a folder"):
        report.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
