"""Errors a user can act on: each names the problem and how to fix it.

As in ``huggingface_hub``, each error also derives from the built-in exception that fits it, so code that does not know
ppp-audit still catches it: a bad name or option is a ``ValueError``, a file or network problem an ``OSError`` (a
missing file a ``FileNotFoundError``), a failed measurement a ``RuntimeError``. Every error pickles with its fields,
so one raised in a ``DataLoader`` worker reaches the main process intact (see :func:`ppp_audit.images.image_loader`).
"""

from __future__ import annotations

from typing import Any


class PPPAuditError(Exception):
    """Base class for every error ppp-audit reports to a user.

    ``str(error)`` is ``"message (hint)"`` (just ``message`` without a hint), and ``error.args == (str(error),)``.

    Args:
        message: What went wrong, in one line.
        hint: How to fix it, in one line.

    Attributes:
        exit_code: The CLI's exit status for this error (2: the input is wrong; 1: the run itself failed).
    """

    exit_code: int = 2

    def __init__(self, message: str, hint: str = "") -> None:
        # One argument only: OSError would read two as (errno, strerror) and print "[Errno message] hint".
        super().__init__(f"{message} ({hint})" if hint else message)
        self.message = message
        self.hint = hint

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from ``args`` (the joined text), which would lose the split into message and hint.
        return type(self), (self.message, self.hint), dict(self.__dict__)


class ConfigError(PPPAuditError, ValueError):
    """An option has a value or type it cannot take, or options that do not fit together (an
    :class:`~ppp_audit.config.AuditConfig` or ``FinetuneConfig`` field, a baseline option)."""


class UnknownModelError(PPPAuditError, ValueError):
    """The model name is not a timm architecture."""


class WeightsUnavailableError(PPPAuditError, OSError):
    """Pretrained weights could not be downloaded or read."""


class WeightsFileNotFoundError(WeightsUnavailableError, FileNotFoundError):
    """The weights file given does not exist."""


class UnknownPaddingError(PPPAuditError, ValueError):
    """No padding scheme is registered under that name."""


class PaddingShapeError(PPPAuditError, ValueError):
    """A padding scheme cannot keep a layer's output shape (e.g. reflect on a 1x1 map, valid on a residual net).

    Args:
        message: What went wrong, in one line.
        hint: How to fix it, in one line.
        layer: The module name of the layer where it failed, when known.
    """

    def __init__(self, message: str, hint: str = "", layer: str | None = None) -> None:
        super().__init__(message, hint)
        self.layer = layer


class NothingToPatchError(PPPAuditError, ValueError):
    """The model has no padding a scheme could replace (e.g. a pure ViT)."""


class ImageSourceError(PPPAuditError, OSError):
    """An image folder is missing, empty, unreadable, or holds images smaller than the window.

    Attributes:
        image: For an error about one image that cannot be read (made by :meth:`unreadable`), the image as messages
            name it (a path, ``row 3 of hfds/beans (train)``); ``None`` otherwise. An audit skips such images unless
            ``strict_images`` is set.
        reason: Why that image cannot be read, in one line (``not an image (PIL cannot identify its format)``).
    """

    image: str | None = None
    reason: str | None = None

    @classmethod
    def unreadable(cls, image: str, reason: str, hint: str = "remove or fix the file") -> "ImageSourceError":
        """The error for one image that cannot be read: ``cannot read image 'IMAGE': REASON``."""
        error = cls(f"cannot read image '{image}': {reason}", hint)
        error.image, error.reason = image, reason  # set after construction: they pickle with the error
        return error


class ImageFolderNotFoundError(ImageSourceError, FileNotFoundError):
    """The image folder given does not exist."""


class FeatureError(PPPAuditError, RuntimeError):
    """A tapped layer produced NaN/inf or a shape the measurement cannot use."""

    exit_code = 1


class GeometryError(PPPAuditError, ValueError):
    """A model runs at no crop size the audit can use, or cannot be rebuilt to run at one."""

    exit_code = 1


class ReportFileError(PPPAuditError, OSError):
    """A saved report is missing, unreadable, or cannot be re-rendered where asked."""


class HubPushError(PPPAuditError, OSError):
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


# ---- an error in one line --------------------------------------------------------------------------------------------

LINE_LIMIT = 300
"""Most characters :func:`first_line` keeps: a message quoted inside another (``cannot read 'x': ...``) stays one
readable line even when the quoted one is a dump (a torch shape error listing a whole state dict)."""


def _text(obj: BaseException | object) -> str:
    """``str(obj)``; an exception whose ``__str__`` itself fails reads as empty (an error report must not raise)."""
    try:
        return str(obj)
    except Exception:  # noqa: BLE001 - a broken __str__ is the quoted error's problem, not the report's
        return ""


def first_line(text: BaseException | object, limit: int = LINE_LIMIT) -> str:
    """The first non-blank line of an exception's message (or of any text), stripped, at most ``limit`` characters.

    Errors are reported in one line, and the rest of a message is often a trace (torch's C++ frames) or a dump.
    An exception with an empty or blank message gives its type's name, so a message quoting it never ends in a bare
    colon; blank text gives ``""``.

    Args:
        text: An exception, or anything ``str()`` turns into text.
        limit: Most characters kept.
    """
    line = next((line.strip() for line in _text(text).splitlines() if line.strip()), "")
    if not line and isinstance(text, BaseException):
        return type(text).__name__
    return line[:limit]


def describe_error(exc: BaseException, limit: int = LINE_LIMIT) -> str:
    """An exception as one line that names its type: ``TypeName: first line``, or ``TypeName`` when its message is
    empty or blank (e.g. a bare ``raise KeyError()``); ``limit`` bounds the message part (see :func:`first_line`)."""
    line = first_line(_text(exc), limit)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def one_line(text: BaseException | object) -> str:
    """All of a text on one line: every run of whitespace (line breaks included) becomes one space, nothing is cut.

    For texts whose every line counts (a hand-edited run record's reason, a dataset loader's message); an exception
    with an empty or blank message gives its type's name, as in :func:`first_line`.
    """
    joined = " ".join(_text(text).split())
    if not joined and isinstance(text, BaseException):
        return type(text).__name__
    return joined
