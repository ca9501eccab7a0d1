"""The padding-scheme registry.

The built-ins register in code with :func:`register_padding` (in :mod:`.schemes`); installed distributions register
through the entry-point group ``ppp_audit.paddings``, discovered on first lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple, Optional

from torch import Tensor

from ..errors import UnknownPaddingError, first_line
from ..registry import DISABLE_PLUGINS_ENV, Registry

ENTRY_POINT_GROUP = "ppp_audit.paddings"

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
    replaces: ClassVar[bool] = True
    """False for the null scheme ``native`` (:class:`~ppp_audit.paddings.schemes.NativePadding`): the patcher finds and
    lists the padding sites and leaves every layer as it is, so the model's own padding is measured like any
    scheme, by the same code."""

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


def _check_factory(obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"{obj!r} is not a class or factory")


PADDINGS: Registry[Callable[[], PaddingScheme]] = Registry(
    "padding scheme", error=UnknownPaddingError, entry_point_group=ENTRY_POINT_GROUP, plugin_noun="padding plugin",
    hint="available: {available}; `ppp-audit paddings` lists them with descriptions", check=_check_factory,
    sort_names=True)
"""Scheme name -> class or zero-argument factory."""


def register_padding(cls: type[PaddingScheme]) -> type[PaddingScheme]:
    """Class decorator that registers a scheme under its ``name``.

    ppp-audit's built-ins use it; so can tests, notebooks and scripts (this process only). Distributions register
    through the ``ppp_audit.paddings`` entry-point group instead.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a non-empty class attribute `name`")
    return PADDINGS.add(cls.name, cls)


def list_paddings() -> list[SchemeInfo]:
    """All registered schemes, sorted by name."""
    infos = []
    for entry in PADDINGS.entries():
        description = getattr(entry.obj, "description", "") or first_line(entry.obj.__doc__ or "")
        infos.append(SchemeInfo(name=entry.name, description=description, distribution=entry.distribution))
    return infos


def get_padding(scheme: str | PaddingScheme) -> PaddingScheme:
    """Resolve a scheme name (or pass an instance through)."""
    if isinstance(scheme, PaddingScheme):
        return scheme
    entry = PADDINGS.entry(scheme)
    dist = entry.distribution
    try:
        instance = entry.obj()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a third-party factory that fails (even by sys.exit()) must not take the tool down
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
    PADDINGS.reset_discovery()


__all__ = [
    "ENTRY_POINT_GROUP",
    "DISABLE_PLUGINS_ENV",
    "PADDINGS",
    "Pad4",
    "PaddingScheme",
    "SchemeInfo",
    "SiteGeometry",
    "register_padding",
    "list_paddings",
    "get_padding",
]
