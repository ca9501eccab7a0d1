"""Assert PPP bounds on a model in tests (docs/pytest.md); the ``ppp`` pytest fixture is a thin wrapper over these
helpers.

>>> from ppp_audit.testing import assert_ppp
>>> assert_ppp(model, max_strength=0.1, layers="last")              # the last stage stays below 0.1
>>> assert_ppp("resnet50", layers={"layer3": 0.2, "layer4": 0.1})   # per-layer bounds
>>> assert_ppp(model, max_top_share=0.5, layers="all")             # no 1 % of a layer's channels carries half its PPP

The numbers are the CLI's: every check runs :func:`ppp_audit.engine.audit` with an
:class:`~ppp_audit.engine.AuditConfig` and compares the Δ-estimator strength ``RMS(P) / RMS(σ)`` of each bounded
layer. A failed check raises an :class:`AssertionError` subclass whose message is one plain-text table of measured
versus allowed per layer.

Nothing heavy is imported here at module level: torch and timm load when a measurement runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import PPPAuditError
from .files import atomic_write
from .report import NATIVE, format_number

if TYPE_CHECKING:
    import torch.nn as nn

    from .report import LayerStats, Report, SchemeResult

Layers = str | Sequence[str] | Mapping[str, float | None]
"""Which layers a check covers: ``"last"`` (last stage), ``"all"`` (every stage), module names, or ``{name: bound}``."""

BASELINE_FORMAT = 1
BASELINE_SUFFIX = ".ppp.json"
_SETTINGS_COMPARED = ("scheme", "data", "num_images", "input_size", "margin", "seed")


class PPPAssertionError(AssertionError):
    """A PPP check failed; the message is a plain-text table (no torch internals)."""


class PPPBoundError(PPPAssertionError):
    """A measured strength is above its bound."""


class PPPRegressionError(PPPAssertionError):
    """A strength grew beyond the tolerance over its stored baseline."""


class PPPBaselineWritten(PPPAssertionError):
    """A baseline was created or regenerated. The test fails once, so an unreviewed baseline never passes silently."""


class PPPBaselineMismatch(PPPAssertionError):
    """The stored baseline was measured with other settings (images, N, input size, layers, ...)."""


@dataclass(frozen=True)
class LayerCheck:
    """One row of a check: what was measured in a layer and what was allowed."""

    name: str
    stride_px: float
    strength: float | None
    strength_ci: tuple[float, float] | None
    allowed: float | None
    baseline: float | None = None
    reference_partial: bool = False
    non_finite: bool = False
    """The layer's features held NaN/inf: it has no strength, and a bound on it fails."""
    top_share: float | None = None
    """The share of the layer's pattern energy in its strongest 1 % of channels (``None``: no pattern above the noise,
    so none concentrated; docs/metrics.md#channels-padding-aware-neurons)."""
    allowed_top_share: float | None = None

    @property
    def checked(self) -> bool:
        return self.allowed is not None or self.allowed_top_share is not None

    @property
    def strength_ok(self) -> bool:
        if self.allowed is None:
            return True
        return self.strength is not None and not math.isnan(self.strength) and self.strength <= self.allowed

    @property
    def top_share_ok(self) -> bool:
        """Within the bound on concentration: a layer with no pattern above the noise (no share) passes, a
        non-finite one fails."""
        if self.allowed_top_share is None:
            return True
        return not self.non_finite and (self.top_share is None or self.top_share <= self.allowed_top_share)

    @property
    def ok(self) -> bool:
        return self.strength_ok and self.top_share_ok


# ---------------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------------


def _named(layers: Layers) -> list[str] | None:
    """Module names the spec asks for explicitly, or ``None`` for ``"last"``/``"all"`` (the model's stages)."""
    if isinstance(layers, str):
        return None if layers in ("last", "all") else [layers]
    if isinstance(layers, (Mapping, Sequence)):
        names = list(layers)
    else:
        raise TypeError(f"layers must be 'last', 'all', module names or a {{name: bound}} dict, not {layers!r}")
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"layers must name at least one module, as strings (got {layers!r})")
    return names


def _stage_names(model: nn.Module) -> list[str]:
    return [f["module"] for f in (getattr(model, "feature_info", None) or [])]


def measure(model: nn.Module | str, *, layers: Layers = "all", padding: str | None = None, **options: Any) -> Report:
    """Measure a model's PPP exactly as ``ppp-audit`` does and return the :class:`~ppp_audit.report.Report`.

    Args:
        model: An ``nn.Module`` (a timm model or any CNN; its mode and device are restored afterwards) or a timm
            model name, built like the CLI builds it (with ``seed`` for a random init).
        layers: Which layers to tap: the model's stages for ``"last"``/``"all"``, else the named modules (read from the
            stages when they are stage names, with forward hooks otherwise).
        padding: Measure with this registered scheme swapped in beside the model's native padding.
        **options: Any other :class:`~ppp_audit.config.AuditConfig` setting, spelled as its field (``images``,
            ``images_split``, ``num_images``, ``device``, ``input_size``, ``margin``, ``seed``, ``batch_size``,
            ``pretrained``, ``weights``, ``include_pools``, ...); defaults are the CLI's. ``None`` values mean "the
            default".
    """
    from .config import AuditConfig, config_from_options
    from .engine import audit
    from .models import build_model, module_info

    named = _named(layers)
    options = {k: (str(v) if k in ("images", "weights") else v) for k, v in options.items() if v is not None}
    if isinstance(model, str):
        config = config_from_options(AuditConfig, options, model=model, paddings=[padding] if padding else [])
        built, info = build_model(model, pretrained=config.pretrained, weights=config.weights, seed=config.seed)
    else:
        built, info = model, module_info(model, input_size=options.get("input_size"))
        config = config_from_options(AuditConfig, options, model=info.name, paddings=[padding] if padding else [])
    stages = _stage_names(built)
    if named is None and not stages:
        raise PPPAuditError(
            f"model {info.name} has no feature_info, so its stages are unknown",
            "name the layers to check: layers=['block.name', ...] or layers={'block.name': bound}",
        )
    taps = None if named is None or set(named) <= set(stages) else named
    config = dataclasses.replace(config, layers=taps)
    if isinstance(model, str):
        return audit(config, model=built, info=info)
    state = _module_state(model)
    try:
        return audit(config, model=model, info=info)
    finally:
        _restore(model, *state)


def _module_state(model: nn.Module) -> tuple[bool, Any]:
    first = next(model.parameters(), None)
    return model.training, None if first is None else first.device


def _restore(model: nn.Module, training: bool, device: Any) -> None:
    model.train(training)
    if device is not None:
        model.to(device)


# ---------------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------------


def _selected(result: SchemeResult, layers: Layers) -> list[str]:
    names = [layer.name for layer in result.layers]
    named = _named(layers)
    if named is None:
        return names[-1:] if layers == "last" else names
    missing = [name for name in named if name not in names]
    if missing:
        raise ValueError(f"the report has no layer {', '.join(map(repr, missing))} (it measured {names})")
    return named


def _result_of(model: nn.Module | str | Report, layers: Layers,
               options: Mapping[str, Any]) -> tuple[Report, SchemeResult]:
    """Measure ``model`` (or take the report given instead) and pick the scheme the check is about."""
    __tracebackhide__ = True
    from .report import Report

    if isinstance(model, Report):
        report = model
    else:
        try:
            report = measure(model, layers=layers, **options)
        except PPPAuditError as exc:
            raise exc.with_traceback(None) from None  # the message says it all; hide the engine's frames
    scheme = options.get("padding") or NATIVE
    try:
        return report, report.scheme(scheme)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


def _check_bounds(layers: Layers, max_strength: float | None, max_top_share: float | None = None) -> None:
    """Fail fast, before any measuring, on bounds that are missing or not non-negative numbers (a share no more
    than 1); a bound on concentration alone needs no strength bound."""
    if max_top_share is not None:
        try:
            ok = 0 <= float(max_top_share) <= 1 and not isinstance(max_top_share, bool)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"max_top_share must be a share between 0 and 1 (got {max_top_share!r})")
        if max_strength is None and not isinstance(layers, Mapping):
            return
    given = dict(layers) if isinstance(layers, Mapping) else {"every layer": None}
    for name, bound in given.items():
        bound = max_strength if bound is None else bound
        if bound is None:
            raise ValueError(f"no bound for {name}: pass max_strength=..., or per-layer bounds: layers={{name: bound}}")
        try:
            ok = float(bound) >= 0  # NaN compares False
        except (TypeError, ValueError):
            ok = False
        if not ok or isinstance(bound, bool):
            raise ValueError(f"the bound for {name} must be a non-negative number (got {bound!r})")


def _bounds(result: SchemeResult, layers: Layers, max_strength: float | None) -> dict[str, float]:
    names = _selected(result, layers)
    if isinstance(layers, Mapping):
        return {name: float(max_strength if bound is None else bound) for name, bound in layers.items()}
    if max_strength is None:  # a bound on concentration alone
        return {}
    return {name: float(max_strength) for name in names}


def _rows(result: SchemeResult, allowed: Mapping[str, float], baseline: Mapping[str, float] | None = None,
          allowed_top: Mapping[str, float] | None = None) -> list[LayerCheck]:
    return [
        LayerCheck(
            name=layer.name, stride_px=layer.stats.stride_px, strength=layer.stats.strength,
            strength_ci=layer.stats.strength_ci, allowed=allowed.get(layer.name),
            baseline=None if baseline is None else baseline.get(layer.name), reference_partial=layer.reference_partial,
            non_finite=layer.stats.non_finite, top_share=_top_share(layer.stats),
            allowed_top_share=None if allowed_top is None else allowed_top.get(layer.name),
        )
        for layer in result.layers
    ]


def _top_share(stats: LayerStats) -> float | None:
    """The layer's share of its pattern energy in its strongest 1 % of channels (``None``: none measured)."""
    return stats.channel_shares.energy_share.get("top_1pct") if stats.channel_shares is not None else None


def _num(value: float | None) -> str:
    return format_number(value, fixed_from=None)  # bounds and baselines print as given, at any magnitude


def format_table(rows: Sequence[LayerCheck]) -> str:
    """Measured versus allowed per layer, as plain text (a baseline column when any row has one)."""
    with_baseline = any(row.baseline is not None for row in rows)
    with_share = any(row.allowed_top_share is not None for row in rows)
    header = ["layer", "stride", "strength", "95% CI", *(["baseline"] if with_baseline else []), "allowed",
              *(["top 1 %", "allowed"] if with_share else []), "result"]
    body = []
    for row in rows:
        ci = f"[{_num(row.strength_ci[0])}, {_num(row.strength_ci[1])}]" if row.strength_ci else "–"
        verdict = ("ok" if row.ok else "FAIL") if row.checked else ""
        strength = "non-finite" if row.non_finite else _num(row.strength)
        share = [_num(row.top_share), _num(row.allowed_top_share)] if with_share else []
        body.append([row.name + (" *" if row.reference_partial else ""), f"{row.stride_px:g}", strength, ci,
                     *([_num(row.baseline)] if with_baseline else []), _num(row.allowed), *share, verdict])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded).rstrip()

    lines = [line(header), *(line(r) for r in body)]
    if any(row.reference_partial for row in rows):
        lines.append("* partial reference: more of the receptive field's influence lies beyond the margin than its "
                     "tolerance")
    return "\n".join(lines)


def _describe(report: Report, result: SchemeResult) -> str:
    return (f"model {report.model['name']} ({report.model['weights']}) · padding {result.label} · "
            f"N={report.data['num_images']} {report.data['kind']} images · S={report.input_size} m={report.margin} · "
            f"{report.device}")


def _message(title: str, report: Report, result: SchemeResult, rows: Sequence[LayerCheck], *notes: str) -> str:
    lines = [title, _describe(report, result), "", format_table(rows), "",
             "strength = RMS(P) / RMS(σ), the number `ppp-audit` prints (Δ estimator, debiased)", *notes]
    return "\n".join(line for line in lines if line is not None)


def _saved(report: Report, report_path: str | Path | None) -> str | None:
    return f"full report: {report.save(report_path)}" if report_path else None


def assert_ppp(
    model: nn.Module | str | Report,
    max_strength: float | None = None,
    layers: Layers = "last",
    *,
    max_top_share: float | None = None,
    report_path: str | Path | None = None,
    **options: Any,
) -> Report:
    """Assert that a model's PPP strength stays at or below a bound in the chosen layers (and, with
    ``max_top_share``, that no layer's pattern is concentrated in a few channels).

    Args:
        model: An ``nn.Module`` or a timm model name (see :func:`measure`), or a report measured before (then
            ``options`` other than ``padding`` are not used).
        max_strength: The bound, for every layer ``layers`` selects (and for ``None`` values of a dict).
        layers: ``"last"`` (the last stage), ``"all"`` (every stage), module names, or ``{name: bound}``.
        max_top_share: A bound (0 to 1) on the share of each chosen layer's pattern energy in its strongest 1 % of
            channels (``channel_shares.energy_share.top_1pct``; docs/metrics.md#channels-padding-aware-neurons). A
            layer with no pattern significantly above the noise has no share and passes. Without ``max_strength``
            (and per-layer strength bounds) only the concentration is bounded.
        report_path: Where to save the full JSON report (always, pass or fail).
        **options: Measurement settings for :func:`measure` (``images``, ``num_images``, ``device``, ``input_size``,
            ``margin``, ``padding``, ``seed``, ``batch_size``, ``pretrained``, ``weights``).

    Returns:
        The report, for further assertions.

    Raises:
        PPPBoundError: A layer's strength (or top-1 % share) is above its bound; the message is the table of measured
            versus allowed.
    """
    __tracebackhide__ = True
    _named(layers)
    _check_bounds(layers, max_strength, max_top_share)
    report, result = _result_of(model, layers, options)
    allowed_top = None if max_top_share is None else dict.fromkeys(_selected(result, layers), float(max_top_share))
    rows = _rows(result, _bounds(result, layers, max_strength), allowed_top=allowed_top)
    saved = _saved(report, report_path)
    failed = [row for row in rows if not row.ok]
    if failed:
        checked = sum(r.checked for r in rows)
        if max_top_share is None:
            title = f"PPP strength above the bound in {len(failed)} of {checked} checked layers"
            raise PPPBoundError(_message(title, report, result, rows, saved))
        title = (f"PPP above its bounds in {len(failed)} of {checked} checked layers (strength, or the share of the "
                 "pattern energy in the strongest 1 % of channels)")
        raise PPPBoundError(_message(title, report, result, rows, saved, _TOP_SHARE_NOTE))
    return report


_TOP_SHARE_NOTE = ("top 1 % = share of the debiased pattern energy Σ P² in the layer's strongest 1 % of channels "
                   "(–: no pattern above the noise; docs/metrics.md#channels-padding-aware-neurons)")


# ---------------------------------------------------------------------------------------------------------------------
# Regression against a stored baseline
# ---------------------------------------------------------------------------------------------------------------------


def _settings(report: Report, result: SchemeResult) -> dict[str, Any]:
    return {"scheme": result.scheme, "data": report.data["kind"], "num_images": report.data["num_images"],
            "input_size": report.input_size, "margin": report.margin, "seed": report.seed}


def _baseline(report: Report, result: SchemeResult, names: Sequence[str]) -> dict[str, Any]:
    by_name = {layer.name: layer.stats for layer in result.layers}
    return {
        "format": BASELINE_FORMAT,
        "tool": report.environment,
        "created": report.created,
        "model": report.model,
        "settings": _settings(report, result),
        "layers": {name: {"strength": by_name[name].strength, "strength_ci": by_name[name].strength_ci}
                   for name in names},
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=1) + "\n")


def assert_ppp_regression(
    model: nn.Module | str | Report,
    baseline_path: str | Path,
    tolerance: float = 0.05,
    *,
    rtol: float = 0.0,
    layers: Layers = "all",
    regen: bool = False,
    report_path: str | Path | None = None,
    **options: Any,
) -> Report:
    """Assert that PPP strength has not grown beyond a tolerance over a stored baseline (pytest-regressions style).

    The first run (or ``regen=True``) writes the baseline and fails, so an unreviewed baseline never passes; commit
    the file. Later runs fail when a layer's strength exceeds ``baseline * (1 + rtol) + tolerance``. A strength that
    falls never fails.

    Args:
        model: An ``nn.Module`` or a timm model name (see :func:`measure`), or a report measured before.
        baseline_path: The baseline JSON file.
        tolerance: Absolute growth allowed.
        rtol: Relative growth allowed.
        layers: ``"all"`` (every stage), ``"last"`` or module names (a dict's keys are used as names).
        regen: Overwrite the baseline with this measurement.
        report_path: Where to save the full JSON report.
        **options: Measurement settings for :func:`measure`; keep them fixed, or regenerate the baseline.

    Raises:
        PPPRegressionError: A strength grew beyond the tolerance; the message is the table.
        PPPBaselineWritten: The baseline was created or regenerated.
        PPPBaselineMismatch: The baseline was measured with other settings or layers.
    """
    __tracebackhide__ = True
    if tolerance < 0 or rtol < 0:
        raise ValueError(f"tolerance and rtol must be non-negative (got {tolerance}, {rtol})")
    path = Path(baseline_path)
    report, result = _result_of(model, layers, options)
    names = _selected(result, layers)
    saved = _saved(report, report_path)
    if regen or not path.is_file():
        _write_json(path, _baseline(report, result, names))
        rows = _rows(result, {})
        verb = "regenerated" if regen else "created (none existed)"
        raise PPPBaselineWritten(_message(
            f"PPP baseline {verb}: {path}", report, result, rows, saved,
            "review and commit the file; the test passes from the next run on",
        ))
    stored = json.loads(path.read_text())
    regen_hint = "to accept, regenerate the baseline (pytest --ppp-regen, or regen=True)"
    if stored.get("format") != BASELINE_FORMAT:
        raise PPPBaselineMismatch(f"baseline {path} has format {stored.get('format')!r}, not {BASELINE_FORMAT}; "
                                  f"{regen_hint}")
    now = _settings(report, result)
    then = stored["settings"]
    differs = {k: (then.get(k), now[k]) for k in _SETTINGS_COMPARED if then.get(k) != now[k]}
    if differs or list(stored["layers"]) != list(names):
        what = [f"{k}: baseline {old!r}, now {new!r}" for k, (old, new) in differs.items()]
        if list(stored["layers"]) != list(names):
            what.append(f"layers: baseline {list(stored['layers'])}, now {list(names)}")
        raise PPPBaselineMismatch("\n".join([
            f"PPP baseline {path} was measured with other settings, so it cannot be compared:", *what,
            "keep the measurement settings fixed, or " + regen_hint,
        ]))
    base = {name: stored["layers"][name]["strength"] for name in names}
    allowed = {name: (value * (1 + rtol) + tolerance if value is not None else None) for name, value in base.items()}
    allowed = {name: bound for name, bound in allowed.items() if bound is not None}
    rows = [row for row in _rows(result, allowed, base) if row.name in base]
    failed = [row for row in rows if not row.ok]
    if failed:
        rule = f"baseline × {1 + rtol:g} + {tolerance:g}" if rtol else f"baseline + {tolerance:g}"
        title = f"PPP strength grew beyond the tolerance in {len(failed)} of {len(rows)} layers (allowed = {rule})"
        raise PPPRegressionError(_message(title, report, result, rows, saved, f"baseline: {path}; {regen_hint}"))
    return report


# ---------------------------------------------------------------------------------------------------------------------
# The object behind the ``ppp`` fixture
# ---------------------------------------------------------------------------------------------------------------------


def safe_name(text: str) -> str:
    """A file-name-safe version of a test name or node id."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_")


class PPPChecker:
    """What the ``ppp`` fixture returns: the helpers above with the run's options as defaults, reports saved per test.

    Settings passed to a method win over the command-line options, which win over the ini keys.

    Args:
        defaults: Measurement settings from the options and ini keys (``images``, ``num_images``, ``device``).
        report_dir: Folder the full reports are saved to (``None``: not saved).
        report_stem: File-name stem of this test's reports.
        baseline_dir: Folder of this test module's baselines.
        basename: Default baseline name (the test's name).
        regen: Regenerate baselines (``--ppp-regen``).
    """

    def __init__(self, *, defaults: Mapping[str, Any], report_dir: Path | None, report_stem: str, baseline_dir: Path,
                 basename: str, regen: bool = False) -> None:
        self.defaults = dict(defaults)
        self.report_dir = report_dir
        self.report_stem = report_stem
        self.baseline_dir = baseline_dir
        self.basename = basename
        self.regen = regen
        self.reports: list[Path] = []

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"<PPPChecker {settings + ', ' if settings else ''}reports in {self.report_dir}>"

    def _next_report_path(self) -> Path | None:
        if self.report_dir is None:
            return None
        suffix = f"-{len(self.reports) + 1}" if self.reports else ""
        path = self.report_dir / f"{self.report_stem}{suffix}.json"
        self.reports.append(path)
        return path

    def measure(self, model: nn.Module | str, **options: Any) -> Report:
        """The :class:`~ppp_audit.report.Report` of ``model`` (see :func:`measure`), saved to the report dir."""
        __tracebackhide__ = True
        try:
            report = measure(model, **{**self.defaults, **options})
        except PPPAuditError as exc:
            raise exc.with_traceback(None) from None
        path = self._next_report_path()
        if path is not None:
            report.save(path)
        return report

    def check(self, model: nn.Module | str | Report, max_strength: float | None = None, layers: Layers = "last", *,
              max_top_share: float | None = None, **options: Any) -> Report:
        """:func:`assert_ppp` with this run's settings (``max_top_share``: a bound on the share of a layer's pattern
        in its strongest 1 % of channels); the report is saved to the report dir."""
        __tracebackhide__ = True
        return assert_ppp(model, max_strength, layers, max_top_share=max_top_share,
                          report_path=self._next_report_path(), **{**self.defaults, **options})

    def check_regression(self, model: nn.Module | str | Report, tolerance: float = 0.05, *, rtol: float = 0.0,
                         layers: Layers = "all", basename: str | None = None, **options: Any) -> Report:
        """:func:`assert_ppp_regression` against ``<test module dir>/<module name>/<test name>.ppp.json``.

        Args:
            basename: Baseline file name (without suffix) when a test checks more than one model.
        """
        __tracebackhide__ = True
        path = self.baseline_dir / f"{safe_name(basename or self.basename)}{BASELINE_SUFFIX}"
        return assert_ppp_regression(model, path, tolerance, rtol=rtol, layers=layers, regen=self.regen,
                                     report_path=self._next_report_path(), **{**self.defaults, **options})
