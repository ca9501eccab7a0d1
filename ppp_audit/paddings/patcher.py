"""Apply a padding scheme to any ``nn.Module`` and say exactly what was and was not patched.

Every layer that pads is replaced by "pad with the scheme, then run the layer without padding", with the same pad
amounts, so output shapes are unchanged. Handled: the layers :func:`~ppp_audit.paddings.layers.padding_kind` names,
the same ones the uneven-padding check measures: ``nn.Conv2d`` and subclasses that use ``self.padding`` (incl. timm's
``StdConv2d`` / ``ScaledStdConv2d`` / ``CondConv2d``), timm's dynamic-same convs (``Conv2dSame``,
``Conv2dSameExport``, ``StdConv2dSame``, ``ScaledStdConv2dSame``, dynamic ``CondConv2d``), explicit pad modules
(``nn.ZeroPad2d``, ``nn.ConstantPad2d``, ``nn.ReflectionPad2d``, ...) and, with ``include_pools=True``, padded pools
(``nn.MaxPool2d``, ``nn.AvgPool2d``, timm's ``MaxPool2dSame`` / ``AvgPool2dSame``). A scheme with an output hook
(:meth:`PaddingScheme.adjust_output`, e.g. ``partial``) sees every patched convolution and average pool's output
together with its :class:`SiteGeometry`.

Anything else that pads is listed in :attr:`PatchSummary.unpatched` with the reason. Padding done by functional calls
inside a module's ``forward`` (``F.avg_pool2d(..., padding=1)`` in Inception-v3, ``F.pad`` in HGNet stems) has no
module to patch; given an ``example_input``, :func:`patch_padding` runs one traced forward pass
(:class:`~ppp_audit.paddings.trace.PaddingRecorder`) and lists every module where padding still executes that no site
accounts for. Tracing was chosen over reading ``forward`` source: it sees padding done through helper functions,
knows the actual argument values (``padding=0`` is no padding), ignores dead branches and names the innermost
module; its price is one forward pass at the example input's size.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from types import MethodType
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils._pytree import tree_leaves

from ..errors import PaddingShapeError, PPPAuditError, first_line
from .layers import is_timm_class, padding_kind, same_padding, static_padding, timm_padding_classes
from .registry import Pad4, PaddingScheme, SiteGeometry, get_padding
from .schemes import ZerosPadding
from .trace import PaddingRecorder


@dataclass(frozen=True)
class PatchedSite:
    """A layer whose padding the scheme now does."""

    name: str
    module_type: str
    kind: str  # "conv", "conv_same" (pad computed from the input size), "pad_module", "pool" or "pool_same"
    native: str  # what it padded with before, e.g. "zeros", "zeros (tf-same)", "reflect", "-inf"


@dataclass(frozen=True)
class UnpatchedSite:
    """A layer that pads but was left as it is."""

    name: str
    module_type: str
    reason: str
    native: str = ""  # what it pads with, as far as known: "zeros", "zeros (tf-same)", "-inf", "reflect", ...


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

    @property
    def unpatched_zero_padding(self) -> list[str]:
        """Names of the unpatched sites that pad with zeros: the zero padding the patch leaves in the model."""
        return [site.name for site in self.unpatched if site.native.split(" ")[0] == "zeros"]

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


def _checked_pad(scheme: PaddingScheme, x: Tensor, pad: Pad4, site: str) -> Tensor:
    try:
        padded = scheme.pad(x, pad)
    except PPPAuditError:  # a scheme's own error (e.g. a PaddingShapeError it raises) already says what is wrong
        raise
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        raise PaddingShapeError(
            f"padding scheme '{scheme.name}' cannot pad the {tuple(x.shape[-2:])} input of layer '{site}' by "
            f"{pad} (left, right, top, bottom): {first_line(exc)}",
            "use a larger --input-size or another scheme", site,
        ) from exc
    expected = (x.shape[-2] + pad[2] + pad[3], x.shape[-1] + pad[0] + pad[1])
    if scheme.keeps_shape and tuple(padded.shape[-2:]) != expected:
        raise PaddingShapeError(
            f"padding scheme '{scheme.name}' returned a {tuple(padded.shape[-2:])} map for layer '{site}' instead of "
            f"{expected} (input {tuple(x.shape[-2:])} padded by {pad})",
            "fix the scheme's pad(), or set keeps_shape = False on it if it shrinks maps on purpose", site,
        )
    return padded


# What a linear site adds after its linear map, read from the module and the forward's extra arguments.
BiasOf = Callable[[nn.Module, tuple], Optional[Tensor]]


def _module_bias(module: nn.Module, rest: tuple) -> Optional[Tensor]:
    return getattr(module, "bias", None)


def _cond_conv_bias(module: nn.Module, rest: tuple) -> Optional[Tensor]:
    # CondConv2d mixes per-expert biases with the routing weights passed to forward(x, routing_weights).
    return None if module.bias is None else torch.matmul(rest[0], module.bias)


def _no_bias(module: nn.Module, rest: tuple) -> Optional[Tensor]:
    return None


@dataclass(frozen=True)
class _Linear:
    """The geometry of a linear site, minus what only the forward pass knows (input size, pads, bias)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    bias: BiasOf


class _Patcher:
    """Collects the patch of one model; each ``patch_*`` method records how to undo itself."""

    def __init__(self, model: nn.Module, scheme: PaddingScheme, include_pools: bool) -> None:
        self.model = model
        self.scheme = scheme
        self.include_pools = include_pools
        self.summary = PatchSummary(scheme=scheme.name)

    def run(self) -> PatchSummary:
        bypassed: set[str] = set()
        try:
            for name, module in self.model.named_modules():
                if name in bypassed:
                    continue
                self.visit(name or "<root>", module)
                if is_timm_class(module, "Conv2dSameExport") and isinstance(module.pad, nn.Module):
                    # The patched forward pads by itself: the ZeroPad2d that an earlier forward cached no longer runs.
                    bypassed.add(f"{name}.pad" if name else "pad")
        except BaseException:
            self.summary.restore()
            raise
        return self.summary

    def visit(self, name: str, module: nn.Module) -> None:
        earlier = getattr(vars(module).get("forward"), "__func__", None)
        if hasattr(earlier, _PATCH_MARK):
            raise PPPAuditError(
                f"layer '{name}' is already patched with scheme '{getattr(earlier, _PATCH_MARK)}'",
                "restore() the earlier PatchSummary (or leave its `with padding(...)` block) before patching again",
            )
        kind = padding_kind(module)
        if kind == "conv_same":
            if is_timm_class(module, "Conv2dSame", "Conv2dSameExport"):  # their own padding attribute is 0
                self.patch_conv(name, module, same=True, base=nn.Conv2d.forward)
            elif is_timm_class(module, "CondConv2d"):
                self.patch_conv(name, module, same=True, disable=lambda m: _set_attrs(m, dynamic_padding=False))
            else:  # StdConv2dSame, ScaledStdConv2dSame
                self.patch_conv(name, module, same=True, disable=lambda m: _set_attrs(m, same_pad=False))
        elif kind == "conv":
            self.patch_conv(name, module, same=False)
        elif kind == "pad_module":
            self.patch_pad_module(name, module)
        elif kind == "pool_same":
            self.patch_pool(name, module, same=True)
        elif kind == "pool" and _pads(module.padding):
            self.patch_pool(name, module, same=False)
        elif isinstance(module, (nn.Conv1d, nn.Conv3d)) and _pads(module.padding):
            self.skip(name, module, f"{type(module).__name__} padding is not handled (only 2-D maps are measured)",
                      getattr(module, "padding_mode", "zeros"))

    def skip(self, name: str, module: nn.Module, reason: str, native: str) -> None:
        self.summary.unpatched.append(UnpatchedSite(name, type(module).__name__, reason, native))

    def patch_conv(self, name: str, conv: nn.Module, *, same: bool, base: Callable | None = None,
                   disable: Callable[[nn.Module], Callable[[], None]] | None = None) -> None:
        kernel, stride, dilation = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
        if same:
            kind, native = "conv_same", "zeros (tf-same)"
            amounts = lambda x: same_padding(x.shape[-2], x.shape[-1], kernel, stride, dilation)  # noqa: E731
        else:
            pad4 = static_padding(conv)
            if not any(pad4):
                return
            kind, native = "conv", getattr(conv, "padding_mode", "zeros")
            if type(conv).forward not in (nn.Conv2d.forward, *self._padding_attr_forwards()):
                self.skip(name, conv, "custom forward: cannot tell whether it uses self.padding", native)
                return
            if native == "zeros" and type(self.scheme) is ZerosPadding:
                # The conv's own zero padding *is* the scheme; leaving it keeps outputs bit-identical to the original.
                self.summary.patched.append(PatchedSite(name, type(conv).__name__, kind, native))
                return
            amounts = lambda x: pad4  # noqa: E731
            disable = _disable_static_conv_padding
        bias = _cond_conv_bias if is_timm_class(conv, "CondConv2d") else _module_bias
        self._wrap_forward(name, conv, base or type(conv).forward, amounts, _Linear(kernel, stride, dilation, bias),
                           disable)
        self.summary.patched.append(PatchedSite(name, type(conv).__name__, kind, native))

    def _padding_attr_forwards(self) -> tuple[Callable, ...]:
        """Forwards known to pass ``self.padding`` to ``F.conv2d`` (so setting it to 0 disables their padding)."""
        names = ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame", "CondConv2d")
        classes = timm_padding_classes()
        return tuple(classes[n].forward for n in names if n in classes)

    def patch_pad_module(self, name: str, pad_module: nn.Module) -> None:
        pad4 = tuple(pad_module.padding)
        if isinstance(pad_module, nn.ZeroPad2d) or (
            isinstance(pad_module, nn.ConstantPad2d) and float(pad_module.value) == 0.0
        ):
            native = "zeros"
        elif isinstance(pad_module, nn.ConstantPad2d):
            native = f"constant({pad_module.value})"
        else:
            native = type(pad_module).__name__.replace("Pad2d", "").lower()
        if any(p < 0 for p in pad4):
            self.skip(name, pad_module, "negative padding crops; left as it is", native)
            return
        if self.scheme.adjusts_output:
            self.skip(name, pad_module, f"scheme '{self.scheme.name}' re-weights the output of the layer that pads; "
                      "a standalone pad module has no output to re-weight", native)
            return
        scheme = self.scheme
        if scheme.replaces:  # the null scheme lists the site and leaves it
            undo = _override_forward(pad_module, lambda self_, x: _checked_pad(scheme, x, pad4, name), scheme.name)
            self.summary._undo.append(undo)
        self.summary.patched.append(PatchedSite(name, type(pad_module).__name__, "pad_module", native))

    def patch_pool(self, name: str, pool: nn.Module, *, same: bool) -> None:
        is_max = isinstance(pool, nn.MaxPool2d)
        if is_max:
            native = "-inf"
        else:
            native = "zeros" if same or pool.count_include_pad else "excluded"  # "excluded": left out of the average
        native += " (tf-same)" if same else ""
        if not self.include_pools:
            self.skip(name, pool, f"pool padding ({native}) is left as it is (include_pools=True / --include-pools "
                      "patches pools)", native)
            return
        if is_max and self.scheme.adjusts_output:
            self.skip(name, pool, f"scheme '{self.scheme.name}' re-weights linear layers; a max-pool has nothing to "
                      "re-weight (its -inf padding already ignores the border)", native)
            return
        if pool.ceil_mode and not same:
            self.skip(name, pool, "ceil_mode pool: explicit padding would add an output window that starts in the "
                      "padding", native)
            return
        kernel = _pair(pool.kernel_size)
        stride = _pair(pool.stride or pool.kernel_size)
        dilation = _pair(pool.dilation) if is_max else (1, 1)
        if same:
            amounts = lambda x: same_padding(x.shape[-2], x.shape[-1], kernel, stride, dilation)  # noqa: E731
            base, disable = (nn.MaxPool2d.forward if is_max else nn.AvgPool2d.forward), None
        else:
            pad4 = static_padding(pool)
            amounts = lambda x: pad4  # noqa: E731
            base, disable = type(pool).forward, lambda m: _set_attrs(m, padding=0)
        linear = None if is_max else _Linear(kernel, stride, dilation, _no_bias)
        self._wrap_forward(name, pool, base, amounts, linear, disable)
        self.summary.patched.append(PatchedSite(name, type(pool).__name__, "pool_same" if same else "pool", native))

    def _wrap_forward(self, name: str, module: nn.Module, base: Callable, amounts: Callable[[Tensor], Pad4],
                      linear: _Linear | None, disable: Callable[[nn.Module], Callable[[], None]] | None) -> None:
        """Make ``module`` pad with the scheme, run ``base`` (which no longer pads), then the scheme's output hook
        (nothing for the null scheme, which leaves the layer as it is)."""
        scheme = self.scheme
        if not scheme.replaces:
            return
        hook = linear if scheme.adjusts_output else None

        def forward(self_: nn.Module, x: Tensor, *rest: Any, **kwargs: Any) -> Tensor:
            pad4 = amounts(x)
            out = base(self_, _checked_pad(scheme, x, pad4, name), *rest, **kwargs)
            if hook is not None:
                site = SiteGeometry((x.shape[-2], x.shape[-1]), pad4, hook.kernel_size, hook.stride, hook.dilation,
                                    hook.bias(self_, rest or tuple(kwargs.values())))
                out = scheme.adjust_output(out, site)
            return out

        undo_disable = disable(module) if disable is not None else None
        undo_forward = _override_forward(module, forward, scheme.name)

        def undo() -> None:
            undo_forward()
            if undo_disable is not None:
                undo_disable()

        self.summary._undo.append(undo)


def _disable_static_conv_padding(conv: nn.Module) -> Callable[[], None]:
    values = {"padding": (0, 0)}
    if hasattr(conv, "padding_mode"):
        values["padding_mode"] = "zeros"
    if getattr(conv, "_reversed_padding_repeated_twice", None) is not None:
        values["_reversed_padding_repeated_twice"] = [0, 0, 0, 0]
    return _set_attrs(conv, **values)


def _pads(padding: Any) -> bool:
    return padding != "valid" if isinstance(padding, str) else any(p != 0 for p in _as_tuple(padding))


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


_PATCH_MARK = "__ppp_audit_scheme__"


def _override_forward(module: nn.Module, forward: Callable, scheme: str) -> Callable[[], None]:
    setattr(forward, _PATCH_MARK, scheme)
    module.forward = MethodType(forward, module)

    def undo() -> None:
        del module.forward

    return undo


def _set_attrs(module: nn.Module, **values: Any) -> Callable[[], None]:
    old = {key: getattr(module, key) for key in values}
    for key, value in values.items():
        setattr(module, key, value)

    def undo() -> None:
        for key, value in old.items():
            setattr(module, key, value)

    return undo


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for a probe pass (no BatchNorm statistics updated), restoring each module's own flag after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def _shapes(output: Any) -> list[tuple[int, ...]]:
    return [tuple(leaf.shape) for leaf in tree_leaves(output) if isinstance(leaf, Tensor)]


def _default_example(model: nn.Module, scheme: PaddingScheme) -> Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if not cfg.get("input_size"):
        raise PaddingShapeError(
            f"padding scheme '{scheme.name}' changes map sizes, so the model's output shapes must be checked",
            "pass example_input=<a batch of the size you will use> to patch_padding()",
        )
    param = next(model.parameters(), None)
    return torch.zeros(1, *cfg["input_size"], device=param.device if param is not None else None)


def _probe(model: nn.Module, summary: PatchSummary, scheme: PaddingScheme, x: Tensor,
           reference: list[tuple[int, ...]] | None) -> None:
    """One traced forward pass of the patched model: fail on shape changes, list functional padding left."""
    recorder = PaddingRecorder(model)
    try:
        with _eval_mode(model), torch.inference_mode(), recorder:
            output = model(x)
    except PPPAuditError:
        raise
    except Exception as exc:
        layer = recorder.failed_in or "<root>"
        modules = dict(model.named_modules())
        kind = type(modules.get(layer, model)).__name__
        raise PaddingShapeError(
            f"padding scheme '{scheme.name}' breaks the forward pass of {type(model).__name__} at layer '{layer}' "
            f"({kind}) for a {tuple(x.shape[-2:])} input: {first_line(exc)}",
            "this architecture needs the padding it has; use a scheme that keeps map sizes"
            if not scheme.keeps_shape else "use a larger --input-size or another scheme", layer,
        ) from exc
    if reference is not None and _shapes(output) != reference:
        first = summary.patched[0].name if summary.patched else "<root>"
        raise PaddingShapeError(
            f"padding scheme '{scheme.name}' changes the output shapes of {type(model).__name__} from {reference} to "
            f"{_shapes(output)} (maps start to shrink at layer '{first}')",
            "use a scheme that keeps map sizes, or a model that pools globally", first,
        )
    handled = {site.name for site in (*summary.patched, *summary.unpatched)}
    modules = dict(model.named_modules())
    found: dict[tuple[str, str], list[str]] = {}
    for op in recorder.ops:
        if op.module not in handled:
            found.setdefault((op.module, op.fill), [])
            if op.op not in found[op.module, op.fill]:
                found[op.module, op.fill].append(op.op)
    for (name, fill), ops in found.items():
        module = modules.get(name, model)
        summary.unpatched.append(UnpatchedSite(
            name, type(module).__name__,
            f"pads inside its forward ({', '.join(ops)}); no layer to patch (found by tracing a forward pass)", fill,
        ))


def patch_padding(model: nn.Module, scheme: str | PaddingScheme, *, include_pools: bool = False,
                  example_input: Tensor | None = None, shapes_checked: bool = False) -> PatchSummary:
    """Replace the padding of every layer of ``model`` with ``scheme``, in place.

    Args:
        model: Any module; timm models are handled in full.
        scheme: A registered scheme name or a :class:`PaddingScheme` instance.
        include_pools: Also patch padded pools (max-pools pad with -inf, average pools with counted zeros).
        example_input: A batch to run one traced forward pass on after patching. It lists padding done by
            functional calls inside ``forward`` (which no patch reaches) in ``unpatched``, and turns a scheme that
            breaks the model (e.g. ``valid`` on a residual net) into an up-front :class:`PaddingShapeError` naming the
            layer. Schemes with ``keeps_shape = False`` always run it (on a zero batch of the model's
            ``pretrained_cfg`` input size when none is given).
        shapes_checked: The caller already checked, on this model, that the scheme keeps its output shapes (an
            audit checks each scheme once, then patches it for every batch): no example forward pass is run.

    Returns:
        The :class:`PatchSummary`; call its ``restore()`` to undo.

    Raises:
        PaddingShapeError: The scheme cannot keep the model's output shapes (the model is left unpatched).
    """
    scheme = get_padding(scheme)
    reference = None
    if not scheme.keeps_shape and not shapes_checked:
        if example_input is None:
            example_input = _default_example(model, scheme)
        try:
            with _eval_mode(model), torch.inference_mode():
                reference = _shapes(model(example_input))
        except Exception as exc:
            raise PPPAuditError(
                f"the example input {tuple(example_input.shape)} fails on the unpatched model: "
                f"{first_line(exc)}",
                "pass an example_input the model accepts",
            ) from exc
    summary = _Patcher(model, scheme, include_pools).run()
    if example_input is not None:
        try:
            _probe(model, summary, scheme, example_input, reference)
        except BaseException:
            summary.restore()
            raise
    return summary


@contextlib.contextmanager
def padding(model: nn.Module, scheme: str | PaddingScheme, *, include_pools: bool = False,
            example_input: Tensor | None = None, shapes_checked: bool = False) -> Iterator[PatchSummary]:
    """Context manager: ``with padding(model, "reflect") as summary: ...`` restores the model on exit.

    Takes the same arguments as :func:`patch_padding`.
    """
    summary = patch_padding(model, scheme, include_pools=include_pools, example_input=example_input,
                            shapes_checked=shapes_checked)
    try:
        yield summary
    finally:
        summary.restore()
