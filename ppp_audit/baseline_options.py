"""The baselines' registry and options, torch-free: what :class:`~ppp_audit.config.AuditConfig` checks on creation.

Configs are made before anything heavy is imported (the CLI, the pytest plugin), so checking ``--baselines posenet``
or ``--baseline-option posenet.steps=500`` must not load torch. Here are the registry :data:`BASELINE_RUNNERS`, the
built-in baselines' option dataclasses, the parsing of ``NAME.FIELD=VALUE`` and the checks of names and options. The
runners themselves need torch: they live in :mod:`ppp_audit.metrics.baselines`, which registers them here under the
built-in names declared below (replacing each declaration in place, so the order stays). Third-party baselines
register through the entry-point group ``ppp_audit.baselines``; looking a name up loads them (and whatever they
import).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Sequence

from .errors import ConfigError
from .registry import Registry

ENTRY_POINT_GROUP = "ppp_audit.baselines"

BaselineRunner = Callable[[Any, Any, "str | None"], dict[str, Any]]
"""``(inputs, config, label) -> JSON-able result``, with ``inputs`` a
:class:`~ppp_audit.metrics.baselines.BaselineInputs`. ``config`` is the baseline's config dataclass with the user's
options applied (``None`` for a baseline without one); ``label`` is the padding label for a per-scheme baseline (the
runner applies it with ``inputs.scheme(label)``), ``None`` for one that runs once on the native model."""


def _check_runner(obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"{obj!r} is not a baseline runner (inputs, config, label) -> dict")


BASELINE_RUNNERS: Registry[BaselineRunner] = Registry(
    "baseline", error=ConfigError, entry_point_group=ENTRY_POINT_GROUP, check=_check_runner,
    metadata={"config": None, "per_scheme": True},
    hint="choose from {available}, e.g. --baselines posenet,fconv,uneven")
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


@dataclass
class PosENetConfig:
    """Budget and settings of the probe (all overridable as ``posenet.FIELD=VALUE``).

    Args:
        num_train: Training images (the first ones of the source).
        num_test: Held-out images (the next ones).
        steps: Adam steps.
        lr: Adam learning rate.
        batch_size: Images per step; also the feature-extraction batch.
        grid: Common feature grid; default ``max(8, input_size // 16)`` (14 at 224 px).
        num_noise: Uniform-noise images scored (black and white are one image each).
        seed: Seed of the read-out and of the noise images.
    """

    num_train: int = 64
    num_test: int = 32
    steps: int = 300
    lr: float = 0.01
    batch_size: int = 16
    grid: int | None = None
    num_noise: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        minimum = {"num_train": 2, "num_test": 2, "steps": 1, "batch_size": 1, "num_noise": 1}
        for key, low in minimum.items():
            if getattr(self, key) < low:
                default = next(f.default for f in fields(self) if f.name == key)
                raise ConfigError(f"posenet.{key} must be at least {low} (got {getattr(self, key)})",
                                  f"e.g. posenet.{key}={default}")
        if self.lr <= 0:
            raise ConfigError(f"posenet.lr must be positive (got {self.lr})", "e.g. posenet.lr=0.01")
        if self.grid is not None and self.grid < 4:
            raise ConfigError(f"posenet.grid must be at least 4 (got {self.grid})",
                              "leave it out for max(8, input_size // 16)")


@dataclass
class LocationConfig:
    """Budget and settings of the location test (all overridable as ``fconv.FIELD=VALUE``).

    Args:
        borders: Border widths swept, in input pixels.
        content: Content size ``c``; default twice the model's largest stride (rounded to a multiple of it).
        num_train: Training images (each gives a top-left and a bottom-right canvas).
        num_test: Test images, disjoint from the training ones.
        alpha: Significance level of the whole sweep (Bonferroni-split over the borders).
        l2: L2 penalty of the logistic regression.
        batch_size: Canvases per forward pass.
        resolution: Relative size of the noise added to the pooled features (see :func:`dither`); differences below
            it are not counted as location information.
        seed: Seed of that noise.
    """

    borders: tuple[int, ...] = (0, 16, 32, 64, 128)
    content: int | None = None
    num_train: int = 32
    num_test: int = 32
    alpha: float = 0.01
    l2: float = 1e-2
    batch_size: int = 16
    resolution: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        borders = (self.borders,) if isinstance(self.borders, int) else self.borders
        self.borders = tuple(sorted({int(b) for b in borders}))
        if not self.borders or self.borders[0] < 0:
            raise ConfigError(f"fconv.borders must be non-negative pixel widths (got {self.borders})",
                              "e.g. fconv.borders=0,16,32,64,128")
        if self.num_train < 2 or self.num_test < 2:
            raise ConfigError("fconv.num_train and fconv.num_test must be at least 2", "e.g. fconv.num_test=32")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"fconv.alpha must be in (0, 1) (got {self.alpha})", "e.g. fconv.alpha=0.01")
        if self.content is not None and self.content < 1:
            raise ConfigError(f"fconv.content must be positive (got {self.content})", "leave it out for the default")
        if self.l2 < 0 or self.batch_size < 1 or self.resolution < 0:
            raise ConfigError("fconv.l2 and fconv.resolution must be >= 0 and fconv.batch_size >= 1",
                              "use the defaults")


def _declared(name: str) -> BaselineRunner:
    """What a built-in name holds until :mod:`ppp_audit.metrics.baselines` registers its runner: its options and
    place are known without torch, its runner is not."""

    def not_loaded(inputs: Any, config: Any, label: str | None) -> dict[str, Any]:
        raise RuntimeError(f"baseline '{name}' runs from ppp_audit.metrics.baselines: import it to register the runner")

    return not_loaded


BUILTIN_BASELINES: dict[str, dict[str, Any]] = {
    "posenet": {"config": PosENetConfig, "per_scheme": True},
    "fconv": {"config": LocationConfig, "per_scheme": True},
    "uneven": {"config": None, "per_scheme": False},
}
"""The built-in baselines in their order, with the metadata :mod:`ppp_audit.metrics.baselines.runner` registers their
runners with (``tests/test_one_way.py`` checks that they agree)."""
for _name, _metadata in BUILTIN_BASELINES.items():
    BASELINE_RUNNERS.add(_name, _declared(_name), **_metadata)
del _name, _metadata


def options_class(name: str) -> type | None:
    """The option dataclass of baseline ``name`` (``None`` when it takes no options).

    Raises:
        ConfigError: No baseline has that name (with the closest registered one).
    """
    return BASELINE_RUNNERS.entry(name).metadata["config"]


def validate_baselines(names: Iterable[str], options: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Check baseline names and their options before any work; returns the names, deduplicated, in order."""
    names = list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    for name in names:
        options_class(name)  # raises, with the closest name, for an unknown one
    for name, values in (options or {}).items():
        if name not in names:
            raise ConfigError(f"options given for baseline '{name}', which is not requested",
                              f"add it to --baselines, or drop the {name}.* options")
        baseline_config(name, values)
    return names


def baseline_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The validated config dataclass of baseline ``name`` with ``options`` applied."""
    cls = options_class(name)
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
        cls = options_class(name)
        if cls is None:
            raise ConfigError(f"baseline '{name}' takes no options", f"options exist for {', '.join(_configurable())}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        if option not in types:
            raise ConfigError(f"unknown option '{name}.{option}'", f"{name} takes {', '.join(sorted(types))}")
        options.setdefault(name, {})[option] = _convert(value.strip(), types[option], f"{name}.{option}")
    return options


def _configurable() -> list[str]:
    """The registered baselines that take options, plugins included (for an error's hint)."""
    return [e.name for e in BASELINE_RUNNERS.entries() if e.metadata["config"] is not None]


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


__all__ = ["BASELINE_RUNNERS", "BUILTIN_BASELINES", "ENTRY_POINT_GROUP", "BaselineRunner", "LocationConfig",
           "PosENetConfig", "baseline_config", "options_class", "parse_baseline_options", "register_baseline",
           "validate_baselines"]
