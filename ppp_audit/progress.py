"""What a run is doing, on stderr: :class:`ProgressReporter` names each phase and counts where it can.

On a terminal it is a live rich display (a spinner for set-up phases, a bar with the time left while measuring),
erased when the run ends. When stderr is not a terminal (a log, CI, a pipe) it writes plain lines, never carriage
returns: one line per phase and a heartbeat every :data:`HEARTBEAT_S` seconds while a phase advances, once the run
has lasted :data:`QUIET_S` seconds, so short runs (and their one-line errors) stay clean. Disabled, it prints nothing.

Everything that reports progress (the auditor's set-up, measuring loop and baselines, fine-tuning) takes one reporter
or a ``progress`` flag, through :func:`progress_bar`. Under ``torchrun`` only rank 0 reports.

Torch-free; rich is imported only for the live display.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from .launch import process_rank

HEARTBEAT_S = 30.0
"""Seconds between two plain lines about the same phase (stderr not a terminal)."""
QUIET_S = 60.0
"""Plain lines start once a run has lasted this long: a short run writes nothing into the log but its result."""


class ProgressReporter:
    """The phases of a run and the progress inside each, on stderr (see the module docstring).

    Use it as a context manager around the run; entering it again (an inner step given the same reporter) is a no-op.
    :meth:`add_task` and :meth:`update` take the arguments of ``rich.progress.Progress``'s, so a loop written for a
    rich progress bar reports through it unchanged.

    Args:
        enabled: Report at all (off under ``torchrun`` except on rank 0).
        live: A live display (default: when stderr is a terminal) rather than plain lines.
        stream: Where plain lines go (default ``sys.stderr`` as it is now).
        heartbeat_s: Seconds between plain lines about one phase (default :data:`HEARTBEAT_S`).
        quiet_s: Seconds before the first plain line (default :data:`QUIET_S`).
    """

    def __init__(self, enabled: bool = True, *, live: bool | None = None, stream: TextIO | None = None,
                 heartbeat_s: float | None = None, quiet_s: float | None = None) -> None:
        self.enabled = enabled and process_rank()[0] == 0
        self.stream = stream if stream is not None else sys.stderr
        self.live = _isatty(self.stream) if live is None else live
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.quiet_s = QUIET_S if quiet_s is None else quiet_s
        self.started = time.perf_counter()
        self.description = ""
        self.total: float | None = None
        self.completed = 0.0
        self._phase_started = self.started
        self._last_line: float | None = None  # when the last plain line was written
        self._announced = True  # whether the current phase has had its plain line
        self._depth = 0
        self._display: Any = None  # the rich Progress while live
        self._task: Any = None

    # -- the run ------------------------------------------------------------------------------------------------------

    def __enter__(self) -> "ProgressReporter":
        self._depth += 1
        if self._depth == 1 and self.enabled and self.live:
            self._display = _live_display()
            self._display.start()
            if self.description:
                self._task = self._display.add_task(self.description, total=self.total, completed=self.completed)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._display is not None:
            self._display.stop()
            self._display = self._task = None

    def phase(self, description: str, total: float | None = None) -> None:
        """Start the phase ``description`` (ending the previous one), with ``total`` steps when it counts them."""
        if not self.enabled:
            return
        self.description, self.total, self.completed = description, total, 0.0
        self._phase_started = time.perf_counter()
        self._announced = False
        if self._display is not None:
            if self._task is not None:
                self._display.remove_task(self._task)
            self._task = self._display.add_task(description, total=total)
        elif not self.live:
            self._plain()

    def update(self, task: Any = None, *, advance: float = 0, description: str | None = None) -> None:
        """Advance the current phase by ``advance`` steps, optionally renaming it (``task``: as rich's, ignored)."""
        if not self.enabled:
            return
        self.completed += advance
        if description is not None:
            self.description = description
        if self._display is not None and self._task is not None:
            self._display.update(self._task, advance=advance, description=description)
        elif not self.live:
            self._plain()

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        """``rich.progress.Progress.add_task``'s spelling of :meth:`phase`."""
        self.phase(description, total)
        return 0

    def advance(self, task: Any = None, advance: float = 1) -> None:
        """``rich.progress.Progress.advance``'s spelling of :meth:`update`."""
        self.update(advance=advance)

    # -- plain lines --------------------------------------------------------------------------------------------------

    def _plain(self) -> None:
        """Write the current phase's line when it is due: its first line, then a heartbeat every ``heartbeat_s``."""
        now = time.perf_counter()
        if now - self.started < self.quiet_s:
            return
        if self._announced and self._last_line is not None and now - self._last_line < self.heartbeat_s:
            return
        self._announced, self._last_line = True, now
        self.stream.write(f"ppp-audit: {_clock(now - self.started)} {self.description}{self._status(now)}\n")
        self.stream.flush()

    def _status(self, now: float) -> str:
        """``: 24/64, about 1:30 left`` (``: 0:40 so far`` without a count, nothing right after the phase began)."""
        spent = now - self._phase_started
        if self.total is None:
            return f": {_clock(spent)} so far" if spent >= 1 else ""
        if not self.completed:
            return f" (0/{self.total:g})"
        left = (self.total - self.completed) * spent / self.completed
        return f": {_steps(self.completed)}/{self.total:g}, about {_clock(left)} left"


def progress_bar(progress: "bool | ProgressReporter") -> ProgressReporter:
    """The reporter to use: ``progress`` itself when it is one, else a new one, enabled or not."""
    if isinstance(progress, ProgressReporter):
        return progress
    return ProgressReporter(bool(progress))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False


def _steps(completed: float) -> int:
    """Whole steps done (a scheme's share of a batch is a fraction of one): never rounded up to what is not done."""
    return int(completed + 1e-9)


def _clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour)."""
    seconds = int(max(seconds, 0))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _live_display() -> Any:
    """A transient rich Progress on stderr: spinner, phase, bar, then ``k/n · time left`` or the time spent."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn
    from rich.text import Text

    class _Count(ProgressColumn):
        def render(self, task: Any) -> Text:
            if task.total is None:
                return Text(_clock(task.elapsed or 0), style="progress.elapsed")
            left = "" if task.time_remaining is None else f" · {_clock(task.time_remaining)} left"
            return Text(f"{_steps(task.completed)}/{task.total:g}{left}", style="progress.remaining")

    return Progress(SpinnerColumn(), TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                    _Count(), console=Console(stderr=True), transient=True)


__all__ = ["HEARTBEAT_S", "QUIET_S", "ProgressReporter", "progress_bar"]
