"""The margin plan: the context ``m`` around the crop, decided once per audit from the model's receptive fields.

Everything about the margin is decided here (docs/metrics.md, "How the margin is chosen"): the grid margins lie on,
the cap (``m <= S``, or the margin asked for), the window the receptive fields are probed at, the margin chosen
from the influence profiles (moved up to the next one the model runs at where needed), which layers stay partial,
and the second, smaller margin measured for them. The auditor asks :func:`probe_window` before it probes the
receptive fields and :func:`plan_margin` after; the report's ``geometry.margin`` is :meth:`MarginPlan.summary`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .geometry import DELTA, Geometry, on_grid
from .receptive import Influence, MarginChoice, choose_margin


@dataclass(frozen=True)
class MarginPlan:
    """The margin of one audit and how it was set.

    Attributes:
        size: The crop side ``S``.
        margin: The margin ``m`` measured (0 for the mean-feature estimator).
        grid: The multiple margins lie on (every tapped map shifts by whole positions).
        cap: The largest margin considered.
        probe_window: The window the receptive fields were probed at.
        tolerance: Share of a layer's influence allowed beyond the margin.
        chosen_by: ``--margin``, ``receptive fields``, a default (with the reason), or ``none`` (mean-feature).
        choice: What the influence profiles chose, when they chose.
        partial: Per tapped layer, whether more than the tolerance of its influence lies beyond the margin.
        second_margin: The smaller margin measured on the same windows for the partial layers (``None`` without).
    """

    size: int
    margin: int
    grid: int
    cap: int
    probe_window: int
    tolerance: float
    chosen_by: str
    choice: MarginChoice | None
    partial: tuple[bool, ...]
    second_margin: int | None

    @property
    def window(self) -> int:
        """Window side ``S + 2m``."""
        return self.size + 2 * self.margin

    def summary(self, influence: dict[str, Any] | None = None) -> dict[str, Any]:
        """The report's ``geometry.margin``: how the margin was set and what it costs; ``influence`` says how the
        receptive-field profiles were obtained."""
        if self.chosen_by.startswith("none"):
            return {"chosen_by": self.chosen_by, "margin": 0}
        sides = [self.size, self.window] + ([self.size + 2 * self.second_margin] if self.second_margin else [])
        return {"chosen_by": self.chosen_by, "margin": self.margin, "tolerance": self.tolerance, "cap": self.cap,
                "grid": self.grid, "probe_window": self.probe_window, "second_margin": self.second_margin,
                **({"influence": influence} if influence is not None else {}),
                # what one image costs in pixels through the model (crop, window and second window) over the crop's
                "pixels_per_image": sum(side * side for side in sides) / self.size**2}


def margin_cap(fitted: Geometry) -> int:
    """The largest margin considered: ``m <= S`` on the grid, or the margin asked for."""
    unit = fitted.margin_unit
    return max(unit, on_grid(fitted.size, unit, "down"), fitted.margin)


def probe_window(fitted: Geometry, runs_with: Callable[[int], bool]) -> int:
    """The window to probe the receptive fields at: the largest a margin may need (``S + 2 cap``) when the margin is
    to be chosen and the model runs there, else the fitted window."""
    cap = margin_cap(fitted)
    if fitted.estimator == DELTA and cap > fitted.margin and runs_with(cap):
        return fitted.size + 2 * cap
    return fitted.size + 2 * fitted.margin


def plan_margin(fitted: Geometry, influence: Sequence[Influence], runs_with: Callable[[int], bool], *,
                requested: int | None, tolerance: float, probed_at: int, cap: int | None = None,
                limit: int | None = None) -> MarginPlan:
    """The audit's margin from the fitted geometry and the influence profiles probed at ``probed_at``.

    Args:
        fitted: The fitted geometry (its ``margin`` the asked-for or default one).
        influence: Per tapped layer, its influence profile.
        runs_with: Whether the model runs at a margin (:class:`~ppp_audit.geometry.MarginCheck`).
        requested: ``--margin``, or ``None`` to choose it.
        tolerance: Share of influence allowed beyond the margin.
        probed_at: The window the profiles were probed at (:func:`probe_window`).
        cap: The largest margin considered (default :func:`margin_cap`; photo tiles may look farther, up to what the
            probe measured).
        limit: The most context the images hold around a crop (photos: :func:`~ppp_audit.canvas.tile_photos`), or
            ``None``; the margin is chosen within it, and the layers it leaves uncovered are partial.
    """
    unit, size = fitted.margin_unit, fitted.size
    cap = margin_cap(fitted) if cap is None else cap
    if limit is not None and requested is None:
        cap = max(unit, min(cap, limit))
    if fitted.estimator != DELTA:
        return MarginPlan(size, fitted.margin, unit, cap, probed_at, tolerance, "none (mean-feature estimator)", None,
                          tuple(False for _ in influence), None)
    margin, choice = fitted.margin, None
    if requested is None and probed_at > size + 2 * fitted.margin:
        candidates = range(unit, cap + 1, unit)
        choice = choose_margin(influence, candidates, tolerance)
        runnable = next((m for m in candidates if m >= choice.margin and runs_with(m)), fitted.margin)
        if runnable != choice.margin:  # the chosen margin does not run: the next one that does, and what it leaves
            choice = choose_margin(influence, [m for m in candidates if m >= runnable], tolerance)
        if limit is not None and not all(choice.fits):  # photos bound the context: all they hold serves the rest
            widest = next((m for m in reversed(candidates) if runs_with(m)), choice.margin)
            choice = choose_margin(influence, [widest], tolerance)
        margin = choice.margin
    chosen_by = ("--margin" if requested is not None else "receptive fields" if choice is not None else
                 f"default (the model runs at no window up to {size + 2 * cap} px to probe)")
    if limit is not None and requested is None and choice is None and margin > cap:  # a default the photos cut
        margin = cap
        chosen_by += f", cut to the {cap} px the photos hold around a crop"
    elif limit is not None and requested is None and choice is not None and not all(choice.fits):
        chosen_by += f", within the {cap} px the photos hold around a crop"
    partial = tuple(inf.beyond(margin) > tolerance for inf in influence)
    second = None
    if any(partial):  # the largest margin on the grid at most half of m that the model runs at
        second = on_grid(margin // 2, unit, "down")
        while second >= unit and not runs_with(second):
            second -= unit
        second = second if second >= unit else None
    return MarginPlan(size, margin, unit, cap, probed_at, tolerance, chosen_by, choice, partial, second)


__all__ = ["MarginPlan", "margin_cap", "plan_margin", "probe_window"]
