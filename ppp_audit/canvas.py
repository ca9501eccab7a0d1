"""The canvas reference: the padding-free reference of many crops from one pass over one canvas (docs/metrics.md,
"The canvas reference").

A window per crop costs ``(S + 2m)²`` pixels through the model, and a complete reference for deep stages needs ``m``
near the whole receptive field. A canvas of side ``L`` holds ``k x k`` crop slots on the model's grid (``L = k p``,
the pitch ``p`` the crop side on the grid); the built-in dead-leaves picture is drawn *periodic* on it (disc centres
uniform over the canvas, each disc painted at its copies one period away, the 1/f texture made at the canvas's own
size), and the canvas pass runs with every padding site (pools included) made circular. That pass computes exactly
the features of the infinite periodic picture: no position of the canvas sees a border, every position has the same
context of ``L / 2`` px in every direction (beyond it the picture repeats), and the reference of each crop is the
block of the canvas's maps over it. The crops themselves are cut from the canvas and go through each scheme's padded
pass as with windows.

The canvas side is the smallest ``k p`` that leaves at most the tolerance of every layer's influence beyond ``L / 2``
(the only error: a position's influence from beyond half a period is read from a repeat of nearer pixels), within a
budget of ``L <= CANVAS_SIDE_FACTOR S`` (the receptive fields are probed at that side, so every distance up to ``L /
2`` is measured). The crops of one canvas share its picture, so their jackknife groups are whole canvases: the audit
draws at least as many canvases as it has groups.

Pure planning and slicing; the auditor decides where a canvas is exact (no global modules, no position embeddings,
every scheme keeps the maps' sizes, the circular patch leaves no site unpatched, built-in images) and runs it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from .geometry import on_grid
from .receptive import Influence

CANVAS_SIDE_FACTOR = 5
"""The canvas side's budget, in crop sides: ``L <= 5 S`` (and the receptive fields are probed at ``5 S``, so that the
influence is measured at every distance up to ``L / 2``). A canvas of ``5 S`` holds the activations of 25 crops."""


@dataclass(frozen=True)
class CanvasPlan:
    """How the canvases of one audit are laid out.

    Attributes:
        size: The crop side ``S``.
        pitch: The distance between crop slots (``S`` on the model's grid): slot ``(r, c)`` starts at ``(r p, c p)``.
        per_side: Slots per canvas side ``k``; the canvas side is ``L = k p``.
        crops: Crops on each canvas, in canvas order (filled slot by slot, row-major).
        tolerance: Share of a layer's influence allowed beyond ``L / 2``.
        max_side: The budget: the largest canvas side considered.
        share_beyond: Per tapped layer, its share of influence beyond ``L / 2``.
    """

    size: int
    pitch: int
    per_side: int
    crops: tuple[int, ...]
    tolerance: float
    max_side: int
    share_beyond: tuple[float, ...]

    @property
    def side(self) -> int:
        """The canvas side ``L``."""
        return self.pitch * self.per_side

    @property
    def context(self) -> int:
        """The context every position has in every direction (px): half a period, ``L / 2``."""
        return self.side // 2

    @property
    def num_canvases(self) -> int:
        return len(self.crops)

    @property
    def num_crops(self) -> int:
        return sum(self.crops)

    @property
    def partial(self) -> tuple[bool, ...]:
        """Per tapped layer, whether more than the tolerance of its influence lies beyond ``L / 2``."""
        return tuple(share > self.tolerance for share in self.share_beyond)

    @property
    def pixels_per_image(self) -> float:
        """Pixels through the model per crop over the crop's: its own padded pass plus its share of a canvas."""
        return 1.0 + self.num_canvases * self.side**2 / (self.num_crops * self.size**2)

    def origins(self, count: int) -> list[tuple[int, int]]:
        """The top-left pixels of the first ``count`` slots of a canvas, row-major."""
        return [((slot // self.per_side) * self.pitch, (slot % self.per_side) * self.pitch) for slot in range(count)]

    def summary(self) -> dict[str, Any]:
        """The report's ``geometry.reference`` for a canvas reference."""
        return {"kind": "canvas", "side": self.side, "pitch": self.pitch, "slots": self.per_side**2,
                "canvases": self.num_canvases, "crops_per_canvas": list(self.crops), "context_px": self.context,
                "tolerance": self.tolerance, "budget": f"canvas side <= {CANVAS_SIDE_FACTOR} S = {self.max_side} px",
                "pixels_per_image": self.pixels_per_image}


def canvas_probe_side(size: int, unit: int) -> int:
    """The largest canvas side for crops of ``size`` px on a grid of ``unit`` px: the budget, and the side the
    receptive fields are probed at when a canvas may be used."""
    return CANVAS_SIDE_FACTOR * on_grid(size, unit, "up")


def plan_canvas(size: int, unit: int, influence: Sequence[Influence], *, tolerance: float, num_images: int,
                groups: int, runs_at: Any = None) -> CanvasPlan | None:
    """The smallest canvas leaving at most ``tolerance`` of every layer's influence beyond half its side, and the
    crops of ``num_images`` spread over at least ``groups`` canvases (fewer only when there are fewer crops).

    Args:
        size: The crop side ``S``.
        unit: The grid crops lie on (every tapped map shifts by whole positions).
        influence: Per tapped layer, its influence profile (probed at :func:`canvas_probe_side` or larger).
        tolerance: Share of influence allowed beyond ``L / 2``.
        num_images: Crops to measure (N).
        groups: Jackknife groups: the canvases, at least.
        runs_at: ``runs_at(side) -> bool``, whether the model's maps at a canvas side are exactly its crop maps
            scaled (default: every side runs).

    Returns:
        The plan, or ``None`` when no canvas within the budget holds every layer's reach (or the model runs at none,
        or a layer's support reaches past its probe, which leaves its share beyond any distance unknown).
    """
    pitch = on_grid(size, unit, "up")
    max_side = canvas_probe_side(size, unit)
    if any(inf.radius_px >= inf.window / 2 for inf in influence):  # reaches past the probe: its share is unknown
        return None
    for per_side in range(2, CANVAS_SIDE_FACTOR + 1):
        side = per_side * pitch
        shares = tuple(inf.beyond(side / 2) for inf in influence)
        if any(share > tolerance for share in shares) or (runs_at is not None and not runs_at(side)):
            continue
        canvases = min(num_images, max(groups, math.ceil(num_images / per_side**2)))
        crops = tuple(num_images // canvases + (i < num_images % canvases) for i in range(canvases))
        return CanvasPlan(size, pitch, per_side, crops, tolerance, max_side, shares)
    return None


@dataclass(frozen=True)
class PhotoTiles:
    """Crops tiled inside photos (docs/metrics.md, "Photos: crops tiled inside each photo").

    Photo ``i`` (in sample order) holds a grid of ``grids[i]`` slots on the model's grid, ``pitch`` apart, with
    ``border`` px of the photo around the grid on every side; its first ``crops[i]`` slots (row-major) are measured.
    Its *tile* is that block of the photo, ``border`` included, cut from the photo's centre at the one photo scale:
    one padding-free pass over the tile gives the reference of all its crops, each crop's block of the tile's maps,
    which the tile's own edges reach only beyond ``border`` (the margin: the layers whose influence reaches farther are
    partial, as with windows). The crops of one photo share it, so their jackknife group is the photo's.

    Attributes:
        size: The crop side ``S``.
        pitch: The distance between slots (``S`` on the model's grid).
        border: The photo around the grid, every side (the audit's margin).
        scale: The photos' one scale.
        grids: ``(rows, cols)`` of slots per photo.
        crops: Crops measured per photo.
    """

    size: int
    pitch: int
    border: int
    scale: float
    grids: tuple[tuple[int, int], ...]
    crops: tuple[int, ...]

    @property
    def num_photos(self) -> int:
        return len(self.crops)

    @property
    def num_crops(self) -> int:
        return sum(self.crops)

    def shape(self, photo: int, border: int | None = None) -> tuple[int, int]:
        """``(height, width)`` of photo ``photo``'s tile, with ``border`` px around the grid (default the tiles')."""
        border = self.border if border is None else border
        rows, cols = self.grids[photo]
        return ((rows - 1) * self.pitch + self.size + 2 * border, (cols - 1) * self.pitch + self.size + 2 * border)

    def origins(self, photo: int, border: int | None = None) -> list[tuple[int, int]]:
        """The top-left pixels of photo ``photo``'s measured slots in its tile (of ``border``), row-major."""
        border = self.border if border is None else border
        cols = self.grids[photo][1]
        return [(border + (slot // cols) * self.pitch, border + (slot % cols) * self.pitch)
                for slot in range(self.crops[photo])]

    def pixels_per_image(self, second_border: int | None = None) -> float:
        """Pixels through the model per crop over the crop's: its own padded pass plus its share of its photo's tile
        (and of the tile at ``second_border``, when the partial layers are measured again there)."""
        borders = [self.border] + ([second_border] if second_border else [])
        tiles = sum(h * w for b in borders for h, w in (self.shape(i, b) for i in range(self.num_photos)))
        return 1.0 + tiles / (self.num_crops * self.size**2)

    def summary(self, second_border: int | None = None) -> dict[str, Any]:
        """The report's ``geometry.reference`` for crops tiled inside photos."""
        return {"kind": "photo", "border": self.border, "pitch": self.pitch, "scale": self.scale,
                "photos": self.num_photos, "crops": self.num_crops, "most_crops_per_photo": max(self.crops),
                "pixels_per_image": self.pixels_per_image(second_border)}


def photo_border(height: int, width: int, size: int, unit: int) -> int:
    """The largest border on the grid of ``unit`` that a ``height x width`` photo holds around one ``size`` px crop
    (negative when the photo does not hold the crop at all)."""
    room = min(height, width) - size
    return on_grid(room // 2, unit, "down") if room >= 0 else -1


def photo_slots(height: int, width: int, size: int, pitch: int, border: int) -> tuple[int, int]:
    """``(rows, cols)``: the most slots ``pitch`` apart a ``height x width`` photo holds with ``border`` around them."""
    return (max(0, (height - 2 * border - size) // pitch + 1), max(0, (width - 2 * border - size) // pitch + 1))


def photo_grid(slots: tuple[int, int], count: int, size: int, pitch: int, border: int) -> tuple[int, int]:
    """The grid of at most ``slots`` holding ``count`` crops whose tile has the fewest pixels."""
    rows_max, cols_max = slots
    grids = [(-(-count // cols), cols) for cols in range(1, cols_max + 1) if -(-count // cols) <= rows_max]
    return min(grids, key=lambda grid: (((grid[0] - 1) * pitch + size + 2 * border)
                                        * ((grid[1] - 1) * pitch + size + 2 * border), grid[0]))


def tile_photos(sizes: Iterable[tuple[int, int]], *, size: int, unit: int, reach: int, count: int, most: int,
                scale: float, border: int | None = None) -> tuple[PhotoTiles, list[int]]:
    """Tile ``count`` crops inside the photos of ``sizes`` (each ``(height, width)`` at the photo scale, in the
    seeded order; read only as far as needed), at most ``most`` per photo.

    The border is ``border`` when given (``--margin``), else the one the median of the first ``count`` photos holds
    around one crop (on the grid), up to ``reach`` (the margin the receptive fields ask for): photos bound the
    context, one border serves every crop, and one odd small photo does not cut it for all. Photos that do not hold a
    crop with that border are passed over (too small); the others give crops until there are ``count``, the last
    one only the crops still missing.

    Args:
        sizes: The photos' sizes at the photo scale, in the order to use them; each must hold a crop with a border
            of at least ``unit`` (or ``border``).
        size: The crop side ``S``.
        unit: The grid borders and slots lie on.
        reach: The border the receptive fields ask for.
        count: Crops to measure (N).
        most: The most crops of one photo (so that the crops spread over at least as many photos as jackknife
            groups).
        scale: The photos' scale, recorded.
        border: A border given by hand.

    Returns:
        The tiles (fewer crops than ``count`` when the photos run out), and the places in ``sizes`` of the photos
        they tile, in that order.
    """
    pitch = on_grid(size, unit, "up")
    sizes = iter(sizes)
    first = list(itertools.islice(sizes, count)) if border is None else []
    if border is None:
        allowed = sorted(photo_border(height, width, size, unit) for height, width in first)
        border = min(reach, allowed[(len(allowed) - 1) // 2]) if allowed else reach
    grids, crops, used, left = [], [], [], count
    for place, (height, width) in enumerate(itertools.chain(first, sizes)):
        if not left:
            break
        slots = photo_slots(height, width, size, pitch, border)
        take = min(most, slots[0] * slots[1], left)
        if take:
            grids.append(photo_grid(slots, take, size, pitch, border))
            crops.append(take)
            used.append(place)
            left -= take
    return PhotoTiles(size, pitch, border, scale, tuple(grids), tuple(crops)), used


def cut_crops(canvases: Tensor, plan: CanvasPlan, counts: Sequence[int]) -> Tensor:
    """The crops of a batch of canvases ``(B, C, L, L)``, canvas ``i`` giving its first ``counts[i]`` slots:
    ``(sum(counts), C, S, S)``."""
    return cut_blocks(canvases, [plan.origins(count) for count in counts], plan.size, 1)


def cut_blocks(maps: Tensor, origins: Sequence[Sequence[tuple[int, int]]], side: int, stride: int) -> Tensor:
    """The blocks of side ``side`` over each crop's slot in a batch of canvas (or tile) maps of ``stride`` input px
    per position: item ``i`` gives the slots at ``origins[i]`` (top-left input pixels), in that order."""
    blocks = [maps[i, :, y // stride:y // stride + side, x // stride:x // stride + side]
              for i, slots in enumerate(origins) for y, x in slots]
    return torch.stack(blocks)


__all__ = ["CANVAS_SIDE_FACTOR", "CanvasPlan", "PhotoTiles", "canvas_probe_side", "cut_blocks", "cut_crops",
           "photo_border", "photo_grid", "photo_slots", "plan_canvas", "tile_photos"]
