"""Built-in padding schemes (registered through the ``ppp_audit.paddings`` entry-point group)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .registry import Pad4, PaddingScheme


class ZerosPadding(PaddingScheme):
    """Pads with zeros: PyTorch's and timm's default."""

    name = "zeros"
    description = "pad with zeros (the default of nn.Conv2d and timm)"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        return F.pad(x, pad, mode="constant", value=0.0)


class ReflectPadding(PaddingScheme):
    """Mirrors the map at its border without repeating the edge pixel."""

    name = "reflect"
    description = "mirror the map at the border, edge pixel not repeated (needs pad < map size)"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        return F.pad(x, pad, mode="reflect")


class ReplicatePadding(PaddingScheme):
    """Repeats the edge pixel outwards."""

    name = "replicate"
    description = "repeat the edge pixel outwards"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        return F.pad(x, pad, mode="replicate")


class CircularPadding(PaddingScheme):
    """Wraps the map around (torus), so the opposite border fills the padding."""

    name = "circular"
    description = "wrap around: the opposite border fills the padding (needs pad <= map size)"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        return F.pad(x, pad, mode="circular")
