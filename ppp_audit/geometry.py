"""Crop and window sizes a model can run: what the audit changes to fit a model, and why.

The padding-free reference needs the model to run at two sizes, the crop ``S`` and the window ``S + 2m``, with every
tapped map shifting by ``m / stride`` between them. Many models do; some need sides divisible by a window-attention
or halo block unit (maxvit, halonet), some run at one size only (fixed position embeddings, attention biases), and
ViT-likes run at any size once rebuilt with ``dynamic_img_size=True``. :func:`fit_geometry` finds out by probing (a
forward of one zero image per size, smallest first, results cached) guided by the model's attributes, and returns a
:class:`Geometry`: the sizes, the estimator they allow, and a line per change for the report. :func:`apply_geometry`
makes the model that geometry describes.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .errors import FeatureError, GeometryError, PPPAuditError, describe_error, first_line
from . import receptive_cache
from .models import FeatureTaps, built_input_size, feature_info_of, model_device

DELTA = "delta"
MEAN_FEATURE = "mean-feature"
ESTIMATORS = (DELTA, MEAN_FEATURE)

# Attributes that name a window, partition or block a map side must be divisible by (timm's window attention,
# maxvit partitions, halo blocks). Read only on modules with a 4-D input whose side they divide at a size that runs.
WINDOW_ATTRIBUTES = ("window_size", "partition_size", "block_size")
MIN_MAP_SIDE = 2
"""The smallest side (in positions) of a tapped layer's map of the crop: ``--input-size`` is at least this times the
largest tapped stride."""
DEFAULT_STRIDE = 32  # timm's usual largest stride, for models without feature_info


@dataclass(frozen=True)
class Geometry:
    """The sizes an audit runs at and the estimator they allow.

    Attributes:
        size: Crop side ``S`` in pixels.
        margin: Context ``m`` around the crop (windows are ``S + 2m``); 0 with the mean-feature estimator.
        estimator: ``"delta"`` (crop minus padding-free window features) or ``"mean-feature"`` (crops only: no window
            larger than the crop runs).
        changes: One line per change from the requested sizes or model, with the reason, for the report.
        constructor_kwargs: Extra ``timm.create_model`` arguments the model must be rebuilt with (e.g.
            ``{"dynamic_img_size": True}``); empty when the model runs as built.
        input_size: Side to pass to ``model.set_input_size(img_size=...)`` before measuring, or ``None``.
        strides: Each tapped layer's stride in input pixels.
        margin_unit: The grid margins lie on (every tapped map shifts by whole positions): the largest stride, or a
            multiple of it that window-like modules need.
    """

    size: int
    margin: int
    estimator: str = DELTA
    changes: tuple[str, ...] = ()
    constructor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_size: int | None = None
    strides: tuple[int, ...] = ()
    margin_unit: int = DEFAULT_STRIDE

    @property
    def window(self) -> int:
        """Side of the windows the crops are cut from (``S + 2m``)."""
        return self.size + 2 * self.margin

    @property
    def changes_model(self) -> bool:
        """The model must be rebuilt or resized (:func:`apply_geometry`) before it runs at these sizes."""
        return bool(self.constructor_kwargs) or self.input_size is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a report."""
        return {**dataclasses.asdict(self), "changes": list(self.changes), "strides": list(self.strides),
                "constructor_kwargs": dict(self.constructor_kwargs)}


def probe(forward: Callable[[Tensor], Sequence[Tensor]], size: int, *, in_chans: int = 3,
          device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[tuple[int, ...]] | str:
    """Run ``forward`` on one zero image of side ``size`` and return its output shapes, or why it failed.

    A :class:`FeatureError` (an output that is no feature map at any size) is raised, not returned.

    Args:
        forward: Image batch -> feature maps (e.g. a :class:`~ppp_audit.models.FeatureTaps`).
        size: Input side in pixels.
        in_chans: Input channels.
        device: Where the model is.
        dtype: The model's floating-point type.

    Returns:
        The shapes, or a one-line reason (the exception's type and first line).
    """
    x = torch.zeros(1, in_chans, size, size, device=device, dtype=dtype)
    try:
        with torch.no_grad():
            return [tuple(out.shape) for out in forward(x)]
    except FeatureError:
        raise
    except Exception as exc:  # any failure at this size is an answer: the model does not run here
        return describe_error(exc)


def window_units(model: nn.Module, taps: FeatureTaps, size: int, *, in_chans: int = 3,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Side units (input pixels) that window-like modules need, read at a ``size`` the model runs.

    A module with a ``window_size``/``partition_size``/``block_size`` of ``w`` whose input map has side ``h`` (at
    stride ``size / h``) needs input sides divisible by ``stride * w``. Only modules whose input ``w`` divides at
    ``size`` count, so attributes that are no constraint (token windows, unused block sizes) drop out, and of nested
    ones only the outermost (a halo block, not its position embedding).

    Returns:
        ``{module name: unit}``; empty for models without such modules.
    """
    candidates: dict[str, int] = {}
    for name, module in model.named_modules():
        inside = any(name.startswith(outer + ".") for outer in candidates)  # an outer module's window counts
        window = next((_side(getattr(module, attr, None)) for attr in WINDOW_ATTRIBUTES
                       if _side(getattr(module, attr, None))), 0)
        if window and not inside:
            candidates[name] = window
    if not candidates:
        return {}
    modules = dict(model.named_modules())
    sides: dict[str, int] = {}

    def record(name: str, inputs: tuple) -> None:
        x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
        if x is not None and x.ndim == 4 and name not in sides:
            # square inputs: the two equal sides are the map, whether (N, C, H, W) or (N, H, W, C)
            sides[name] = int(x.shape[2]) if x.shape[2] == x.shape[3] else int(x.shape[1])

    handles = [modules[name].register_forward_pre_hook(lambda m, a, name=name: record(name, a))
               for name in candidates]
    try:
        probe(taps, size, in_chans=in_chans, device=device, dtype=dtype)
    finally:
        for h in handles:
            h.remove()
    units = {}
    for name, side in sides.items():
        window = candidates[name]
        if 1 < window <= side and side % window == 0 and size % side == 0:
            units[name] = size // side * window
    return units


def largest_stride(model: nn.Module) -> int:
    """The model's largest stride: input pixels per position of its deepest stage, from ``feature_info`` (timm's usual
    :data:`DEFAULT_STRIDE` for a model without one). It knows nothing of the tapped layers (see :func:`common_stride`);
    the location baseline sizes its content by it."""
    return max(_reductions(model) or [DEFAULT_STRIDE])


def common_stride(model: nn.Module, strides: Sequence[int] = ()) -> int:
    """The smallest shift of the input (px) that moves every map by whole positions: the model's stages
    (``feature_info``, or :data:`DEFAULT_STRIDE` without one) and the tapped layers at ``strides``.

    That is their least common multiple; for powers of two, simply the largest of them. For strides with no small
    common multiple (crossvit's 12 and 17: the multiple would be over 4 times the largest) it is the largest, and the
    alignment probe decides which margins run. Margins are multiples of it, on the grid :attr:`Geometry.margin_unit`.
    """
    every = [*(_reductions(model) or [DEFAULT_STRIDE]), *(int(s) for s in strides)]
    common = math.lcm(*every)
    return common if common <= 4 * max(every) else max(every)


def on_grid(value: int, unit: int, rounding: str = "nearest") -> int:
    """``value`` moved onto the multiples of ``unit``: the nearest (ties up), the next one ``"up"`` or ``"down"``.

    The one rounding rule of sizes and margins (a crop side on the model's side unit, a margin on
    :attr:`Geometry.margin_unit`, so that every tapped map shifts by whole positions). ``"nearest"`` and ``"up"`` give
    at least ``unit``, as a side or margin of 0 is none; ``"down"`` gives 0 when ``value`` is below ``unit`` (no
    margin on the grid fits).
    """
    if rounding == "down":
        return value // unit * unit
    if rounding == "up":
        return max(unit, -(-value // unit) * unit)
    if rounding == "nearest":
        return max(unit, (value + unit // 2) // unit * unit)
    raise ValueError(f"unknown rounding '{rounding}' (nearest, up or down)")


def _reductions(model: nn.Module) -> list[int]:
    return [int(f["reduction"]) for f in feature_info_of(model) if "reduction" in f]


def fit_geometry(model: nn.Module, input_size: int | None = None, size: int | None = None,
                 margin: int | None = None, *, layers: Sequence[str] | None = None, taps: FeatureTaps | None = None,
                 rebuild: bool = True) -> Geometry:
    """The crop size, margin and estimator an audit of ``model`` can run, as close to the requested ones as it can.

    Tries, in order and keeping the first that runs (crop and window both, every tapped map shifting by the margin):
    the requested ``(S, m)``; ``S`` rounded to the model's side unit and ``m`` rounded up to a multiple of that unit
    and of the largest stride; the same on the model rebuilt with ``dynamic_img_size=True`` where timm offers it.
    Where no window larger than the crop runs, the mean-feature estimator on crops of ``S`` (after
    ``set_input_size(img_size=S)`` where timm offers it), else of the model's own input size.

    Args:
        model: A built model (timm or any ``nn.Module``), on the device it will run on.
        input_size: The side the model was built or trained for (``ModelInfo.input_size``); default read from the
            model (``img_size`` it was built with, ``pretrained_cfg``, else 224).
        size: Requested crop side ``S``; default ``input_size``.
        margin: Requested margin ``m``; default twice the largest stride.
        layers: Module names the audit taps instead of the stages (as for :class:`~ppp_audit.models.FeatureTaps`).
        taps: The audit's own taps of ``model`` (then ``layers`` is not used): the probes settle their names and
            strides, so the audit needs no forward pass of its own for that.
        rebuild: Allow a geometry that needs the model rebuilt (``constructor_kwargs``).

    Returns:
        The :class:`Geometry`; ``changes`` says what differs from the request and why.

    Raises:
        PPPAuditError: A requested margin is not a multiple of the model's largest stride (the user's to fix).
        GeometryError: The model runs at no size at all.
    """
    in_chans, built_size = built_input_size(model)
    own_size = int(input_size or built_size)
    requested_size = int(size or own_size)
    place = {"in_chans": in_chans, "device": model_device(model), "dtype": _model_dtype(model)}
    layers = taps.layers if taps is not None else layers
    taps = taps if taps is not None else FeatureTaps(model, layers)
    runs = _Runs(taps, place)
    working = next((side for side in dict.fromkeys([requested_size, own_size, built_size])
                    if not isinstance(runs(side), str)), None)
    if working is None:
        raise GeometryError(f"model {_name(model)} runs at neither {requested_size} nor {own_size} px: "
                            f"{runs(requested_size)}", "check the model with one forward pass at its input size")
    own_size = own_size if not isinstance(runs(own_size), str) else working
    strides = taps.strides
    if size is not None and size < MIN_MAP_SIDE * max(strides):
        # the one rule for a crop that is too small, applied before anything runs: below it the deepest tapped map
        # has a single row, all border, and its "PPP" says nothing about where in the image a feature is
        smallest = MIN_MAP_SIDE * max(strides)
        raise PPPAuditError(f"--input-size {size} is too small for {_name(model)}: its deepest tapped layer (stride "
                            f"{max(strides)}) would see fewer than {MIN_MAP_SIDE}x{MIN_MAP_SIDE} positions",
                            f"use --input-size {smallest} or more ({MIN_MAP_SIDE} x the largest tapped stride)")
    common = common_stride(model, strides)  # every map shifts by whole positions when m is a multiple of it
    if margin is not None and margin % common:
        raise PPPAuditError(
            # said as users know it: for the usual powers of two the common stride is the largest
            f"--margin {margin} is not a multiple of the model's largest stride {common}",
            f"use --margin {common * max(1, round(margin / common))}",
        )
    requested_margin = int(margin or 2 * common)

    units: dict[str, int] = {}
    found = _fit_delta(runs, strides, requested_size, requested_margin, common, {})  # as asked, most models
    if found is None:
        units = window_units(model, taps, working, **place)
        found = _fit_delta(runs, strides, requested_size, requested_margin, common, units)
    kwargs: dict[str, Any] = {}
    if found is None and rebuild and _offers_dynamic_size(model):
        kwargs = {"dynamic_img_size": True}
        dynamic = _rebuild(model, kwargs, copy_weights=False)
        dynamic_taps = FeatureTaps(dynamic, layers)
        found = _fit_delta(_Runs(dynamic_taps, place), strides, requested_size, requested_margin, common, units)
    if found is not None:
        fitted_size, fitted_margin = found
        changes = _size_changes(runs, requested_size, requested_margin, fitted_size, fitted_margin, units)
        if kwargs:
            resampled = ("; its position embeddings are resampled to each size, and Δ at the layers after them "
                         "includes that") if isinstance(getattr(model, "pos_embed", None), Tensor) else ""
            changes.append(f"rebuilt with dynamic_img_size=True to run at {fitted_size} and "
                           f"{fitted_size + 2 * fitted_margin} px (built for {own_size} px only){resampled}")
        return Geometry(fitted_size, fitted_margin, DELTA, tuple(changes), kwargs, None, tuple(strides),
                        _margin_unit(common, units))
    return _fit_mean_feature(model, runs, requested_size, requested_margin, own_size, common, units, strides, place,
                             layers)


class MarginCheck:
    """Which margins the model behind ``taps`` (as :func:`apply_geometry` made it) runs at, for a fitted geometry:
    ``check(m)`` is whether the window ``S + 2m`` runs with every tapped map grown by ``m / stride`` on each side.
    Each size is probed once (a forward pass of one zero image), however many margins are asked about.
    """

    def __init__(self, taps: FeatureTaps, geometry: Geometry) -> None:
        model = taps.model
        place = {"in_chans": built_input_size(model)[0], "device": model_device(model), "dtype": _model_dtype(model)}
        self.runs, self.geometry = _Runs(taps, place), geometry

    def __call__(self, margin: int) -> bool:
        size = self.geometry.size
        crop, window = self.runs(size), self.runs(size + 2 * margin)
        return not isinstance(crop, str) and not isinstance(window, str) and _aligned(crop, window, margin,
                                                                                       self.geometry.strides)


def apply_geometry(model: nn.Module, geometry: Geometry) -> nn.Module:
    """The model ``geometry`` was fitted for: rebuilt with its ``constructor_kwargs`` (same weights, same device,
    mode and ``pretrained_cfg``) and/or resized in place with ``set_input_size``; ``model`` itself when neither.

    Raises:
        GeometryError: timm cannot rebuild this model, or its weights do not load into the rebuilt one.
    """
    if geometry.constructor_kwargs:
        model = _rebuild(model, dict(geometry.constructor_kwargs), copy_weights=True)
    if geometry.input_size is not None:
        model.set_input_size(img_size=(geometry.input_size, geometry.input_size))
    return model


class _Runs:
    """Probe results of one model by input side, each size run once, and kept on disk across runs
    (:func:`~ppp_audit.receptive_cache.shapes_key`)."""

    def __init__(self, taps: FeatureTaps, place: dict[str, Any]) -> None:
        self.taps, self.place, self.results = taps, place, {}
        self.key = receptive_cache.shapes_key(taps, **place)

    def __call__(self, size: int) -> list[tuple[int, ...]] | str:
        if size in self.results:
            return self.results[size]
        stored = receptive_cache.load_shapes(self.key, size) if self.key is not None else None
        if stored is not None:
            self.results[size] = stored
            return stored
        model = self.taps.model
        was_training = model.training
        model.eval()  # batch norm in training mode refuses a batch of one 1x1 map
        try:
            self.results[size] = probe(self.taps, size, **self.place)
        finally:
            model.train(was_training)
        if self.key is not None:
            receptive_cache.store_shapes(self.key, size, self.results[size])
        return self.results[size]


def _fit_delta(runs: _Runs, strides: Sequence[int], size: int, margin: int, common: int,
               units: Mapping[str, int]) -> tuple[int, int] | None:
    """The first (S, m) at which crop and window run and align: as asked, ``S`` rounded to the common stride, then
    both rounded to the ``units`` (results are cached, so asking again costs nothing)."""
    candidates = [(size, margin), (on_grid(size, common), margin)]
    if units:
        unit = math.lcm(*units.values())
        rounded_margin = on_grid(margin, _margin_unit(common, units), "up")
        candidates += [(on_grid(size, unit), rounded_margin), (on_grid(size, math.lcm(unit, common)), rounded_margin)]
    for crop, context in dict.fromkeys(candidates):  # ordered, without repeats
        crop_shapes = runs(crop)
        if isinstance(crop_shapes, str):
            continue
        window_shapes = runs(crop + 2 * context)
        if not isinstance(window_shapes, str) and _aligned(crop_shapes, window_shapes, context, strides):
            return crop, context
    return None


def _fit_mean_feature(model: nn.Module, runs: _Runs, size: int, margin: int, own_size: int, common: int,
                      units: Mapping[str, int], strides: Sequence[int], place: dict[str, Any],
                      layers: Sequence[str] | None) -> Geometry:
    """Crops only: at ``S`` as built, at ``S`` after ``set_input_size``, at ``S`` rounded, else at the model's size."""
    crop = size if not isinstance(runs(size), str) else own_size
    window = runs(crop + 2 * margin)
    why = window if isinstance(window, str) else "its maps do not shift with the window"
    estimator = (f"no window larger than the crop runs ({crop + 2 * margin} px: {why}); measured with the "
                 "mean-feature estimator on crops only, which the images' own layout biases")
    if not isinstance(runs(size), str):
        return Geometry(size, 0, MEAN_FEATURE, (estimator,), {}, None, tuple(strides))
    if hasattr(model, "set_input_size") and size != own_size and _resizes_to(model, size, place, layers):
        return Geometry(size, 0, MEAN_FEATURE, (f"resized to {size} px with set_input_size (built for {own_size} px)",
                                                estimator), {}, size, tuple(strides))
    unit = math.lcm(*units.values()) if units else 1
    for crop in dict.fromkeys([on_grid(size, unit), on_grid(size, math.lcm(unit, common)), own_size]):
        if not isinstance(runs(crop), str):
            change = f"crop size {size} -> {crop}: at {size} px {runs(size)}"
            return Geometry(crop, 0, MEAN_FEATURE, (change, estimator), {}, None, tuple(strides))
    raise GeometryError(f"model {_name(model)} does not run at {size} px: {runs(size)}",
                        f"audit it at its input size, --input-size {own_size}")


def _resizes_to(model: nn.Module, size: int, place: dict[str, Any], layers: Sequence[str] | None) -> bool:
    """A copy of the model runs at ``size`` after ``set_input_size(img_size=size)``."""
    resized = copy.deepcopy(model)
    try:
        resized.set_input_size(img_size=(size, size))
    except Exception:  # a set_input_size that cannot take this size is an answer too
        return False
    return not isinstance(_Runs(FeatureTaps(resized, layers), place)(size), str)


def map_offset(crop: Sequence[int], window: Sequence[int]) -> int | None:
    """Where a crop's feature map sits in its window's (shapes ``(..., h, w)``): the positions the window's map grew
    by on each side; ``None`` when it did not grow evenly (by different amounts in height and width, by nothing, or
    by an odd count), so that no block of it lines up with the crop's map."""
    grow_h, grow_w = window[-2] - crop[-2], window[-1] - crop[-1]
    return grow_h // 2 if grow_h == grow_w and grow_h > 0 and not grow_h % 2 else None


def _aligned(crop: Sequence[tuple[int, ...]], window: Sequence[tuple[int, ...]], margin: int,
             strides: Sequence[int]) -> bool:
    """Every tapped map of the window is the crop's grown by ``m / stride`` on each side."""
    for a, b, stride in zip(crop, window, strides):
        offset = map_offset(a, b)
        if offset is None or offset * stride != margin:
            return False
    return len(crop) == len(window)


def _size_changes(runs: _Runs, size: int, margin: int, fitted_size: int, fitted_margin: int,
                  units: Mapping[str, int]) -> list[str]:
    """What moved and why: the failure at the requested sizes, and the window-like module that sets the unit."""
    if fitted_size == size and fitted_margin == margin:
        return []
    failure = next((f"{side} px: {result}" for side in (size, size + 2 * margin)
                    if isinstance(result := runs(side), str)), "its maps do not shift with the window")
    if units:
        name, unit = max(units.items(), key=lambda item: item[1])
        failure += f"; {name} needs input sides divisible by {unit}"
    moved = [f"crop size {size} -> {fitted_size}"] if fitted_size != size else []
    moved += [f"margin {margin} -> {fitted_margin}"] if fitted_margin != margin else []
    return [f"{' and '.join(moved)}, window {fitted_size + 2 * fitted_margin} px ({failure})"]


def _offers_dynamic_size(model: nn.Module) -> bool:
    """timm builds this architecture with ``dynamic_img_size`` (ViT-likes and their hybrids), and it is not on."""
    if getattr(model, "dynamic_img_size", False) or not _timm_name(model):
        return False
    try:
        return "dynamic_img_size" in inspect.signature(type(model).__init__).parameters
    except (TypeError, ValueError):
        return False


def _rebuild(model: nn.Module, kwargs: dict[str, Any], copy_weights: bool) -> nn.Module:
    """The same timm architecture and creation arguments plus ``kwargs``; with the model's weights if asked."""
    import timm

    name = _timm_name(model)
    if not name:
        raise GeometryError(f"model {_name(model)} is not a timm model, so it cannot be rebuilt with {kwargs}",
                            "build it with these arguments yourself, or audit it at its input size")
    args = {**getattr(model, "_model_args", {}), **kwargs}
    with torch.random.fork_rng(devices=[]):  # building must not move the audit's random streams
        rebuilt = timm.create_model(name, pretrained=False, **args)
    if copy_weights:
        try:
            rebuilt.load_state_dict(model.state_dict(), strict=True)
        except RuntimeError as exc:
            raise GeometryError(f"model {_name(model)} rebuilt with {kwargs} does not take its weights: "
                                f"{first_line(exc)}",
                                "audit it at its input size") from exc
        rebuilt.pretrained_cfg = getattr(model, "pretrained_cfg", rebuilt.pretrained_cfg)
    return rebuilt.to(device=model_device(model), dtype=_model_dtype(model)).train(model.training)


def _timm_name(model: nn.Module) -> str | None:
    import timm

    cfg = getattr(model, "pretrained_cfg", None) or {}
    architecture = cfg.get("architecture")
    if not architecture or not timm.is_model(architecture):
        return None
    return f"{architecture}.{cfg['tag']}" if cfg.get("tag") else architecture


def _name(model: nn.Module) -> str:
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def _model_dtype(model: nn.Module) -> torch.dtype:
    floating = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return floating or torch.float32


def _side(value: object) -> int:
    """A square window's side from an int or an (h, w) pair; 0 for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1] and isinstance(value[0], int):
        return value[0]
    return 0


def _margin_unit(common: int, units: Mapping[str, int]) -> int:
    """The margin grid: the common stride, and half of each window-like unit (windows grow by 2m)."""
    return math.lcm(common, *(u // math.gcd(u, 2) for u in units.values())) if units else common

