"""Apply a padding scheme to any ``nn.Module`` and say exactly what was and was not patched.

Every layer that pads is replaced by "pad with the scheme, then run the layer without padding", with the same pad
amounts, so output shapes are unchanged. Handled: ``nn.Conv2d`` and subclasses that use ``self.padding`` (incl.
timm's ``StdConv2d`` / ``ScaledStdConv2d`` / ``CondConv2d``), timm's dynamic-same convs (``Conv2dSame``,
``StdConv2dSame``, ``ScaledStdConv2dSame``, dynamic ``CondConv2d``), and explicit pad modules (``nn.ZeroPad2d``,
``nn.ConstantPad2d``, ``nn.ReflectionPad2d``, ...). Anything else that pads is listed in
:attr:`PatchSummary.unpatched` with the reason.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from dataclasses import asdict, dataclass, field
from types import MethodType
from typing import Any, Callable, Iterator

import torch.nn as nn
from torch import Tensor

from ..errors import PaddingShapeError
from .registry import Pad4, PaddingScheme, get_padding
from .schemes import ZerosPadding

_PAD_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class PatchedSite:
    """A layer whose padding the scheme now does."""

    name: str
    module_type: str
    kind: str  # "conv" (static padding), "conv_same" (computed from the input size) or "pad_module"
    native: str  # what it padded with before, e.g. "zeros", "zeros (tf-same)", "reflect"


@dataclass(frozen=True)
class UnpatchedSite:
    """A layer that pads but was left as it is."""

    name: str
    module_type: str
    reason: str


@dataclass
class PatchSummary:
    """What :func:`patch_padding` did to a model. Serialisable; ``restore()`` undoes the patch."""

    scheme: str
    patched: list[PatchedSite] = field(default_factory=list)
    unpatched: list[UnpatchedSite] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False, compare=False)

    @property
    def native_padding(self) -> str:
        """A one-word description of the padding the model had, e.g. ``zeros`` or ``zeros+reflect``."""
        kinds = sorted({site.native.split(" ")[0] for site in self.patched})
        return "+".join(kinds) if kinds else "none"

    def restore(self) -> None:
        """Undo the patch (idempotent)."""
        while self._undo:
            self._undo.pop()()

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "native_padding": self.native_padding,
            "num_patched": len(self.patched),
            "patched": [asdict(s) for s in self.patched],
            "unpatched": [asdict(s) for s in self.unpatched],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PatchSummary":
        return cls(
            scheme=data["scheme"],
            patched=[PatchedSite(**s) for s in data["patched"]],
            unpatched=[UnpatchedSite(**s) for s in data["unpatched"]],
        )


def _same_pad4(height: int, width: int, kernel: tuple[int, int], stride: tuple[int, int],
               dilation: tuple[int, int]) -> Pad4:
    """TF 'SAME' padding as timm's ``pad_same`` computes it (extra pixel right/bottom)."""
    def total(size: int, k: int, s: int, d: int) -> int:
        return max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)

    pad_h = total(height, kernel[0], stride[0], dilation[0])
    pad_w = total(width, kernel[1], stride[1], dilation[1])
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def _static_pad4(conv: nn.Module) -> Pad4:
    padding = conv.padding
    if isinstance(padding, str):  # nn.Conv2d(padding="same"): stride 1, PyTorch puts the odd pixel right/bottom
        if padding == "valid":
            return 0, 0, 0, 0
        (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return tw // 2, tw - tw // 2, th // 2, th - th // 2
    ph, pw = padding
    return pw, pw, ph, ph


def _timm_classes() -> dict[str, type]:
    """timm's padding-aware classes, looked up lazily so the patcher works on plain PyTorch models too."""
    try:  # import the modules by path: timm.layers re-exports functions under the same names
        conv2d_same = importlib.import_module("timm.layers.conv2d_same")
        cond_conv2d = importlib.import_module("timm.layers.cond_conv2d")
        std_conv = importlib.import_module("timm.layers.std_conv")
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
    }


def _checked_pad(scheme: PaddingScheme, x: Tensor, pad: Pad4, site: str) -> Tensor:
    try:
        return scheme.pad(x, pad)
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        raise PaddingShapeError(
            f"padding scheme '{scheme.name}' cannot pad the {tuple(x.shape[-2:])} input of layer '{site}' by "
            f"{pad} (left, right, top, bottom): {str(exc).splitlines()[0]}",
            "use a larger --input-size or another scheme",
        ) from exc


class _Patcher:
    """Collects the patch of one model; each ``patch_*`` method records how to undo itself."""

    def __init__(self, model: nn.Module, scheme: PaddingScheme) -> None:
        self.model = model
        self.scheme = scheme
        self.summary = PatchSummary(scheme=scheme.name)
        self.timm = _timm_classes()

    def run(self) -> PatchSummary:
        for name, module in self.model.named_modules():
            self.visit(name or "<root>", module)
        return self.summary

    def _is(self, module: nn.Module, *names: str) -> bool:
        return any(n in self.timm and type(module) is self.timm[n] for n in names)

    def visit(self, name: str, module: nn.Module) -> None:
        if self._is(module, "Conv2dSame"):
            self.patch_dynamic_same(name, module, disable=lambda m: _override_forward(m, nn.Conv2d.forward))
        elif self._is(module, "StdConv2dSame", "ScaledStdConv2dSame") and module.same_pad:
            self.patch_dynamic_same(name, module, disable=lambda m: _set_attr(m, "same_pad", False))
        elif self._is(module, "CondConv2d") and module.dynamic_padding:
            self.patch_dynamic_same(name, module, disable=lambda m: _set_attr(m, "dynamic_padding", False))
        elif self._is(module, "Conv2dSameExport"):
            self.skip(name, module, "pads through its own ZeroPad2d child, which is patched instead")
        elif isinstance(module, nn.Conv2d) or self._is(module, "CondConv2d"):
            self.patch_static_conv(name, module)
        elif isinstance(module, _PAD_MODULES):
            self.patch_pad_module(name, module)
        elif isinstance(module, _POOLS) and _pool_pads(module):
            what = "-inf" if isinstance(module, nn.MaxPool2d) else "zeros counted in the average"
            self.skip(name, module, f"pool padding ({what}) is not part of the scheme")
        elif type(module).__name__ in ("MaxPool2dSame", "AvgPool2dSame"):
            self.skip(name, module, "pool with dynamic same padding is not part of the scheme")
        elif isinstance(module, (nn.Conv1d, nn.Conv3d)) and any(p != 0 for p in _as_tuple(module.padding)):
            self.skip(name, module, f"{type(module).__name__} padding is not handled (only 2-D maps are measured)")

    def skip(self, name: str, module: nn.Module, reason: str) -> None:
        self.summary.unpatched.append(UnpatchedSite(name, type(module).__name__, reason))

    def patch_static_conv(self, name: str, conv: nn.Module) -> None:
        pad4 = _static_pad4(conv)
        if not any(pad4):
            return
        custom_forward = type(conv).forward not in (nn.Conv2d.forward, *self._padding_attr_forwards())
        if custom_forward:
            self.skip(name, conv, "custom forward: cannot tell whether it uses self.padding")
            return
        native = getattr(conv, "padding_mode", "zeros")
        if native == "zeros" and isinstance(self.scheme, ZerosPadding):
            # The conv's own zero padding *is* the scheme; leaving it keeps outputs bit-identical to the original.
            self.summary.patched.append(PatchedSite(name, type(conv).__name__, "conv", native))
            return
        saved = {"padding": conv.padding, "padding_mode": getattr(conv, "padding_mode", "zeros")}
        reversed_twice = getattr(conv, "_reversed_padding_repeated_twice", None)
        conv.padding = (0, 0)
        if hasattr(conv, "padding_mode"):
            conv.padding_mode = "zeros"
        if reversed_twice is not None:
            conv._reversed_padding_repeated_twice = [0, 0, 0, 0]
        handle = conv.register_forward_pre_hook(_pre_pad_hook(self.scheme, name, lambda x, p=pad4: p))

        def undo() -> None:
            handle.remove()
            for key, value in saved.items():
                if hasattr(conv, key):
                    setattr(conv, key, value)
            if reversed_twice is not None:
                conv._reversed_padding_repeated_twice = reversed_twice

        self.summary._undo.append(undo)
        self.summary.patched.append(PatchedSite(name, type(conv).__name__, "conv", native))

    def _padding_attr_forwards(self) -> tuple[Callable, ...]:
        """Forwards known to pass ``self.padding`` to ``F.conv2d`` (so setting it to 0 disables their padding)."""
        return tuple(self.timm[n].forward for n in ("StdConv2d", "ScaledStdConv2d", "CondConv2d") if n in self.timm)

    def patch_dynamic_same(self, name: str, conv: nn.Module, disable: Callable[[nn.Module], Callable[[], None]]) -> None:
        kernel, stride, dilation = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
        undo_disable = disable(conv)
        handle = conv.register_forward_pre_hook(
            _pre_pad_hook(self.scheme, name, lambda x: _same_pad4(x.shape[-2], x.shape[-1], kernel, stride, dilation))
        )

        def undo() -> None:
            handle.remove()
            undo_disable()

        self.summary._undo.append(undo)
        self.summary.patched.append(PatchedSite(name, type(conv).__name__, "conv_same", "zeros (tf-same)"))

    def patch_pad_module(self, name: str, pad_module: nn.Module) -> None:
        pad4 = tuple(pad_module.padding)
        if any(p < 0 for p in pad4):
            self.skip(name, pad_module, "negative padding crops; left as it is")
            return
        if isinstance(pad_module, nn.ZeroPad2d) or (
            isinstance(pad_module, nn.ConstantPad2d) and float(pad_module.value) == 0.0
        ):
            native = "zeros"
        elif isinstance(pad_module, nn.ConstantPad2d):
            native = f"constant({pad_module.value})"
        else:
            native = type(pad_module).__name__.replace("Pad2d", "").lower()
        scheme = self.scheme
        undo = _override_forward(pad_module, lambda self_, x: _checked_pad(scheme, x, pad4, name))
        self.summary._undo.append(undo)
        self.summary.patched.append(PatchedSite(name, type(pad_module).__name__, "pad_module", native))


def _pool_pads(pool: nn.Module) -> bool:
    return any(p != 0 for p in _as_tuple(pool.padding))


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _pre_pad_hook(scheme: PaddingScheme, site: str, amounts: Callable[[Tensor], Pad4]) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (_checked_pad(scheme, x, amounts(x), site), *args[1:])

    return hook


def _override_forward(module: nn.Module, forward: Callable) -> Callable[[], None]:
    module.forward = MethodType(forward, module)

    def undo() -> None:
        del module.forward

    return undo


def _set_attr(module: nn.Module, key: str, value: Any) -> Callable[[], None]:
    old = getattr(module, key)
    setattr(module, key, value)

    def undo() -> None:
        setattr(module, key, old)

    return undo


def patch_padding(model: nn.Module, scheme: str | PaddingScheme) -> PatchSummary:
    """Replace the padding of every layer of ``model`` with ``scheme``, in place.

    Args:
        model: Any module; timm models are handled in full.
        scheme: A registered scheme name or a :class:`PaddingScheme` instance.

    Returns:
        The :class:`PatchSummary`; call its ``restore()`` to undo.
    """
    return _Patcher(model, get_padding(scheme)).run()


@contextlib.contextmanager
def padding(model: nn.Module, scheme: str | PaddingScheme) -> Iterator[PatchSummary]:
    """Context manager: ``with padding(model, "reflect") as summary: ...`` restores the model on exit."""
    summary = patch_padding(model, scheme)
    try:
        yield summary
    finally:
        summary.restore()
