"""The :class:`Report` (SPEC §6): one object, a versioned JSON schema, and a rich table.

A report is written with :meth:`Report.save` and read back with :meth:`Report.load`; ``Report.from_dict(r.to_dict())``
equals ``r``.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .metrics import BorderProfile, LayerStats

SCHEMA_VERSION = "1.0"


def environment() -> dict[str, str]:
    """Versions that produced a report."""
    import timm
    import torch

    from . import __version__

    return {"ppp_audit": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


@dataclass
class LayerResult:
    """One tapped layer under one scheme: its statistics plus what the reference could see."""

    name: str
    receptive_radius_px: float
    reference_partial: bool
    stats: LayerStats

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "receptive_radius_px": self.receptive_radius_px,
                "reference_partial": self.reference_partial, **asdict(self.stats)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerResult":
        data = dict(data)
        name, radius, partial = data.pop("name"), data.pop("receptive_radius_px"), data.pop("reference_partial")
        for key in ("strength_ci", "mean_feature_ci"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        data["profile"] = BorderProfile(**data["profile"]) if data.get("profile") else None
        data["side_profiles"] = {k: BorderProfile(**v) for k, v in data.get("side_profiles", {}).items()}
        return cls(name=name, receptive_radius_px=radius, reference_partial=partial, stats=LayerStats(**data))


@dataclass
class SchemeResult:
    """All layers under one padding (``native`` or a scheme name)."""

    scheme: str
    patch: dict[str, Any]
    layers: list[LayerResult]

    @property
    def last_strength(self) -> float | None:
        return self.layers[-1].stats.strength if self.layers else None

    @property
    def max_strength(self) -> float | None:
        values = [layer.stats.strength for layer in self.layers if layer.stats.strength is not None]
        return max(values) if values else None

    def layer(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer '{name}' in the report (layers: {[l.name for l in self.layers]})")

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "last_strength": self.last_strength, "max_strength": self.max_strength,
                "patch": self.patch, "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SchemeResult":
        return cls(scheme=data["scheme"], patch=data["patch"],
                   layers=[LayerResult.from_dict(layer) for layer in data["layers"]])


@dataclass
class Report:
    """The result of an audit: settings, provenance, and per scheme per layer metrics."""

    environment: dict[str, str]
    model: dict[str, Any]
    data: dict[str, Any]
    input_size: int
    margin: int
    seed: int
    device: str
    precision: str
    results: list[SchemeResult]
    timings: dict[str, float] = field(default_factory=dict)
    estimator: str = "delta"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: str = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(
                f"report schema {self.schema_version} is not readable by this ppp-audit (schema {SCHEMA_VERSION}); "
                "upgrade ppp-audit"
            )
        if not self.results:
            raise ValueError("a report needs at least one scheme result")

    @property
    def window(self) -> int:
        return self.input_size + 2 * self.margin

    def scheme(self, name: str) -> SchemeResult:
        for result in self.results:
            if result.scheme == name:
                return result
        raise KeyError(f"no scheme '{name}' in the report (schemes: {[r.scheme for r in self.results]})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "created": self.created,
            "environment": self.environment,
            "model": self.model,
            "data": self.data,
            "input_size": self.input_size,
            "margin": self.margin,
            "window": self.window,
            "seed": self.seed,
            "device": self.device,
            "precision": self.precision,
            "estimator": self.estimator,
            "timings": self.timings,
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        fields = {k: v for k, v in data.items() if k not in ("window", "results")}
        return cls(**fields, results=[SchemeResult.from_dict(r) for r in data["results"]])

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "Report":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (a partial file never replaces a good one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        return cls.from_json(path.read_text())


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def render_table(report: Report):
    """A rich table: one row per layer, strength [95 % CI] and extent per scheme, side by side."""
    from rich.table import Table

    weights = report.model["weights"]
    if weights.startswith("file:"):
        weights = "file:" + Path(weights[5:]).name
    title = (f"PPP audit · {report.model['name']} ({weights}) · N={report.data['num_images']} "
             f"{report.data['kind']} · S={report.input_size} m={report.margin}")
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    table.add_column("stride", justify="right")
    for result in report.results:
        native = f" ({result.patch['native_padding']})" if result.scheme == "native" else ""
        table.add_column(f"{result.scheme}{native}\nstrength ± 95% CI", justify="right")
        table.add_column("extent\npx", justify="right")
    partial_seen = False
    for i, first in enumerate(report.results[0].layers):
        row = [first.name + (" *" if first.reference_partial else ""), f"{first.stats.stride_px:g}"]
        partial_seen |= first.reference_partial
        for result in report.results:
            stats = result.layers[i].stats
            half = stats.strength_ci[1] - stats.strength if stats.strength_ci else None
            row += [f"{_fmt(stats.strength)} ± {_fmt(half, 2)}", _fmt(stats.extent_px, 4)]
        table.add_row(*row)
    table.add_section()
    for label, attr in (("model: last stage", "last_strength"), ("model: max", "max_strength")):
        row = [label, ""]
        for result in report.results:
            row += [_fmt(getattr(result, attr)), ""]
        table.add_row(*row, style="bold")
    notes = ["strength = RMS(P) / RMS(σ) (Δ estimator, debiased); extent = distance from the border, input px"]
    if partial_seen:
        notes.append(f"* receptive field exceeds the margin m={report.margin}: the padding-free reference is partial")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table
