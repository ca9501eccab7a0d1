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
    baselines: dict[str, Any] = field(default_factory=dict)
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
            "baselines": self.baselines,
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

    title = (f"PPP audit · {report.model['name']} ({report.model['weights']}) · N={report.data['num_images']} "
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


_SHORT_TARGETS = {"horizontal": "horiz.", "vertical": "vert.", "gaussian": "gauss.", "horizontal_stripes": "h-stripes",
                  "vertical_stripes": "v-stripes"}


def render_baselines(report: Report) -> list:
    """Rich tables for ``report.baselines`` (SPEC §3.3): a summary beside PPP strength, then one table per baseline."""
    from rich.table import Table

    base = report.baselines
    if not base:
        return []
    tables = []
    posenet, fconv, uneven = base.get("posenet", {}), base.get("fconv", {}), base.get("uneven")

    def mean_spc(result: dict[str, Any], which: str) -> float:
        scores = result["scores"][which]
        return sum(v["spc"] for v in scores.values()) / len(scores)

    summary = Table(title="Baselines beside PPP strength (same images)", title_justify="left")
    summary.add_column("padding")
    summary.add_column("PPP strength\nlast / max", justify="right")
    if posenet:
        summary.add_column("PosENet SPC\nheld-out", justify="right")
        summary.add_column("PosENet SPC\nblack / white", justify="right")
    if fconv:
        summary.add_column("F-Conv largest\ndecodable border", justify="right")
    if uneven:
        summary.add_column("uneven layers\n(any padding)", justify="right")
    for result in report.results:
        row = [result.scheme, f"{_fmt(result.last_strength)} / {_fmt(result.max_strength)}"]
        if posenet:
            p = posenet.get(result.scheme)
            row += [_fmt(mean_spc(p, "held_out")) if p else "–",
                    f"{_fmt(mean_spc(p, 'black'))} / {_fmt(mean_spc(p, 'white'))}" if p else "–"]
        if fconv:
            f = fconv.get(result.scheme)
            if f is None:
                row.append("–")
            else:
                largest = f["largest_decodable_border"]
                text = "none" if largest is None else f"{largest} px"
                row.append(f"≥ {text}" if f["decodable_at_all_borders"] else text)
        if uneven:
            row.append(f"{uneven['num_uneven']} / {uneven['num_checked']}")
        summary.add_row(*row)
    summary.caption = ("PosENet SPC: mean over targets of the Spearman correlation (1 = position fully decodable); "
                       "F-Conv: largest border with accuracy above chance (binomial, Bonferroni); uneven: at "
                       f"{report.input_size} px, padding-independent")
    summary.caption_justify = "left"
    tables.append(summary)

    if posenet:
        first = next(iter(posenet.values()))
        table = Table(title=f"PosENet probe · grid {first['grid']} · {first['num_train']} train / {first['num_test']} "
                      f"held-out images · {first['steps']} steps", title_justify="left")
        table.add_column("padding")
        table.add_column("input")
        targets = first["targets"]
        for target in targets:
            table.add_column(f"{_SHORT_TARGETS.get(target, target)}\nSPC / MAE", justify="right")
        for label, result in posenet.items():
            for which, scores in result["scores"].items():
                table.add_row(label, which.replace("_", "-"),
                              *[f"{scores[t]['spc']:.2f} / {scores[t]['mae']:.2f}" for t in targets])
            table.add_section()
        tables.append(table)

    if fconv:
        first = next(iter(fconv.values()))
        table = Table(title=f"F-Conv location test · content {first['content']} px · {first['num_train']} train / "
                      f"{first['num_test']} test images", title_justify="left")
        table.add_column("padding")
        for border in first["borders"]:
            table.add_column(f"border\n{border} px", justify="right")
        for label, result in fconv.items():
            cells = [f"{acc:.0%}" + (" *" if ok else "") for acc, ok in zip(result["accuracy"], result["decodable"])]
            table.add_row(label, *cells)
        threshold = first["threshold_accuracy"]
        rule = (f"accuracy ≥ {threshold:.0%}" if threshold is not None
                else "unreachable with this few test images (raise fconv.num_test)")
        table.caption = (f"accuracy top-left vs bottom-right (chance 50 %); * decodable: {rule} (one-sided binomial, "
                         f"alpha {first['alpha']:g} / borders)")
        table.caption_justify = "left"
        tables.append(table)

    if uneven:
        table = Table(title=f"Uneven padding at {uneven['input_size'][0]}x{uneven['input_size'][1]}: "
                      f"{uneven['num_uneven']} of {uneven['num_checked']} conv/pool layers", title_justify="left")
        for column in ("layer", "type", "in → out", "k / s / d", "top / bottom", "left / right"):
            table.add_column(column, justify="left" if column in ("layer", "type") else "right")
        for g in uneven["layers"]:
            left, right, top, bottom = g["used"]
            table.add_row(g["name"], g["module_type"], f"{g['input_hw'][0]} → {g['output_hw'][0]}",
                          f"{g['kernel'][0]} / {g['stride'][0]} / {g['dilation'][0]}", f"{top} / {bottom}",
                          f"{left} / {right}")
        table.caption = "padding rows/cols actually read per side; negative: real rows/cols never read"
        table.caption_justify = "left"
        tables.append(table)
    return tables
