"""Running the baselines for an audit: options, the shared image bank, and one result per baseline and scheme.

The engine hands over the model, its feature taps, the image source and how to apply each padding scheme; every
baseline then sees the same pixels the PPP audit measured (the centre ``S × S`` crops of the audit's windows, index
``0, 1, ...``). PosENet and the location test run once per scheme (native and each ``--padding``): they depend on the
padding, and their cost is dominated by forward passes that the comparison needs anyway. The uneven-padding check runs
once, on the native model: a scheme swap keeps every layer's pad amounts, so the geometry is scheme-independent.

Baselines come from the registry :data:`BASELINE_RUNNERS`: ``@register_baseline(name, config=..., per_scheme=...)`` on
a runner ``(inputs, config, label) -> dict``; installed distributions register through the entry-point group
``ppp_audit.baselines``. The registry, the built-in options and their checks are torch-free, in
:mod:`ppp_audit.baseline_options` (configs check baselines without torch); this module registers the runners.

Report layout (``Report.baselines``)::

    {"uneven": {...}, "posenet": {scheme: {...}}, "fconv": {scheme: {...}}}
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ...baseline_options import (BASELINE_RUNNERS, LocationConfig, PosENetConfig, baseline_config, register_baseline,
                                validate_baselines)
from ...errors import ImageSourceError
from .location import location_test
from .posenet import posenet_probe
from .uneven import uneven_padding_check

def __getattr__(name: str) -> Any:
    if name == "BASELINES":  # computed on use: plugins are discovered lazily and may register later
        return tuple(BASELINE_RUNNERS.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ImageBank:
    """The audit's crops, rendered on first use and shared by every baseline and scheme.

    Args:
        source: The audit's image source.
        window: The audit's window size ``S + 2m``.
        margin: Its margin ``m``; crop ``i`` is the centre ``S × S`` of window ``i``, the pixels the audit measured.
        size: The crop size ``S``.
    """

    def __init__(self, source: Any, window: int, margin: int, size: int) -> None:
        self.source, self.window, self.margin, self.size = source, window, margin, size
        self._crops: list[Tensor] = []

    def available(self) -> int | None:
        return self.source.available()

    def __call__(self, count: int) -> Tensor:
        limit = self.available()
        count = count if limit is None else min(count, limit)
        m, s = self.margin, self.size
        while len(self._crops) < count:
            window = self.source.window(len(self._crops), self.window)
            self._crops.append(window[..., m:m + s, m:m + s].contiguous())
        return torch.stack(self._crops[:count])

    def split(self, num_train: int, num_test: int, who: str) -> tuple[Tensor, Tensor]:
        """First ``num_train`` crops for training, the next ``num_test`` held out; shrunk in proportion when a finite
        source has fewer images."""
        limit = self.available()
        if limit is not None and limit < num_train + num_test:
            num_test = max(2, round(limit * num_test / (num_train + num_test)))
            num_train = limit - num_test
            if num_train < 2:
                raise ImageSourceError(f"the {who} baseline needs at least 4 images; the source has {limit}",
                                       "add images to the folder, or drop the baseline")
        images = self(num_train + num_test)
        return images[:num_train], images[num_train:]


@dataclass
class BaselineInputs:
    """What the engine gives the baselines.

    Args:
        model: The model, with its native padding.
        extract: Its feature taps: image batch -> list of (N, C, h, w) maps.
        images: The shared :class:`ImageBank`.
        normalize: Pixel batch in [0, 1] -> model input.
        input_size: Crop size ``S`` (also the size the uneven check propagates).
        max_stride: The model's largest stride (the location test's content is a multiple of it).
        device: Where features are computed.
        schemes: Padding labels to run per-scheme baselines under (``native`` first).
        scheme: ``label -> context manager`` applying that padding.
    """

    model: nn.Module
    extract: Callable[[Tensor], Sequence[Tensor]]
    images: ImageBank
    normalize: Callable[[Tensor], Tensor]
    input_size: int
    max_stride: int
    device: torch.device
    schemes: Sequence[str] = ("native",)
    scheme: Callable[[str], ContextManager] = lambda label: contextlib.nullcontext()


@register_baseline("posenet", config=PosENetConfig)
def _posenet(inputs: BaselineInputs, config: PosENetConfig, label: str) -> dict[str, Any]:
    train, test = inputs.images.split(config.num_train, config.num_test, "posenet")
    with inputs.scheme(label):
        result = posenet_probe(inputs.extract, train, test, config=config, normalize=inputs.normalize,
                               device=inputs.device)
    return result.to_dict()


@register_baseline("fconv", config=LocationConfig)
def _fconv(inputs: BaselineInputs, config: LocationConfig, label: str) -> dict[str, Any]:
    stride = inputs.max_stride
    content = config.content or 2 * stride
    content = min(content, inputs.input_size)
    train, test = inputs.images.split(config.num_train, config.num_test, "fconv")
    offset = (inputs.input_size - content) // 2
    crop = lambda x: x[..., offset:offset + content, offset:offset + content]  # noqa: E731
    with inputs.scheme(label):
        result = location_test(inputs.extract, crop(train), crop(test), config=config, normalize=inputs.normalize,
                               device=inputs.device)
    return {**result.to_dict(), "content_multiple_of_stride": content % stride == 0}


@register_baseline("uneven", per_scheme=False)
def _uneven(inputs: BaselineInputs, config: None, label: None) -> dict[str, Any]:
    started = time.perf_counter()
    return {**uneven_padding_check(inputs.model, inputs.input_size).to_dict(), "seconds": time.perf_counter() - started}


def run_baselines(names: Sequence[str], options: dict[str, dict[str, Any]] | None, inputs: BaselineInputs,
                  on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run each named baseline; per-scheme ones under every label in ``inputs.schemes``.

    Args:
        names: Baselines, from :data:`BASELINE_RUNNERS`.
        options: ``{name: {field: value}}`` overriding the config defaults.
        inputs: Model, taps, images and schemes.
        on_step: Called with ``"name/label"`` after each finished unit of work (for progress).

    Returns:
        ``{name: {...}}`` for a baseline that runs once, ``{name: {label: {...}}}`` for a per-scheme one (JSON-able).
    """
    options = options or {}
    names = validate_baselines(names, options)
    results: dict[str, Any] = {}
    for name in names:
        entry = BASELINE_RUNNERS.entry(name)
        config = baseline_config(name, options.get(name))
        if not entry.metadata["per_scheme"]:
            results[name] = entry.obj(inputs, config, None)
            if on_step:
                on_step(name)
            continue
        results[name] = {}
        for label in inputs.schemes:
            results[name][label] = entry.obj(inputs, config, label)
            if on_step:
                on_step(f"{name}/{label}")
    return results


def num_steps(names: Sequence[str], num_schemes: int) -> int:
    """Units of work :func:`run_baselines` reports through ``on_step``."""
    return sum(num_schemes if BASELINE_RUNNERS.entry(name).metadata["per_scheme"] else 1 for name in names)
