"""Built-in padding schemes, registered in code with :func:`~.registry.register_padding`.

Each docstring says what the scheme pads with. ``partial`` also re-weights the output of the layer it pads for (through
:meth:`PaddingScheme.adjust_output`); ``valid`` pads nothing and only suits networks that tolerate smaller maps.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Pad4, PaddingScheme, SiteGeometry, register_padding


@register_padding
class NativePadding(PaddingScheme):
    """The null scheme: every layer keeps the padding it has (what ``native`` in a report measures). Patching with it
    lists the padding sites (:class:`~ppp_audit.paddings.patcher.PatchSummary`) and changes nothing; an audit always
    measures it, so it is never asked for with ``--padding``."""

    name = "native"
    description = "the model's own padding, left as it is (measured in every audit; not a --padding choice)"
    replaces = False

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        raise NotImplementedError("the native scheme replaces no padding: the patcher never calls its pad()")


@register_padding
class ZerosPadding(PaddingScheme):
    """Pads with zeros: PyTorch's and timm's default."""

    name = "zeros"
    description = "pad with zeros (the default of nn.Conv2d and timm)"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        return F.pad(x, pad, mode="constant", value=0.0)


@register_padding
class ReflectPadding(PaddingScheme):
    """Mirrors the map at its border without repeating the edge pixel."""

    name = "reflect"
    description = "mirror the map at the border, edge pixel not repeated (needs pad < map size)"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        return F.pad(x, pad, mode="reflect")


@register_padding
class ReplicatePadding(PaddingScheme):
    """Repeats the edge pixel outwards."""

    name = "replicate"
    description = "repeat the edge pixel outwards"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        return F.pad(x, pad, mode="replicate")


@register_padding
class CircularPadding(PaddingScheme):
    """Wraps the map around (torus), so the opposite border fills the padding."""

    name = "circular"
    description = "wrap around: the opposite border fills the padding (needs pad <= map size)"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        return F.pad(x, pad, mode="circular")


@register_padding
class PartialPadding(PaddingScheme):
    """Partial-convolution-based padding (Liu et al. 2018, arXiv 1811.11718).

    Pads with zeros, then re-weights every output of a convolution (or average pool) by
    ``window area / valid area``: the number of kernel taps divided by the number of taps that land on real (non-padded)
    pixels. The bias is added after the re-weighting, not scaled by it: ``out = W·(X⊙M) · sum(1)/sum(M) + b``.
    Interior outputs are unchanged; an output whose window covers no real pixel is 0, as in the paper.
    Stateless (the ratio is recomputed from the site's geometry on every call), so it follows the input's device and
    dtype and traces under ``torch.compile``. On an average pool it equals ``count_include_pad=False``.
    """

    name = "partial"
    description = "zeros, then re-weight border outputs by window area / valid area (partial conv, Liu et al. 2018)"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        return F.pad(x, pad, mode="constant", value=0.0)

    def adjust_output(self, out: Tensor, site: SiteGeometry) -> Tensor:
        # The ratio in at least float32 (float64 for float64 maps), then in the output's dtype: 9/4 etc. are inexact.
        ratio, covered = partial_ratio(site, out.shape[-2:], out.device, torch.promote_types(out.dtype, torch.float32))
        ratio, covered = ratio.to(out.dtype), covered.to(out.dtype)
        if site.bias is None:
            return out * ratio
        bias = site.bias.to(out.dtype)[..., None, None]
        return (out - bias) * ratio + bias * covered


def _valid_taps(size: int, before: int, out_size: int, kernel: int, stride: int, dilation: int,
                device: torch.device) -> Tensor:
    """Per output index along one axis: how many kernel taps land on real pixels (not padding)."""
    start = torch.arange(out_size, device=device) * stride - before
    taps = start[:, None] + torch.arange(kernel, device=device) * dilation
    return ((taps >= 0) & (taps < size)).sum(-1)


def partial_ratio(site: SiteGeometry, out_size: Sequence[int], device: torch.device,
                  dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The partial-convolution re-weighting of one site.

    Args:
        site: The layer's geometry.
        out_size: (H_out, W_out) of the layer's output.
        device: Where to build the maps.
        dtype: Their floating-point type.

    Returns:
        ``(ratio, covered)``, both (H_out, W_out): ``kernel area / valid taps`` (0 where no tap is valid) and the mask
        of outputs with at least one valid tap.
    """
    (height, width), (left, _, top, _) = site.input_size, site.pad
    (kh, kw), (sh, sw), (dh, dw) = site.kernel_size, site.stride, site.dilation
    rows = _valid_taps(height, top, out_size[0], kh, sh, dh, device)
    cols = _valid_taps(width, left, out_size[1], kw, sw, dw, device)
    valid = (rows[:, None] * cols[None, :]).to(dtype)
    covered = (valid > 0).to(dtype)
    return (kh * kw) / valid.clamp(min=1.0) * covered, covered


def _border_mask(x: Tensor, pad: Pad4) -> Tensor:
    """Boolean (1, 1, H+t+b, W+l+r) map that is True on the padding and False on the map."""
    inner = x.new_zeros((1, 1, *x.shape[-2:]))
    return F.pad(inner, pad, mode="constant", value=1.0).bool()


@register_padding
class MeanPadding(PaddingScheme):
    """Pads each channel with that channel's mean over the map (per image).

    The border then holds no constant the network could key on (unlike zeros), no mirrored content (unlike reflect),
    and no edge copy (unlike replicate). It is not signal-free: the padding's variance is zero.
    """

    name = "mean"
    description = "fill the border with each channel's spatial mean of the map (per image)"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        fill = x.mean(dim=(-2, -1), keepdim=True)
        return torch.where(_border_mask(x, pad), fill, F.pad(x, pad, mode="replicate"))


@register_padding
class RandomPadding(PaddingScheme):
    """Pads with fresh Gaussian noise on every call, matching each channel's mean and std over the map (per image).

    Designed to carry no consistent border signal: the padding matches the map's first two moments and changes on
    every forward pass. Draws from torch's global generator (seed it with ``torch.manual_seed`` for repeatability).
    """

    name = "random"
    description = "fill the border with Gaussian noise drawn per call with each channel's mean and std of the map"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True, correction=0)
        padded = F.pad(x, pad, mode="replicate")
        noise = torch.randn_like(padded) * std + mean
        return torch.where(_border_mask(x, pad), noise, padded)


@register_padding
class ValidPadding(PaddingScheme):
    """No padding at all ("valid" convolutions): every layer that padded now shrinks its map.

    Only works where the architecture tolerates smaller maps (plain VGG-style stacks with global pooling); residual
    and concatenating networks fail, and the patcher reports the layer where they do.
    """

    name = "valid"
    description = "no padding: maps shrink at every padded layer (VGG-style nets only; residual nets fail)"
    keeps_shape = False

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        return x
