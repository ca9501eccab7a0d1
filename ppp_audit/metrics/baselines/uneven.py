"""Static uneven-padding check (docs/baselines.md): layers that treat the top/left and bottom/right borders differently.

A conv or pool with kernel ``k``, stride ``s``, dilation ``d`` and padding ``p`` on a map of height ``H`` produces
``o = ⌊(H + 2p − d(k−1) − 1) / s⌋ + 1`` rows, and its last window ends at padded row ``(o−1)s + d(k−1)``. The last
``r = (H + 2p − d(k−1) − 1) mod s`` rows are never read: the bottom border sees ``p − r`` rows of padding while the
top sees ``p`` (if ``r > p``, real bottom rows are dropped). The same holds for columns (left vs right). TF 'SAME'
padding (timm's dynamic-same convs and pools) instead pads ``max((⌈H/s⌉−1)s + d(k−1) + 1 − H, 0)`` in total and puts
the odd pixel at the bottom/right. Either way one border gets a different amount of padding than its opposite, which
a network can use to tell them apart.

The check propagates the input size through the model with forward hooks on a tensor of the meta device (no weights,
no images, no compute); it falls back to a zero tensor on the model's device when a model does not run on meta.
Explicit pad modules (``nn.ZeroPad2d`` ...) feeding a conv or pool are folded into that layer's padding.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ...paddings.layers import padding_kind, same_padding, static_padding
from ...paddings.registry import Pad4


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


@dataclass(frozen=True)
class LayerGeometry:
    """How one conv/pool layer covers its input at a given size.

    Pads are ``(left, right, top, bottom)``, like :class:`~ppp_audit.paddings.PaddingScheme.pad`.

    Attributes:
        name: Module name.
        module_type: Class name.
        kind: ``conv`` or ``pool`` (static padding), ``conv_same`` or ``pool_same`` (TF 'SAME', computed from the size).
        input_hw: Size of the map the layer receives (before any padding, explicit pad modules included).
        output_hw: Size it produces.
        kernel: Kernel size (rows, cols).
        stride: Stride (rows, cols).
        dilation: Dilation (rows, cols).
        declared: Padding the layer adds.
        used: Padding its windows actually read. Smaller than ``declared`` at the bottom/right when trailing rows/cols
            are never read; negative when even real input rows/cols are dropped.
    """

    name: str
    module_type: str
    kind: str
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    declared: Pad4
    used: Pad4

    @property
    def unread(self) -> tuple[int, int]:
        """Trailing (rows, cols) never read: ``(H + 2p − d(k−1) − 1) mod s`` for static padding."""
        return self.declared[3] - self.used[3], self.declared[1] - self.used[1]

    @property
    def uneven(self) -> bool:
        """Whether opposite borders get different amounts of padding (top vs bottom, or left vs right)."""
        left, right, top, bottom = self.used
        return left != right or top != bottom

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unread": list(self.unread), "uneven": self.uneven}


def used_padding(size: int, before: int, after: int, kernel: int, stride: int, dilation: int,
                 out: int) -> tuple[int, int]:
    """Padding rows read on each side of one axis, given the output size the layer really produced.

    The first window starts at padded index 0, so all ``before`` rows are read; the last one ends at
    ``(out−1)·stride + dilation·(kernel−1)``, which decides how much of ``after`` is read (negative: input dropped;
    larger than ``after``: a ``ceil_mode`` window hanging past the padding, which the pool ignores like padding).
    """
    last = (out - 1) * stride + dilation * (kernel - 1)
    return before, last - (before + size - 1)


class _ShapeTrace:
    """Forward hooks that record every conv/pool layer's geometry in one pass."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers: list[LayerGeometry] = []
        self.padded: dict[int, tuple[Tensor, Pad4]] = {}  # id(pad module output) -> (output, its pad)
        self.pending: dict[int, tuple[tuple[int, int], Pad4]] = {}

    def attach(self) -> list:
        handles = []
        for name, module in self.model.named_modules():
            kind = padding_kind(module)
            if kind == "pad_module":
                handles.append(module.register_forward_hook(lambda m, args, out: self.pad(m, args, out)))
            elif kind is not None:
                handles.append(module.register_forward_pre_hook(lambda m, args, k=kind: self.pre(k, m, args)))
                handles.append(module.register_forward_hook(
                    lambda m, args, out, n=name, k=kind: self.post(n, k, m, out)))
        return handles

    def pad(self, module: nn.Module, args: tuple, out: Tensor) -> None:
        pad4 = tuple(int(p) for p in module.padding)
        x = args[0]
        if x.shape[-2:] != out.shape[-2:] or any(pad4):
            self.padded[id(out)] = (out, pad4)  # keep ``out`` alive so its id is not reused

    def pre(self, kind: str, module: nn.Module, args: tuple) -> None:
        x = args[0]
        height, width = int(x.shape[-2]), int(x.shape[-1])
        kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        dilation = _pair(getattr(module, "dilation", 1))
        if kind.endswith("_same"):
            declared = same_padding(height, width, kernel, stride, dilation)
        else:
            declared = static_padding(module)
        explicit = self.padded.get(id(x))
        if explicit is not None and explicit[0] is x:
            left, right, top, bottom = explicit[1]
            height, width = height - top - bottom, width - left - right
            declared = tuple(a + b for a, b in zip(declared, explicit[1]))
        self.pending[id(module)] = ((height, width), declared)

    def post(self, name: str, kind: str, module: nn.Module, out: Any) -> None:
        out = out[0] if isinstance(out, (tuple, list)) else out
        (height, width), declared = self.pending.pop(id(module))
        kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        dilation = _pair(getattr(module, "dilation", 1))
        out_h, out_w = int(out.shape[-2]), int(out.shape[-1])
        top, bottom = used_padding(height, declared[2], declared[3], kernel[0], stride[0], dilation[0], out_h)
        left, right = used_padding(width, declared[0], declared[1], kernel[1], stride[1], dilation[1], out_w)
        self.layers.append(LayerGeometry(
            name=name, module_type=type(module).__name__, kind=kind, input_hw=(height, width), output_hw=(out_h, out_w),
            kernel=kernel, stride=stride, dilation=dilation, declared=tuple(declared), used=(left, right, top, bottom),
        ))


def _run_on_meta(model: nn.Module, shape: tuple[int, ...]) -> None:
    tensors = itertools.chain(model.named_parameters(remove_duplicate=False),
                              model.named_buffers(remove_duplicate=False))
    on_meta = {name: torch.empty_like(t, device="meta") for name, t in tensors}
    with torch.no_grad():
        torch.func.functional_call(model, on_meta, (torch.zeros(shape, device="meta"),), strict=False)


def _run_on_zeros(model: nn.Module, shape: tuple[int, ...]) -> None:
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = param.device if param is not None else torch.device("cpu")
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape, device=device))
    finally:
        model.train(training)


def layer_geometry(model: nn.Module, input_size: int | tuple[int, int], in_chans: int = 3) -> list[LayerGeometry]:
    """The geometry of every conv/pool layer of ``model`` at ``input_size``, in execution order.

    Run it on the model with its native padding (a padding patch moves the padding out of the layers).

    Args:
        model: Any module whose forward takes one image batch; weights are not used.
        input_size: Input height and width (one int for square).
        in_chans: Input channels.
    """
    height, width = _pair(input_size)
    shape = (1, in_chans, height, width)
    try:
        return _trace(model, shape, _run_on_meta)
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: propagate real zeros instead
        return _trace(model, shape, _run_on_zeros)


def _trace(model: nn.Module, shape: tuple[int, ...], run) -> list[LayerGeometry]:
    trace = _ShapeTrace(model)
    handles = trace.attach()
    try:
        run(model, shape)
    finally:
        for handle in handles:
            handle.remove()
    return trace.layers


def uneven_layers(model: nn.Module, input_size: int | tuple[int, int], in_chans: int = 3) -> list[LayerGeometry]:
    """The conv/pool layers whose padding differs between opposite borders at ``input_size``."""
    return [layer for layer in layer_geometry(model, input_size, in_chans) if layer.uneven]


@dataclass
class UnevenResult:
    """The static check at one input size: every uneven layer, and how many layers were checked."""

    input_size: tuple[int, int]
    num_checked: int
    layers: list[LayerGeometry]

    def to_dict(self) -> dict[str, Any]:
        bottom_right_less = sum(1 for g in self.layers if g.used[3] < g.used[2] or g.used[1] < g.used[0])
        return {
            "input_size": list(self.input_size),
            "num_checked": self.num_checked,
            "num_uneven": len(self.layers),
            "num_bottom_right_less": bottom_right_less,
            "num_bottom_right_more": len(self.layers) - bottom_right_less,
            "layers": [g.to_dict() for g in self.layers],
        }


def uneven_padding_check(model: nn.Module, input_size: int | tuple[int, int], in_chans: int = 3) -> UnevenResult:
    """Run the static check: :func:`layer_geometry` filtered to the uneven layers, with the count checked."""
    layers = layer_geometry(model, input_size, in_chans)
    return UnevenResult(input_size=_pair(input_size), num_checked=len(layers), layers=[g for g in layers if g.uneven])
