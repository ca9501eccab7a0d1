"""Which modules pad, and by how much: the one classification that the patcher and the uneven-padding check share.

:func:`padding_kind` names how a module pads; the patcher (:func:`~ppp_audit.paddings.patch_padding`) patches what it
names, and the static uneven-padding check (:func:`~ppp_audit.metrics.baselines.layer_geometry`) measures the same
convolutions and pools, so the two never disagree on which layers pad.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Any, Literal

import torch.nn as nn

from .registry import Pad4

PaddingKind = Literal["conv", "conv_same", "pool", "pool_same", "pad_module"]
"""How a layer pads: see :func:`padding_kind`."""

PAD_MODULES: tuple[type[nn.Module], ...] = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
                                            nn.CircularPad2d)
"""The explicit 2-D pad modules."""


@functools.cache
def timm_padding_classes() -> dict[str, type[nn.Module]]:
    """timm's padding-aware layer classes by class name; empty without timm, so plain PyTorch models work too."""
    try:  # import the modules by path: timm.layers re-exports functions under the same names
        conv2d_same = importlib.import_module("timm.layers.conv2d_same")
        cond_conv2d = importlib.import_module("timm.layers.cond_conv2d")
        std_conv = importlib.import_module("timm.layers.std_conv")
        pool2d_same = importlib.import_module("timm.layers.pool2d_same")
    except ImportError:  # pragma: no cover - timm is a hard dependency, but the patcher does not need it
        return {}
    return {
        "Conv2dSame": conv2d_same.Conv2dSame,
        "Conv2dSameExport": conv2d_same.Conv2dSameExport,
        "StdConv2d": std_conv.StdConv2d,
        "StdConv2dSame": std_conv.StdConv2dSame,
        "ScaledStdConv2d": std_conv.ScaledStdConv2d,
        "ScaledStdConv2dSame": std_conv.ScaledStdConv2dSame,
        "CondConv2d": cond_conv2d.CondConv2d,
        "MaxPool2dSame": pool2d_same.MaxPool2dSame,
        "AvgPool2dSame": pool2d_same.AvgPool2dSame,
    }


def is_timm_class(module: nn.Module, *names: str) -> bool:
    """Whether ``module`` is exactly (not a subclass of, whose ``forward`` may differ) one of timm's named classes."""
    classes = timm_padding_classes()
    return any(name in classes and type(module) is classes[name] for name in names)


def padding_kind(module: nn.Module) -> PaddingKind | None:
    """How ``module`` pads its input.

    Args:
        module: Any module.

    Returns:
        ``"conv_same"``: TF 'SAME' padding computed from each input's size (timm's ``Conv2dSame``,
        ``Conv2dSameExport``, ``StdConv2dSame`` / ``ScaledStdConv2dSame`` with ``same_pad``, ``CondConv2d`` with
        dynamic padding). ``"conv"``: a 2-D convolution with the static padding in ``self.padding``, zero included
        (``nn.Conv2d`` and its subclasses, ``CondConv2d``). ``"pool_same"``: timm's ``MaxPool2dSame`` /
        ``AvgPool2dSame``. ``"pool"``: ``nn.MaxPool2d`` / ``nn.AvgPool2d`` (and subclasses) with static padding, zero
        included. ``"pad_module"``: one of :data:`PAD_MODULES`. ``None``: anything else (padding done by functional
        calls inside a ``forward`` is found by tracing instead).
    """
    if is_timm_class(module, "Conv2dSame", "Conv2dSameExport"):
        return "conv_same"
    if is_timm_class(module, "StdConv2dSame", "ScaledStdConv2dSame"):
        return "conv_same" if module.same_pad else "conv"
    if is_timm_class(module, "CondConv2d"):
        return "conv_same" if module.dynamic_padding else "conv"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if is_timm_class(module, "MaxPool2dSame", "AvgPool2dSame"):
        return "pool_same"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return "pool"
    if isinstance(module, PAD_MODULES):
        return "pad_module"
    return None


def same_padding(height: int, width: int, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> Pad4:
    """TF 'SAME' padding ``(left, right, top, bottom)``, as timm's ``pad_same`` computes it (odd pixel right/bottom)."""
    def total(size: int, k: int, s: int, d: int) -> int:
        return max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)

    pad_h = total(height, kernel[0], stride[0], dilation[0])
    pad_w = total(width, kernel[1], stride[1], dilation[1])
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def static_padding(layer: nn.Module) -> Pad4:
    """The padding ``(left, right, top, bottom)`` a conv or pool adds by its ``padding`` attribute."""
    padding = layer.padding
    if isinstance(padding, str):  # nn.Conv2d(padding="same"): stride 1, PyTorch puts the odd pixel right/bottom
        if padding == "valid":
            return 0, 0, 0, 0
        (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return tw // 2, tw - tw // 2, th // 2, th - th // 2
    ph, pw = _pair(padding)
    return pw, pw, ph, ph


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)
