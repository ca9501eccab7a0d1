"""On-disk caches of the set-up probes: the receptive-field probe (:func:`ppp_audit.receptive.influence_profiles`)
and the shape probes of the geometry (:func:`ppp_audit.geometry.probe`: which input sides a model runs at, and its
tapped maps' shapes there).

The probe costs one forward pass and one backward pass per tapped layer of a window of up to ``3S`` (6 s for resnet50
on a 2-core CPU, a third of a small audit), while its result depends only on the model and the probe's settings. So it
is kept on disk, under the project's cache folder (:func:`ppp_audit.models.cache_dir`), one JSON file per key:

* the model: its class and ``pretrained_cfg`` architecture, its module tree (each module's class, the code of its
  ``forward``, ``extra_repr()``, plain attributes such as ``stride`` or ``training``) and a SHA-256 of every parameter's
  and buffer's bytes, so any change of a weight, of a layer's settings or of a class's ``forward`` misses;
* the probe: the tapped layers, the probe window, input channels, probe images, seed, the global modules matched and
  unmatched (``match_context``), device type, dtype, memory layout, autocast and cuDNN's TF32 setting;
* the software: torch, timm, ppp-audit and Python versions, and :data:`FORMAT`.

A model the key cannot describe is probed every time and never cached: one with a ``forward`` replaced on an instance
(a padding patch, a monkey-patch) or with hooks, whose effect no attribute shows. A file that does not read back as a
valid entry of the same key is ignored and rewritten; writes are atomic (:func:`ppp_audit.files.atomic_write`); a cache
that cannot be written is skipped. Nothing here ever fails the probe.

A shape probe's result depends on the module tree, not on the weights, so its key (:func:`shapes_key`) is the model's
class and structure digest, the requested layers, input channels, dtype, device type and the software versions, and
one file holds one input side. A set-up of resnet50 runs four such passes of one image (up to 672 px: 0.75 s on the
project's 2-core machine); read back they cost milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from . import __version__
from .context import ContextMatcher
from .files import atomic_write
from .models import FeatureTaps, cache_dir

FORMAT = 1
"""Version of the probe and of the file: bump it when either changes what a cached entry means."""
FOLDER = "receptive-fields"
"""Where the entries go, under :func:`ppp_audit.models.cache_dir`."""
SHAPES_FOLDER = "shapes"
"""Where the shape probes' entries go."""

_PLAIN = (bool, int, float, str, type(None))
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def probe_key(taps: FeatureTaps, window: int, device: torch.device | str, *, context: ContextMatcher | None,
              in_chans: int, images: int, seed: int) -> dict[str, Any] | None:
    """The cache key of one probe, or ``None`` when the model cannot be described by one (then it is not cached).

    Args:
        taps: The model's :class:`~ppp_audit.models.FeatureTaps`.
        window: Probe side in input px.
        device: Where the model is.
        context: Its :class:`~ppp_audit.context.ContextMatcher`, or ``None``.
        in_chans: Input channels.
        images: Probe images.
        seed: Seed of the probe.
    """
    model = taps.model
    try:
        structure = structure_digest(model)
        if structure is None:
            return None
        weights = weights_digest(model)
        names = taps.names  # settled by a probe at the model's input size when no forward has run yet
    except Exception:  # noqa: BLE001 (a model the key cannot describe is probed, as without a cache)
        return None
    if weights is None:
        return None
    device = torch.device(device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    cfg = getattr(model, "pretrained_cfg", None)
    return {
        "format": FORMAT,
        "architecture": cfg.get("architecture") if isinstance(cfg, dict) else None,
        "class": _class_name(model),
        "structure": structure,
        "weights": weights,
        "layers": list(names),
        "requested_layers": list(taps.layers) if taps.layers else None,
        "window": int(window),
        "in_chans": int(in_chans),
        "images": int(images),
        "seed": int(seed),
        "context_matched": list(context.matched) if context is not None else None,
        "context_unmatched": list(context.unmatched) if context is not None else None,
        "device": device.type,
        "dtype": str(dtype),
        # the same arithmetic in another layout, autocast or cuDNN's TF32 rounds the probe differently
        "channels_last": _channels_last(model),
        "autocast": _autocast(device),
        "tf32": _tf32() if device.type == "cuda" else None,
        **_software(),
    }


def structure_digest(model: nn.Module) -> str | None:
    """SHA-256 of the module tree: names, classes, the code of each class's ``forward``, ``extra_repr()`` and plain
    public attributes; ``None`` for a model with a ``forward`` replaced on an instance or with hooks."""
    if any(getattr(nn.modules.module, hooks, None) for hooks in
           ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
            "_global_backward_pre_hooks")):
        return None
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        if "forward" in vars(module) or any(getattr(module, hooks, None) for hooks in
                                            ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                             "_backward_pre_hooks")):
            return None
        cls = type(module)
        attrs = {k: v for k, v in vars(module).items() if not k.startswith("_") and _is_plain(v)}
        entry = [name, f"{cls.__module__}.{cls.__qualname__}", _code_digest(cls.forward),
                 _ADDRESS.sub("", module.extra_repr()), repr(sorted(attrs.items()))]
        digest.update(json.dumps(entry).encode())
    return digest.hexdigest()


def weights_digest(model: nn.Module) -> str | None:
    """SHA-256 of every parameter's and buffer's name, dtype, shape and bytes (``None`` for meta tensors)."""
    digest = hashlib.sha256()
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in named:
            if tensor.is_meta:
                return None
            digest.update(f"{kind} {name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
            # the raw bytes, whatever the dtype (bfloat16 has no NumPy type): one copy to the host at most
            data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu()
            digest.update(data.numpy())
    return digest.hexdigest()


def cache_path(key: dict[str, Any], folder: str = FOLDER) -> Path:
    """The file of ``key``'s entry."""
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / folder / f"{name}.json"


def _read_entry(key: dict[str, Any], folder: str) -> dict[str, Any] | None:
    """The entry stored under ``key`` in ``folder``; ``None`` when there is none, or it is not JSON or of another
    key."""
    try:
        data = json.loads(cache_path(key, folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not UTF-8 or not JSON
        return None
    return data if isinstance(data, dict) and data.get("key") == key else None


def _write_entry(key: dict[str, Any], folder: str, about: str, fields: dict[str, Any],
                 indent: int | None = None) -> Path | None:
    """Write ``fields`` under ``key`` in ``folder`` (atomically); ``None`` when the cache cannot be written or a value
    is not finite (such a probe is not worth keeping)."""
    entry = {"about": f"{about}, cached: delete freely", "key": key, **fields}
    try:
        return atomic_write(cache_path(key, folder), json.dumps(entry, indent=indent, allow_nan=False) + "\n")
    except (OSError, ValueError):
        return None


def load(key: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The layers' records stored under ``key``; ``None`` when there is no entry or it is damaged (not JSON, another
    key, no list of layers)."""
    data = _read_entry(key, FOLDER)
    layers = data.get("layers") if data is not None else None
    if not isinstance(layers, list) or len(layers) != len(key["layers"]):
        return None
    return layers


def store(key: dict[str, Any], layers: list[dict[str, Any]], seconds: float) -> Path | None:
    """Write ``layers`` under ``key`` (atomically); ``None`` when the cache cannot be written or a value is not
    finite (such a probe is not worth keeping)."""
    return _write_entry(key, FOLDER, "ppp-audit's receptive-field probe (ppp_audit/receptive.py)",
                        {"probe_seconds": round(seconds, 3), "layers": layers}, indent=1)


def shapes_key(taps: FeatureTaps, *, in_chans: int, device: torch.device | str,
               dtype: torch.dtype) -> dict[str, Any] | None:
    """The key of ``taps``' shape probes (one entry per input side added by :func:`load_shapes`), or ``None`` when
    the model cannot be described by one."""
    try:
        structure = structure_digest(taps.model)
    except Exception:  # noqa: BLE001 (a model the key cannot describe is probed, as without a cache)
        return None
    if structure is None:
        return None
    return {"format": FORMAT, "probe": "shapes", "class": _class_name(taps.model), "structure": structure,
            "requested_layers": list(taps.layers) if taps.layers else None, "in_chans": int(in_chans),
            "device": torch.device(device).type, "dtype": str(dtype), **_software()}


def load_shapes(key: dict[str, Any], size: int) -> list[tuple[int, ...]] | str | None:
    """The stored result of the shape probe at input side ``size`` (shapes, or why the model does not run there);
    ``None`` when there is none or it is damaged."""
    data = _read_entry({**key, "size": int(size)}, SHAPES_FOLDER)
    result = data.get("result") if data is not None else None
    if isinstance(result, str):
        return result
    if isinstance(result, list) and all(isinstance(shape, list) and all(isinstance(d, int) for d in shape)
                                        for shape in result):
        return [tuple(shape) for shape in result]
    return None


def store_shapes(key: dict[str, Any], size: int, result: list[tuple[int, ...]] | str) -> Path | None:
    """Write the shape probe's ``result`` at ``size`` under ``key`` (atomically); ``None`` when it cannot be."""
    return _write_entry({**key, "size": int(size)}, SHAPES_FOLDER, "ppp-audit's shape probe (ppp_audit/geometry.py)",
                        {"result": result if isinstance(result, str) else [list(shape) for shape in result]})


def _class_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _software() -> dict[str, Any]:
    """The versions a cached probe is only valid for."""
    return {"torch": torch.__version__, "timm": timm.__version__, "ppp_audit": __version__,
            "python": list(sys.version_info[:2])}


def _channels_last(model: nn.Module) -> bool:
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    return weight is not None and not weight.is_contiguous() and weight.is_contiguous(
        memory_format=torch.channels_last)


def _autocast(device: torch.device) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device.type))
    except (TypeError, RuntimeError):  # an older torch, or a device type without autocast
        return bool(torch.is_autocast_enabled())


def _tf32() -> str:
    """cuDNN's fp32 setting: torch >= 2.9 per backend (where reading the older flag is deprecated), else the flag."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(conv, "fp32_precision"):
        return str(conv.fp32_precision)
    return str(torch.backends.cudnn.allow_tf32)


def _is_plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _code_digest(function: object) -> str:
    """SHA-256 of a function's code (bytecode, names and constants, nested code included) and its plain closure
    values, or its name where it has none (a builtin)."""
    function = getattr(function, "__func__", function)
    code = getattr(function, "__code__", None)
    if code is None:
        return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', repr(type(function)))}"
    digest = hashlib.sha256()
    _update_code(digest, code)
    for cell in getattr(function, "__closure__", None) or ():  # a class made in a function: its settings live here
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        digest.update((_const_repr(value) if _is_plain(value) else type(value).__qualname__).encode())
    return digest.hexdigest()


def _update_code(digest: Any, code: types.CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _update_code(digest, const)
        else:
            digest.update(_const_repr(const).encode())


def _const_repr(const: object) -> str:
    """``repr`` of a code constant, the same in every process: a frozenset's order follows the string hash seed."""
    if isinstance(const, frozenset):
        return "frozenset(" + repr(sorted(_const_repr(c) for c in const)) + ")"
    if isinstance(const, tuple):
        return "(" + ", ".join(_const_repr(c) for c in const) + ")"
    return repr(const)


__all__ = ["FOLDER", "FORMAT", "SHAPES_FOLDER", "cache_path", "load", "load_shapes", "probe_key", "shapes_key", "store",
           "store_shapes", "structure_digest", "weights_digest"]
