"""Padding schemes: the registry, the built-ins and the patcher (docs/paddings.md)."""

from .layers import PAD_MODULES, PaddingKind, padding_kind, same_padding, static_padding
from . import schemes  # noqa: F401  (registers the built-in schemes)
from .patcher import PatchedSite, PatchSummary, UnpatchedSite, padding, patch_padding
from .registry import (
    DISABLE_PLUGINS_ENV,
    ENTRY_POINT_GROUP,
    PADDINGS,
    Pad4,
    PaddingScheme,
    SchemeInfo,
    SiteGeometry,
    get_padding,
    list_paddings,
    register_padding,
)
from .trace import PaddingOp, PaddingRecorder, count_zero_padding, trace_padding

__all__ = [
    "DISABLE_PLUGINS_ENV",
    "ENTRY_POINT_GROUP",
    "PAD_MODULES",
    "PADDINGS",
    "Pad4",
    "PaddingKind",
    "PaddingOp",
    "PaddingRecorder",
    "PaddingScheme",
    "PatchSummary",
    "PatchedSite",
    "SchemeInfo",
    "SiteGeometry",
    "UnpatchedSite",
    "count_zero_padding",
    "get_padding",
    "list_paddings",
    "padding",
    "padding_kind",
    "patch_padding",
    "register_padding",
    "same_padding",
    "static_padding",
    "trace_padding",
]
