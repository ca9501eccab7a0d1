"""Hugging Face dataset image source (``--images hfds/NAME``): local parquet, imagefolder and saved datasets, offline.

Every dataset is written here from images of known pixels, so windows are checked against the pixels themselves and
against :class:`FolderSource` reading the same images as PNG files.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from ppp_audit.cli import app
from ppp_audit.engine import AuditConfig
from ppp_audit.errors import ImageSourceError, PPPAuditError
from ppp_audit.images import FolderSource, HFDatasetSource, WindowDataset, image_source, parse_hfds
from ppp_audit.report import Report

WIDTH, HEIGHT, ROWS = 224, 200, 3  # short side 200: enough for resnet18's 192-pixel window at --input-size 64


def _pixels(k: int) -> np.ndarray:
    """Image ``k``: red = column, green = row, blue = 60k + 10 (uint8, HxWx3)."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return np.stack([xx, yy, np.full_like(xx, 60 * k + 10)], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same images as PNG files, a parquet dataset (train/test), an imagefolder tree and a save_to_disk folder."""
    import datasets

    root = tmp_path_factory.mktemp("hfds")
    with pytest.MonkeyPatch.context() as mp:
        # The Arrow copies datasets makes of local data go to a fresh cache, not the user's.
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / "cache")
        images = [Image.fromarray(_pixels(k)) for k in range(ROWS)]
        (root / "png").mkdir()
        for k, img in enumerate(images):
            img.save(root / "png" / f"{k}.png")
        (root / "imagefolder" / "train" / "cat").mkdir(parents=True)
        (root / "imagefolder" / "train" / "dog").mkdir()
        for k, img in enumerate(images):
            img.save(root / "imagefolder" / "train" / ("cat" if k == 0 else "dog") / f"{k}.png")
        # The image column is neither first nor called "image": it is found by its feature type.
        features = datasets.Features({"label": datasets.Value("int64"), "photo": datasets.Image()})
        train = datasets.Dataset.from_dict({"label": list(range(ROWS)), "photo": images}, features=features)
        (root / "parquet").mkdir()
        train.to_parquet(str(root / "parquet" / "train.parquet"))
        train.select([0, 1]).to_parquet(str(root / "parquet" / "test.parquet"))
        datasets.DatasetDict({"validation": train}).save_to_disk(str(root / "saved"))
        (root / "no_images").mkdir()
        no_images = datasets.Dataset.from_dict({"pixels": [[1, 2]], "caption": ["a"]})
        no_images.to_parquet(str(root / "no_images" / "a.parquet"))
        (root / "small").mkdir()
        small = datasets.Dataset.from_dict({"image": [Image.new("RGB", (40, 30))]}, features=datasets.Features(
            {"image": datasets.Image()}))
        small.to_parquet(str(root / "small" / "train.parquet"))
        yield root


@pytest.fixture(scope="module")
def parquet(data):
    return HFDatasetSource(str(data / "parquet"))


def test_windows_are_the_known_pixels_and_match_the_folder_source(data, parquet):
    assert parquet.available() == ROWS and parquet.column == "photo"
    assert parquet.describe() == {"kind": "hf-dataset", "name": str(data / "parquet"), "config": None,
                                  "split": "train", "column": "photo", "num_rows": ROWS, "local": True,
                                  "label_column": None, "scale": 1.0}
    folder = FolderSource(data / "png")
    top, left = (HEIGHT - 64) // 2, (WIDTH - 64) // 2
    for k in range(ROWS):
        window = parquet.window(k, 64)
        expected = torch.from_numpy(_pixels(k)[top:top + 64, left:left + 64]).permute(2, 0, 1).float() / 255
        assert window.shape == (3, 64, 64) and window.dtype == torch.float32
        assert torch.equal(window, expected)
        assert torch.equal(window, folder.window(k, 64))
    assert torch.equal(parquet.window(ROWS + 1, 64), parquet.window(1, 64))  # indices wrap like FolderSource's
    # With a scale, both sources still agree to the bit: one resize-and-crop function serves both.
    resized = HFDatasetSource(str(data / "parquet"), scale=0.75)
    assert torch.equal(resized.window(2, 72), FolderSource(data / "png", scale=0.75).window(2, 72))


def test_imagefolder_layout_and_split(data):
    source = image_source(f"hfds/{data / 'imagefolder'}")
    assert isinstance(source, HFDatasetSource) and source.available() == ROWS and source.column == "image"
    folder = FolderSource(data / "imagefolder")
    for row in range(ROWS):
        file = folder.files.index(Path(source.dataset[row]["image"]["path"]))  # the row's file, in the folder's order
        assert torch.equal(source.window(row, 64), folder.window(file, 64))
    test = HFDatasetSource(str(data / "parquet"), split="test")
    assert test.available() == 2 and torch.equal(test.window(1, 64), FolderSource(data / "png").window(1, 64))
    assert HFDatasetSource(str(data / "parquet"), split="train[:2]").available() == 2


def test_saved_to_disk_folder(data):
    source = HFDatasetSource(str(data / "saved"), split="validation")
    assert source.available() == ROWS and torch.equal(source.window(0, 64), FolderSource(data / "png").window(0, 64))
    with pytest.raises(ImageSourceError, match=r"has no split 'train' \(splits: validation\)"):
        HFDatasetSource(str(data / "saved"))


def test_source_pickles_for_dataloader_workers(parquet):
    clone = pickle.loads(pickle.dumps(parquet))
    assert len(pickle.dumps(parquet)) < 10_000  # a reference to the Arrow file, not the pixels
    assert torch.equal(clone.window(2, 64), parquet.window(2, 64))
    loader = DataLoader(WindowDataset(parquet, range(ROWS), 64), batch_size=2, num_workers=1)
    batches = list(loader)
    assert torch.equal(torch.cat([w for _, w in batches]), torch.stack([parquet.window(k, 64) for k in range(ROWS)]))


@pytest.mark.parametrize(
    ("name", "kwargs", "message", "hint"),
    [
        ("parquet", {"split": "validation"}, r"has no split 'validation' \(splits: (train, test|test, train)\)",
         "--images-split"),
        ("no_images", {}, r"has no image column \(columns: pixels \(.*\), caption \(string\)\)", "datasets.Image()"),
        ("parquet", {"column": "label"}, "column 'label' is not an image column", "datasets.Image()"),
        ("parquet", {"config": "nope"}, "BuilderConfig 'nope' not found", "hfds/NAME#CONFIG"),
        ("missing", {}, "cannot load hfds/.*missing", "local data"),
    ],
)
def test_bad_datasets_give_image_source_errors(data, name, kwargs, message, hint):
    with pytest.raises(ImageSourceError, match=message) as caught:
        HFDatasetSource(str(data / name), **kwargs)
    assert hint in caught.value.hint


def test_images_smaller_than_the_window_are_refused(data):
    source = HFDatasetSource(str(data / "small"))
    assert source.window(0, 30).shape == (3, 30, 30)
    with pytest.raises(ImageSourceError, match=r"row 0 of hfds/.*small \(train\)' is 40x30, smaller than the 32x32"):
        source.window(0, 32)


def test_missing_hub_dataset_offline_says_how_to_use_local_data(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_print_me")
    with pytest.raises(ImageSourceError) as caught:
        image_source("hfds/nobody-has/this-dataset")
    error = caught.value
    assert "cannot load hfds/nobody-has/this-dataset (train)" in error.message
    assert "HF_HUB_OFFLINE is set" in error.hint and "--images hfds/PATH" in error.hint and "--images DIR" in error.hint
    assert "hf_do_not_print_me" not in str(error)


def test_missing_hub_dataset_online_points_at_login(monkeypatch):
    import datasets

    def not_found(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'owner/gated' doesn't exist on the Hub\nor cannot be "
                                                       "accessed.")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(ImageSourceError, match="doesn't exist on the Hub or cannot be accessed") as caught:
        HFDatasetSource("owner/gated")
    assert "\n" not in caught.value.message and "hf auth login" in caught.value.hint


def test_without_the_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(ImageSourceError, match="hfds/beans needs the `datasets` package") as caught:
        image_source("hfds/beans")
    assert "pip install 'ppp-audit[hf]'" in caught.value.hint


def test_spec_parsing_and_config_validation(tmp_path):
    assert parse_hfds("hfds/beans") == ("beans", None)
    assert parse_hfds("HFDS/owner/name#small") == ("owner/name", "small")  # the prefix is case-insensitive, as in timm
    assert parse_hfds("hfds") is None and parse_hfds("./hfds/photos") is None and parse_hfds(None) is None
    with pytest.raises(ImageSourceError, match="names no dataset"):
        parse_hfds("hfds/")
    (tmp_path / "hfds").mkdir()  # a folder called hfds, given by its path, is a folder
    Image.new("RGB", (8, 8)).save(tmp_path / "hfds" / "a.png")
    assert isinstance(image_source(str(tmp_path / "hfds")), FolderSource)
    assert AuditConfig(model="resnet18", images="hfds/beans", images_split="validation").images_split == "validation"
    with pytest.raises(PPPAuditError, match="--images-split applies to Hugging Face datasets only"):
        AuditConfig(model="resnet18", images=str(tmp_path), images_split="validation")
    with pytest.raises(PPPAuditError, match="--images-split is empty"):
        AuditConfig(model="resnet18", images="hfds/beans", images_split=" ")


runner = CliRunner()


def test_cli_audit_on_a_local_dataset_with_a_worker_process(data):
    result = runner.invoke(app, ["resnet18", "--no-pretrained", "-p", "reflect", "-n", "4", "--input-size", "64",
                                 "--images", f"hfds/{data / 'parquet'}", "--device", "cpu", "--workers", "1",
                                 "--json", "-"])
    assert result.exit_code == 0, result.output
    report = Report.from_json(result.stdout)
    assert report.data == {"kind": "hf-dataset", "name": str(data / "parquet"), "config": None, "split": "train",
                           "column": "photo", "num_rows": ROWS, "local": True, "label_column": None,
                           "scale": 1.0, "num_images": ROWS}
    assert [r.scheme for r in report.results] == ["native", "reflect"]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--images", "hfds/{parquet}", "--images-split", "validation"], "has no split 'validation'"),
        (["--images", "hfds/nobody-has/this-dataset"], "HF_HUB_OFFLINE is set"),
        (["--images", "{parquet}", "--images-split", "test"], "--images-split applies to Hugging Face datasets only"),
    ],
)
def test_cli_bad_dataset_gives_one_line(data, args, reason):
    args = [a.replace("{parquet}", str(data / "parquet")) for a in args]
    result = runner.invoke(app, ["resnet10t", "--no-pretrained", "--input-size", "64", "-n", "4", "--device", "cpu",
                                 *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppp-audit: error:") and reason in lines[0], result.stderr


def test_a_row_without_an_image_is_named(data, tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": [Image.fromarray(_pixels(0)), None]}, features=features).to_parquet(
        str(tmp_path / "train.parquet"))
    source = HFDatasetSource(str(tmp_path))
    assert source.window(0, 64).shape == (3, 64, 64)
    with pytest.raises(ImageSourceError, match=r"cannot read image 'row 1 of hfds/.*': the cell is empty"):
        source.window(1, 64)


def test_finetune_split_keeps_the_dataset_split(parquet):
    from ppp_audit.finetune import SplitSource

    described = SplitSource(parquet, [0, 2], split="held-out").describe()
    assert described["split"] == "held-out" and described["dataset_split"] == "train"
    assert described["kind"] == "hf-dataset" and described["num_split"] == 2


def test_hfds_config_picks_a_configuration(data, tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image()})
    for config, rows in (("full", 3), ("small", 1)):
        (tmp_path / config).mkdir()
        images = [Image.fromarray(_pixels(k)) for k in range(rows)]
        dataset = datasets.Dataset.from_dict({"image": images}, features=features)
        dataset.to_parquet(str(tmp_path / config / "a.parquet"))
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: full\n  default: true\n  data_files: full/*.parquet\n"
        "- config_name: small\n  data_files: small/*.parquet\n---\n"
    )
    assert image_source(f"hfds/{tmp_path}").available() == 3
    small = image_source(f"hfds/{tmp_path}#small")
    assert small.available() == 1 and small.describe()["config"] == "small"
    with pytest.raises(ImageSourceError, match=r"BuilderConfig 'tiny' not found. Available: \['full', 'small'\]"):
        image_source(f"hfds/{tmp_path}#tiny")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Ten 128 px images with a ClassLabel column (red cats, blue dogs) as a local parquet dataset."""
    import datasets

    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    images, labels = [], []
    for k in range(10):
        pixels = rng.integers(0, 96, (128, 128, 3), dtype=np.uint8)
        pixels[..., 0 if k % 2 == 0 else 2] += 150
        images.append(Image.fromarray(pixels))
        labels.append(k % 2)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
        str(root / "train.parquet"))
    with pytest.MonkeyPatch.context() as mp:
        # Outside the dataset folder: Arrow files cached inside it would be read back as more rows.
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("labelled-cache"))
        yield root


def test_fine_tuning_with_the_class_label_column(labelled, tmp_path, heldout_label_metrics):
    source = HFDatasetSource(str(labelled))
    assert source.classes() == ([k % 2 for k in range(10)], ["cat", "dog"])
    assert source.describe()["label_column"] == "label"
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["resnet10t", "--no-pretrained", "-p", "replicate", "--images", f"hfds/{labelled}",
                                 "--labels", "dataset", "--finetune-steps", "2", "--finetune-batch-size", "4", "-n",
                                 "4", "-b", "4", "--input-size", "64", "--margin", "32", "--lr", "1e-3", "--json",
                                 str(out), "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ft = Report.load(out).results[1].finetune
    assert ft.settings["objective"] == "cross-entropy" and ft.settings["classes"] == ["cat", "dog"]
    from ppp_audit.finetune import FinetuneConfig

    original, before = heldout_label_metrics(
        AuditConfig("resnet10t", paddings=["replicate"], pretrained=False, images=f"hfds/{labelled}", num_images=4,
                    batch_size=4, input_size=64, margin=32, device="cpu"),
        FinetuneConfig(steps=2, batch_size=4, labels="dataset", lr=1e-3))
    assert ft.original == original and ft.before == before  # the held-out rows, their labels, the model


@pytest.mark.parametrize(("images", "reason"), [
    ("parquet", "has no class-label column"),
    ("png", "--labels dataset needs a Hugging Face dataset"),
])
def test_labels_dataset_needs_a_class_label_column(data, images, reason):
    spec = f"hfds/{data / images}" if images == "parquet" else str(data / images)
    result = runner.invoke(app, ["resnet10t", "--no-pretrained", "-p", "replicate", "--images", spec, "--labels",
                                 "dataset", "--finetune-steps", "1", "-n", "2", "--input-size", "64", "--margin", "32",
                                 "--device", "cpu"])
    assert result.exit_code == 2 and reason in result.output, result.output
