"""Count the padding that really executes in a forward pass (not what the module tree suggests).

A ``TorchDispatchMode`` sees every ATen op. Convolutions with padding != 0, ``constant_pad_nd`` with positive pads,
``im2col`` (``F.unfold``) with padding and average pools that count their zero padding are *zero padding*; padded
max-pools pad with -inf; ``reflection_pad*`` / ``replication_pad*`` pad with the map itself; average pools with
``count_include_pad=False`` leave the padding out of the average. Each op is attributed to the innermost module that
was running, so a report can name the layer. ``F.pad`` shows up as ``aten.pad`` (in inference mode) or as the op it
decomposes into (``constant_pad_nd``, ``reflection_pad2d``...; circular padding then becomes slicing and concatenation
and is not seen as padding).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_CONVS = (aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten._convolution)
_MAP_PADS = {
    aten.reflection_pad1d: "reflect", aten.reflection_pad2d: "reflect", aten.reflection_pad3d: "reflect",
    aten.replication_pad1d: "replicate", aten.replication_pad2d: "replicate", aten.replication_pad3d: "replicate",
}


@dataclass(frozen=True)
class PaddingOp:
    """One padded op that executed."""

    module: str
    op: str
    fill: str  # "zeros", "-inf", "constant(v)", "reflect", "replicate", "circular" or "excluded" (not averaged)


def _arg(args: tuple, kwargs: dict, index: int, key: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(key, default)


class _PaddingCounter(TorchDispatchMode):
    def __init__(self, module_stack: list[str]) -> None:
        super().__init__()
        self.module_stack = module_stack
        self.ops: list[PaddingOp] = []

    def _record(self, op: str, fill: str) -> None:
        self.ops.append(PaddingOp(self.module_stack[-1] if self.module_stack else "<root>", op, fill))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _CONVS:
            transposed = packet in (aten.convolution, aten._convolution) and _arg(args, kwargs, 6, "transposed", False)
            padding = _arg(args, kwargs, 4, "padding", [0])
            pads = padding != "valid" if isinstance(padding, str) else any(p != 0 for p in padding)
            if pads and not transposed:
                self._record(packet.__name__, "zeros")
        elif packet is aten.pad:  # F.pad; seen undecomposed in inference mode
            mode = _arg(args, kwargs, 2, "mode", "constant")
            value = _arg(args, kwargs, 3, "value", None)
            if any(p > 0 for p in args[1]):
                fill = mode if mode != "constant" else "zeros" if not value else f"constant({float(value):g})"
                self._record("pad", fill)
        elif packet is aten.constant_pad_nd:
            value = _arg(args, kwargs, 2, "value", 0)
            if any(p > 0 for p in args[1]):
                self._record("constant_pad_nd", "zeros" if float(value) == 0.0 else f"constant({float(value):g})")
        elif packet is aten.im2col:
            if any(p != 0 for p in _arg(args, kwargs, 3, "padding", [0])):
                self._record("im2col", "zeros")
        elif packet is aten.avg_pool2d:
            if any(p != 0 for p in _arg(args, kwargs, 3, "padding", [0])):
                counted = _arg(args, kwargs, 5, "count_include_pad", True)
                self._record("avg_pool2d", "zeros" if counted else "excluded")
        elif packet in (aten.max_pool2d_with_indices, aten.max_pool2d):
            if any(p != 0 for p in _arg(args, kwargs, 3, "padding", [0])):
                self._record(packet.__name__, "-inf")
        elif packet in _MAP_PADS:
            if any(p > 0 for p in args[1]):
                self._record(packet.__name__, _MAP_PADS[packet])
        return func(*args, **kwargs)


@dataclass(eq=False)
class PaddingRecorder:
    """Context manager that records the padding executed by the forward passes of ``model`` run inside it.

    ``ops`` lists every padded op; if a forward pass raises, ``failed_in`` names the innermost module that was running
    (the layer to blame in an error message).

    Example::

        with PaddingRecorder(model) as recorder:
            out = model(x)
        zero_padding = count_zero_padding(recorder.ops)
    """

    model: nn.Module
    ops: list[PaddingOp] = field(default_factory=list, init=False)
    failed_in: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._names = {id(m): (n or "<root>") for n, m in self.model.named_modules()}
        self._stack: list[str] = []
        self._hooks: list[Any] = []
        self._counter: _PaddingCounter | None = None

    def _push(self, module: nn.Module, args: tuple) -> None:
        if id(module) in self._names:
            self._stack.append(self._names[id(module)])

    def _pop(self, module: nn.Module, args: tuple, output: object) -> None:
        # No always_call: after an exception the stack still shows where it happened.
        name = self._names.get(id(module))
        if name is not None and name in self._stack:
            del self._stack[len(self._stack) - 1 - self._stack[::-1].index(name):]

    def __enter__(self) -> "PaddingRecorder":
        self._hooks = [
            nn.modules.module.register_module_forward_pre_hook(self._push),
            nn.modules.module.register_module_forward_hook(self._pop),
        ]
        self._counter = _PaddingCounter(self._stack)
        self._counter.ops = self.ops
        self._counter.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._counter is not None
        self._counter.__exit__(exc_type, exc, tb)
        for hook in self._hooks:
            hook.remove()
        if exc_type is not None and self._stack:
            self.failed_in = self._stack[-1]
        self._stack.clear()


def trace_padding(model: nn.Module, x: Tensor) -> list[PaddingOp]:
    """Run ``model(x)`` and return every padded op that executed, attributed to its innermost module."""
    with torch.inference_mode(), PaddingRecorder(model) as recorder:
        model(x)
    return recorder.ops


def count_zero_padding(ops: list[PaddingOp]) -> Counter[str]:
    """Zero-padding ops per module name."""
    return Counter(op.module for op in ops if op.fill == "zeros")
