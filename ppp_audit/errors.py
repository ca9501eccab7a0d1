"""Errors a user can act on: each names the problem and how to fix it."""

from __future__ import annotations


class PPPAuditError(Exception):
    """Base class for every error ppp-audit reports to a user.

    Args:
        message: What went wrong, in one line.
        hint: How to fix it, in one line.
    """

    exit_code: int = 2

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class UnknownModelError(PPPAuditError):
    """The model name is not a timm architecture."""


class WeightsUnavailableError(PPPAuditError):
    """Pretrained weights could not be downloaded or read."""


class UnknownPaddingError(PPPAuditError):
    """No padding scheme is registered under that name."""


class PaddingShapeError(PPPAuditError):
    """A padding scheme cannot keep a layer's output shape (e.g. reflect on a 1x1 map, valid on a residual net)."""

    layer: str | None = None
    """The module name of the layer where it failed, when known."""


class NothingToPatchError(PPPAuditError):
    """The model has no padding a scheme could replace (e.g. a pure ViT)."""


class ImageSourceError(PPPAuditError):
    """An image folder is missing, empty, unreadable, or holds images smaller than the window."""


class FeatureError(PPPAuditError):
    """A tapped layer produced NaN/inf or a shape the measurement cannot use."""

    exit_code = 1


class GeometryError(PPPAuditError):
    """A model runs at no crop size the audit can use, or cannot be rebuilt to run at one."""

    exit_code = 1


class ReportFileError(PPPAuditError):
    """A saved report is missing, unreadable, or cannot be re-rendered where asked."""


class HubPushError(PPPAuditError):
    """A push to the Hugging Face Hub failed (offline, auth, server); the report is already saved locally."""

    exit_code = 1


class AuditInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped an audit. A ``KeyboardInterrupt``, so code that does not know it still stops.

    Args:
        report: What was measured before the stop, marked ``report.interrupted``; ``None`` when nothing usable was.
    """

    def __init__(self, report=None) -> None:
        super().__init__()
        self.report = report
