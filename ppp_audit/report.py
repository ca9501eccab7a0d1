"""The :class:`Report` (SPEC §6): one object, a versioned JSON schema, and a rich table.

A report is written with :meth:`Report.save` and read back with :meth:`Report.load`; ``Report.from_dict(r.to_dict())``
equals ``r``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .metrics import BorderProfile, LayerStats

SCHEMA_VERSION = "1.2"
"""1.1 added ``baselines`` and per-scheme ``finetune``, 1.2 ``interrupted``; readers accept any 1.x and ignore fields
they do not know."""


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


class _HeadlineScores:
    """The model-level scores of anything holding per-layer results in ``layers``."""

    layers: list[LayerResult]

    @property
    def last_strength(self) -> float | None:
        return self.layers[-1].stats.strength if self.layers else None

    @property
    def max_strength(self) -> float | None:
        values = [layer.stats.strength for layer in self.layers if layer.stats.strength is not None]
        return max(values) if values else None


@dataclass
class SchemeResult(_HeadlineScores):
    """All layers under one padding (``native`` or a scheme name)."""

    scheme: str
    patch: dict[str, Any]
    layers: list[LayerResult]
    finetune: "FinetuneResult | None" = None

    def layer(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer '{name}' in the report (layers: {[l.name for l in self.layers]})")

    def to_dict(self) -> dict[str, Any]:
        out = {"scheme": self.scheme, "last_strength": self.last_strength, "max_strength": self.max_strength,
               "patch": self.patch, "layers": [layer.to_dict() for layer in self.layers]}
        if self.finetune is not None:
            out["finetune"] = self.finetune.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SchemeResult":
        finetune = FinetuneResult.from_dict(data["finetune"]) if data.get("finetune") else None
        return cls(scheme=data["scheme"], patch=data["patch"],
                   layers=[LayerResult.from_dict(layer) for layer in data["layers"]], finetune=finetune)


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
    interrupted: str | None = None
    """Set when Ctrl-C stopped the audit: what the statistics cover (e.g. "... after 32 of 64 images")."""
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
            "interrupted": self.interrupted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        known = {f.name for f in dataclasses.fields(cls)} - {"results"}
        fields = {k: v for k, v in data.items() if k in known}  # a newer 1.x may add fields: read what we know
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
        """Read a report from its JSON file, or from a folder holding ``report.json``."""
        from .render import REPORT_JSON

        path = Path(path)
        if path.is_dir():
            path = path / REPORT_JSON
        return cls.from_json(path.read_text())


def format_number(value: float | None, digits: int = 3) -> str:
    """A metric for tables and figure titles: ``digits`` significant digits, "–" when missing."""
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
            row += [f"{format_number(stats.strength)} ± {format_number(half, 2)}", format_number(stats.extent_px, 4)]
        table.add_row(*row)
    table.add_section()
    for label, attr in (("model: last stage", "last_strength"), ("model: max", "max_strength")):
        row = [label, ""]
        for result in report.results:
            row += [format_number(getattr(result, attr)), ""]
        table.add_row(*row, style="bold")
    notes = ["strength = RMS(P) / RMS(σ) (Δ estimator, debiased); extent = distance from the border, input px"]
    if report.interrupted:
        notes.append(f"interrupted: {report.interrupted}")
    if partial_seen:
        notes.append(f"* receptive field exceeds the margin m={report.margin}: the padding-free reference is partial")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning (SPEC §5): PPP after the padding swap *and* training, per scheme
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class CurvePoint:
    """PPP and held-out agreement of the fine-tuned model after ``step`` optimiser steps (a formation curve point)."""

    step: int
    strengths: list[float | None]  # per tapped layer, in the order of ``SchemeResult.layers``
    relative_energies: list[float | None]
    agreement_top1: float | None = None
    distill_loss: float | None = None


@dataclass
class FinetuneResult(_HeadlineScores):
    """One scheme fine-tuned after the swap: PPP with the scheme after training, and what training cost.

    PPP before the swap is the report's ``native`` result; right after the swap it is the scheme's own ``layers``.
    ``before``/``after`` hold held-out metrics right after the swap and after training: ``agreement_top1`` (share of
    held-out images where the top-1 class equals the original model's), ``distill_loss`` (the distillation loss
    against the original model), and with labels ``label_accuracy``/``label_loss``.
    """

    steps: int
    settings: dict[str, Any]
    layers: list[LayerResult]
    before: dict[str, float]
    after: dict[str, float]
    original: dict[str, float] = field(default_factory=dict)
    curve: list[CurvePoint] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_loss_every: int = 1
    weights: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "settings": self.settings, "last_strength": self.last_strength,
                "max_strength": self.max_strength, "before": self.before, "after": self.after,
                "original": self.original, "curve": [asdict(point) for point in self.curve],
                "train_loss": self.train_loss, "train_loss_every": self.train_loss_every, "weights": self.weights,
                "seconds": self.seconds, "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FinetuneResult":
        data = {k: v for k, v in data.items() if k not in ("last_strength", "max_strength")}
        data["layers"] = [LayerResult.from_dict(layer) for layer in data["layers"]]
        data["curve"] = [CurvePoint(**point) for point in data.get("curve", [])]
        return cls(**data)


def render_finetune_table(report: Report):
    """A rich table of the fine-tuned schemes: PPP strength per layer native / after the swap / after fine-tuning,
    then held-out top-1 agreement with the original model and distillation loss. ``None`` without fine-tuning."""
    from rich.table import Table

    tuned = [r for r in report.results if r.finetune is not None]
    if not tuned:
        return None
    native = report.results[0]
    settings = tuned[0].finetune.settings
    title = (f"Fine-tune after the padding swap · {report.model['name']} · {tuned[0].finetune.steps} steps "
             f"{settings.get('objective', '')} {settings.get('optimizer', '')} lr={settings.get('lr', '')} "
             f"batch={settings.get('batch_size', '')} BN {settings.get('bn', '')} · "
             f"held-out N={report.data['num_images']}")
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    table.add_column("stride", justify="right")
    table.add_column(f"{native.scheme}\nbefore swap", justify="right")
    for result in tuned:
        table.add_column(f"{result.scheme}\nafter swap", justify="right")
        table.add_column(f"{result.scheme}\n+{result.finetune.steps} steps", justify="right")

    def strength_cell(stats: LayerStats) -> str:
        half = stats.strength_ci[1] - stats.strength if stats.strength_ci else None
        return f"{format_number(stats.strength)} ± {format_number(half, 2)}"

    for i, layer in enumerate(native.layers):
        row = [layer.name + (" *" if layer.reference_partial else ""), f"{layer.stats.stride_px:g}",
               strength_cell(layer.stats)]
        for result in tuned:
            row += [strength_cell(result.layers[i].stats), strength_cell(result.finetune.layers[i].stats)]
        table.add_row(*row)
    table.add_section()
    for label, attr in (("model: last stage", "last_strength"), ("model: max", "max_strength")):
        row = [label, "", format_number(getattr(native, attr))]
        for result in tuned:
            row += [format_number(getattr(result, attr)), format_number(getattr(result.finetune, attr))]
        table.add_row(*row, style="bold")
    table.add_section()
    metrics = [("top-1 agreement", "agreement_top1", 1.0), ("distill loss", "distill_loss", 0.0)]
    if "label_accuracy" in tuned[0].finetune.after:
        metrics.append(("label accuracy", "label_accuracy", tuned[0].finetune.original.get("label_accuracy")))
    for label, key, original in metrics:
        row = [f"held-out {label}", "", format_number(original)]
        for result in tuned:
            row += [format_number(result.finetune.before.get(key)), format_number(result.finetune.after.get(key))]
        table.add_row(*row)
    table.caption = ("strength = RMS(P) / RMS(σ) ± 95% CI on held-out images; agreement and loss are against the "
                     "original (unpatched) model's logits")
    table.caption_justify = "left"
    return table


def render_curve_table(report: Report):
    """The formation curves: model-level PPP strength (last stage, max) and agreement every N steps, per scheme."""
    from rich.table import Table

    tuned = [r for r in report.results if r.finetune is not None and r.finetune.curve]
    if not tuned:
        return None
    table = Table(title="PPP formation during fine-tuning (held-out images)", title_justify="left")
    table.add_column("step", justify="right")
    for result in tuned:
        for column in ("last stage", "max", "agreement"):
            table.add_column(f"{result.scheme}\n{column}", justify="right")
    steps = sorted({point.step for result in tuned for point in result.finetune.curve})
    for step in steps:
        row = [str(step)]
        for result in tuned:
            point = next((p for p in result.finetune.curve if p.step == step), None)
            if point is None:
                row += ["", "", ""]
                continue
            values = [v for v in point.strengths if v is not None]
            row += [format_number(point.strengths[-1]), format_number(max(values) if values else None),
                    format_number(point.agreement_top1)]
        table.add_row(*row)
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
        row = [result.scheme, f"{format_number(result.last_strength)} / {format_number(result.max_strength)}"]
        if posenet:
            p = posenet.get(result.scheme)
            row += [format_number(mean_spc(p, "held_out")) if p else "–",
                    f"{format_number(mean_spc(p, 'black'))} / {format_number(mean_spc(p, 'white'))}" if p else "–"]
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
