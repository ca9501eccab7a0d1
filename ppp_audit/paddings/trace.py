"""Count the padding that really executes in a forward pass (not what the module tree suggests).

A ``TorchDispatchMode`` sees every ATen op. Convolutions with padding != 0, ``constant_pad_nd`` with positive pads,
and average pools that count their zero padding are *zero padding*; padded max-pools pad with -inf. Each op is
attributed to the innermost module that was running, so a report can name the layer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


@dataclass(frozen=True)
class PaddingOp:
    """One padded op that executed."""

    module: str
    op: str
    fill: str  # "zeros", "-inf" or "constant(v)"


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
        if packet in (aten.conv2d, aten.convolution):
            transposed = packet is aten.convolution and (args[6] if len(args) > 6 else kwargs.get("transposed"))
            padding = args[4] if len(args) > 4 else kwargs.get("padding", [0])
            pads = padding != "valid" if isinstance(padding, str) else any(p != 0 for p in padding)
            if pads and not transposed:
                self._record(packet.__name__, "zeros")
        elif packet is aten.constant_pad_nd:
            pads = args[1]
            value = args[2] if len(args) > 2 else kwargs.get("value", 0)
            if any(p > 0 for p in pads):
                self._record("constant_pad_nd", "zeros" if float(value) == 0.0 else f"constant({float(value):g})")
        elif packet is aten.avg_pool2d:
            padding = args[3] if len(args) > 3 else kwargs.get("padding", [0])
            count_include_pad = args[5] if len(args) > 5 else kwargs.get("count_include_pad", True)
            if any(p != 0 for p in padding) and count_include_pad:
                self._record("avg_pool2d", "zeros")
        elif packet in (aten.max_pool2d_with_indices, aten.max_pool2d):
            padding = args[3] if len(args) > 3 else kwargs.get("padding", [0])
            if any(p != 0 for p in padding):
                self._record(packet.__name__, "-inf")
        return func(*args, **kwargs)


def trace_padding(model: nn.Module, x: Tensor) -> list[PaddingOp]:
    """Run ``model(x)`` and return every padded op that executed, attributed to its innermost module."""
    names = {id(m): (n or "<root>") for n, m in model.named_modules()}
    stack: list[str] = []

    def push(module: nn.Module, args: tuple) -> None:
        if id(module) in names:
            stack.append(names[id(module)])

    def pop(module: nn.Module, args: tuple, output: object) -> None:
        if id(module) in names and stack:
            stack.pop()

    pre = nn.modules.module.register_module_forward_pre_hook(push)
    post = nn.modules.module.register_module_forward_hook(pop, always_call=True)
    counter = _PaddingCounter(stack)
    try:
        with torch.inference_mode(), counter:
            model(x)
    finally:
        pre.remove()
        post.remove()
    return counter.ops


def count_zero_padding(ops: list[PaddingOp]) -> Counter[str]:
    """Zero-padding ops per module name."""
    return Counter(op.module for op in ops if op.fill == "zeros")
