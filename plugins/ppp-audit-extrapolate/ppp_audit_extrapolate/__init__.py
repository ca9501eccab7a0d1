"""ppp-audit plugin: ``extrapolate``, a context-aware padding scheme (linear extrapolation of the border).

Registered through the ``ppp_audit.paddings`` entry-point group in this distribution's ``pyproject.toml``; ppp-audit
discovers it when both are installed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ppp_audit.paddings import Pad4, PaddingScheme

__version__ = "0.1.0"


def extrapolate_axis(x: Tensor, before: int, after: int, dim: int) -> Tensor:
    """Extend ``x`` along ``dim`` by continuing it linearly from its two outermost slices.

    Position ``-j`` (``j`` = 1..before) becomes ``x[0] + j·(x[0] - x[1])``, position ``n - 1 + j`` becomes
    ``x[n-1] + j·(x[n-1] - x[n-2])``. A map of size 1 has no slope and is replicated.
    """
    if before == 0 and after == 0:
        return x
    size = x.shape[dim]
    first, last = x.narrow(dim, 0, 1), x.narrow(dim, size - 1, 1)
    if size > 1:
        slope_before, slope_after = first - x.narrow(dim, 1, 1), last - x.narrow(dim, size - 2, 1)
    else:
        slope_before = slope_after = torch.zeros_like(first)
    shape = [1] * x.dim()

    def steps(values: range) -> Tensor:
        shape[dim] = len(values)
        return torch.tensor(list(values), dtype=x.dtype, device=x.device).view(shape)

    parts = []
    if before:
        parts.append(first + steps(range(before, 0, -1)) * slope_before)
    parts.append(x)
    if after:
        parts.append(last + steps(range(1, after + 1)) * slope_after)
    return torch.cat(parts, dim)


class ExtrapolatePadding(PaddingScheme):
    """Continues each row and column linearly from its two outermost pixels (context-aware padding).

    The padding follows the local gradient of the map instead of a constant (zeros), a mirror (reflect) or a copy
    (replicate); on an affine map it is exact, so a convolution sees no border. Width is extended first, then height,
    so corners are extrapolated from the extended rows.
    """

    name = "extrapolate"
    description = "continue each row/column linearly from its two outermost pixels (exact on affine maps)"

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        left, right, top, bottom = pad
        return extrapolate_axis(extrapolate_axis(x, left, right, -1), top, bottom, -2)


__all__ = ["ExtrapolatePadding", "extrapolate_axis"]
