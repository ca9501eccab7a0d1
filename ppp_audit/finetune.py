"""Fine-tune after a padding swap, then measure PPP again (docs/finetune.md).

Does swapping ``zeros`` for ``reflect`` remove a pretrained model's PPP, or does training rebuild it? The engine:

1. measures PPP of the original model with its native padding and with each scheme (an ordinary :func:`audit` on
   held-out images: *before the swap* and *right after it*);
2. for each scheme, copies the model, swaps its padding, and fine-tunes it: by default label-free, distilling the
   original (unpatched) model's logits on the same crops; or with cross-entropy on labels from a class-per-folder tree;
3. measures PPP again with the same audit on the same held-out images (*after fine-tuning*), optionally every
   ``measure_every`` steps (a formation curve), plus top-1 agreement with the original model and the distillation loss.

Training crops are the crops the audit measures (the centre ``S x S`` of a window of the source) and never the
held-out ones: built-in dead-leaves images ``0..N-1`` are held out and training uses fresh indices from ``N`` on; an
image folder is split by a seeded shuffle.

Example:
    >>> from ppp_audit.engine import AuditConfig
    >>> from ppp_audit.finetune import FinetuneConfig, finetune_audit
    >>> report = finetune_audit(AuditConfig("resnet18", paddings=["reflect"]), FinetuneConfig(steps=50))
    >>> report.scheme("reflect").finetune.last_strength
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .auditor import Auditor, ModelState, Normalise, autocast, config_source, resolve_device
from .progress import ProgressReporter, progress_bar
from .config import AuditConfig, FinetuneConfig
from .errors import AuditInterrupted, ConfigError, ImageSourceError, PPPAuditError
from .images import FolderSource, HFDatasetSource, ImageSource, IndexedSource, usable_order
from .geometry import DELTA
from .models import ModelInfo, build_model
from .paddings import PatchSummary, get_padding, padding, patch_padding
from .repair import TILES, ConsistencyTerm, tiling_consistency
from .report import CurvePoint, FinetuneResult, LayerResult, Report, SchemeResult
from .runtime import host_memory_kept

SAVED_RECORD_KEY = "ppp_audit"
"""Key of the fine-tune record in a saved model's ``config.json`` (and prefix of its safetensors metadata)."""
_MAX_LOSS_POINTS = 200


# ---------------------------------------------------------------------------------------------------------------------
# Losses and held-out metrics (pure functions)
# ---------------------------------------------------------------------------------------------------------------------


def distillation_loss(student: Tensor, teacher: Tensor, kind: str = "kl", temperature: float = 1.0) -> Tensor:
    """Distillation loss between logits (B, classes), averaged over the batch, in float32.

    ``kl``: ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` (Hinton et al.; ``T²`` keeps gradient sizes
    comparable across ``T``). ``mse``: mean squared error between the logits.
    """
    student, teacher = student.float(), teacher.float()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind != "kl":
        raise ValueError(f"unknown distillation loss '{kind}'")
    t = temperature
    log_p_student = F.log_softmax(student / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


def heldout_metrics(student: Tensor, teacher: Tensor, labels: Tensor | None = None, *, kind: str = "kl",
                    temperature: float = 1.0) -> dict[str, float]:
    """Top-1 agreement with the original model, distillation loss and (given labels) accuracy and cross-entropy."""
    out = {
        "agreement_top1": float((student.argmax(-1) == teacher.argmax(-1)).double().mean()),
        "distill_loss": float(distillation_loss(student, teacher, kind, temperature)),
    }
    if labels is not None:
        out["label_accuracy"] = float((student.argmax(-1) == labels).double().mean())
        out["label_loss"] = float(F.cross_entropy(student.float(), labels))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Data: held-out / training splits and the crops the audit measures
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSource(IndexedSource):
    """A held-out or training split of an image source: the indices it owns, and its name for the report."""

    split: str = "held-out"

    def describe(self) -> dict[str, Any]:
        base = self.base.describe()
        out = {**base, "split": self.split}
        if "split" in base:  # a dataset's own split (hfds/NAME) stays in the report next to ours
            out["dataset_split"] = base["split"]
        if isinstance(self.indices, range):
            out["indices"] = [self.indices.start, None if self.unlimited else self.indices.stop]
        else:
            out["num_split"] = len(self.indices)
        return out


class CropDataset(Dataset):
    """Centre ``size`` crops of ``window``-sized windows (the audit's crops), with a class label or -1.

    Args:
        source: Image source.
        indices: Which windows, in order (repeats allowed).
        window: Window size ``S + 2m``.
        size: Crop size ``S``.
        labels: Class of each index of ``source``, or ``None``.
        whole: Give the whole windows instead (the repair's consistency term needs the context); their centre crops
            are the crops.
    """

    def __init__(self, source: ImageSource, indices: Sequence[int], window: int, size: int,
                 labels: Callable[[int], int] | None = None, whole: bool = False) -> None:
        self.source, self.indices, self.window, self.size, self.labels = source, indices, window, size, labels
        self.offset = 0 if whole else (window - size) // 2
        self.side = window if whole else size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        index = self.indices[i]
        crop = self.source.window(index, self.window)[:, self.offset:self.offset + self.side,
                                                      self.offset:self.offset + self.side]
        return crop.contiguous(), (self.labels(index) if self.labels else -1)


@dataclass
class Splits:
    """The held-out and training splits of an image source, the training pool and the class labels."""

    heldout: SplitSource
    train: SplitSource
    pool: Sequence[int] | None  # None: fresh images for every crop
    labels: list[int] | None = None  # class of each *base* source index
    classes: list[str] | None = None

    def labels_of(self, split: SplitSource) -> Callable[[int], int] | None:
        """Class of each index of ``split``, or ``None`` without labels."""
        return None if self.labels is None else _SplitLabels(self.labels, split.indices)


@dataclass(frozen=True)
class _SplitLabels:
    """Picklable (for DataLoader workers) map from a split index to its class."""

    labels: Sequence[int]
    indices: Sequence[int]

    def __call__(self, index: int) -> int:
        return self.labels[self.indices[index]]


def make_splits(config: AuditConfig, ft: FinetuneConfig, info: ModelInfo, window: int,
                num_classes: int | None, crop: int | None = None) -> Splits:
    """The held-out split (measured) and the training split (never measured) of the images ``config`` names.

    Built-in dead-leaves images ``0..N-1`` are held out and training uses fresh indices from ``N`` on; a folder or
    dataset is split by a seeded shuffle (images too small for the window left out). Labels are checked before any
    image is read.
    """
    base = config_source(config, crop)
    if ft.labels == "folder" and not isinstance(base, FolderSource):
        raise PPPAuditError("--labels folder needs an image folder", "pass --images ROOT with one folder per class")
    if ft.labels == "dataset" and not isinstance(base, HFDatasetSource):
        raise PPPAuditError("--labels dataset needs a Hugging Face dataset",
                            "pass --images hfds/NAME (with a class-label column), or --labels folder for a folder")
    classes = None
    if ft.labels:  # checked before any image is read
        classes = base.classes()
        if num_classes is not None and max(classes[0]) >= num_classes:
            fix = ("name class folders by the model's class index (0..num_classes-1), or use fewer classes"
                   if ft.labels == "folder" else "use a dataset labelled in the model's classes, or leave --labels out")
            raise PPPAuditError(
                f"--labels {ft.labels}: class index {max(classes[0])} does not fit the model's {num_classes} classes",
                fix,
            )
    available = base.available()
    if available is None:  # unlimited built-in images: 0..N-1 held out, training from N on
        n = config.num_images
        heldout = SplitSource(base, range(0, n), split="held-out")
        if ft.train_images is None:
            return Splits(heldout, SplitSource(base, range(n, 2**62), split="train", unlimited=True), None)
        return Splits(heldout, SplitSource(base, range(n, n + ft.train_images), split="train"),
                       range(ft.train_images))
    # Seeded random order (not the first classes), without images too small for the window.
    order = [index for index in usable_order(base, window, config.seed) if index is not None]
    if len(order) < 4:
        raise ImageSourceError(f"{base.describe()['kind']} source holds {len(order)} images of at least "
                               f"{window}x{window} pixels",
                               "fine-tuning needs at least 4; use larger images or a smaller --input-size")
    n = min(config.num_images, len(order) // 2)
    train = sorted(order[n:][: ft.train_images])
    heldout = SplitSource(base, sorted(order[:n]), split="held-out")
    splits = Splits(heldout, SplitSource(base, train, split="train"), range(len(train)))
    if classes is not None:
        splits.labels, splits.classes = classes
    return splits


def _training_order(pool: Sequence[int] | None, count: int, seed: int) -> Sequence[int]:
    """Indices of the ``count`` training crops: fresh ones, or seeded reshuffles of a finite pool."""
    if pool is None:
        return range(count)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < count:
        order += [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]
    return order[:count]


# ---------------------------------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------------------------------


def set_train_mode(model: nn.Module, bn: str = "frozen") -> nn.Module:
    """``model.train()``, then BatchNorm layers back to eval mode when ``bn == "frozen"``."""
    model.train()
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


@dataclass
class TrainLog:
    """What one fine-tuning run did: the loss of every step and the seconds spent training."""

    losses: list[float]
    seconds: float
    consistency: list[float] = dataclasses.field(default_factory=list)


def check_optimizer(name: str) -> None:
    """Refuse an optimiser the installed timm does not have, before any work.

    A config checks the name against :data:`~ppp_audit.config.OPTIMIZERS` (timm's list, kept torch-free); timm itself
    is asked only here, as an older timm may lack a name on that list.

    Raises:
        ConfigError: timm has no optimiser of that name.
    """
    import timm
    from timm.optim import list_optimizers

    if name not in list_optimizers():
        raise ConfigError(f"timm {timm.__version__} has no optimizer '{name}'",
                          "upgrade timm (pip install -U timm), or use adamw or sgd")


def finetune(student: nn.Module, scheme: str, loader: Iterable[tuple[Tensor, Tensor]], config: FinetuneConfig, *,
             info: ModelInfo, teacher: nn.Module | None = None, device: str | torch.device = "cpu",
             precision: str = "fp32", seed: int = 0, measure: Callable[[int], None] | None = None,
             progress: bool | ProgressReporter = False,
             include_pools: bool = False, consistency: ConsistencyTerm | None = None) -> TrainLog:
    """Train ``student`` in place with its padding swapped to ``scheme``; the patch is undone on return.

    Args:
        student: The model to fine-tune (unpatched; it is patched only while training).
        scheme: Padding scheme to train with (``native``: the model's own, unpatched).
        loader: Batches of ``(crops in [0, 1], labels)``; at least ``config.steps`` of them. With ``consistency``,
            batches of whole windows, whose centre crops are trained on.
        config: Objective, optimiser and BatchNorm mode.
        info: The model's :class:`ModelInfo` (normalisation).
        teacher: The original model, whose logits are distilled (needed unless ``config.labels``).
        device: Where to train.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast (meant for GPUs; fp16 with a gradient scaler).
        seed: Seeds torch's global generator (dropout and anything else random in a step).
        measure: Called as ``measure(step)`` every ``config.measure_every`` steps (not at the last), with the student
            unpatched, for the formation curve.
        progress: Show a progress bar on stderr.
        include_pools: Patch pools too (as the audit does with ``include_pools``), so the model trained is the model
            measured.
        consistency: The repair's consistency term (docs/repair.md), added with weight ``config.repair_weight``;
            needed when ``config.repair``.
    """
    from timm.optim import create_optimizer_v2

    if config.labels is None and teacher is None:
        raise ValueError("distillation needs the teacher (original) model")
    if config.repair != (consistency is not None):
        raise ValueError("a repair needs its consistency term, and only a repair takes one")
    check_optimizer(config.optimizer)
    device = torch.device(device)
    resolved = get_padding(scheme)  # native: the null scheme, which patches nothing
    torch.manual_seed(seed)
    optimizer = create_optimizer_v2(student, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                    momentum=config.momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    normalise = Normalise(info, device)
    if teacher is not None:
        teacher.eval()
    losses: list[float] = []
    terms: list[float] = []
    started = time.perf_counter()

    def patch() -> PatchSummary:
        return patch_padding(student, resolved, include_pools=include_pools)

    summary = patch()
    what = "repairing" if consistency else "fine-tuning"
    try:
        set_train_mode(student, config.bn)
        batches = iter(loader)
        with progress_bar(progress) as bar:
            task = bar.add_task(f"{what} with {scheme}", total=config.steps)
            for step in range(1, config.steps + 1):
                try:
                    pixels, labels = next(batches)
                except StopIteration:
                    raise ValueError(f"the loader ran out after {step - 1} of {config.steps} steps") from None
                inputs = normalise(pixels)
                x = inputs if consistency is None else _centre(inputs, consistency.margin)
                with autocast(device, precision):
                    with consistency.capture(student) if consistency else contextlib.nullcontext([]) as features:
                        logits = student(x)
                    if config.labels is None:
                        with torch.no_grad():
                            target = teacher(x)
                    references = consistency.references(inputs, features) if consistency else []
                if config.labels is None:
                    loss = distillation_loss(logits, target, config.distill_loss, config.temperature)
                else:
                    loss = F.cross_entropy(logits.float(), labels.to(device))
                if consistency is not None:
                    term = consistency(features, references)
                    loss = loss + config.repair_weight * term
                    terms.append(float(term.detach()))
                if not torch.isfinite(loss):
                    raise PPPAuditError(f"the training loss became {float(loss.detach())} at step {step}",
                                        "lower --lr, or use --precision fp32")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
                bar.update(task, advance=1, description=f"{what} with {scheme} · loss {losses[-1]:.4g}")
                if measure and config.measure_every and step % config.measure_every == 0 and step < config.steps:
                    if summary is not None:
                        summary.restore()
                    summary = None
                    measure(step)
                    summary = patch()
                    set_train_mode(student, config.bn)
    finally:
        if summary is not None:
            summary.restore()
        student.eval()
    return TrainLog(losses=losses, seconds=time.perf_counter() - started, consistency=terms)


def _centre(windows: Tensor, margin: int) -> Tensor:
    """The centre crops of normalised windows, contiguous (the pixels, and the memory layout, of a crop batch)."""
    side = windows.shape[-1] - 2 * margin
    return windows[..., margin:margin + side, margin:margin + side].contiguous()


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], *, info: ModelInfo,
            device: str | torch.device = "cpu", precision: str = "fp32", scheme: str | None = None,
            include_pools: bool = False) -> tuple[Tensor, Tensor]:
    """Logits (float32, CPU) and labels of every crop of ``loader``, in eval mode, optionally under ``scheme`` (with
    pools patched too when ``include_pools``)."""
    device = torch.device(device)
    normalise = Normalise(info, device)
    model.eval()
    logits, labels = [], []
    with padding(model, scheme, include_pools=include_pools) if scheme else contextlib.nullcontext():
        for crops, y in loader:
            with autocast(device, precision):
                logits.append(model(normalise(crops)).float().cpu())
            labels.append(y)
    return torch.cat(logits), torch.cat(labels)


# ---------------------------------------------------------------------------------------------------------------------
# Saving and loading a fine-tuned model
# ---------------------------------------------------------------------------------------------------------------------


def save_finetuned(model: nn.Module, directory: str | Path, scheme: str, record: dict[str, Any] | None = None) -> Path:
    """Save an (unpatched) fine-tuned timm model as ``config.json`` + ``model.safetensors``, loadable by timm.

    ``timm.create_model("local-dir:DIR", pretrained=True)`` rebuilds it, **with the architecture's native padding**:
    the weights were trained for ``scheme``, recorded under ``"ppp_audit"`` in ``config.json`` and as
    ``ppp_audit.padding`` in the safetensors metadata. :func:`load_finetuned` applies it.
    """
    from safetensors.torch import save_file
    from timm.models import save_for_hf

    directory = Path(directory)
    if not hasattr(model, "pretrained_cfg"):
        raise PPPAuditError(f"cannot save a {type(model).__name__} in timm's format", "save a timm model")
    full_record = {"padding": scheme, **(record or {}),
                   "note": "trained with this padding: apply it at load time, e.g. ppp_audit.finetune.load_finetuned"}
    save_for_hf(model, directory, model_config={SAVED_RECORD_KEY: full_record}, safe_serialization=True)
    # Rewrite the weights with the scheme in their metadata, so a bare .safetensors file still says how to pad.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"),
              metadata={"format": "pt", f"{SAVED_RECORD_KEY}.padding": scheme,
                        f"{SAVED_RECORD_KEY}.record": json.dumps(full_record)})
    return directory


def saved_record(path: str | Path) -> dict[str, Any]:
    """The fine-tune record of a model saved by :func:`save_finetuned` (folder or .safetensors file); ``{}`` if none.

    It holds ``padding`` (the scheme the weights were trained with), ``include_pools`` (whether pools were patched
    too), the base model and the training settings.
    """
    path = Path(path)
    if path.is_dir():
        config = json.loads((path / "config.json").read_text())
        return dict(config.get(SAVED_RECORD_KEY) or {})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    record = json.loads(metadata.get(f"{SAVED_RECORD_KEY}.record") or "{}")
    if f"{SAVED_RECORD_KEY}.padding" in metadata:
        record["padding"] = metadata[f"{SAVED_RECORD_KEY}.padding"]
    return record


def saved_padding(path: str | Path) -> str | None:
    """The padding scheme a model saved by :func:`save_finetuned` was trained with (folder or .safetensors file)."""
    return saved_record(path).get("padding")


def load_finetuned(path: str | Path, *, model: str | None = None,
                   device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo, PatchSummary]:
    """Load a model saved by :func:`save_finetuned` **with the padding it was trained with** applied (pools included
    when it was trained with them patched).

    Args:
        path: The saved folder, or its ``model.safetensors`` (then ``model`` names the architecture).
        model: timm architecture of a bare safetensors file.
        device: Where to put it.

    Returns:
        The patched model, its :class:`ModelInfo`, and the :class:`PatchSummary` (``restore()`` gives the native
        padding back).
    """
    path = Path(path)
    record = saved_record(path)
    scheme = record.get("padding")
    if scheme is None:
        raise PPPAuditError(f"'{path}' records no padding scheme", "load it with ppp_audit.models.build_model")
    if path.is_dir():
        net, info = build_model(f"local-dir:{path}", device=device)
    else:
        if model is None:
            raise PPPAuditError(f"loading the bare file '{path}' needs its architecture", "pass model='NAME'")
        net, info = build_model(model, weights=path, device=device)
    include_pools = bool(record.get("include_pools", False))
    return net, info, patch_padding(net, scheme, include_pools=include_pools)  # native (a repair): nothing changes


# ---------------------------------------------------------------------------------------------------------------------
# The fine-tune audit
# ---------------------------------------------------------------------------------------------------------------------


def _curve_point(step: int, layers: list[LayerResult], metrics: dict[str, float]) -> CurvePoint:
    return CurvePoint(step=step, strengths=[layer.stats.strength for layer in layers],
                      relative_energies=[layer.stats.relative_energy for layer in layers],
                      agreement_top1=metrics.get("agreement_top1"), distill_loss=metrics.get("distill_loss"))


def _downsample(losses: list[float]) -> tuple[list[float], int]:
    every = max(1, math.ceil(len(losses) / _MAX_LOSS_POINTS))
    return [sum(losses[i:i + every]) / len(losses[i:i + every]) for i in range(0, len(losses), every)], every


def finetune_audit(config: AuditConfig, finetune_config: FinetuneConfig, *, model: nn.Module | None = None,
                   info: ModelInfo | None = None, progress: bool | ProgressReporter = False) -> Report:
    """Audit, then per scheme swap the padding, fine-tune, and audit again; return one :class:`Report`.

    The report is the ordinary audit on the held-out images (``native`` = before the swap, each scheme = right after
    it) with each scheme's ``finetune`` field filled in (:class:`~ppp_audit.report.FinetuneResult`). One
    :class:`~ppp_audit.auditor.Auditor` measures all of it, so the trained, measured and predicting models are patched
    alike (``include_pools`` included) and a random-init model gets the weights ``config.seed`` gives it in a plain
    audit.

    Args:
        config: What to audit; needs at least one scheme in ``paddings``. ``seed`` also seeds training.
        finetune_config: How to fine-tune.
        model: An already built model (and its ``info``); otherwise built from ``config``. It is not modified.
        info: The :class:`ModelInfo` of ``model``.
        progress: Name each phase on stderr (one display for the whole run: set-up, measuring, fine-tuning), or a
            :class:`~ppp_audit.progress.ProgressReporter` to report on the caller's.

    Raises:
        AuditInterrupted: Ctrl-C; its report keeps the audit before fine-tuning and every scheme already fine-tuned.
    """
    with progress_bar(progress) as bar, host_memory_kept(resolve_device(config.device)):
        return _finetune_audit(config, finetune_config, model, info, bar)


def _finetune_audit(config: AuditConfig, finetune_config: FinetuneConfig, model: nn.Module | None,
                    info: ModelInfo | None, progress: ProgressReporter) -> Report:
    ft = finetune_config
    if not config.paddings and not ft.repair:
        raise PPPAuditError("fine-tuning needs a padding scheme to swap to",
                            "add e.g. --padding reflect (or --repair to repair the native padding)")
    for name in config.paddings:
        get_padding(name)
    check_optimizer(ft.optimizer)  # before the audit, which takes minutes
    started = time.perf_counter()
    auditor = Auditor(config, model=model, info=info, progress=progress)
    consistency = _consistency_term(auditor, ft) if ft.repair else None
    splits = make_splits(config, ft, auditor.info, auditor.window, getattr(auditor.model, "num_classes", None),
                         auditor.size)

    measured = auditor.measure(splits.heldout, progress=progress)
    baselines = auditor.baselines(measured, progress=progress)
    audited_s = time.perf_counter() - started
    tuned: dict[str, FinetuneResult] = {}

    def report(interrupted: str | None = None) -> Report:
        results = [dataclasses.replace(result, finetune=tuned.get(result.scheme)) for result in measured.results]
        timings = {"total_s": audited_s, **({} if interrupted else
                                           {"finetune_total_s": time.perf_counter() - started})}
        return auditor.report(dataclasses.replace(measured, results=results), started=started,
                              baselines=baselines.results, baselines_s=baselines.seconds,
                              interrupted=interrupted or baselines.interrupted, timings=timings)

    if measured.interrupted or baselines.interrupted:
        raise AuditInterrupted(report())
    tuning = None
    try:
        tuning = _Tuning.of(auditor, config, ft, splits, consistency, progress)
        # A repair without --padding repairs the native padding; otherwise each scheme is swapped to and tuned.
        for result in (measured.results[1:] or measured.results[:1]):
            tuned[result.scheme] = tuning.tune(result)
    except KeyboardInterrupt:
        current = tuning.current if tuning is not None else "before fine-tuning"
        raise AuditInterrupted(report(
            f"stopped by Ctrl-C {current}; the audit before fine-tuning is complete, fine-tuning results cover "
            f"{', '.join(tuned) if tuned else 'no scheme'}")) from None
    return report()


@dataclass
class _Tuning:
    """What the fine-tunes of one audit share (loaders, the teacher's held-out predictions, the settings recorded),
    made once by :meth:`of`; :meth:`tune` then fine-tunes (or repairs) a copy of the audited model with one scheme
    and measures it as the audit did.

    Attributes:
        current: What is running, for the message of a Ctrl-C.
    """

    auditor: Auditor
    config: AuditConfig
    ft: FinetuneConfig
    splits: Splits
    consistency: ConsistencyTerm | None
    progress: ProgressReporter
    heldout_loader: Iterable[Any]
    tiling_loader: Iterable[Any]
    order: list[int]
    settings: dict[str, Any]
    teacher_logits: Tensor
    labels: Tensor | None
    original: dict[str, float]
    current: str = "before fine-tuning"

    @classmethod
    def of(cls, auditor: Auditor, config: AuditConfig, ft: FinetuneConfig, splits: Splits,
           consistency: ConsistencyTerm | None, progress: ProgressReporter) -> "_Tuning":
        size, window = auditor.size, auditor.window
        heldout_loader = auditor.loader(
            # Every held-out image: the loader skips those the measurement skipped as unreadable, as it did.
            CropDataset(splits.heldout, range(splits.heldout.available()), window, size,
                        splits.labels_of(splits.heldout)),
            config.batch_size)
        # Tiling consistency on a 2S x 2S image of S x S tiles (the size the model is trained at) where the window
        # holds one, else on the crop in S/2 tiles.
        tile = size if window >= TILES * size else size // TILES
        tiling_loader = auditor.loader(CropDataset(splits.heldout, range(splits.heldout.available()), window,
                                                   TILES * tile), config.batch_size)
        settings = {**ft.settings(), "seed": config.seed, "precision": config.precision,
                    "include_pools": config.include_pools, "train_data": splits.train.describe(),
                    "heldout_data": splits.heldout.describe(),
                    **({"classes": splits.classes} if splits.classes else {}),
                    **({"repair_layers": consistency.layers, "tiling": {"image_px": TILES * tile, "tile_px": tile}}
                       if consistency else {})}
        teacher_logits, heldout_labels = predict(auditor.model, heldout_loader, info=auditor.info,
                                                 device=auditor.device, precision=config.precision)
        labels = heldout_labels if splits.labels else None
        original = {}
        if labels is not None:
            metrics = heldout_metrics(teacher_logits, teacher_logits, labels, kind=ft.distill_loss,
                                      temperature=ft.temperature)
            original = {k: v for k, v in metrics.items() if k.startswith("label")}
        return cls(auditor, config, ft, splits, consistency, progress, heldout_loader, tiling_loader,
                   _training_order(splits.pool, ft.steps * ft.batch_size, config.seed), settings, teacher_logits,
                   labels, original)

    @property
    def _run(self) -> dict[str, Any]:
        """Where and how the passes run (for :func:`predict` and :func:`finetune`)."""
        return dict(info=self.auditor.info, device=self.auditor.device, precision=self.config.precision)

    def train_loader(self, whole: bool = False) -> Iterable[tuple[Tensor, Tensor]]:
        """The training crops in the seeded order (``whole``: the windows, for a repair's consistency term)."""
        splits, auditor = self.splits, self.auditor
        return auditor.loader(CropDataset(splits.train, self.order, auditor.window, auditor.size,
                                          splits.labels_of(splits.train), whole=whole), self.ft.batch_size)

    def heldout_now(self, scheme: str, net: nn.Module) -> dict[str, float]:
        """``net``'s held-out metrics under ``scheme``, against the teacher's predictions (and the labels)."""
        with self.auditor.patched(scheme, net):
            logits, _ = predict(net, self.heldout_loader, **self._run)
        return heldout_metrics(logits, self.teacher_logits, self.labels, kind=self.ft.distill_loss,
                               temperature=self.ft.temperature)

    def measure_now(self, scheme: str, state: ModelState) -> tuple[list[LayerResult], dict[str, float]]:
        """PPP of ``state``'s model under ``scheme`` on the audit's held-out images, and its held-out metrics."""
        now = self.auditor.measure(self.splits.heldout, schemes=[scheme], state=state, progress=self.progress)
        if now.interrupted:
            raise KeyboardInterrupt
        return now.results[0].layers, self.heldout_now(scheme, state.model)

    def tiling_now(self, scheme: str, state: ModelState) -> list[float | None] | None:
        """The tiling consistency of ``state``'s model under ``scheme`` (a repair only)."""
        if self.consistency is None:
            return None
        with self.auditor.patched(scheme, state.model), torch.inference_mode():
            return tiling_consistency(state.taps, self.tiling_loader, normalise=self.auditor.normalise,
                                      device=self.auditor.device, precision=self.config.precision)

    def tune(self, result: SchemeResult) -> FinetuneResult:
        """Fine-tune (or repair) a copy of the audited model with ``result``'s scheme and measure it again."""
        scheme, ft, model = result.scheme, self.ft, self.auditor.model
        teacher = model if ft.labels is None else None
        before = self.heldout_now(scheme, model)
        plain = self._plain(scheme, before) if ft.repair and ft.repair_compare else None
        self.current = f"while {'repairing' if ft.repair else 'fine-tuning'} with '{scheme}'"
        student = copy.deepcopy(model)
        # The student's own taps, global modules and receptive fields, made once and passed to every measurement.
        student_state = self.auditor.model_state(student)
        curve = [_curve_point(0, result.layers, before)] if ft.measure_every else []

        def on_measure(step: int) -> None:
            layers, metrics = self.measure_now(scheme, student_state)
            curve.append(_curve_point(step, layers, metrics))

        log = finetune(student, scheme, self.train_loader(whole=self.consistency is not None), ft, teacher=teacher,
                       seed=self.config.seed, measure=on_measure, progress=self.progress,
                       include_pools=self.config.include_pools, consistency=self.consistency, **self._run)
        after_layers, after = self.measure_now(scheme, student_state)
        if ft.measure_every:
            curve.append(_curve_point(ft.steps, after_layers, after))
        weights = None
        if ft.save_weights:
            info = self.auditor.info
            record = {"base_model": info.name, "base_weights": info.weights, "steps": ft.steps, **self.settings}
            weights = str(save_finetuned(student, Path(ft.save_weights) / scheme, scheme, record))
        train_loss, every = _downsample(log.losses)
        return FinetuneResult(
            steps=ft.steps, settings=self.settings, layers=after_layers, before=before, after=after,
            original=self.original, curve=curve, train_loss=train_loss, train_loss_every=every, weights=weights,
            seconds=log.seconds, consistency_loss=_downsample(log.consistency)[0] if log.consistency else [],
            tiling_before=self.tiling_now(scheme, self.auditor.state),
            tiling_after=self.tiling_now(scheme, student_state), plain=plain,
        )

    def _plain(self, scheme: str, before: dict[str, float]) -> FinetuneResult:
        """The plain fine-tune beside a repair (``--repair-compare``): the same steps without the consistency term."""
        ft, model = self.ft, self.auditor.model
        self.current = f"while fine-tuning with '{scheme}' (the plain fine-tune beside the repair)"
        plain_config = dataclasses.replace(ft, repair=False, repair_compare=False, repair_layers=None, measure_every=0)
        student = copy.deepcopy(model)
        log = finetune(student, scheme, self.train_loader(), plain_config, teacher=model if ft.labels is None else None,
                       seed=self.config.seed, progress=self.progress, include_pools=self.config.include_pools,
                       **self._run)
        state = self.auditor.model_state(student)
        layers, after = self.measure_now(scheme, state)
        train_loss, every = _downsample(log.losses)
        return FinetuneResult(
            steps=ft.steps, settings={**self.settings, **plain_config.settings()}, layers=layers, before=before,
            after=after, original=self.original, train_loss=train_loss, train_loss_every=every, seconds=log.seconds,
            tiling_after=self.tiling_now(scheme, state))


def _consistency_term(auditor: Auditor, ft: FinetuneConfig) -> ConsistencyTerm:
    """The repair's consistency term against the auditor's (original) model, checked before any image is read."""
    if auditor.estimator != DELTA:
        raise PPPAuditError("--repair needs the padding-free reference of a margin, which this model cannot run with "
                            f"at --input-size {auditor.size}", "use another --input-size, or leave --repair out")
    return ConsistencyTerm(auditor.taps, auditor.state.context, ft.repair_layers, auditor.margin, auditor.probe)
