"""Running the baselines for an audit: options, the shared image bank, and one result per baseline and scheme.

The engine hands over the model, its feature taps, the image source and how to apply each padding scheme; every
baseline then sees the same pixels the PPP audit measured (the centre ``S × S`` crops of the audit's windows, index
``0, 1, ...``). PosENet and the location test run once per scheme (native and each ``--padding``): they depend on the
padding, and their cost is dominated by forward passes that the comparison needs anyway. The uneven-padding check runs
once, on the native model: a scheme swap keeps every layer's pad amounts, so the geometry is scheme-independent.

Baselines come from the registry :data:`BASELINE_RUNNERS`: ``@register_baseline(name, config=..., per_scheme=...)`` on
a runner ``(inputs, config, label) -> dict``; installed distributions register through the entry-point group
``ppp_audit.baselines``.

Report layout (``Report.baselines``)::

    {"uneven": {...}, "posenet": {scheme: {...}}, "fconv": {scheme: {...}}}
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ...errors import ConfigError, ImageSourceError
from ...registry import Registry
from .location import LocationConfig, location_test
from .posenet import PosENetConfig, posenet_probe
from .uneven import uneven_padding_check

ENTRY_POINT_GROUP = "ppp_audit.baselines"

BaselineRunner = Callable[["BaselineInputs", Any, "str | None"], dict[str, Any]]
"""``(inputs, config, label) -> JSON-able result``. ``config`` is the baseline's config dataclass with the user's
options applied (``None`` for a baseline without one); ``label`` is the padding label for a per-scheme baseline (the
runner applies it with ``inputs.scheme(label)``), ``None`` for one that runs once on the native model."""


def _check_runner(obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"{obj!r} is not a baseline runner (inputs, config, label) -> dict")


BASELINE_RUNNERS: Registry[BaselineRunner] = Registry(
    "baseline", error=ConfigError, entry_point_group=ENTRY_POINT_GROUP, check=_check_runner,
    metadata={"config": None, "per_scheme": True}, hint="choose from {available}, e.g. --baselines posenet,fconv,uneven")
"""Baseline name -> runner, with metadata ``config`` (its config dataclass, or ``None`` when it takes no options) and
``per_scheme`` (run under native and every ``--padding``, or once on the native model)."""


def register_baseline(name: str | None = None, *, config: type | None = None,
                      per_scheme: bool = True) -> Callable[[BaselineRunner], BaselineRunner]:
    """Decorator registering a :data:`BaselineRunner` under ``name`` (default: the function's name).

    Args:
        name: What users pass to ``--baselines``.
        config: A dataclass of its options (``NAME.FIELD=VALUE`` on the CLI), or ``None`` if it takes none.
        per_scheme: Whether it runs under every padding label, or once on the native model.
    """
    return BASELINE_RUNNERS.register(name, config=config, per_scheme=per_scheme)


def __getattr__(name: str) -> Any:
    if name == "BASELINES":  # computed on use: plugins are discovered lazily and may register later
        return tuple(BASELINE_RUNNERS.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate_baselines(names: Iterable[str], options: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Check baseline names and their options before any work; returns the names, deduplicated, in order."""
    names = list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    for name in names:
        BASELINE_RUNNERS.entry(name)  # raises, with the closest name, for an unknown one
    for name, values in (options or {}).items():
        if name not in names:
            raise ConfigError(f"options given for baseline '{name}', which is not requested",
                              f"add it to --baselines, or drop the {name}.* options")
        baseline_config(name, values)
    return names


def baseline_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The validated config dataclass of baseline ``name`` with ``options`` applied."""
    cls = BASELINE_RUNNERS.entry(name).metadata["config"]
    if cls is None:
        if options:
            raise ConfigError(f"baseline '{name}' takes no options", "drop the options")
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(options or {}) - known)
    if extra:
        raise ConfigError(f"unknown option {', '.join(f'{name}.{k}' for k in extra)}",
                          f"{name} takes {', '.join(sorted(known))}")
    return cls(**(options or {}))


def parse_baseline_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Parse ``NAME.FIELD=VALUE`` strings (e.g. ``posenet.steps=500``, ``fconv.borders=0,32,128``).

    Values are converted by the field's type: ints, floats, comma-separated int tuples, ``none`` for optional fields.
    """
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, option = key.strip().partition(".")
        if not sep or not dot or not option:
            raise ConfigError(f"baseline option '{item}' is not NAME.FIELD=VALUE", "e.g. posenet.steps=500")
        cls = BASELINE_RUNNERS.entry(name).metadata["config"]
        if cls is None:
            configurable = [e.name for e in BASELINE_RUNNERS.entries() if e.metadata["config"] is not None]
            raise ConfigError(f"baseline '{name}' takes no options", f"options exist for {', '.join(configurable)}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        if option not in types:
            raise ConfigError(f"unknown option '{name}.{option}'", f"{name} takes {', '.join(sorted(types))}")
        options.setdefault(name, {})[option] = _convert(value.strip(), types[option], f"{name}.{option}")
    return options


def _convert(value: str, annotation: str, key: str) -> Any:
    if value.lower() == "none" and "None" in annotation:
        return None
    try:
        if annotation.startswith("tuple"):
            return tuple(int(v) for v in value.split(",") if v.strip())
        if annotation.startswith("int"):
            return int(value)
        if annotation.startswith("float"):
            return float(value)
    except ValueError:
        raise ConfigError(f"cannot read '{value}' for {key} (type {annotation})",
                          f"give {key}=<{annotation}>") from None
    return value


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
