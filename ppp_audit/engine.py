"""The audit (SPEC §5): measure PPP of a model with its native padding and with each requested scheme.

Data flows one way: model + scheme + windows -> features (crop and window) -> accumulators -> :class:`Report`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader

from .errors import AuditInterrupted, FeatureError, NothingToPatchError, PPPAuditError
from .images import DeadLeavesSource, ImageSource, WindowDataset, image_source, parse_hfds, random_sample
from .metrics import PPPAccumulator
from .models import FeatureTaps, ModelInfo, build_model
from .paddings import PatchSummary, get_padding, padding, patch_padding
from .report import NATIVE, LayerResult, Report, SchemeResult, environment

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class AuditConfig:
    """What to audit and how. Validated on creation; every field has a CLI flag of the same name.

    Args:
        model: timm model name (``name.tag``, ``local-dir:DIR`` or ``hf-hub:ID`` too).
        paddings: Schemes to compare against the model's native padding.
        pretrained: Load pretrained weights (ignored when ``weights`` is set).
        weights: A safetensors file or torch checkpoint.
        images: An image folder, or ``hfds/NAME[#CONFIG]`` for a Hugging Face dataset (a Hub id or a local dataset
            folder; needs the ``hf`` extra); ``None`` uses the built-in dead-leaves images.
        num_images: Windows to average over (N).
        batch_size: Windows per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:K``.
        seed: Seed of the built-in images and of the random sample of N from a larger folder or dataset (and of
            anything else random).
        input_size: Crop size S; default the model's pretrained input size.
        margin: Context m around the crop, a multiple of the largest stride; default twice the largest stride.
        layers: Module names to tap instead of the stages.
        groups: Jackknife groups for confidence intervals.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast (meant for GPUs; CPUs run it too, fp16 slowly).
        workers: DataLoader worker processes for image loading.
        compile: A ``torch.compile`` backend (e.g. ``inductor``) for the feature passes; ``None``: eager. Each padding
            and input size compiles once (recompiles are cached), so it pays off for large N.
        include_pools: Let the schemes also replace the padding of pools (max-pools pad with -inf, average pools
            with counted zeros); by default pools keep theirs and are listed as unpatched.
        baselines: Baselines to run on the same images (``posenet``, ``fconv``, ``uneven``; SPEC §3.3).
        baseline_options: Per-baseline settings, ``{"posenet": {"steps": 500}, "fconv": {"borders": (0, 64)}}``.
        images_split: Split of an ``hfds/`` dataset (``datasets`` syntax: ``validation``, ``train[:256]``).
    """

    model: str
    paddings: list[str] = field(default_factory=list)
    pretrained: bool = True
    weights: str | None = None
    images: str | None = None
    num_images: int = 64
    batch_size: int = 16
    device: str = "auto"
    seed: int = 0
    input_size: int | None = None
    margin: int | None = None
    layers: list[str] | None = None
    groups: int = 8
    precision: str = "fp32"
    workers: int = 0
    compile: str | None = None
    include_pools: bool = False
    baselines: list[str] = field(default_factory=list)
    baseline_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    images_split: str = "train"

    def __post_init__(self) -> None:
        def bad(what: str, fix: str) -> None:
            raise PPPAuditError(what, fix)

        if self.num_images < 2:
            bad(f"--num-images must be at least 2 (got {self.num_images})", "a variance needs two images")
        if self.batch_size < 1:
            bad(f"--batch-size must be positive (got {self.batch_size})", "pass e.g. --batch-size 16")
        if self.groups < 2:
            bad(f"groups must be at least 2 (got {self.groups})", "use the default 8")
        if self.precision not in PRECISIONS:
            bad(f"unknown precision '{self.precision}'", f"use one of {', '.join(PRECISIONS)}")
        if self.input_size is not None and self.input_size < 8:
            bad(f"--input-size {self.input_size} is too small", "use at least the model's largest stride")
        if self.margin is not None and self.margin <= 0:
            bad(f"--margin must be positive (got {self.margin})", "leave it out for twice the largest stride")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            bad(f"unknown device '{self.device}'", "use auto, cpu, cuda or cuda:K")
        if not self.images_split.strip():
            bad("--images-split is empty", "name a split of the dataset, e.g. train or validation")
        if parse_hfds(self.images) is None and self.images_split != "train":
            bad("--images-split applies to Hugging Face datasets only",
                "pass --images hfds/NAME, or drop --images-split")
        self.paddings = list(dict.fromkeys(self.paddings))
        if NATIVE in self.paddings:
            bad(f"'{NATIVE}' is always measured", "list only schemes to compare against it")
        if self.baselines or self.baseline_options:
            from .metrics.baselines import validate_baselines

            self.baselines = validate_baselines(self.baselines, self.baseline_options)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA if available (this process's local rank's GPU under torchrun), else CPU."""
    import os

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PPPAuditError(f"device '{device}' requested but CUDA is not available", "use --device cpu or auto")
    return torch.device(device)


def receptive_radii(taps: FeatureTaps, window: int, device: torch.device) -> list[float]:
    """Empirical receptive-field radius (input px) of the centre position of each tapped layer.

    One forward/backward of a random window per layer: the gradient of the centre output is exactly zero outside the
    receptive field. A radius of at least ``window / 2`` means "reaches past the window".
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, window, window, generator=generator).to(device).requires_grad_(True)
    radii = []
    with torch.enable_grad():
        outputs = taps(x)
        for i, out in enumerate(outputs):
            h, w = out.shape[-2:]
            (grad,) = torch.autograd.grad(out[0, :, h // 2, w // 2].sum(), x, retain_graph=i < len(outputs) - 1)
            nonzero = grad[0].abs().sum(0) > 0
            ys, xs = torch.nonzero(nonzero, as_tuple=True)
            if ys.numel() == 0:
                radii.append(0.0)
                continue
            stride = window / h
            cy, cx = (h // 2 + 0.5) * stride, (w // 2 + 0.5) * stride
            reach = torch.stack([cy - ys.min(), ys.max() + 1 - cy, cx - xs.min(), xs.max() + 1 - cx]).max()
            radii.append(float(reach))
    return radii


def _source(config: AuditConfig, info: ModelInfo, size: int) -> ImageSource:
    if config.images:
        return image_source(config.images, split=config.images_split, resize_short=round(size / info.crop_pct))
    return DeadLeavesSource(seed=config.seed)


@contextlib.contextmanager
def _scheme(model: nn.Module, label: str, include_pools: bool = False, probe: Tensor | None = None) -> Iterator[None]:
    """The model with ``label``'s padding for the duration of the block (``native``: the model as it is)."""
    if label == NATIVE:
        yield
        return
    # Schemes that change map sizes check the model's output shapes on every patch; the others need no probe.
    example = probe if not get_padding(label).keeps_shape else None
    with padding(model, label, include_pools=include_pools, example_input=example):
        yield


def _native_summary(model: nn.Module, include_pools: bool = False, example_input: Tensor | None = None) -> PatchSummary:
    """Where the model pads natively: the summary a no-op (zeros) patch records, undone at once."""
    summary = patch_padding(model, "zeros", include_pools=include_pools, example_input=example_input)
    summary.restore()
    summary.scheme = NATIVE
    return summary


def _checked_summary(model: nn.Module, label: str, include_pools: bool, example_input: Tensor) -> PatchSummary:
    """The patch summary of ``label`` checked by one traced forward pass on ``example_input``.

    Fails now if the scheme cannot keep the model's shapes, and lists padding done inside ``forward`` calls (which no
    patch reaches) as unpatched.
    """
    if label == NATIVE:
        return _native_summary(model, include_pools, example_input)
    summary = patch_padding(model, label, include_pools=include_pools, example_input=example_input)
    summary.restore()
    return summary


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``bf16``/``fp16`` on any device (CPUs run it too, slowly without bf16 units); nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextlib.contextmanager
def _ieee_fp32(enabled: bool) -> Iterator[None]:
    """Full fp32 for convolutions and matmuls while measuring, TF32 off (cuDNN convs default to TF32 on Ampere and
    later GPUs): TF32's 10-bit mantissa would round the crop and window passes (different shapes, different kernels)
    differently, so Δ would pick up rounding noise of ~1e-3 relative size where it is exactly 0 in fp32."""
    if not enabled:
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    # torch >= 2.9 sets precision per backend; there, mixing in the older allow_tf32 flags is an error.
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        flags = [(cudnn.conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    else:
        flags = [(cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]
    previous = [getattr(owner, name) for owner, name, _ in flags]
    for owner, name, value in flags:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(flags, previous):
            setattr(owner, name, value)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=True,
    )


@dataclass
class _StopRequest:
    requested: bool = False


@contextlib.contextmanager
def _stop_on_ctrl_c(enabled: bool = True) -> Iterator[_StopRequest]:
    """The first Ctrl-C asks the measuring loop to stop after the current batch, so that every statistic still covers
    whole batches and the report of what was measured can be saved; a second Ctrl-C aborts at once.

    Enable it only in the main thread (signals reach no other) of a single process (under torchrun every rank must
    see the same batches).
    """
    request = _StopRequest()
    if not enabled:
        yield request
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        print("\nppp-audit: stopping after this batch to keep what is measured (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops them after the current batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def audit(config: AuditConfig, *, model: nn.Module | None = None, info: ModelInfo | None = None,
          progress: bool = False, source: ImageSource | None = None, native: bool = True) -> Report:
    """Run the audit described by ``config`` and return its :class:`Report`.

    Args:
        config: The audit settings.
        model: An already built model (its ``info`` too); otherwise built from ``config``.
        info: The :class:`ModelInfo` of ``model``.
        progress: Show a rich progress bar on stderr.
        source: Images to measure on instead of the one ``config`` names (e.g. a held-out split).
        native: Also measure the model's native padding (the fine-tune engine skips it for fine-tuned weights).
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    if model is None:
        model, info = build_model(config.model, pretrained=config.pretrained, weights=config.weights, device=device,
                                  seed=config.seed)
    else:
        model = model.eval().to(device)
        if info is None:
            raise ValueError("pass the ModelInfo of a prebuilt model")
    for name in config.paddings:
        get_padding(name)  # unknown schemes fail before any work
    if config.paddings and not _native_summary(model, config.include_pools).patched:
        raise NothingToPatchError(
            f"model '{config.model}' has no padding to replace (no padded convolutions or pad modules)",
            "its position information, if any, does not come from padding; audit it without --padding",
        )

    taps = FeatureTaps(model, config.layers)
    size, margin = geometry(config, model, info)
    window = size + 2 * margin
    in_chans = int((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3,))[0])
    probe = torch.zeros(1, in_chans, size, size, device=device)
    summaries: dict[str, PatchSummary] = {
        label: _checked_summary(model, label, config.include_pools, probe) for label in [NATIVE, *config.paddings]
    }
    radii = receptive_radii(taps, window, device)

    source = _source(config, info, window) if source is None else source
    source = random_sample(source, config.num_images, config.seed, window)
    available = source.available()
    num_images = min(config.num_images, available) if available else config.num_images
    if num_images < 2:
        raise PPPAuditError(f"only {num_images} image available", "give at least 2 images")
    rank, world = _rank_and_world()
    graceful = world == 1 and threading.current_thread() is threading.main_thread()
    if world > 1 and config.baselines:
        raise PPPAuditError("baselines run in one process", "run --baselines without torchrun")
    if world > num_images:
        raise PPPAuditError(f"{world} processes for {num_images} images", "use more images than processes")
    loader = DataLoader(
        WindowDataset(source, range(rank, num_images, world), window), batch_size=config.batch_size,
        num_workers=config.workers, pin_memory=device.type == "cuda",
        worker_init_fn=_ignore_sigint if graceful and config.workers else None,
    )
    mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, 3, 1, 1)

    labels = [NATIVE, *config.paddings] if native or not config.paddings else list(config.paddings)
    accumulators = {label: [PPPAccumulator(config.groups) for _ in taps.names] for label in labels}
    seconds = {label: 0.0 for label in labels}
    offsets: list[int] = []
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.to(memory_format=memory_format)
    extract = torch.compile(taps.__call__, backend=config.compile) if config.compile else taps
    # Compiled graphs are traced under no_grad: inference tensors cannot flow through dynamo's guards.
    grad_off = torch.no_grad() if config.compile else torch.inference_mode()
    measured = 0
    loop_started = time.perf_counter()
    with (_progress(progress and rank == 0) as bar, grad_off, _stop_on_ctrl_c(graceful) as stop,
          _ieee_fp32(config.precision == "fp32")):
        task = bar.add_task(f"auditing {config.model}", total=len(loader.dataset) * len(labels))
        for indices, batch in loader:
            windows = ((batch.to(device, non_blocking=True) - mean) / std).contiguous(memory_format=memory_format)
            crops = windows[..., margin:margin + size, margin:margin + size]
            for label in labels:
                tick = time.perf_counter()
                with _scheme(model, label, config.include_pools, probe), _autocast(device, config.precision):
                    feats_crop, feats_window = extract(crops), extract(windows)
                if not offsets:
                    offsets = [_offset(name, a, b) for name, a, b in zip(taps.names, feats_crop, feats_window)]
                for name, acc, off, a, b in zip(taps.names, accumulators[label], offsets, feats_crop, feats_window):
                    acc.update(a, b[..., off:off + a.shape[-2], off:off + a.shape[-1]], indices)
                seconds[label] += time.perf_counter() - tick
                bar.advance(task, windows.shape[0])
            measured += windows.shape[0]
            if stop.requested:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels run ahead of the host: the wall time must include them
    loop_s = time.perf_counter() - loop_started
    interrupted = None
    if stop.requested:
        if measured < 2:
            raise AuditInterrupted(None)
        interrupted = f"stopped by Ctrl-C after {measured} of {num_images} images; the statistics cover those"
        num_images = measured

    results = []
    for label in labels:
        layers = []
        for name, acc, off, radius in zip(taps.names, accumulators[label], offsets, radii):
            if world > 1:
                acc.all_reduce_()
            if not acc.is_finite():
                raise FeatureError(
                    f"layer '{name}' produced NaN/inf features with padding '{label}'",
                    "check the weights, or use --precision fp32",
                )
            stride_px = margin / off
            stats = acc.compute(stride_px=stride_px, receptive_radius_px=radius)
            layers.append(LayerResult(name=name, receptive_radius_px=radius, reference_partial=radius > margin,
                                      stats=stats))
        results.append(SchemeResult(scheme=label, patch=summaries[label].to_dict(), layers=layers))

    baselines: dict[str, Any] = {}
    if config.baselines and not interrupted:
        tick = time.perf_counter()
        try:
            baselines = _run_baselines(config, model, taps, source, window, margin, size, largest_stride(model),
                                       device, mean, std, labels, progress)
        except KeyboardInterrupt:
            interrupted = "stopped by Ctrl-C during the baselines; the PPP statistics are complete, baselines missing"
        seconds_baselines = time.perf_counter() - tick

    total = time.perf_counter() - started
    report = Report(
        environment=environment(),
        model={"name": info.name, "architecture": info.architecture, "weights": info.weights},
        data={**source.describe(), "num_images": num_images},
        input_size=size,
        margin=margin,
        seed=config.seed,
        device=str(device),
        precision=config.precision,
        results=results,
        timings={"total_s": total, "loop_s": loop_s, "processes": world,
                 **{f"{label}_s": s for label, s in seconds.items()},
                 "images_per_s": num_images * len(labels) / max(sum(seconds.values()), 1e-9),
                 **({"baselines_s": seconds_baselines} if config.baselines and baselines else {})},
        baselines=baselines,
        interrupted=interrupted,
    )
    if interrupted:
        raise AuditInterrupted(report)
    return report


def _run_baselines(config: AuditConfig, model: nn.Module, taps: FeatureTaps, source: ImageSource, window: int,
                   margin: int, size: int, max_stride: int, device: torch.device, mean: Tensor, std: Tensor,
                   labels: list[str], progress: bool) -> dict[str, Any]:
    """The baselines (SPEC §3.3) on the audit's own crops, per scheme where the padding matters; fp32 throughout."""
    from .metrics.baselines import BaselineInputs, ImageBank, run_baselines
    from .metrics.baselines.runner import num_steps

    inputs = BaselineInputs(
        model=model, extract=taps, images=ImageBank(source, window, margin, size),
        normalize=lambda x: (x - mean) / std, input_size=size, max_stride=max_stride, device=device,
        schemes=labels, scheme=lambda label: _scheme(model, label),
    )
    with _progress(progress) as bar:
        task = bar.add_task("baselines", total=num_steps(config.baselines, len(labels)))
        return run_baselines(config.baselines, config.baseline_options, inputs,
                             on_step=lambda what: bar.update(task, advance=1, description=f"baseline {what}"))


def _offset(name: str, crop: Tensor, window: Tensor) -> int:
    diff_h, diff_w = window.shape[-2] - crop.shape[-2], window.shape[-1] - crop.shape[-1]
    if diff_h != diff_w or diff_h <= 0 or diff_h % 2:
        raise FeatureError(
            f"layer '{name}': window features {tuple(window.shape[-2:])} and crop features {tuple(crop.shape[-2:])} "
            "do not align",
            "tap a spatial layer, and keep --input-size and --margin multiples of the model's largest stride",
        )
    return diff_h // 2


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size when launched by ``torchrun`` (initialising the process group)."""
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def largest_stride(model: nn.Module) -> int:
    """The model's largest stride from ``feature_info`` (32, timm's usual, for models without one)."""
    return int(max([f["reduction"] for f in getattr(model, "feature_info", [])] or [32]))


def geometry(config: AuditConfig, model: nn.Module, info: ModelInfo) -> tuple[int, int]:
    """Crop size ``S`` and margin ``m`` of an audit (windows are ``S + 2m``), validated."""
    max_stride = largest_stride(model)
    size = config.input_size or info.input_size
    margin = config.margin or 2 * max_stride
    if margin % max_stride:
        raise PPPAuditError(
            f"--margin {margin} is not a multiple of the model's largest stride {max_stride}",
            f"use --margin {max_stride * max(1, round(margin / max_stride))}",
        )
    return size, margin
