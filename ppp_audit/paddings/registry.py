"""The padding-scheme registry.

Schemes are discovered through the entry-point group ``ppp_audit.paddings`` (the built-ins are registered that way in
ppp-audit's own ``pyproject.toml``) and can also be registered at run time with :func:`register_padding`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, ClassVar, NamedTuple, Optional

from torch import Tensor

from ..errors import UnknownPaddingError

ENTRY_POINT_GROUP = "ppp_audit.paddings"
DISABLE_PLUGINS_ENV = "PPP_AUDIT_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "ppp-audit"

Pad4 = tuple[int, int, int, int]
"""Padding amounts in ``F.pad`` order for the last two dims: (left, right, top, bottom)."""


class SiteGeometry(NamedTuple):
    """Where a padded *linear* layer (a convolution or an average pool) sits, as a scheme's output hook sees it.

    The layer computed ``out = linear(scheme.pad(x, pad)) + bias`` for an input ``x`` of size ``input_size``.
    """

    input_size: tuple[int, int]
    """(H, W) of the map before padding."""
    pad: Pad4
    """The padding the layer asked for, (left, right, top, bottom)."""
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    bias: Optional[Tensor]
    """What the layer added after the linear map: shape (C,), or (N, C) for per-sample biases (CondConv); ``None``
    for pools and bias-free convolutions."""


class PaddingScheme:
    """A way to pad the border of a feature map.

    Subclasses set ``name`` and ``description`` and implement :meth:`pad`. The patcher calls :meth:`pad` in place of the
    padding a layer did before, with the same amounts, so output shapes never change (unless ``keeps_shape`` is
    False). A scheme that must also act on the result of the layer (e.g. ``partial``, which re-weights border outputs)
    overrides :meth:`adjust_output`; the patcher then applies it to convolutions and average pools only.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    keeps_shape: ClassVar[bool] = True
    """False for schemes whose :meth:`pad` returns fewer pixels than asked (``valid``). The patcher then checks the
    model's output shapes on an example input before handing the model back."""

    def pad(self, x: Tensor, pad: Pad4) -> Tensor:
        """Pad the last two dims of ``x`` (N, C, H, W) by ``pad`` = (left, right, top, bottom)."""
        raise NotImplementedError

    def adjust_output(self, out: Tensor, site: SiteGeometry) -> Tensor:
        """Optional hook on the output of each patched linear layer (convolution or average pool).

        Args:
            out: What the layer computed from ``self.pad(x, site.pad)``, bias included.
            site: The layer's geometry and bias.

        Returns:
            The output to use instead. The default returns ``out`` unchanged.
        """
        return out

    @property
    def adjusts_output(self) -> bool:
        """Whether this scheme overrides :meth:`adjust_output` (and so only applies to linear layers)."""
        return type(self).adjust_output is not PaddingScheme.adjust_output

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


@dataclass(frozen=True)
class SchemeInfo:
    """One registered scheme, as listed by ``ppp-audit paddings``."""

    name: str
    description: str
    distribution: str


_RUNTIME: dict[str, tuple[Callable[[], PaddingScheme], str]] = {}
_DISCOVERED: dict[str, tuple[Callable[[], PaddingScheme], str]] | None = None


def register_padding(cls: type[PaddingScheme]) -> type[PaddingScheme]:
    """Class decorator that registers a scheme in this process (tests, notebooks, scripts).

    Distributions should register through the ``ppp_audit.paddings`` entry-point group instead.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a non-empty class attribute `name`")
    _RUNTIME[cls.name] = (cls, "(registered at run time)")
    return cls


def _plugins_disabled() -> bool:
    return os.environ.get(DISABLE_PLUGINS_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _discover() -> dict[str, tuple[Callable[[], PaddingScheme], str]]:
    global _DISCOVERED
    if _DISCOVERED is not None:
        return _DISCOVERED
    found: dict[str, tuple[Callable[[], PaddingScheme], str]] = {}
    skip_third_party = _plugins_disabled()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        if skip_third_party and dist != OWN_DISTRIBUTION:
            continue
        try:
            factory = ep.load()
            if not callable(factory):
                raise TypeError(f"entry point {ep.value!r} is not a class or factory")
        except Exception as exc:  # a broken plugin must never take the tool down
            warnings.warn(
                f"padding plugin '{ep.name}' from distribution '{dist}' failed to load and is skipped: {exc!r} "
                f"(set {DISABLE_PLUGINS_ENV}=1 to skip third-party plugins)",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        found[ep.name] = (factory, dist)
    _DISCOVERED = found
    return found


def _all() -> dict[str, tuple[Callable[[], PaddingScheme], str]]:
    return {**_discover(), **_RUNTIME}


def list_paddings() -> list[SchemeInfo]:
    """All registered schemes, sorted by name."""
    infos = []
    for name, (factory, dist) in sorted(_all().items()):
        doc_lines = (factory.__doc__ or "").strip().splitlines()
        description = getattr(factory, "description", "") or (doc_lines[0] if doc_lines else "")
        infos.append(SchemeInfo(name=name, description=description, distribution=dist))
    return infos


def get_padding(scheme: str | PaddingScheme) -> PaddingScheme:
    """Resolve a scheme name (or pass an instance through)."""
    if isinstance(scheme, PaddingScheme):
        return scheme
    registry = _all()
    if scheme not in registry:
        import difflib

        available = ", ".join(sorted(registry)) or "none (is ppp-audit installed? run `pip install -e .`)"
        close = difflib.get_close_matches(scheme, list(registry), n=1)
        raise UnknownPaddingError(
            f"unknown padding scheme '{scheme}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
            f"available: {available}; `ppp-audit paddings` lists them with descriptions",
        )
    factory, dist = registry[scheme]
    try:
        instance = factory()
    except Exception as exc:  # a third-party factory that fails must not take the tool down with a traceback
        raise UnknownPaddingError(
            f"padding plugin '{scheme}' from distribution '{dist}' failed to create its scheme: {exc!r}",
            f"fix or uninstall '{dist}', or set {DISABLE_PLUGINS_ENV}=1 to skip third-party plugins",
        ) from exc
    if not isinstance(instance, PaddingScheme):
        raise UnknownPaddingError(
            f"padding plugin '{scheme}' from distribution '{dist}' did not produce a PaddingScheme "
            f"(got {type(instance).__name__})",
            f"fix or uninstall '{dist}', or set {DISABLE_PLUGINS_ENV}=1 to skip third-party plugins",
        )
    return instance


def _reset_discovery() -> None:
    """Forget discovered entry points (for tests that install plugins or toggle the env var)."""
    global _DISCOVERED
    _DISCOVERED = None


__all__ = [
    "ENTRY_POINT_GROUP",
    "DISABLE_PLUGINS_ENV",
    "Pad4",
    "PaddingScheme",
    "SchemeInfo",
    "SiteGeometry",
    "register_padding",
    "list_paddings",
    "get_padding",
]
