"""The :class:`Auditor`: everything one audit needs, and the measuring loop. Every caller drives it.

An auditor is built from an :class:`~ppp_audit.config.AuditConfig` (and optionally a model built elsewhere). It owns the
device, the model (built with the config's seed), the feature taps, the geometry (crop ``S``, margin ``m``, window ``S +
2m``), the probe input, the patch summary of each scheme, the receptive radii, ``include_pools``, the normalisation,
which reference each crop gets (periodic canvases, :mod:`ppp_audit.canvas`, where they are exact and complete; crops
tiled inside photos where that is exact; else a window per crop), and the loop that streams windows (or canvases)
through the crop and reference passes into the accumulators (with Ctrl-C handling and the all-reduce under
``torchrun``). The audit (:mod:`ppp_audit.engine`), fine-tuning (:mod:`ppp_audit.finetune`), the pytest helpers
(:mod:`ppp_audit.testing`) and the baselines all use it, so a setting applies to all of them the same way (the padding
of pools, the seed of a random-init model, ...).

Data flows one way: model + scheme + windows or canvases -> features (crop and reference) -> accumulators -> results ->
report.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .config import NATIVE, AuditConfig
from .errors import ConfigError, FeatureError, ImageSourceError, NothingToPatchError, PPPAuditError
from .images import (
    DeadLeavesSource, DeviceLoader, ImageLoader, ImageSource, IndexedSource, SampledSource, TileDataset, WindowCache,
    WindowDataset, image_loader, image_source, made_on_device, random_sample, sample_photos, skipped_image,
    too_few_images,
)
from .canvas import CanvasPlan, PhotoTiles, canvas_probe_side, cut_blocks, cut_crops, plan_canvas, tile_photos
from .context import ContextMatcher
from .geometry import DELTA, MarginCheck, apply_geometry, fit_geometry, largest_stride, map_offset, on_grid
from .margin import MarginPlan, margin_cap, plan_margin, probe_window
from .metrics import MIST_COUNTS, PPPAccumulator, choose_mist_layer, compiled_moments
from .models import FeatureTaps, ModelInfo, build_model, no_padding_error
from .paddings import PaddingScheme, PatchSummary, get_padding, padding, patch_padding
from .progress import ProgressReporter, progress_bar
from .receptive import Influence, influence_profiles
from .report import LayerResult, Report, SchemeResult, SkippedImage, SkippedImages, environment
from .runtime import (
    Normalise, StopRequest, autocast, ieee_fp32, measuring, rank_and_world, resolve_device, stop_on_ctrl_c,
)


# ---------------------------------------------------------------------------------------------------------------------
# Geometry and receptive fields
# ---------------------------------------------------------------------------------------------------------------------


def feature_offset(name: str, crop: Tensor, window: Tensor) -> int:
    """Offset (feature px) of the crop's block inside the window's feature map (``geometry.map_offset``), checked."""
    offset = map_offset(crop.shape, window.shape)
    if offset is None:
        raise FeatureError(
            f"layer '{name}': window features {tuple(window.shape[-2:])} and crop features {tuple(crop.shape[-2:])} "
            "do not align",
            "tap a spatial layer, and keep --input-size and --margin multiples of the model's largest stride",
        )
    return offset


def images_on_device(config: AuditConfig, source: ImageSource | None = None) -> bool:
    """Whether ``config``'s images (``source``; ``None``: the built-in ones) are made and decoded on its device.

    ``images_on="auto"`` is yes on a GPU for the sources a device makes itself (:func:`~ppp_audit.images.
    made_on_device`: the built-in images, a folder of JPEG files); a folder of PNGs, say, stays on the host, where
    ``--workers`` processes decode it. This decides where images are made, never which: the built-in images are the
    same pictures on the host and on any device (SPEC §3.5).
    """
    if config.images_on != "auto":
        return config.images_on == "device"
    if resolve_device(config.device).type != "cuda":
        return False
    return source is None or made_on_device(source)


def window_cache_bytes(device: torch.device) -> int:
    """How many bytes of windows an audit keeps on ``device`` between passes (:class:`~ppp_audit.images.WindowCache`):
    a quarter of the GPU's free memory up to 4 GiB; 1 GiB of host memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(4 * 2**30, free // 4)
    return 2**30


def config_source(config: AuditConfig, crop: int | None = None, *, periodic: bool = False) -> ImageSource:
    """The images ``config`` names, every photo at its one ``photo_scale`` (whatever the model and the margin), or
    the built-in dead-leaves images seeded with ``config.seed``, their statistics set in pixels for a ``crop`` px
    crop (so that the margin does not change what the crop sees; ``None``: each window's own size), ``periodic`` for
    the canvases of :mod:`ppp_audit.canvas`: the same pictures wherever they are made (:func:`images_on_device` says
    where; ``config.compile`` compiles the renderer there)."""
    if config.images:
        return image_source(config.images, split=config.images_split, scale=config.photo_scale)
    return DeadLeavesSource(seed=config.seed, scale=crop, compile=config.compile if images_on_device(config) else None,
                            periodic=periodic)


def checked_summary(model: nn.Module, scheme: str | PaddingScheme, include_pools: bool,
                    example_input: Tensor | None = None) -> PatchSummary:
    """The patch summary of ``scheme`` (the null scheme ``native``: where the model pads), undone at once; checked by
    one traced forward pass on ``example_input`` when given.

    The check fails now if the scheme cannot keep the model's shapes, and lists padding done inside ``forward`` calls
    (which no patch reaches) as unpatched.
    """
    summary = patch_padding(model, scheme, include_pools=include_pools, example_input=example_input)
    summary.restore()
    return summary


def _all_non_finite(schemes: Sequence[str], *, on_first_batch: bool) -> FeatureError:
    """The error for a measurement with no finite layer left, under any scheme."""
    paddings = f"padding '{schemes[0]}'" if len(schemes) == 1 else f"every padding ({', '.join(schemes)})"
    when = " on the first batch" if on_first_batch else ""
    return FeatureError(f"every tapped layer produced NaN/inf features{when}, with {paddings}",
                        "check the weights, or use --precision fp32")


def _draws_more(source: ImageSource) -> bool:
    """Whether a sample left images of its source undrawn (a larger N would draw them)."""
    if not isinstance(source, SampledSource):
        return False
    looked_at = len(source.indices) + source.skipped_small + len(source.unreadable)
    return (source.base.available() or 0) > looked_at


def _gather_skipped(measured: int,
                    skipped: list[tuple[int, SkippedImage]]) -> tuple[int, list[tuple[int, SkippedImage]]]:
    """All ranks' measured counts (summed) and skipped images (window index, record), on every rank.

    Raises:
        ImageSourceError: A rank read no image (its accumulators would have nothing to all-reduce); raised on every
            rank alike, so that none waits for the others.
    """
    import torch.distributed as dist

    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (measured, skipped))
    empty = [rank for rank, (count, _) in enumerate(parts) if count == 0]
    if empty:
        raise ImageSourceError(f"process {empty[0]} of {len(parts)} could read none of its images "
                               f"({sum(len(items) for _, items in parts)} unreadable in all)",
                               "fix or remove the unreadable files, or run with fewer processes")
    return sum(count for count, _ in parts), [item for _, items in parts for item in items]


# ---------------------------------------------------------------------------------------------------------------------
# The auditor
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """What one pass of the measuring loop produced.

    Attributes:
        results: One :class:`SchemeResult` per measured scheme, in the order asked.
        data: The measured source's description, with ``num_images``.
        seconds: Host seconds spent per scheme (feature passes and accumulation).
        loop_s: Wall seconds of the whole loop.
        interrupted: Set when Ctrl-C stopped the loop: what the statistics cover.
        source: The (sampled) source that was measured, for baselines on the same images; without the images that
            could not be read.
        skipped: The images skipped because they cannot be read (``None``: none was).
        reference_shared: One native window pass per batch gave every scheme's reference
            (:meth:`Auditor.shares_reference`).
        reference: How the reference was made (the report's ``geometry.reference``:
            :meth:`Auditor.reference_summary`).
    """

    results: list[SchemeResult]
    data: dict[str, Any]
    seconds: dict[str, float]
    loop_s: float
    interrupted: str | None = None
    source: ImageSource | None = field(default=None, repr=False)
    skipped: SkippedImages | None = None
    reference_shared: bool = False
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return int(self.data["num_images"])


@dataclass
class _SampledImages:
    """What :meth:`Auditor._sample` prepared for one measurement."""

    source: ImageSource
    unreadable: list[SkippedImage]
    num_images: int
    dataset: WindowDataset
    loader: ImageLoader | DeviceLoader
    on_device: bool
    graceful: bool


@dataclass
class _Streamed:
    """What :meth:`Auditor._stream` measured: images, host seconds per scheme, the loop's wall seconds."""

    measured: int
    seconds: dict[str, float]
    loop_s: float


@dataclass
class _Sums:
    """The accumulators of one measurement: per scheme, one per tapped layer (``layers``) and one per partial layer at
    the second margin (``second``, by layer index)."""

    layers: dict[str, list[PPPAccumulator]]
    second: dict[str, dict[int, PPPAccumulator]]

    @classmethod
    def of(cls, auditor: "Auditor", schemes: Sequence[str], state: ModelState, partial: Sequence[bool]) -> "_Sums":
        """Accumulators for ``schemes`` on ``state``'s taps, their sums allocated before the first pass where the
        maps' shapes are known (:meth:`PPPAccumulator.reserve`)."""
        config = auditor.config
        moments = compiled_moments(config.compile) if config.compile else None  # statistics fused with the passes
        layers = {scheme: [PPPAccumulator(config.groups, with_reference=auditor.estimator == DELTA,
                                          mist_counts=MIST_COUNTS if name == auditor.mist_layer else (),
                                          moments=moments, top_channels=config.top_channels)
                           for name in state.taps.names] for scheme in schemes}
        second = {scheme: {i: PPPAccumulator(config.groups, moments=moments) for i, p in enumerate(partial) if p}
                  for scheme in schemes} if auditor.second_margin else {}
        maps = auditor.plan.crop_maps
        if maps is not None and len(maps) == len(state.taps.names):
            for scheme in (s for s in schemes if auditor.paddings[s].keeps_shape):  # others change the maps' sizes
                for acc, shape in zip(layers[scheme], maps):
                    acc.reserve(shape, auditor.device)
                for i, acc in second.get(scheme, {}).items():
                    acc.reserve(maps[i], auditor.device)
        return cls(layers, second)

    def add(self, scheme: str, features: StepFeatures, indices: Tensor) -> None:
        """One batch's features under ``scheme``."""
        references = features.reference or [None] * len(features.crop)
        for acc, a, b in zip(self.layers[scheme], features.crop, references):
            acc.update(a, b, indices)
        for i, acc in self.second.get(scheme, {}).items():
            acc.update(features.crop[i], features.second[i], indices)

    def finite(self, scheme: str) -> list[bool]:
        """Per tapped layer, whether ``scheme``'s sums so far are finite (one host sync): NaN/inf outside the crop's
        block never reaches them, and is harmless."""
        return torch.stack([acc.finite_sums() for acc in self.layers[scheme]]).tolist()

    def all_reduce_(self) -> None:
        """Sum every accumulator over the ranks (torchrun)."""
        for accs in self.layers.values():
            for acc in accs:
                acc.all_reduce_()
        for accs in self.second.values():
            for acc in accs.values():
                acc.all_reduce_()


@dataclass
class BaselinesRun:
    """The baselines of an audit: results by baseline name, seconds they took, or why they are missing."""

    results: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    interrupted: str | None = None


@dataclass(frozen=True)
class AuditPlan:
    """What the set-up of an audit decided, as one value that can be printed (``str``) and compared: the sizes and
    margin and why, the layers and their maps, the schemes and what each patches. :attr:`Auditor.plan` holds it; the
    model and the per-model state it was derived from stay in the auditor (:class:`ModelState`).

    Attributes:
        model: The model's name.
        device: Where it runs.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        estimator: ``delta`` (padded vs padding-free features) or ``mean_feature``.
        size: The crop side ``S``.
        window: The window side ``S + 2m``.
        margin: The margin and how it was set (:class:`~ppp_audit.margin.MarginPlan`).
        layers: The tapped layers, in order.
        crop_maps: Per layer, its (C, h, w) at the crop size (``None`` when unknown before the first batch).
        schemes: ``native`` first, then the schemes compared with it.
        patched: Per scheme, how many padding sites it replaces and how many it leaves.
        shared_reference: Whether one reference pass (a native window pass, or the canvas pass) serves every scheme.
        canvas: The canvases the reference is cut from (``None``: a window per crop).
        tiles: The photos' tiles the reference is cut from (``None``: a window per crop).
        mist_layer: The layer whose mist snapshots are kept.
        changes: What the geometry changed in the model to run at these sizes.
    """

    model: str
    device: str
    precision: str
    estimator: str
    size: int
    window: int
    margin: MarginPlan
    layers: tuple[str, ...]
    crop_maps: tuple[tuple[int, ...], ...] | None
    schemes: tuple[str, ...]
    patched: tuple[tuple[str, int, int], ...]
    shared_reference: bool
    canvas: CanvasPlan | None
    tiles: PhotoTiles | None
    mist_layer: str
    changes: tuple[str, ...]

    def __str__(self) -> str:
        margin = self.margin
        partial = [name for name, p in zip(self.layers, margin.partial) if p]
        lines = [
            f"{self.model} on {self.device} ({self.precision}), estimator {self.estimator}",
            f"crop {self.size} px, window {self.window} px: margin {margin.margin} px chosen by {margin.chosen_by}"
            + (f", second margin {margin.second_margin} px for {', '.join(partial)}" if margin.second_margin else ""),
            "layers: " + ", ".join(self.layers if self.crop_maps is None else
                                   (f"{name} {'x'.join(map(str, shape))}"
                                    for name, shape in zip(self.layers, self.crop_maps))),
            "schemes: " + ", ".join(f"{name} ({replaced} sites replaced, {left} left)"
                                    for name, replaced, left in self.patched),
            f"reference: {self._reference()}; mist layer {self.mist_layer}"
            + (f"; geometry: {'; '.join(self.changes)}" if self.changes else ""),
        ]
        return "\n".join(lines)

    def _reference(self) -> str:
        canvas = self.canvas
        if canvas is not None:
            return (f"periodic canvases of {canvas.side} px ({canvas.num_crops} crops on {canvas.num_canvases}, "
                    f"context {canvas.context} px every way), one circular pass for every scheme")
        tiles, passes = self.tiles, "one native pass for every scheme" if self.shared_reference else "a pass per scheme"
        if tiles is not None:
            return (f"{tiles.num_crops} crops tiled inside {tiles.num_photos} photos (up to {max(tiles.crops)} each, "
                    f"border {tiles.border} px, scale {tiles.scale:g}), {passes} of each tile")
        return "one native window pass for every scheme" if self.shared_reference else "a window pass per scheme"


@dataclass(frozen=True)
class ModelState:
    """What an audit knows of one model it measures (its own, or a fine-tuned copy): made once per model by
    :meth:`Auditor.model_state` and passed to what measures it, never looked up by the model's identity.

    Attributes:
        model: The model.
        taps: Its feature taps.
        context: Its global modules, matched between the crop and window passes.
        influence: The receptive-field influence of each tapped layer, probed at the auditor's probe window.
    """

    model: nn.Module
    taps: FeatureTaps
    context: ContextMatcher
    influence: list[Influence]


@dataclass
class StepFeatures:
    """What one batch gave under one scheme (:class:`BatchStep`).

    Attributes:
        crop: Per tapped layer, the features of the padded crops.
        reference: Per tapped layer, the padding-free reference: the block of the window pass's features over the
            crop (``None`` for the mean-feature estimator, which has no window pass).
        second: For the partial layers (by index), the same block from the windows of the second, smaller margin.
    """

    crop: list[Tensor]
    reference: list[Tensor] | None
    second: dict[int, Tensor] = field(default_factory=dict)


class BatchStep:
    """The one per-batch step of an audit: a batch of normalised windows through one scheme's crop pass and window
    pass(es), cut to the crop's features and their padding-free references. The measuring loop, fine-tuning's
    measurements and the benchmarks all run it; nothing else slices windows or features.

    Args:
        auditor: The audit's set-up (sizes, margins, schemes, precision).
        state: The model measured (:meth:`Auditor.model_state`).
        partial: Per tapped layer, whether its reference is partial (measured again at the second margin).
        shared: One native window pass gives every scheme's reference (:meth:`Auditor.shares_reference`): pass its
            :meth:`window_features` to each call.
        canvas: The reference comes from canvases laid out so (:mod:`ppp_audit.canvas`): the batches are canvases,
            which :meth:`canvas_pass` turns into crops and their references, shared by every scheme.
        tiles: The crops are tiled inside photos so (:class:`~ppp_audit.canvas.PhotoTiles`): the batches are tiles
            holding several crops each (their ``origins`` passed to each call), and each tile is a window to all of
            its crops.
    """

    def __init__(self, auditor: "Auditor", state: ModelState, partial: Sequence[bool], *, shared: bool = False,
                 canvas: CanvasPlan | None = None, tiles: PhotoTiles | None = None) -> None:
        self.auditor, self.state, self.canvas, self.shared = auditor, state, canvas, shared
        self.tiles = tiles
        self.with_reference = auditor.estimator == DELTA
        self.second = auditor.second_margin if self.with_reference and canvas is None else None
        self.partial = [i for i, p in enumerate(partial) if p] if self.second else []
        compile_backend = auditor.config.compile
        # Compiled graphs are traced under no_grad: inference tensors cannot flow through dynamo's guards.
        self.extract = torch.compile(state.taps.__call__, backend=compile_backend) if compile_backend else state.taps
        self.offsets: list[int] | None = None  # where each layer's crop block lies in the window's map (first batch)
        self._crop_sides: list[int] | None = None

    @property
    def strides(self) -> list[float]:
        """Per tapped layer, its stride in input pixels (known after the first batch; empty before it)."""
        if self._crop_sides is None:
            return []
        if not self.with_reference or self.canvas is not None or self.tiles is not None:
            return [self.auditor.size / side for side in self._crop_sides]
        return [self.auditor.margin / offset for offset in self.offsets]

    def canvas_pass(self, canvases: Tensor, counts: Sequence[int]) -> tuple[Tensor, tuple[list[Tensor], None]]:
        """A batch of normalised canvases -> the crops of their first ``counts[i]`` slots, and the crops'
        padding-free references (as :meth:`window_features` gives them, cut to the crops' blocks).

        The canvas pass runs with every padding site circular, pools included: on a periodic canvas that is the
        infinite periodic picture's features, so no border touches any block.
        """
        auditor, plan = self.auditor, self.canvas
        with padding(self.state.model, auditor.canvas_padding, include_pools=True, shapes_checked=True), \
                autocast(auditor.device, auditor.config.precision):
            maps = self.extract(canvases)
        references = []
        for name, fmap in zip(self.state.taps.names, maps):
            stride, left = divmod(plan.side, fmap.shape[-1])
            if left or fmap.shape[-2] != fmap.shape[-1] or plan.size % stride:
                raise FeatureError(f"layer '{name}': canvas features {tuple(fmap.shape[-2:])} are not the canvas "
                                   f"{plan.side} px on a whole stride", "audit it with --reference window")
            references.append(cut_blocks(fmap, [plan.origins(count) for count in counts], plan.size // stride, stride))
        return cut_crops(canvases, plan, counts), (references, None)

    def window_features(self, windows: Tensor) -> tuple[list[Tensor] | None, list[Tensor] | None]:
        """The window pass and the second window pass with the padding the model has now (no global-context
        matching: for a reference shared by every scheme, which :meth:`Auditor.shares_reference` allows only
        without global modules)."""
        auditor = self.auditor
        with autocast(auditor.device, auditor.config.precision):
            full = self.extract(windows) if self.with_reference else None
            second = self.extract(auditor.second_window(windows)) if self.second else None
        return full, second

    def __call__(self, windows: Tensor, scheme: str,
                 window_features: tuple[list[Tensor] | None, list[Tensor] | None] | None = None,
                 origins: Sequence[Sequence[tuple[int, int]]] | None = None) -> StepFeatures:
        """Features of a batch of windows under ``scheme`` (with a canvas: of crops, ``window_features`` their
        references from :meth:`canvas_pass`; with tiles: of tiles, whose crops lie at ``origins``, per tile);
        ``window_features`` from :meth:`window_features` when the reference is shared, else the window passes run
        here, under the scheme, with the crop's global context."""
        auditor, context = self.auditor, self.state.context
        if self.canvas is not None:  # canvas_pass cut them already
            crops = windows
        elif origins is not None:
            crops = cut_blocks(windows, origins, auditor.size, 1)
        else:
            crops = auditor.crop(windows)
        with auditor.patched(scheme, self.state.model), autocast(auditor.device, auditor.config.precision):
            with context.recording():  # global modules: the crop's footprint at each depth
                crop = self.extract(crops)
            if window_features is None:
                with context.matching():  # ... is where the window pass takes their statistics
                    window_features = self.window_features(windows)
        full, second = window_features
        self._crop_sides = self._crop_sides or [a.shape[-1] for a in crop]
        if full is None:  # crop passes only: the mean-feature estimator
            return StepFeatures(crop=crop, reference=None)
        if self.offsets is None and self.canvas is not None:  # cut to the crops' blocks already: they must match
            for name, a, b in zip(self.state.taps.names, crop, full):
                if a.shape != b.shape:
                    raise FeatureError(f"layer '{name}': the canvas block {tuple(b.shape[-2:])} is not the crop's "
                                       f"map {tuple(a.shape[-2:])}", "audit it with --reference window")
            self.offsets = [0] * len(crop)
        if origins is not None:
            return self._tile_blocks(crop, full, second, origins)
        if self.offsets is None:
            self.offsets = [feature_offset(name, a, b) for name, a, b in zip(self.state.taps.names, crop, full)]
        reference = [_block(b, off, a) for off, a, b in zip(self.offsets, crop, full)]
        at_second = {i: _block(second[i], self.offsets[i] * self.second // auditor.margin, crop[i])
                     for i in self.partial}
        return StepFeatures(crop=crop, reference=reference, second=at_second)

    def _tile_blocks(self, crop: list[Tensor], full: list[Tensor], second: list[Tensor] | None,
                     origins: Sequence[Sequence[tuple[int, int]]]) -> StepFeatures:
        """The crops' blocks of their tiles' maps (and of the tiles at the second margin, for the partial layers):
        a layer of stride ``s`` maps a tile of ``H x W`` px to ``H / s x W / s`` positions (checked at set-up for the
        tiles' sides), and a crop at input pixel ``(y, x)`` of the tile to the block at ``(y / s, x / s)``."""
        auditor = self.auditor
        names = self.state.taps.names
        reference, at_second = [], {}
        cut = auditor.margin - self.second if self.second else 0
        for i, (name, a, b) in enumerate(zip(names, crop, full)):
            stride, left = divmod(auditor.size, a.shape[-1])
            if left or a.shape[-2] != a.shape[-1]:
                raise FeatureError(f"layer '{name}': crop features {tuple(a.shape[-2:])} are not the crop "
                                   f"{auditor.size} px on a whole stride", "audit it with --reference window")
            reference.append(cut_blocks(b, origins, a.shape[-1], stride))
            if i in self.partial:
                at_second[i] = cut_blocks(second[i], [[(y - cut, x - cut) for y, x in slots] for slots in origins],
                                          a.shape[-1], stride)
            if reference[-1].shape != a.shape:
                raise FeatureError(f"layer '{name}': the tile block {tuple(reference[-1].shape[-2:])} is not the "
                                   f"crop's map {tuple(a.shape[-2:])}", "audit it with --reference window")
        return StepFeatures(crop=crop, reference=reference, second=at_second)


def _block(window_map: Tensor, offset: int, like: Tensor) -> Tensor:
    """The block of a window pass's map that lies over the crop: ``like``'s size, ``offset`` positions in."""
    return window_map[..., offset:offset + like.shape[-2], offset:offset + like.shape[-1]]


class Auditor:
    """Everything one audit needs, set up once: model, taps, geometry, probe, patch summaries, receptive radii.

    Args:
        config: The audit settings.
        model: An already built model (then ``info`` too), which the audit copies and never changes; otherwise built
            from ``config`` with ``config.seed``.
        info: The :class:`ModelInfo` of ``model``.
        progress: Name each set-up phase on stderr (a :class:`~ppp_audit.progress.ProgressReporter` to share one
            display with the rest of the run).

    Raises:
        PPPAuditError: An unknown scheme, a model with nothing to patch, a margin that does not fit the model, ...
            (before any image is read).
    """

    def __init__(self, config: AuditConfig, *, model: nn.Module | None = None, info: ModelInfo | None = None,
                 progress: bool | ProgressReporter = False) -> None:
        with progress_bar(progress) as bar:
            self._set_up(config, model, info, bar)

    def _set_up(self, config: AuditConfig, model: nn.Module | None, info: ModelInfo | None,
                bar: ProgressReporter) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        if model is None:
            bar.phase(f"building model {config.model}")
            model, info = build_model(config.model, pretrained=config.pretrained, weights=config.weights,
                                      device=self.device, seed=config.seed)
        else:
            if info is None:
                raise ValueError("pass the ModelInfo of a prebuilt model")
            # An owned copy: the audit sets modes, devices, memory formats and may rebuild the model for its sizes,
            # and the caller's model must come back exactly as it was given.
            model = copy.deepcopy(model).eval().to(self.device)
        self.model, self.info = model, info
        bar.phase("finding padding sites")
        # Resolved once (unknown schemes fail before any work): every batch patches these very objects.
        # The asked-for schemes first: a broken plugin is then named by the error of the scheme it was to provide,
        # not warned of while the built-in null scheme `native` is looked up.
        self.paddings = {name: get_padding(name) for name in config.paddings}
        self.paddings[NATIVE] = get_padding(NATIVE)
        # No padding site, no PPP (SPEC §3.5): refused alike with or without schemes. A model no static look finds
        # padding in gets one traced pass at its own size, which finds padding done inside forward calls too.
        sites = checked_summary(model, self.paddings[NATIVE], config.include_pools)
        if not (sites.patched or sites.unpatched):
            in_chans = int((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3,))[0])
            example = torch.zeros(1, in_chans, info.input_size, info.input_size, device=self.device)
            sites = checked_summary(model, self.paddings[NATIVE], config.include_pools, example)
        if not (sites.patched or sites.unpatched):
            raise no_padding_error(config.model, model)
        if config.paddings and not sites.patched:
            raise NothingToPatchError(
                f"model '{config.model}' has no padding a scheme can replace (its {len(sites.unpatched)} padding "
                f"sites are left as they are; the first, '{sites.unpatched[0].name}': {sites.unpatched[0].reason})",
                "audit it without --padding",
            )
        bar.phase("fitting geometry")
        self.taps = FeatureTaps(model, config.layers)
        self.fitted = fit_geometry(model, info.input_size, config.input_size, config.margin, taps=self.taps)
        if self.fitted.changes_model:
            model = apply_geometry(model, self.fitted).eval().to(self.device)
            self.model = model
            self.taps = FeatureTaps(model, config.layers)
        self.size, self.margin = self.fitted.size, self.fitted.margin
        self.estimator = self.fitted.estimator
        self.mist_layer = choose_mist_layer(self.taps.names, self.taps.strides, config.mist_layer)
        in_chans = int((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3,))[0])
        self.probe = torch.zeros(1, in_chans, self.size, self.size, device=self.device)
        bar.phase("probing padding sites")
        self.summaries: dict[str, PatchSummary] = {
            scheme: checked_summary(model, self.paddings[scheme], config.include_pools, self.probe)
            for scheme in config.schemes
        }
        context = ContextMatcher(model, config.match_context)
        bar.phase("measuring receptive fields")
        runs_with = MarginCheck(self.taps, self.fitted)
        window_probe = self.probe_window = probe_window(self.fitted, runs_with)
        self.canvas_padding = get_padding("circular")
        self._source: ImageSource | None = None
        refusal = self._canvas_refusal(context, runs_with)
        photos = bool(config.images) and self.estimator == DELTA
        tile_refusal = self._tiles_refusal(context) if photos else None
        if refusal is None or (photos and tile_refusal is None):  # known up to half the largest canvas or tile
            self.probe_window = max(window_probe, canvas_probe_side(self.size, self.fitted.margin_unit))
        crop_maps = runs_with.runs(self.size)  # the tapped maps of one crop (probed, or read back from the cache)
        self.state = ModelState(model, self.taps, context, self._probe_influence(self.taps, context))
        # The window margin is chosen as without a canvas (whether to choose it, and up to which cap, do not depend
        # on where the profiles were probed), from profiles measured farther out when a canvas may be used; tiles
        # of photos may take a border up to 2 S, as far as the photos hold one.
        tile_cap = 2 * on_grid(self.size, self.fitted.margin_unit, "up") if photos and tile_refusal is None else None
        self.margins = plan_margin(self.fitted, self.state.influence, runs_with, requested=config.margin,
                                   tolerance=config.margin_tolerance, probed_at=window_probe, cap=tile_cap)
        self.tiles: PhotoTiles | None = None
        self.tile_sample: SampledSource | None = None
        if photos:
            self.margins, tile_refusal = self._plan_photos(self.margins, tile_refusal, runs_with, window_probe,
                                                           tile_cap)
        self.margins = dataclasses.replace(self.margins, probe_window=self.probe_window)
        self.fitted = dataclasses.replace(self.fitted, margin=self.margins.margin)
        self.margin, self.second_margin = self.margins.margin, self.margins.second_margin
        self.canvas, self.window_reason = self._plan_canvas(refusal, runs_with)
        if photos:  # the canvases are the built-in images'; photos have their tiles
            self.window_reason = tile_refusal
            if self.tiles is None and config.reference == "canvas":
                raise ConfigError(f"--reference canvas cannot tile these photos exactly: {tile_refusal}",
                                  "use --reference auto (it falls back to a window per crop) or window")
        self.normalise = Normalise(info, self.device)
        self.plan = AuditPlan(
            model=config.model, device=str(self.device), precision=config.precision, estimator=self.estimator,
            size=self.size, window=self.window, margin=self.margins, layers=tuple(self.taps.names),
            crop_maps=None if isinstance(crop_maps, str) else tuple(tuple(shape[1:]) for shape in crop_maps),
            schemes=tuple(config.schemes),
            # the null scheme lists as "patched" the sites the others replace, and replaces none of them
            patched=tuple((scheme, len(summary.patched) if self.paddings[scheme].replaces else 0,
                           len(summary.unpatched)) for scheme, summary in self.summaries.items()),
            shared_reference=self.canvas is not None or self.shares_reference(config.schemes),
            canvas=self.canvas, tiles=self.tiles, mist_layer=self.mist_layer, changes=tuple(self.fitted.changes))
        self._caches: dict[int, tuple[ImageSource, WindowCache | None]] = {}

    def _canvas_refusal(self, context: ContextMatcher, runs_with: MarginCheck) -> str | None:
        """Why a canvas cannot give this audit's reference exactly (``None``: it can, if one holds the reach)."""
        config = self.config
        if config.reference == "window":
            return "--reference window"
        if self.estimator != DELTA:
            return "the mean-feature estimator has no padding-free reference"
        if config.margin is not None:
            return "--margin sets the window around each crop"
        if config.images:
            return "photos are tiled inside each photo (the canvases are drawn periodic)"
        shared = self._shared_pass_refusal(context, "canvas")
        if shared:
            return shared
        side = canvas_probe_side(self.size, self.fitted.margin_unit)
        if not self._canvas_runs(runs_with, side):
            return f"the model's maps at a {side} px canvas are not its crop maps scaled"
        try:
            circular = checked_summary(self.model, self.canvas_padding, True, self.probe)
        except PPPAuditError as error:
            return f"its padding cannot be made circular ({error})"
        if circular.unpatched:
            site = circular.unpatched[0]
            return f"padding site '{site.name}' cannot be made circular ({site.reason})"
        return None

    def _shared_pass_refusal(self, context: ContextMatcher, what: str) -> str | None:
        """Why one pass over a ``what`` (a canvas, a photo's tile) cannot give each of its crops its reference."""
        upstream = self._upstream_context(context)
        if upstream:
            return f"global modules ({', '.join(upstream[:2])}) would pool over the whole {what}"
        embedded = next((name for name, _ in self.model.named_parameters() if "pos_embed" in name
                         or "relative_position" in name), None)
        if embedded:
            return f"position embeddings ({embedded}) tie features to where they are on the {what}"
        if not all(self.paddings[scheme].keeps_shape for scheme in self.schemes):
            return "a scheme changes the maps' sizes"
        return None

    def _tiles_refusal(self, context: ContextMatcher) -> str | None:
        """Why the crops of a photo cannot share one tile's pass (``None``: they can, where the model runs at the
        tiles' sides, checked once they are known)."""
        if self.config.reference == "window":
            return "--reference window"
        return self._shared_pass_refusal(context, "tile")

    def _plan_photos(self, margins: MarginPlan, refusal: str | None, runs_with: MarginCheck, probed_at: int,
                     cap: int | None) -> tuple[MarginPlan, str | None]:
        """The margin photos allow, and the tiles of the audit's photos (``self.tiles``; ``None``, and why, where
        each crop gets a window instead: then one crop per photo, as the windows will be drawn).

        The border is the margin the receptive fields ask for, unless the photos hold less around a crop: then all
        they hold (the layers it does not cover are partial, as with windows), never a scale changed to make room.
        Where a layer stays partial at any margin up to the cap, the border is all the photos hold up to the cap.
        """
        config, asked = self.config, margins
        source = self.image_source()
        reach = asked.margin
        if config.margin is None and any(asked.partial):
            reach = max(asked.margin, margin_cap(self.fitted) if cap is None else cap)
        # at most N // groups crops a photo: at least as many photos as jackknife groups
        for most in ([max(1, config.num_images // config.groups)] if refusal is None else []) + [1]:
            margins = asked
            tiles = self._tile_sample(source, reach, most)
            if config.margin is None and tiles.border != asked.margin:  # the photos bound the context
                margins = plan_margin(self.fitted, self.state.influence, runs_with, requested=None,
                                      tolerance=config.margin_tolerance, probed_at=probed_at, cap=cap,
                                      limit=tiles.border)
                if margins.margin != tiles.border:
                    tiles = self._tile_sample(source, margins.margin, most, border=margins.margin)
            if refusal is not None:
                return margins, refusal
            borders = [margins.margin] + ([margins.second_margin] if margins.second_margin else [])
            sides = sorted({side for i in range(tiles.num_photos) for b in borders for side in tiles.shape(i, b)})
            misfit = next((side for side in sides if not self._canvas_runs(runs_with, side)), None)
            if misfit is None:
                self.tiles = tiles
                return margins, None
            refusal = f"the model's maps at a {misfit} px tile are not its crop maps scaled"
        return margins, refusal

    def _tile_sample(self, source: ImageSource, reach: int, most: int, *, border: int | None = None) -> PhotoTiles:
        """The photos of the audit (``self.tile_sample``) and their tiles: ``most`` crops per photo at most, the
        border up to ``reach`` (or ``border``, or ``--margin``, exactly)."""
        config, unit = self.config, self.fitted.margin_unit
        border = config.margin if config.margin is not None else border
        least = self.size + 2 * (unit if border is None else border)

        def plan(sizes: Iterator[tuple[int, int]]) -> tuple[PhotoTiles, list[int], int]:
            tiles, used = tile_photos(sizes, size=self.size, unit=unit, reach=reach, count=config.num_images,
                                      most=most, scale=config.photo_scale, border=border)
            return tiles, used, self.size + 2 * tiles.border if used else least

        sample, tiles, ranked = sample_photos(source, config.seed, least, plan,
                                              skip_unreadable=not config.strict_images)
        self.tile_sample = sample
        return dataclasses.replace(tiles, grids=tuple(tiles.grids[k] for k in ranked),
                                   crops=tuple(tiles.crops[k] for k in ranked))

    def _upstream_context(self, context: ContextMatcher) -> list[str]:
        """The global modules some tapped layer depends on (a gradient path from the taps back to their outputs, on
        the probe input): a head's pooling after the last tap is not one."""
        if not context.modules:
            return []
        with torch.enable_grad(), context.watching() as seen:
            outputs = self.taps(self.probe.clone().requires_grad_(True))
            if not seen:
                return []
            grads = torch.autograd.grad(sum(out.float().sum() for out in outputs), list(seen.values()),
                                        allow_unused=True)
        return [name for name, grad in zip(seen, grads) if grad is not None]

    def _canvas_runs(self, runs_with: MarginCheck, side: int) -> bool:
        """Whether every tapped map of a ``side`` px canvas is the crop's map scaled by ``side / S`` exactly."""
        crop, canvas = runs_with.runs(self.size), runs_with.runs(side)
        if isinstance(crop, str) or isinstance(canvas, str) or len(crop) != len(canvas):
            return False
        return all(b[-1] * self.size == a[-1] * side and b[-2] * self.size == a[-2] * side
                   for a, b in zip(crop, canvas))

    def _plan_canvas(self, refusal: str | None, runs_with: MarginCheck) -> tuple[CanvasPlan | None, str | None]:
        """The canvases of this audit's reference, or ``None`` and why each crop gets a window instead."""
        config = self.config
        canvas = None
        if refusal is None:
            canvas = plan_canvas(self.size, self.fitted.margin_unit, self.state.influence,
                                 tolerance=config.margin_tolerance, num_images=config.num_images,
                                 groups=config.groups, runs_at=lambda side: self._canvas_runs(runs_with, side))
            if canvas is None:
                refusal = (f"no canvas up to {canvas_probe_side(self.size, self.fitted.margin_unit)} px holds every "
                           "layer's reach")
            elif (config.reference == "auto" and not any(self.margins.partial)
                  and self.margins.summary()["pixels_per_image"] <= canvas.pixels_per_image):
                canvas, refusal = None, "a window per crop is complete and costs fewer pixels"
        if canvas is None and config.reference == "canvas" and not config.images:
            raise ConfigError(f"--reference canvas cannot be exact here: {refusal}",
                              "use --reference auto (it falls back to a window per crop) or window")
        return canvas, refusal

    def _probe_influence(self, taps: FeatureTaps, context: ContextMatcher) -> list[Influence]:
        # The audited model's profiles are cached on disk (ppp_audit/receptive_cache.py); a fine-tuned copy's weights
        # are its own, so its profiles would never be read back: probed only.
        return influence_profiles(taps, self.probe_window, self.device, context=context,
                                  in_chans=int(self.probe.shape[1]), cache=taps.model is self.model)

    # -- geometry and images ------------------------------------------------------------------------------------------

    @property
    def window(self) -> int:
        """Window side ``S + 2m``."""
        return self.size + 2 * self.margin

    @property
    def schemes(self) -> list[str]:
        """``native`` and every scheme of the config, in order."""
        return self.config.schemes

    def crop(self, windows: Tensor) -> Tensor:
        """The centre ``S x S`` crops of a batch of windows (the pixels the padded pass sees)."""
        m, s = self.margin, self.size
        return windows[..., m:m + s, m:m + s]

    def second_window(self, windows: Tensor) -> Tensor:
        """A batch of windows (or tiles) with ``m - m2`` px cut off every side, ``m2`` the :attr:`second_margin`
        (which must be set): the windows of the second, smaller margin measured for partial layers."""
        cut = self.margin - self.second_margin
        return windows[..., cut:windows.shape[-2] - cut, cut:windows.shape[-1] - cut]

    def image_source(self) -> ImageSource:
        """The images the config names (every photo at the one photo scale), or the built-in dead leaves; made once
        per auditor (a folder lists its files once)."""
        if self._source is None:
            self._source = config_source(self.config, self.size)
        return self._source

    def window_loader(self, dataset: WindowDataset, *, on_device: bool, graceful: bool = False,
                      batch_size: int | None = None) -> ImageLoader | DeviceLoader:
        """Batches of ``dataset``'s windows for the measuring loop (``batch_size``, default the config's): made on the
        device (``on_device``, from :func:`images_on_device`), else read by :meth:`loader`."""
        batch_size = batch_size or self.config.batch_size
        if not on_device:
            return self.loader(dataset, batch_size, graceful=graceful)
        return DeviceLoader(dataset, batch_size=batch_size, device=self.device,
                            skip_unreadable=not self.config.strict_images)

    def cached(self, source: ImageSource, *, on_device: bool) -> ImageSource:
        """``source``, with its windows kept on the device from its second measurement on (one :class:`WindowCache`
        per source object, filled in the second pass and read from the third: fine-tuning measures its held-out
        images again and again). A source measured once (a plain audit) is read as it is, so the audit's memory
        does not grow with N; so is every source whose images are not made on the device (``on_device``)."""
        if not on_device:
            return source
        seen = self._caches.get(id(source))
        if seen is None or seen[0] is not source:
            self._caches[id(source)] = (source, None)
            return source
        if seen[1] is None:
            self._caches[id(source)] = (source, WindowCache(source, window_cache_bytes(self.device)))
        return self._caches[id(source)][1]

    def loader(self, dataset: Any, batch_size: int, *, graceful: bool = False) -> ImageLoader:
        """Batches of ``dataset`` with the config's workers (which leave Ctrl-C to this process when ``graceful``;
        an error raised in a worker reaches the caller as itself); items whose image cannot be read are skipped
        (listed in ``loader.skipped``) unless the config's ``strict_images`` is set."""
        return image_loader(dataset, batch_size=batch_size, workers=self.config.workers,
                            pin_memory=self.device.type == "cuda", ignore_sigint=graceful,
                            skip_unreadable=not self.config.strict_images)

    def margin_summary(self) -> dict[str, Any]:
        """How the margin was set and what it costs, for the report's ``geometry.margin``."""
        return self.margins.summary(self.state.influence.summary())

    def reference_summary(self, canvas: CanvasPlan | None, why_not: str | None = None,
                          tiles: PhotoTiles | None = None) -> dict[str, Any]:
        """The report's ``geometry.reference``: the canvases that gave it (:meth:`CanvasPlan.summary`), the photos'
        tiles (:meth:`PhotoTiles.summary`), or a window per crop and why (``why_not``), with the pixels through the
        model per crop either way."""
        if canvas is not None:
            return canvas.summary()
        if tiles is not None:
            return tiles.summary(self.second_margin)
        if self.estimator != DELTA:
            return {"kind": "none", "why": why_not, "pixels_per_image": 1.0}
        return {"kind": "window", "why": why_not, "pixels_per_image": self.margin_summary()["pixels_per_image"]}

    def canvas_for(self, state: ModelState, source: ImageSource | None) -> CanvasPlan | None:
        """The auditor's canvases, where they give a measurement of ``state``'s model on ``source`` its reference:
        the built-in images (``source`` ``None``), and every layer's reach within half the canvas (a fine-tuned
        copy's may be longer than the audited model's)."""
        canvas = self.canvas
        if canvas is None or source is not None:
            return None
        holds = all(inf.beyond(canvas.side / 2) <= self.config.margin_tolerance for inf in state.influence)
        return canvas if holds else None

    # -- padding ------------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def patched(self, scheme: str, model: nn.Module | None = None) -> Iterator[nn.Module]:
        """``model`` (default the auditor's) with ``scheme``'s padding for the duration of the block (``native``: as
        it is), patched exactly as the audit measures it (pools included when the config says so). The scheme is the
        object resolved at set-up, and its shapes were checked there: a patch per batch runs no probe."""
        model = self.model if model is None else model
        with padding(model, self.paddings[scheme], include_pools=self.config.include_pools, shapes_checked=True):
            yield model

    def model_state(self, model: nn.Module) -> ModelState:
        """The :class:`ModelState` of ``model``: the auditor's own, or for another model of the same architecture (a
        fine-tuned copy) new taps, context matcher and influence profiles of that very model."""
        if model is self.model:
            return self.state
        taps, context = FeatureTaps(model, self.config.layers), ContextMatcher(model, self.config.match_context)
        return ModelState(model, taps, context, self._probe_influence(taps, context))

    def partial(self, state: ModelState | None = None) -> list[bool]:
        """Per tapped layer of ``state``'s model (default the auditor's), whether more than the tolerance of its
        influence lies beyond the margin: its padding-free reference is partial (always False for the mean-feature
        estimator, which has none)."""
        state = state or self.state  # for the auditor's own, the same rule as its margin plan's `partial`
        if self.estimator != DELTA:
            return [False] * len(state.influence)
        return [inf.beyond(self.margin) > self.config.margin_tolerance for inf in state.influence]

    def shares_reference(self, schemes: Sequence[str], state: ModelState | None = None) -> bool:
        """Whether one window pass, with the model's native padding, can give every scheme's padding-free reference.

        The reference is the crop's block of the window's features, which the window's own border does not reach
        (up to ``margin_tolerance`` of the influence) when no layer is partial: then it does not depend on the
        padding, and measuring it once per batch instead of once per scheme saves a window pass per extra scheme.
        It does when a layer is partial, when the model has global modules (squeeze-excitation, GRN, ...: their
        statistics span the window, padded border included, and matched ones take the crop pass's statistics, which
        are the scheme's), or when a scheme changes map sizes.
        """
        state = state or self.state
        if self.estimator != DELTA or len(schemes) < 2 or any(self.partial(state)) or state.context.modules:
            return False
        return all(self.paddings[scheme].keeps_shape for scheme in schemes)

    # -- measuring ----------------------------------------------------------------------------------------------------

    def measure(self, source: ImageSource | None = None, *, schemes: Sequence[str] | None = None,
                model: nn.Module | None = None, state: ModelState | None = None,
                progress: bool | ProgressReporter = False) -> Measurement:
        """Stream ``num_images`` windows of ``source`` through the crop and window passes of every scheme.

        Images that cannot be read are skipped (unless the config's ``strict_images``): found while sampling (from
        their header) they are replaced by the next image of the seeded order; found while loading (a truncated
        file) they are left out. Either way the measurement names them, and the statistics cover the images measured.
        A layer whose features hold NaN/inf is marked ``non_finite`` and the others keep their numbers; the first
        batch is checked at once, so a scheme whose every layer is broken stops there.

        Args:
            source: Images (default: :meth:`image_source`); a seeded random sample of N is drawn from a larger one.
            schemes: Which paddings to measure (default: :attr:`schemes`).
            model: Another model of the same architecture to measure (a fine-tuned copy); default the auditor's.
            state: That model's :meth:`model_state`, made once by a caller that measures it again and again
                (fine-tuning), instead of ``model``.
            progress: Report the phases and the measuring loop on stderr (a flag, or the run's reporter).

        Returns:
            The :class:`Measurement`; when Ctrl-C stopped the loop, ``interrupted`` says what it covers.

        Raises:
            AuditInterrupted: Ctrl-C before two images were measured (nothing usable).
            ImageSourceError: Fewer than 2 images can be read; with ``strict_images``, any image that cannot.
            FeatureError: Every tapped layer produced NaN/inf features under every scheme (on the first batch: found
                in seconds, not after the loop).
        """
        from .errors import AuditInterrupted

        config, device = self.config, self.device
        schemes = list(self.schemes if schemes is None else schemes)
        state = state or self.model_state(self.model if model is None else model)
        model = state.model
        was_training = model.training
        model.eval().to(device)
        canvas = self.canvas_for(state, source)
        tiles = self.tiles if source is None else None  # images handed to a measurement get windows
        why_not = None if canvas is not None or tiles is not None else self.window_reason or (
            "images given to this measurement" if source is not None else "the model's reach exceeds the canvas")
        partial = [False] * len(state.influence) if canvas is not None else self.partial(state)
        rank, world = rank_and_world()
        bar = progress_bar(progress if rank == 0 else False)
        bar.phase("preparing images")

        if canvas is not None:
            images = self._sample_canvases(canvas, rank, world)
        elif tiles is not None:
            images = self._sample_tiles(tiles, rank, world)
        else:
            images = self._sample(self.image_source() if source is None else source, rank, world)
        source, unreadable, num_images, loader = images.source, images.unreadable, images.num_images, images.loader

        shared = canvas is not None or self.shares_reference(schemes, state)  # the canvas pass is no scheme's
        sums = _Sums.of(self, schemes, state, partial)
        memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        model.to(memory_format=memory_format)
        step = BatchStep(self, state, partial, shared=shared, canvas=canvas, tiles=tiles)
        with bar, stop_on_ctrl_c(images.graceful) as stop, measuring(device, config.precision,
                                                                     compiled=bool(config.compile)):
            streamed = self._stream(images.loader, schemes, step, sums, bar, stop,
                                    check_first=world == 1, memory_format=memory_format)
        model.train(was_training)

        # Images the loader could not decode, by window index (all ranks'), then what was measured.
        measured = streamed.measured
        skipped = [(images.dataset.indices[failure.position], skipped_image(failure.error))
                   for failure in loader.skipped]
        if world > 1:
            measured, skipped = _gather_skipped(measured, skipped)
        skipped.sort(key=lambda item: item[0])
        tried = len(unreadable) + (tiles.num_photos if tiles is not None else measured)  # images, not crops
        unreadable += [image for _, image in skipped]
        record = SkippedImages.of(unreadable, tried=tried)
        interrupted = None
        if stop.requested:
            if measured < 2:
                raise AuditInterrupted(None)
            interrupted = f"stopped by Ctrl-C after {measured} of {num_images} images; the statistics cover those"
        elif measured < 2:
            raise too_few_images(measured, len(unreadable) + measured, self.window, unreadable=unreadable,
                                 more=_draws_more(source))
        measured_source = self.image_source() if canvas is not None else source  # baselines: windows of the law
        if skipped:  # baselines go on with the images that were measured
            left_out = {index for index, _ in skipped}
            items = tiles.num_photos if tiles is not None else images.num_images
            measured_source = IndexedSource(source, [i for i in range(items) if i not in left_out])

        if world > 1:  # every rank's sums, before anything is computed from them
            sums.all_reduce_()
        results = [self._scheme_result(scheme, state, partial, sums.layers[scheme], sums.second.get(scheme, {}),
                                       step.strides, canvas) for scheme in schemes]
        if all(layer.stats.non_finite for result in results for layer in result.layers):
            raise _all_non_finite(schemes, on_first_batch=False)
        data = {**source.describe(), "num_images": measured,
                **({"images_on": str(device)} if images.on_device else {})}
        return Measurement(results=results, data=data, seconds=streamed.seconds, loop_s=streamed.loop_s,
                           interrupted=interrupted, source=measured_source, skipped=record, reference_shared=shared,
                           reference=self.reference_summary(canvas, why_not, tiles))

    def _stream(self, loader: ImageLoader | DeviceLoader, schemes: list[str], step: BatchStep, sums: "_Sums",
                bar: ProgressReporter, stop: StopRequest, *, check_first: bool,
                memory_format: torch.memory_format) -> "_Streamed":
        """The measuring loop: every batch of ``loader`` through ``step`` under each scheme into ``sums``, until the
        loader ends or Ctrl-C asks to stop.

        With ``check_first`` the first batch's sums are checked for NaN/inf (one host sync for every layer): a scheme
        whose every layer is non-finite is not run further, and when none is left the measurement fails at once.
        Under torchrun the ranks would have to agree first; there the check at the end, after the all-reduce, is the
        only one.
        """
        seconds = {scheme: 0.0 for scheme in schemes}
        running = list(schemes)
        measured = counted_skips = 0
        started = time.perf_counter()
        canvas, tiles = step.canvas, step.tiles
        crops = canvas.crops if canvas is not None else tiles.crops if tiles is not None else None
        total = sum(crops[i] for i in loader.dataset.indices) if crops is not None else len(loader.dataset)
        bar.phase(f"measuring {', '.join(schemes)} on {total} images", total=total)
        for indices, batch in loader:
            windows = self.normalise(batch).contiguous(memory_format=memory_format)
            native_windows = origins = None
            if tiles is not None:  # tiles: their crops' places; a crop's group is its photo's
                counts = [tiles.crops[int(i)] for i in indices]
                origins = [tiles.origins(int(i)) for i in indices]
                indices = torch.repeat_interleave(torch.as_tensor(indices).cpu(), torch.tensor(counts))
            if canvas is not None:  # canvases -> their crops and references; a crop's group is its canvas's
                tick = time.perf_counter()
                counts = [canvas.crops[int(i)] for i in indices]
                windows, native_windows = step.canvas_pass(windows, counts)
                windows = windows.contiguous(memory_format=memory_format)
                indices = torch.repeat_interleave(torch.as_tensor(indices).cpu(), torch.tensor(counts))
                seconds[schemes[0]] += time.perf_counter() - tick
            elif step.shared:  # one native window pass is every scheme's reference (shares_reference)
                tick = time.perf_counter()
                native_windows = step.window_features(windows)
                seconds[schemes[0]] += time.perf_counter() - tick
            for scheme in running:
                tick = time.perf_counter()
                sums.add(scheme, step(windows, scheme, native_windows, origins), indices)
                seconds[scheme] += time.perf_counter() - tick
                bar.update(advance=len(indices) / len(running))  # the bar counts images (crops)
            if check_first:
                check_first = False
                running = [scheme for scheme in running if any(sums.finite(scheme))]
                if not running:
                    raise _all_non_finite(schemes, on_first_batch=True)
            measured += len(indices)
            bar.update(advance=len(loader.skipped) - counted_skips)  # skipped images are done with, too
            counted_skips = len(loader.skipped)
            if stop.requested:
                break
        bar.update(advance=len(loader.skipped) - counted_skips)  # a last batch of unreadable images yields none
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run ahead of the host: the wall time must include them
        return _Streamed(measured, seconds, time.perf_counter() - started)

    def _sample(self, source: ImageSource, rank: int, world: int) -> "_SampledImages":
        """The N windows of ``source`` to measure (a seeded sample of a larger source; images found unreadable from
        their header replaced by the next of the seeded order) and this rank's loader over them."""
        config = self.config
        on_device = images_on_device(config, source)
        source = random_sample(self.cached(source, on_device=on_device), config.num_images, config.seed, self.window,
                               skip_unreadable=not config.strict_images)
        unreadable = list(source.unreadable) if isinstance(source, SampledSource) else []  # found while sampling
        available = source.available()
        num_images = min(config.num_images, available) if available else config.num_images
        if num_images < 2:
            raise PPPAuditError(f"only {num_images} image available", "give at least 2 images")
        graceful = self._split(world, num_images, "images", "use more images than processes")
        dataset = WindowDataset(source, range(rank, num_images, world), self.window)
        return _SampledImages(source, unreadable, num_images, dataset,
                              self.window_loader(dataset, on_device=on_device, graceful=graceful), on_device, graceful)

    def _split(self, world: int, count: int, units: str, hint: str) -> bool:
        """Refuse a measurement the ``world`` processes cannot share (baselines, fewer ``units`` than processes), and
        say whether Ctrl-C may end the batch in hand (one process, on the main thread)."""
        if world > 1 and self.config.baselines:
            raise PPPAuditError("baselines run in one process", "run --baselines without torchrun")
        if world > count:
            raise PPPAuditError(f"{world} processes for {count} {units}", hint)
        return world == 1 and threading.current_thread() is threading.main_thread()

    def _sample_canvases(self, canvas: CanvasPlan, rank: int, world: int) -> "_SampledImages":
        """This rank's canvases (every ``world``-th, from ``rank``) and their loader: a batch holds as many canvases
        as hold about ``batch_size`` crops."""
        config = self.config
        graceful = self._split(world, canvas.num_canvases, "canvases",
                               "use more images than processes, or --reference window")
        on_device = images_on_device(config)
        source = config_source(config, self.size, periodic=True)
        dataset = WindowDataset(source, range(rank, canvas.num_canvases, world), canvas.side)
        loader = self.window_loader(dataset, on_device=on_device, graceful=graceful,
                                    batch_size=max(1, config.batch_size // max(canvas.crops)))
        return _SampledImages(source, [], canvas.num_crops, dataset, loader, on_device, graceful)

    def _sample_tiles(self, tiles: PhotoTiles, rank: int, world: int) -> "_SampledImages":
        """This rank's photos (every ``world``-th, from ``rank``: whole photos) and their tiles' loader: a batch
        holds tiles of one size, as many as hold about ``batch_size`` crops."""
        config, source = self.config, self.tile_sample
        graceful = self._split(world, tiles.num_photos, "photos", "use more photos than processes")
        on_device = images_on_device(config, source)
        dataset = TileDataset(source, range(rank, tiles.num_photos, world),
                              [tiles.shape(i) for i in range(tiles.num_photos)])
        loader = self.window_loader(dataset, on_device=on_device, graceful=graceful,
                                    batch_size=max(1, config.batch_size // max(tiles.crops)))
        return _SampledImages(source, list(source.unreadable), tiles.num_crops, dataset, loader, on_device, graceful)

    def _scheme_result(self, scheme: str, state: ModelState, partial: list[bool], accumulators: list[PPPAccumulator],
                       at_second: dict[int, PPPAccumulator], strides: list[float],
                       canvas: CanvasPlan | None = None) -> SchemeResult:
        """One scheme's :class:`SchemeResult` from its (all-reduced) accumulators: the statistics of each layer with
        what the set-up knows of it (receptive field, partial reference, the strength at the second margin, which
        global modules upstream were matched); with a ``canvas``, the influence beyond its half period."""
        with_reference, context = self.estimator == DELTA, state.context
        reach_px = canvas.side / 2 if canvas is not None else self.margin
        layers = []
        for i, (name, acc, stride, reach) in enumerate(zip(state.taps.names, accumulators, strides, state.influence)):
            stats = acc.compute(stride_px=stride, receptive_radius_px=reach.radius_px if with_reference else None)
            smaller = (self.second_margin, at_second[i].compute(stride_px=stride).strength) if i in at_second else None
            layers.append(LayerResult(
                name=name, receptive_radius_px=reach.radius_px, reference_partial=partial[i], stats=stats,
                influence_beyond_margin=reach.beyond(reach_px) if with_reference else None,
                strength_at_smaller_margin=smaller,
                context_matched=[n for n in reach.upstream if n in context.matched],
                context_unmatched=[n for n in reach.upstream if n not in context.matched]))
        return SchemeResult(scheme=scheme, patch=self.summaries[scheme].to_dict(), layers=layers)

    # -- baselines and the report -------------------------------------------------------------------------------------

    def baselines(self, measurement: Measurement, *, progress: bool | ProgressReporter = False) -> BaselinesRun:
        """The config's baselines (none: an empty run) on the audit's own crops of the measured images, per scheme
        where the padding matters, with every scheme patched as the audit measures it; fp32 throughout. Skipped after
        an interrupted measurement; a Ctrl-C during them keeps the PPP statistics and says so."""
        from .metrics.baselines import BaselineInputs, ImageBank, run_baselines
        from .metrics.baselines.runner import num_steps

        config = self.config
        if not config.baselines or measurement.interrupted:
            return BaselinesRun()
        started = time.perf_counter()
        source = measurement.source
        inputs = BaselineInputs(
            model=self.model, extract=self.taps, images=ImageBank(source, self.window, self.margin, self.size),
            normalize=self.normalise, input_size=self.size, max_stride=largest_stride(self.model),
            device=self.device, schemes=self.schemes, scheme=self.patched,
        )
        try:
            with progress_bar(progress) as bar:
                bar.phase("baselines", total=num_steps(config.baselines, len(self.schemes)))

                def on_step(what: str) -> None:
                    bar.update(advance=1, description=f"baseline {what}")

                results = run_baselines(config.baselines, config.baseline_options, inputs, on_step=on_step)
        except KeyboardInterrupt:
            return BaselinesRun(interrupted="stopped by Ctrl-C during the baselines; the PPP statistics are complete, "
                                "baselines missing")
        return BaselinesRun(results=results, seconds=time.perf_counter() - started if results else None)

    def report(self, measurement: Measurement, *, started: float, baselines: dict[str, Any] | None = None,
               baselines_s: float | None = None, interrupted: str | None = None,
               timings: dict[str, float] | None = None) -> Report:
        """The :class:`Report` of a measurement: provenance (model, data, geometry, seed, device, precision), the
        per-scheme results, timings since ``started`` (a ``time.perf_counter()``) and anything else measured."""
        seconds = measurement.seconds
        _, world = rank_and_world()
        return Report(
            environment=environment(),
            model={"name": self.info.name, "architecture": self.info.architecture, "weights": self.info.weights},
            data=measurement.data,
            input_size=self.size,
            # a canvas's crops have (L - S) / 2 px of their own surroundings on each side: its period is the window
            margin=(measurement.reference["side"] - self.size) // 2 if measurement.reference.get("kind") == "canvas"
            else self.margin,
            seed=self.config.seed,
            device=str(self.device),
            precision=self.config.precision,
            results=measurement.results,
            skipped_images=measurement.skipped,
            timings={"total_s": time.perf_counter() - started, "loop_s": measurement.loop_s, "processes": world,
                     **{f"{scheme}_s": s for scheme, s in seconds.items()},
                     "images_per_s": measurement.num_images * len(seconds) / max(sum(seconds.values()), 1e-9),
                     **({"baselines_s": baselines_s} if baselines_s is not None else {}),
                     **(timings or {})},
            baselines=baselines or {},
            interrupted=interrupted or measurement.interrupted,
            estimator=self.estimator,
            geometry={"changes": list(self.fitted.changes), "margin": self.margin_summary(),
                      "reference_shared": measurement.reference_shared,
                      **({"reference": measurement.reference} if measurement.reference else {}),
                      **({"rebuilt_with": dict(self.fitted.constructor_kwargs)}
                                                              if self.fitted.constructor_kwargs else {}),
                      **({"set_input_size": self.fitted.input_size} if self.fitted.input_size else {})},
        )


__all__ = ["AuditPlan", "Auditor", "BaselinesRun", "Measurement", "Normalise", "StopRequest", "autocast",
           "checked_summary",
           "config_source", "images_on_device", "window_cache_bytes",
           "feature_offset", "ieee_fp32", "largest_stride",
           "progress_bar", "rank_and_world", "resolve_device", "stop_on_ctrl_c"]
