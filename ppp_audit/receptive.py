"""Receptive fields of the tapped layers, and the margin they call for.

The padding-free reference of a crop position is the window pass's feature there; it is free of the window's own
padding when the position's input influence stays within the margin ``m`` around the crop. :func:`influence_profiles`
measures that influence once per model with one backward pass per tapped layer: the gradient of the centre position's
output (random projections of its channels, one per probe image) with respect to a random probe window. The gradient
is exactly zero outside the receptive field, which gives the support radius; its absolute mass by distance from the
centre gives the *influence profile*: the share of the influence that lies beyond each distance. Global statistics of
matched modules (:mod:`ppp_audit.context`) are detached, since the matched reference takes them over the crop's
footprint: the local reach is what the margin has to cover. With ``cache=True`` the profiles are kept on disk
(:mod:`ppp_audit.receptive_cache`, keyed by the model's weights and structure and the probe's settings), so a model
audited again is not probed again; the result says which (:class:`InfluenceProfiles`).

:func:`choose_margin` picks the smallest margin on the model's grid that leaves at most ``tolerance`` of every
layer's influence beyond it, among the layers whose influence fits under the cap (``m <= S``); the layers that do not
fit stay partial, and the report gives each layer's share beyond the margin used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import receptive_cache
from .context import ContextMatcher
from .models import FeatureTaps

DEFAULT_TOLERANCE = 0.01
"""Share of a layer's input influence (gradient mass) allowed beyond the margin for its reference to count as full."""
PROBE_IMAGES = 2
"""Random probe windows (each with its own random projection of the centre's channels), averaged."""


@dataclass(frozen=True)
class Influence:
    """How far one tapped layer's centre position reaches into its input.

    Attributes:
        radius_px: Support radius: the largest distance (input px, Chebyshev, from the position's centre to a pixel's
            far edge) at which the gradient is non-zero. At least ``window / 2`` means it reaches past the probe.
        share_beyond: Share of the gradient's absolute mass at distances greater than ``r`` = 0, 1, 2, ... input px
            (index ``r``, up to the probe's half-window; 1 at ``r = 0``,
            falling to 0 at the radius).
        window: Side of the probe window, in input px.
        upstream: The watched modules (global context, :mod:`ppp_audit.context`) this layer's output depends on.
    """

    radius_px: float
    share_beyond: tuple[float, ...]
    window: int
    upstream: tuple[str, ...] = ()

    def beyond(self, distance_px: float) -> float:
        """Share of the influence beyond ``distance_px`` (0 past the support; the probe's last value past it)."""
        if distance_px >= self.radius_px:
            return 0.0
        index = min(int(math.floor(distance_px)), len(self.share_beyond) - 1)
        return self.share_beyond[max(index, 0)]


class InfluenceProfiles(list):
    """The :class:`Influence` of each tapped layer, in tap order (a plain list of them), and how they were obtained.

    Attributes:
        obtained: ``"probed"`` (the backward passes ran) or ``"cache"`` (read from :mod:`ppp_audit.receptive_cache`).
        seconds: Wall time of :func:`influence_profiles`, the cache's key and lookup included.
    """

    def __init__(self, profiles: Iterable[Influence] = (), obtained: str = "probed", seconds: float = 0.0) -> None:
        super().__init__(profiles)
        self.obtained = obtained
        self.seconds = seconds

    def summary(self) -> dict[str, Any]:
        """How the profiles were obtained, for the report: ``{"obtained": "probed" | "cache", "seconds": ...}``."""
        return {"obtained": self.obtained, "seconds": round(self.seconds, 3)}


def influence_profiles(taps: FeatureTaps, window: int, device: torch.device | str, *,
                       context: ContextMatcher | None = None, in_chans: int = 3,
                       images: int = PROBE_IMAGES, seed: int = 0, cache: bool = False) -> InfluenceProfiles:
    """The :class:`Influence` of every tapped layer's centre position, probed on a ``window`` px input.

    Args:
        taps: The model's taps.
        window: Probe side in input px (the audit's window or larger).
        device: Where the model is.
        context: The model's global modules: their matched statistics are detached (local paths only), and each
            layer's ``upstream`` lists those its output depends on.
        in_chans: Input channels.
        images: Probe images, each with its own random projection of the centre's channels.
        seed: Seed of the probe images and projections (the probe is deterministic).
        cache: Read the profiles from the on-disk cache where it has them, and store them there after a probe
            (:mod:`ppp_audit.receptive_cache`; a model the cache cannot key, e.g. one with a patched padding, is
            probed and not stored).

    Returns:
        One :class:`Influence` per tapped layer, in tap order, as :class:`InfluenceProfiles` (probed or cached).
    """
    start = time.perf_counter()
    key = None
    if cache:
        key = receptive_cache.probe_key(taps, window, device, context=context, in_chans=in_chans, images=images,
                                        seed=seed)
    if key is not None:
        cached = _from_records(receptive_cache.load(key), window)
        if cached is not None:
            return InfluenceProfiles(cached, "cache", time.perf_counter() - start)
    profiles = _probe(taps, window, device, context, in_chans, images, seed)
    seconds = time.perf_counter() - start
    if key is not None:
        receptive_cache.store(key, [_record(profile) for profile in profiles], seconds)
    return InfluenceProfiles(profiles, "probed", seconds)


def _probe(taps: FeatureTaps, window: int, device: torch.device | str, context: ContextMatcher | None,
           in_chans: int, images: int, seed: int) -> list[Influence]:
    """The backward passes of :func:`influence_profiles` (its arguments)."""
    generator = torch.Generator().manual_seed(seed)
    dtype = next((p.dtype for p in taps.model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.randn(images, in_chans, window, window, generator=generator).to(device=device, dtype=dtype)
    x.requires_grad_(True)
    local = context.local_only() if context is not None else contextlib.nullcontext()
    watching = context.watching() if context is not None else contextlib.nullcontext({})
    profiles = []
    with torch.enable_grad(), local, watching as seen:
        outputs = taps(x)
        names = list(seen)
        for i, out in enumerate(outputs):
            h, w = out.shape[-2:]
            weights = torch.randn(images, out.shape[1], generator=generator).to(out.device, out.dtype).sign()
            centre = (out[:, :, h // 2, w // 2] * weights).sum()
            # a module is upstream of the layer when the layer's output has a gradient path back to its output
            grads = torch.autograd.grad(centre, [x, *(seen[n] for n in names)], retain_graph=i < len(outputs) - 1,
                                        allow_unused=True)
            # (window, window), reduced on the device; the profile is made on the host, in float64
            mass = grads[0].detach().abs().sum((0, 1)).cpu().double()
            upstream = tuple(n for n, g in zip(names, grads[1:]) if g is not None)
            centre_px = ((h // 2 + 0.5) * window / h, (w // 2 + 0.5) * window / w)
            profiles.append(dataclasses.replace(_profile(mass, centre_px, window), upstream=upstream))
    return profiles


def _record(influence: Influence) -> dict[str, Any]:
    """``influence`` as JSON (floats written by ``repr`` read back bit for bit)."""
    return {"radius_px": influence.radius_px, "share_beyond": list(influence.share_beyond),
            "window": influence.window, "upstream": list(influence.upstream)}


def _from_records(records: list[dict[str, Any]] | None, window: int) -> list[Influence] | None:
    """The profiles of the cached ``records``; ``None`` where any record is not what :func:`_record` writes."""
    if records is None or not all(_is_record(record, window) for record in records):
        return None
    return [Influence(float(r["radius_px"]), tuple(float(v) for v in r["share_beyond"]), window, tuple(r["upstream"]))
            for r in records]


def _is_record(record: object, window: int) -> bool:
    if not isinstance(record, dict) or record.get("window") != window:
        return False
    radius, share, upstream = record.get("radius_px"), record.get("share_beyond"), record.get("upstream")
    if not isinstance(share, list) or not share or not isinstance(upstream, list):
        return False
    numbers_ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                     for v in [radius, *share])
    return numbers_ok and all(isinstance(name, str) for name in upstream)


def _profile(mass: Tensor, centre: tuple[float, float], window: int) -> Influence:
    """Radius and share-beyond profile of one gradient-mass map around ``centre`` (y, x in input px)."""
    cy, cx = centre
    ys = torch.arange(mass.shape[0], dtype=torch.float64).view(-1, 1) + 0.5
    xs = torch.arange(mass.shape[1], dtype=torch.float64).view(1, -1) + 0.5
    # distance from the centre to each pixel's far edge: a pixel touching the centre is at 1, as for the radius
    distance = torch.maximum((ys - cy).abs(), (xs - cx).abs()) + 0.5
    nonzero = mass > 0
    if not bool(nonzero.any()):
        return Influence(0.0, (0.0,), window)
    radius = float(distance[nonzero].max())
    steps = int(math.ceil(window / 2)) + 1
    total = float(mass.sum())
    # mass at distance > r for r = 0, 1, ...: one histogram of the distances, then a reversed cumulative sum
    bins = distance.ceil().long().clamp_max(steps).flatten()
    per_bin = torch.zeros(steps + 1, dtype=torch.float64).index_add_(0, bins, mass.flatten())
    beyond = per_bin.flip(0).cumsum(0).flip(0)[1:] / total  # beyond[r] = mass in bins > r
    return Influence(radius, tuple(beyond.tolist()), window)


@dataclass(frozen=True)
class MarginChoice:
    """The margin chosen from the model's influence profiles, and what it leaves.

    Attributes:
        margin: The chosen ``m``.
        tolerance: Share of influence allowed beyond ``m``.
        cap: The largest margin considered.
        fits: Per layer, whether its influence fits under the cap (then its share beyond ``m`` is at most the
            tolerance).
        share_beyond: Per layer, the share of influence beyond ``m``.
    """

    margin: int
    tolerance: float
    cap: int
    fits: tuple[bool, ...]
    share_beyond: tuple[float, ...]


def choose_margin(influences: Sequence[Influence], candidates: Sequence[int], tolerance: float = DEFAULT_TOLERANCE,
                  ) -> MarginChoice:
    """The smallest candidate margin leaving at most ``tolerance`` of each layer's influence beyond it, among the
    layers whose influence fits under the largest candidate (the cap); the smallest candidate when none fits.

    Args:
        influences: The layers' influence profiles.
        candidates: Margins the model can run, on its grid (any order); the largest is the cap.
        tolerance: Share of influence allowed beyond the margin.
    """
    ordered = sorted(set(int(c) for c in candidates))
    if not ordered:
        raise ValueError("no candidate margin")
    cap = ordered[-1]
    fits = tuple(influence.beyond(cap) <= tolerance for influence in influences)
    fitting = [influence for influence, ok in zip(influences, fits) if ok]
    margin = next(m for m in ordered if all(influence.beyond(m) <= tolerance for influence in fitting))
    return MarginChoice(margin, tolerance, cap, fits, tuple(influence.beyond(margin) for influence in influences))


__all__ = ["DEFAULT_TOLERANCE", "Influence", "InfluenceProfiles", "MarginChoice", "choose_margin",
           "influence_profiles"]
