"""PPP repair: fine-tune a model so that its border features match what real context would give (docs/repair.md).

The consistency term of a training window ``X`` and its centre crop ``x``: at each repaired layer ``l``, the student's
features of the padded crop, ``f_l(x)``, should equal the **original** model's features of the same positions computed
from the whole window, ``crop(f_l^teacher(X))`` (no gradient), which is what the original network would have computed
had it seen the real surrounding pixels. Each layer's mean squared error is divided by the reference's energy (its
mean square), so layers of any scale weigh alike, and the layers are averaged::

    consistency = mean_l  mean((f_l(x) - crop(f_l^teacher(X)))²) / mean(crop(f_l^teacher(X))²)

The fine-tune objective is ``distillation (or label) loss + λ · consistency``. The reference comes from the audit's own
machinery: the auditor's taps on the original model, :func:`~ppp_audit.auditor.feature_offset` for the crop's block,
and its :class:`~ppp_audit.context.ContextMatcher` (global modules pool over the crop's footprint in the window pass),
so the reference is the one the audit measures PPP against.

:func:`tiling_consistency` (over :func:`tiled_features`) is the downstream check: how far the features of a crop
differ from the same positions stitched from non-overlapping tiles of it (the seams of tiled inference).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .auditor import Normalise, autocast, feature_offset
from .context import ContextMatcher
from .errors import PaddingShapeError, PPPAuditError
from .models import FeatureTaps, as_nchw

TILES = 2
"""Tiles per side of the tiling-consistency check (2 x 2 tiles of ``S/2``)."""


class ConsistencyTerm:
    """The repair's consistency term between a student's padded crop features and the original model's window features.

    Args:
        taps: The audit's taps on the **original** model (the teacher; it must stay unpatched and unchanged).
        context: The original model's :class:`ContextMatcher` (the auditor's).
        layers: The repaired layers, a subset of ``taps.names`` (``None``: all of them).
        margin: The audit's margin ``m`` (input pixels between the window's edge and the crop).
        probe: One crop-sized input; a pass of it records the crop's footprint of every global module.

    Raises:
        PPPAuditError: A layer that is not audited.
    """

    def __init__(self, taps: FeatureTaps, context: ContextMatcher, layers: Sequence[str] | None, margin: int,
                 probe: Tensor) -> None:
        names = taps.names
        unknown = [name for name in layers or () if name not in names]
        if unknown:
            raise PPPAuditError(f"--repair-layers: '{unknown[0]}' is not an audited layer "
                                f"(audited: {', '.join(names)})",
                                "name audited layers, or choose the audited ones with --layers")
        self.taps, self.context, self.margin = taps, context, margin
        self.layers = list(layers) if layers else names
        self.indices = [names.index(name) for name in self.layers]
        with torch.no_grad(), context.recording():  # the footprints depend on the crop's shape only
            taps(probe)

    @torch.no_grad()
    def references(self, windows: Tensor, crops: Sequence[Tensor]) -> list[Tensor]:
        """The original model's features of the crop's positions computed from the whole ``windows``, per repaired
        layer (``crops``: the student's features, for their shapes)."""
        with self.context.matching():
            features = self.taps(windows)
        out = []
        for name, i, crop in zip(self.layers, self.indices, crops):
            window = features[i]
            offset = feature_offset(name, crop, window)
            out.append(window[..., offset:offset + crop.shape[-2], offset:offset + crop.shape[-1]])
        return out

    def __call__(self, student: Sequence[Tensor], references: Sequence[Tensor]) -> Tensor:
        """The term (float32): per layer the mean squared difference over the reference's mean square, averaged."""
        terms = [(s.float() - r.float()).square().mean() / r.float().square().mean().clamp_min(1e-12)
                 for s, r in zip(student, references)]
        return torch.stack(terms).mean()

    @contextlib.contextmanager
    def capture(self, student: nn.Module) -> Iterator[list[Tensor]]:
        """Collect the repaired layers' outputs of ``student``'s forward passes in the block (with their gradients),
        as ``(N, C, H, W)`` maps, into the list yielded (filled when the forward returns)."""
        modules = dict(student.named_modules())
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise PPPAuditError(f"--repair: the audited layer '{missing[0]}' is no module of the model",
                                "name module layers with --layers (and --repair-layers)")
        captured: dict[str, object] = {}
        out: list[Tensor] = []

        def keep(name: str, output: object) -> None:
            captured[name] = output.clone() if isinstance(output, Tensor) else output  # later in-place ops

        handles = [modules[name].register_forward_hook(lambda m, a, output, name=name: keep(name, output))
                   for name in self.layers]
        channels_last = getattr(student, "output_fmt", "NCHW") == "NHWC"
        prefix = getattr(student, "num_prefix_tokens", None)
        try:
            yield out
        finally:
            for handle in handles:
                handle.remove()
        out.extend(as_nchw(captured[name], name, channels_last, prefix if isinstance(prefix, int) else None)
                   for name in self.layers if name in captured)


def tiled_features(taps: FeatureTaps, x: Tensor, tiles: int = TILES) -> tuple[list[Tensor], list[Tensor | None]]:
    """Per tapped layer, the features (float32) of the normalised images ``x``, and the same maps stitched together
    from ``x``'s ``tiles x tiles`` non-overlapping tiles, each run through the model on its own (``None`` where the
    tiles' maps do not tile ``x``'s: the tile side is no multiple of the layer's stride).

    Raises:
        PaddingShapeError: The padding cannot pad the tiles' smaller maps (``reflect`` of a 1 x 1 map).
    """
    side = x.shape[-1] // tiles
    whole = [f.float() for f in taps(x)]
    tiled = [[[f.float() for f in taps(x[..., i * side:(i + 1) * side, j * side:(j + 1) * side])]
              for j in range(tiles)] for i in range(tiles)]
    stitched: list[Tensor | None] = []
    for k, f in enumerate(whole):
        tile_map = (f.shape[-2] // tiles, f.shape[-1] // tiles)
        fits = f.shape[-1] % tiles == 0 and all(tiled[i][j][k].shape[-2:] == tile_map
                                               for i in range(tiles) for j in range(tiles))
        stitched.append(torch.cat([torch.cat([tiled[i][j][k] for j in range(tiles)], dim=-1) for i in range(tiles)],
                                  dim=-2) if fits else None)
    return whole, stitched


@torch.no_grad()
def tiling_consistency(taps: FeatureTaps, crops: Iterable[tuple[Tensor, Tensor]], *, normalise: Normalise,
                       device: torch.device, precision: str = "fp32", tiles: int = TILES) -> list[float | None]:
    """Per tapped layer, ``RMS(f(x) - stitch(f(tiles of x))) / RMS(σ)`` over the held-out images ``crops``.

    Each image is cut into ``tiles x tiles`` non-overlapping tiles, each tile runs through the model on its own (its
    padding where the crop had neighbours), and the tiles' feature maps are stitched back together: a model whose
    features depend only on pixels within their tile gives 0. The seams' error is measured against ``σ``, the spread
    of ``f(x)`` over the images at each channel and position (sample variance, averaged over the map: the unit of PPP
    strength, docs/metrics.md), not against ``f``'s own RMS: a feature map that grows a content-independent part
    (its mean over images) would otherwise look more consistent without its seams changing (docs/repair.md).
    ``None`` for a layer whose tile maps do not tile the crop's map (the tile side is no multiple of the layer's
    stride) or whose features do not vary over the images; all ``None`` with fewer than two images, or when the
    padding cannot pad the tiles' smaller maps (``reflect`` of a 1 x 1 map).

    Args:
        taps: Taps of the model as it is to be measured (patched by the caller where needed).
        crops: Batches of ``(images in [0, 1], labels)``; the fine-tune audit passes the centre ``2S x 2S`` of each
            held-out window (tiles of the crop size ``S``), or the ``S x S`` crop (tiles of ``S/2``) when the window
            is smaller.
        normalise: The model's input normalisation.
        device: Where the model runs.
        precision: ``fp32`` or an autocast precision.
        tiles: Tiles per side.
    """
    squared_error: list[float] = []
    sums: list[Tensor] = []  # per element: Σ f and Σ f² over the images (float64), for σ
    squares: list[Tensor] = []
    fits: list[bool] = []
    count = 0
    for pixels, _ in crops:
        with autocast(device, precision):
            try:
                whole, stitched = tiled_features(taps, normalise(pixels), tiles)
            except PaddingShapeError:
                return [None] * len(taps.names)
        if not fits:
            fits = [maps is not None for maps in stitched]
            squared_error = [0.0] * len(whole)
            sums = [torch.zeros(f.shape[1:], dtype=torch.float64, device=f.device) for f in whole]
            squares = [torch.zeros_like(total) for total in sums]
        count += len(pixels)
        for k, (f, maps) in enumerate(zip(whole, stitched)):
            if maps is None:
                continue
            squared_error[k] += float((f - maps).double().square().sum())
            sums[k] += f.double().sum(0)
            squares[k] += f.double().square().sum(0)
    out: list[float | None] = []
    for fit, error, total, square in zip(fits, squared_error, sums, squares):
        spread = float(((square - total.square() / count) / (count - 1)).clamp_min(0.0).mean()) if count > 1 else 0.0
        out.append(float((error / (count * total.numel()) / spread) ** 0.5) if fit and spread > 0 else None)
    return out


__all__ = ["ConsistencyTerm", "TILES", "tiled_features", "tiling_consistency"]
