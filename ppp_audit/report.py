"""The :class:`Report` (docs/report.md): one object and a versioned JSON schema, readable without torch.

A report is written with :meth:`Report.save` and read back with :meth:`Report.load`; ``Report.from_dict(r.to_dict())``
equals ``r``. This module imports nothing heavy (and nothing from ppp_audit but its errors), so the Hub push,
``ppp-audit show`` and anything else that only reads reports run without torch. Tables, figures and the page of a
report live in ``render/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import types
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .errors import ReportFileError
from .files import WrittenFiles, atomic_write

SCHEMA_VERSION = "1.13"
"""1.1 added ``baselines`` and per-scheme ``finetune``, 1.2 ``interrupted``, 1.3 ``geometry`` (and the
``mean-feature`` estimator), 1.4 ``skipped_images`` and per-layer ``non_finite`` (whose numbers are null),
1.5 per-layer ``convergence`` and ``mean_feature_convergence``, 1.6 per-layer ``mist`` (one layer per scheme),
``influence_beyond_margin``, ``strength_at_smaller_margin``, ``context_matched``, ``context_unmatched`` and
``geometry.margin``, 1.7 the repair's fields of ``finetune`` (``plain``, ``tiling_before``, ``tiling_after``,
``consistency_loss``; docs/repair.md), 1.8 ``data.renderer`` and ``data.images_on`` (images made on the device,
docs/images.md) and ``geometry.reference_shared``, 1.9 ``data.exif_rotated`` and ``data.sample.small`` (images turned
upright by their EXIF orientation, images smaller than the window; both present only when there are any), 1.10
per-layer ``channel_shares`` (which channels carry the pattern: docs/metrics.md#channels-padding-aware-neurons),
``geometry.margin.influence``, and ``data.renderer`` always ``"torch"`` (one renderer for the built-in images on every
device; a report without it had the NumPy renderer's pictures), 1.11 ``geometry.reference`` (which padding-free
reference each audit used: periodic canvases or a window per crop, and its pixels per image; docs/metrics.md#the-
canvas-reference), ``data.periodic`` (the built-in images drawn as periodic canvases), and confidence intervals whose
jackknife replicates recompute the mist and noise (narrower, and too narrow, before), 1.12 a repair's tiling
consistency in units of the features' spread over the images (``RMS(σ)``; before, of their own RMS, which a
content-independent part of the features lowered: docs/repair.md), 1.13 ``geometry.reference`` of kind ``photo``
(crops tiled inside photos: docs/metrics.md#photos-crops-tiled-inside-each-photo) and ``data.scale`` (the photos'
one scale; before, photos were resized with the window, so their crops' scale grew with the margin); readers accept
any 1.x and
ignore fields they do not know (compare versions as numbers: "1.10" follows "1.9")."""
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
"""The names of a report folder's JSON and page (``--out``, ``ppp-audit show``, Hub pushes)."""
NATIVE = "native"
"""The scheme name of the model's own padding, measured in every audit and listed first."""


def format_number(value: float | None, digits: int = 3, *, fixed_from: float | None = 1000.0) -> str:
    """A metric as tables, cards and figure titles show it: ``digits`` significant digits, "–" when missing.

    Args:
        value: The number; ``None`` and NaN print as "–".
        digits: Significant digits.
        fixed_from: From this magnitude on, print the rounded integer (``1234``, not ``1.23e+03``); ``None`` keeps
            significant digits at every magnitude.
    """
    if value is None or math.isnan(value):
        return "–"
    if fixed_from is not None and abs(value) >= fixed_from:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def scheme_label(scheme: str, native_padding: str | None = None) -> str:
    """How a scheme is named to people: the native one with the padding it stands for (``native (zeros)``)."""
    if scheme == NATIVE and native_padding:
        return f"{NATIVE} ({native_padding})"
    return scheme


def environment() -> dict[str, str]:
    """Versions that produced a report (imports torch and timm: call it when auditing, not when reading)."""
    import timm
    import torch

    from . import __version__

    return {"ppp_audit": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# ---------------------------------------------------------------------------------------------------------------------
# Per-layer statistics (computed by metrics.PPPAccumulator)
# ---------------------------------------------------------------------------------------------------------------------

TOP_CHANNELS = 8
"""How many of a layer's strongest channels ``channel_shares.top`` lists by default (``--top-channels``)."""
MAX_TOP_CHANNELS = 64
"""The most channels ``--top-channels`` may list (the report stays small)."""
CHANNEL_FRACTIONS = {"top_1pct": 0.01, "top_10pct": 0.1}
"""The fractions of a layer's channels whose share of the pattern energy ``channel_shares.energy_share`` gives."""


def top_count(channels: int, fraction: float) -> int:
    """How many channels the top ``fraction`` of ``channels`` is: the nearest whole number, at least 1 (a layer of 24
    channels has 1 in its top 1 % and 2 in its top 10 %)."""
    return max(1, min(channels, math.floor(fraction * channels + 0.5)))


@dataclass
class ChannelShares:
    """Which channels carry a layer's pattern: padding-aware neurons (docs/metrics.md#channels-padding-aware-neurons).

    Channel ``c``'s energy is ``e_c = mean_positions(P_c²) − mean_positions(Var Δ_c) / N``, debiased as the strength
    is; shares are of ``Σ_c e_c``, the layer's debiased energy. When that is not significantly above 0 (the lower end
    of its 95 % jackknife interval is not above 0) no channel can be told from the noise: the shares and
    ``effective_channels`` are ``None`` and the lists empty.

    Attributes:
        energy_share: Share of the energy in the strongest 1 % and 10 % of the channels (``top_1pct``,
            ``top_10pct``; :func:`top_count` channels each), cross-fitted: one half of the images ranks the channels,
            the other measures them, and the other way round.
        energy_share_ci: Their 95 % jackknife intervals (leave-one-group-out replicates, re-ranked in each).
        effective_channels: The participation ratio ``(Σ e_c)² / Σ e_c²``: how many channels of equal energy would
            carry the same pattern (1: one channel carries it all; C: every channel alike).
        effective_channels_ci: Its 95 % jackknife interval.
        top: The strongest channels with any energy, strongest first, at most ``--top-channels``:
            ``[channel, share, side]`` with the channel's own share ``e_c / Σ e``; ``side`` is ``top``, ``bottom``,
            ``left`` or ``right`` where the channel's pattern lies along that side of the map, ``ring`` where it does
            not favour one side.
        top_ci: The 95 % jackknife interval of each ``top`` share (same channel in every replicate).
        top_maps: ``P_c`` of the first (up to) 4 ``top`` channels, signed, each block-averaged to at most 32 positions
            a side, to 4 significant digits; a map covers the whole crop whatever its size.
        cumulative: The sorted energy curve: ``[k, share of the strongest k channels]`` (cross-fitted, as
            ``energy_share``) for up to 24 ``k`` from 1 to the channel count (spaced evenly in ``log k``).
    """

    energy_share: dict[str, float | None]
    energy_share_ci: dict[str, tuple[float, float] | None]
    effective_channels: float | None
    effective_channels_ci: tuple[float, float] | None
    top: list[tuple[int, float, str]] = field(default_factory=list)
    top_ci: list[tuple[float, float]] = field(default_factory=list)
    top_maps: list[list[list[float]]] = field(default_factory=list)
    cumulative: list[tuple[int, float]] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        """Whether the layer had a pattern to share out (its debiased energy significantly above 0)."""
        return self.effective_channels is not None

    @classmethod
    def none(cls) -> "ChannelShares":
        """The record of a layer with no pattern above the noise: every share ``None``, no channel listed."""
        return cls(energy_share=dict.fromkeys(CHANNEL_FRACTIONS), energy_share_ci=dict.fromkeys(CHANNEL_FRACTIONS),
                   effective_channels=None, effective_channels_ci=None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChannelShares":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # a newer 1.x may add fields
        data["energy_share_ci"] = {k: tuple(v) if v is not None else None
                                   for k, v in data.get("energy_share_ci", {}).items()}
        if data.get("effective_channels_ci") is not None:
            data["effective_channels_ci"] = tuple(data["effective_channels_ci"])
        for key in ("top", "top_ci", "cumulative"):
            data[key] = [tuple(item) for item in data.get(key, [])]
        return cls(**data)



@dataclass
class BorderProfile:
    """Debiased channel-RMS of ``P`` against distance to the border, with its noise floor."""

    distance_px: list[float]
    rms: list[float]
    noise_floor: list[float]
    extent_px: float


@dataclass
class MistSnapshots:
    """The mask rising out of the mist: one layer's maps after the first ``counts[k]`` images (the last count is N).

    ``mean_feature[k]`` is the channel-averaged mean of the padded features ``A`` over those images; ``ppp[k]`` the
    channel-RMS of the mean of ``Δ`` (raw, not debiased: one image has no variance), or with the mean-feature estimator
    of the mean of ``A`` less its per-channel spatial mean. Each map is ``h × w`` (docs/metrics.md).
    """

    counts: list[int]
    mean_feature: list[list[list[float]]]
    ppp: list[list[list[float]]]


@dataclass
class LayerStats:
    """Everything measured for one tapped layer under one padding scheme.

    A layer whose features held NaN or inf (``non_finite``) keeps its shape, ``n`` and stride, and no number: its
    strengths, CIs, profiles and map are ``None``.
    """

    n: int
    stride_px: float
    channels: int
    height: int
    width: int
    strength: float | None
    strength_ci: tuple[float, float] | None
    relative_energy: float | None
    mean_feature_strength: float | None
    mean_feature_ci: tuple[float, float] | None
    profile: BorderProfile | None
    side_profiles: dict[str, BorderProfile] = field(default_factory=dict)
    ppp_map: list[list[float]] | None = None
    interior_delta_rel: float | None = None
    non_finite: bool = False
    """The layer produced NaN/inf features (under this scheme): its statistics are left out."""
    convergence: list[tuple[int, float | None]] | None = None
    """``strength`` on the first N/8, N/4, N/2 and N images (nested jackknife groups): ``[(n_images, strength)]``;
    ``None`` in reports before schema 1.5."""
    mean_feature_convergence: list[tuple[int, float | None]] | None = None
    """The same for ``mean_feature_strength``."""
    mist: MistSnapshots | None = None
    """Mean feature and PPP maps after 1, 10, 100 and N images; only the audit's mist layer has them (``None``
    elsewhere, for a non-finite layer and in reports before schema 1.6)."""
    channel_shares: ChannelShares | None = None
    """Which channels carry the pattern (docs/metrics.md#channels-padding-aware-neurons); ``None`` for a non-finite
    layer and in reports before schema 1.10."""

    @property
    def extent_px(self) -> float | None:
        return self.profile.extent_px if self.profile else None


@dataclass
class LayerResult:
    """One tapped layer under one scheme: its statistics plus what the reference could see.

    Attributes:
        name: The tapped layer.
        receptive_radius_px: Support radius of its centre position's receptive field (input px), global statistics
            of matched modules left out.
        reference_partial: More than the margin tolerance of its input influence lies beyond the margin: the
            window's own padding still reaches its reference.
        stats: The statistics.
        influence_beyond_margin: Share of its input influence (gradient mass) beyond the margin; ``None`` without a
            reference (mean-feature estimator) and in reports before schema 1.6.
        strength_at_smaller_margin: For a partial layer, ``(m2, strength)`` measured on the same windows against a
            reference of the smaller margin ``m2``: how far the number moves with the margin.
        context_matched: Global modules before this layer whose statistics the window pass takes over the crop's
            footprint (docs/metrics.md).
        context_unmatched: Global modules before it that could not be matched: its reference still holds the
            window's larger context.
    """

    name: str
    receptive_radius_px: float
    reference_partial: bool
    stats: LayerStats
    influence_beyond_margin: float | None = None
    strength_at_smaller_margin: tuple[int, float | None] | None = None
    context_matched: list[str] = field(default_factory=list)
    context_unmatched: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "receptive_radius_px": self.receptive_radius_px,
                "reference_partial": self.reference_partial, "influence_beyond_margin": self.influence_beyond_margin,
                "strength_at_smaller_margin": (list(self.strength_at_smaller_margin)
                                               if self.strength_at_smaller_margin else None),
                "context_matched": list(self.context_matched), "context_unmatched": list(self.context_unmatched),
                **asdict(self.stats)}

    @property
    def margin_change(self) -> float | None:
        """Relative change of the strength from the smaller margin to the margin used (``None`` when not measured)."""
        if not self.strength_at_smaller_margin:
            return None
        smaller, now = self.strength_at_smaller_margin[1], self.stats.strength
        if smaller is None or now is None or smaller == 0:
            return None
        return now / smaller - 1.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerResult":
        data = dict(data)
        name, radius, partial = data.pop("name"), data.pop("receptive_radius_px"), data.pop("reference_partial")
        beyond = data.pop("influence_beyond_margin", None)
        smaller = data.pop("strength_at_smaller_margin", None)
        matched, unmatched = data.pop("context_matched", []), data.pop("context_unmatched", [])
        known = {f.name for f in dataclasses.fields(LayerStats)}
        data = {k: v for k, v in data.items() if k in known}  # a newer 1.x may add per-layer fields too
        for key in ("strength_ci", "mean_feature_ci"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        for key in ("convergence", "mean_feature_convergence"):
            if data.get(key) is not None:
                data[key] = [tuple(point) for point in data[key]]
        data["profile"] = BorderProfile(**data["profile"]) if data.get("profile") else None
        if data.get("mist"):
            known_mist = {f.name for f in dataclasses.fields(MistSnapshots)}
            data["mist"] = MistSnapshots(**{k: v for k, v in data["mist"].items() if k in known_mist})
        if data.get("channel_shares"):
            data["channel_shares"] = ChannelShares.from_dict(data["channel_shares"])
        data["side_profiles"] = {k: BorderProfile(**v) for k, v in data.get("side_profiles", {}).items()}
        return cls(name=name, receptive_radius_px=radius, reference_partial=partial, stats=LayerStats(**data),
                   influence_beyond_margin=beyond, strength_at_smaller_margin=tuple(smaller) if smaller else None,
                   context_matched=list(matched), context_unmatched=list(unmatched))


class _HeadlineScores:
    """The model-level scores of anything holding per-layer results in ``layers``."""

    layers: list[LayerResult]

    @property
    def last_strength(self) -> float | None:
        return self.layers[-1].stats.strength if self.layers else None

    @property
    def max_layer(self) -> LayerResult | None:
        """The layer with the highest finite strength (the first of equals), ``None`` when no layer has one."""
        measured = [layer for layer in self.layers if _finite(layer.stats.strength)]
        return max(measured, key=lambda layer: layer.stats.strength, default=None)

    @property
    def max_strength(self) -> float | None:
        top = self.max_layer
        return top.stats.strength if top is not None else None


@dataclass
class SchemeResult(_HeadlineScores):
    """All layers under one padding (``native`` or a scheme name)."""

    scheme: str
    patch: dict[str, Any]
    layers: list[LayerResult]
    finetune: "FinetuneResult | None" = None

    @property
    def padding(self) -> str | None:
        """The padding the result measured: the scheme, or for the native one the model's own (``None`` if unknown)."""
        return self.patch.get("native_padding") if self.scheme == NATIVE else self.scheme

    @property
    def label(self) -> str:
        """The scheme as tables, figures and cards name it: ``native (zeros)``, ``reflect``."""
        return scheme_label(self.scheme, self.padding)

    @property
    def non_finite_layers(self) -> list[str]:
        """The layers that produced NaN/inf features under this scheme (their statistics are left out)."""
        return [layer.name for layer in self.layers if layer.stats.non_finite]

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


SKIPPED_LISTED = 20
"""How many skipped images a report names (it counts all of them)."""


@dataclass
class SkippedImage:
    """An image an audit left out because it cannot be read."""

    name: str
    """The image as messages name it: a path, or ``row 3 of hfds/beans (train)``."""
    reason: str
    """Why, in one line: ``not an image (PIL cannot identify its format)``."""


@dataclass
class SkippedImages:
    """The images an audit skipped as unreadable (``strict_images`` off): ``count`` of the ``tried`` images it read
    or tried to read, the first :data:`SKIPPED_LISTED` named in ``first``. The statistics cover the others."""

    count: int
    tried: int
    first: list[SkippedImage]

    @classmethod
    def of(cls, skipped: list[SkippedImage], tried: int) -> "SkippedImages | None":
        """The record of ``skipped`` among ``tried`` images; ``None`` when nothing was skipped."""
        return cls(count=len(skipped), tried=tried, first=list(skipped[:SKIPPED_LISTED])) if skipped else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SkippedImages":
        return cls(count=data["count"], tried=data["tried"], first=[SkippedImage(**item) for item in data["first"]])

    def summary(self, listed: int = 3) -> str:
        """One line: ``2 of 6 images skipped (unreadable): 'a.jpg': not an image ...; 'b.png': ...``."""
        names = "; ".join(f"'{image.name}': {image.reason}" for image in self.first[:listed])
        rest = self.count - min(listed, len(self.first))
        more = f"; and {rest} more (report.json names up to {SKIPPED_LISTED})" if rest > 0 else ""
        return f"{self.count} of {self.tried} images skipped (unreadable): {names}{more}"


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
    """``delta`` (padded crop minus padding-free window features) or ``mean-feature`` (crop passes only, for models
    that run at one input size: biased by the images' own position statistics)."""
    geometry: dict[str, Any] = field(default_factory=dict)
    """What the audit changed to fit the model (``changes``: one line each, with the reason) and how."""
    baselines: dict[str, Any] = field(default_factory=dict)
    interrupted: str | None = None
    """Set when Ctrl-C stopped the audit: what the statistics cover (e.g. "... after 32 of 64 images")."""
    skipped_images: SkippedImages | None = None
    """The images left out because they cannot be read; ``data["num_images"]`` counts those measured."""
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
    def canvas(self) -> dict[str, Any] | None:
        """``geometry.reference`` when the reference came from periodic canvases (``None``: a window per crop, the
        mean-feature estimator, or a report before schema 1.11)."""
        reference = self.geometry.get("reference") or {}
        return reference if reference.get("kind") == "canvas" else None

    @property
    def tiles(self) -> dict[str, Any] | None:
        """``geometry.reference`` when the crops were tiled inside photos, each photo's tile their reference's pass
        (``None``: otherwise, or a report before schema 1.13)."""
        reference = self.geometry.get("reference") or {}
        return reference if reference.get("kind") == "photo" else None

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
            "geometry": self.geometry,
            "timings": self.timings,
            "results": [r.to_dict() for r in self.results],
            "baselines": self.baselines,
            "interrupted": self.interrupted,
            "skipped_images": asdict(self.skipped_images) if self.skipped_images else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """The report a :meth:`to_dict` dict describes, its field types checked first.

        Raises:
            TypeError: A field is missing or has the wrong type; the message names it (``results[0].layers[2].strength
                must be a number or null (got string 'abc')``).
            ValueError: A schema version this ppp-audit cannot read, or no scheme results.
        """
        check_report_dict(data)
        known = {f.name for f in dataclasses.fields(cls)} - {"results"}
        fields = {k: v for k, v in data.items() if k in known}  # a newer 1.x may add fields: read what we know
        if fields.get("skipped_images") is not None:
            fields["skipped_images"] = SkippedImages.from_dict(fields["skipped_images"])
        return cls(**fields, results=[SchemeResult.from_dict(r) for r in data["results"]])

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "Report":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (a partial file never replaces a good one, and none is left behind).

        Raises:
            ReportFileError: ``path`` is a folder or cannot be written (the message names the OS's reason).
        """
        path = Path(path)
        try:
            if path.is_dir():
                raise IsADirectoryError(21, "is a folder", str(path))
            atomic_write(path, self.to_json())
        except OSError as exc:
            raise ReportFileError(f"could not write the report to '{path}': {exc.strerror or exc}",
                                  "pick a writable file or folder") from None
        return path

    def describe(self) -> str:
        """One line naming the audit: model, schemes and when it ran (``resnet18, native + reflect, 2026-12-01T10:00``).
        """
        schemes = " + ".join(result.scheme for result in self.results)
        return f"{self.model.get('name', '?')}, {schemes}, {self.created}"

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        """Read a report from its JSON file, or from a folder holding ``report.json`` (see :func:`report_file`).

        Raises:
            ReportFileError: No such file, not JSON, not a ppp-audit report, or a schema this version cannot read.
        """
        file = report_file(path)
        if not file.is_file():
            raise ReportFileError(f"no report at '{file}'",
                                  "pass a folder written by --out, or a JSON file written by --json")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ReportFileError(f"'{file}' is not valid JSON ({exc.msg}, line {exc.lineno})",
                                  "re-run the audit with --out DIR") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ReportFileError(f"cannot read report '{file}': {exc}",
                                  "pass a report.json written by ppp-audit") from None
        except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, nesting Python cannot follow
            raise ReportFileError(f"'{file}' is not valid JSON ({str(exc).split(':')[0] or type(exc).__name__})",
                                  "pass a report.json written by ppp-audit") from None
        if not isinstance(data, dict):
            raise ReportFileError(f"'{file}' is not a ppp-audit report (a JSON {type(data).__name__}, not an object)",
                                  "pass a report.json written by ppp-audit")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ReportFileError(f"'{file}' is not a ppp-audit report (bad or missing field: {exc})",
                                  "pass a report.json written by ppp-audit") from None
        except ValueError as exc:  # e.g. an incompatible schema version
            raise ReportFileError(f"'{file}': {exc}", "re-run the audit with this ppp-audit") from None


_REQUIRED_KEYS: dict[str, dict[str, type]] = {"model": {"name": str, "weights": str},
                                               "data": {"kind": str, "num_images": int}}
"""Keys that tables and figures read from a report's free-form ``model`` and ``data`` objects, with their types."""


@dataclass(frozen=True)
class _Rule:
    """What a field's value must be beyond its type (see :data:`_RULES`).

    Attributes:
        low: The least each of its numbers may be (``None``: any).
        above: Its numbers must lie above ``low``, not at it.
        finite: Its numbers must be finite (no NaN or infinity).
        shape: For an array (nested lists), its size along each axis: the name of an integer field (its value) or of
            a list field (its length), looked up in the object holding the array, then in the objects around it.
    """

    low: float | None = None
    above: bool = False
    finite: bool = False
    shape: tuple[str, ...] = ()


_COUNT, _SIZE, _POSITIVE = _Rule(low=0), _Rule(low=1), _Rule(low=0, above=True, finite=True)
_RULES: dict[str, _Rule] = {
    "Report.input_size": _SIZE, "Report.margin": _COUNT, "data.num_images": _COUNT,
    "LayerStats.n": _COUNT, "LayerStats.stride_px": _POSITIVE, "LayerStats.channels": _SIZE,
    "LayerStats.height": _SIZE, "LayerStats.width": _SIZE,
    "LayerStats.ppp_map": _Rule(finite=True, shape=("height", "width")),
    "MistSnapshots.counts": _SIZE, "ChannelShares.top_maps": _Rule(finite=True),
    "MistSnapshots.mean_feature": _Rule(finite=True, shape=("counts", "height", "width")),
    "MistSnapshots.ppp": _Rule(finite=True, shape=("counts", "height", "width")),
    "BorderProfile.rms": _Rule(shape=("distance_px",)), "BorderProfile.noise_floor": _Rule(shape=("distance_px",)),
    "SkippedImages.count": _COUNT, "SkippedImages.tried": _COUNT,
    "FinetuneResult.steps": _COUNT, "FinetuneResult.train_loss_every": _SIZE, "CurvePoint.step": _COUNT,
}
"""The value constraints the annotations cannot say, by ``Class.field`` (or ``object.key`` of :data:`_REQUIRED_KEYS`):
what tables and figures divide by, index with or draw as a picture. Everything else a field's type says."""
_INT64 = 2 ** 63
"""JSON integers must fit in 64 bits: the leaderboard's Parquet columns hold them, and floats are made of them."""


def check_report_dict(data: Any) -> None:
    """Check that a report dict has every field :meth:`Report.from_dict` reads, each of its declared type (the
    dataclass annotations) and within the few limits of :data:`_RULES` (maps of the layer's height × width, positive
    sizes), so that a hand-edited or foreign JSON fails with one line naming the field, not deep inside a table or
    figure. Fields it does not know are ignored, as a newer 1.x may add some.

    Raises:
        TypeError: The first missing, mistyped or out-of-range field, named by its path
            (``results[0].layers[2].strength``).
    """
    _check_fields(Report, data, "", first="results")
    for key, required in _REQUIRED_KEYS.items():
        for name, kind in required.items():
            value, path = data[key].get(name, _MISSING), f"{key}.{name}"
            _check_value(value, kind, path)
            if path in _RULES:
                _check_rule(_RULES[path], value, path, (data[key],))


def check_fields(cls: type, data: Any, what: str) -> None:
    """Check that ``data`` (read from JSON) is an object holding the fields of dataclass ``cls``, each of its declared
    type, as :func:`check_report_dict` does for a report; for other records kept as JSON (a sweep's ``run.json``).

    Args:
        cls: The dataclass.
        data: The JSON value.
        what: What ``data`` is called when it is no object (``run.json``).

    Raises:
        TypeError: The first missing or mistyped field, named by its path.
    """
    _check_fields(cls, data, "", what=what)


_MISSING = object()
_FLATTENED = {LayerResult: ("stats",)}
"""Dataclass fields written into their parent's object rather than as an object of their own."""


def _check_fields(cls: type, data: Any, where: str, first: str | None = None, scope: tuple[dict, ...] = (),
                  what: str = "the report") -> None:
    """``data`` is a JSON object holding the fields of dataclass ``cls`` (those without a default required);
    ``scope`` holds the objects around it, outermost last (where :attr:`_Rule.shape` looks names up)."""
    import typing

    if not isinstance(data, dict):
        raise TypeError(f"{where or what} must be an object (got {_json_type(data)})")
    hints = typing.get_type_hints(cls)
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name != first)
    scope = (data, *scope)
    for f in fields:
        if f.name in _FLATTENED.get(cls, ()):
            _check_fields(hints[f.name], {k: v for k, v in data.items() if k not in hints}, where, scope=scope[1:])
            continue
        path = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            _check_value(data[f.name], hints[f.name], path, scope)
            rule = _RULES.get(f"{cls.__name__}.{f.name}")
            if rule is not None and data[f.name] is not None:
                _check_rule(rule, data[f.name], path, scope)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"'{path}'")  # read as "bad or missing field: 'results'"


def _check_value(value: Any, hint: Any, path: str, scope: tuple[dict, ...] = ()) -> None:
    """``value`` (read from JSON) is of type ``hint``: a dataclass, ``X | None``, ``list[X]``, ``tuple[X, X]``,
    ``dict[str, X]``, ``int``, ``float`` (an integer is a number too), ``str``, ``bool`` or ``Any``. A list of lists
    is an array: every item of the same size."""
    import typing

    if value is _MISSING:
        raise TypeError(f"'{path}'")
    if hint is Any:
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    nullable = origin is typing.Union or isinstance(hint, types.UnionType)
    if nullable:  # the report's unions are all ``X | None``
        if value is None:
            return
        hint = next(arg for arg in args if arg is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    kind = origin or hint
    if not _fits(value, dict if dataclasses.is_dataclass(kind) else kind):
        expected = "an object" if dataclasses.is_dataclass(kind) else _JSON_NAMES.get(kind, str(kind))
        raise TypeError(f"{path} must be {expected}{' or null' if nullable else ''} (got {_json_type(value)})")
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        raise TypeError(f"{path} must be {_JSON_NAMES.get(kind, 'a number')} that fits in 64 bits (got "
                        f"{_json_type(value)})")
    if dataclasses.is_dataclass(kind):
        _check_fields(kind, value, path, scope=scope)
    elif kind is tuple and Ellipsis not in args and len(value) != len(args):
        raise TypeError(f"{path} must be a list of {len(args)} items (got {len(value)})")
    elif kind in (list, tuple):
        for k, item in enumerate(value):
            _check_value(item, args[0] if len(args) == 1 or Ellipsis in args else args[k], f"{path}[{k}]", scope)
        if kind is list and args and typing.get_origin(args[0]) is list:  # an array: a ragged one has no picture
            sizes = [_shape(item) for item in value]
            for k, size in enumerate(sizes):
                if size != sizes[0]:
                    raise TypeError(f"{path} must be rectangular (its item {k} has size {_shape_text(size)}, item 0 "
                                    f"{_shape_text(sizes[0])})")
    elif kind is dict:
        for key, item in value.items():
            _check_value(item, args[1], f"{path}.{key}", scope)


def _check_rule(rule: _Rule, value: Any, path: str, scope: tuple[dict, ...]) -> None:
    """``value`` (of its field's type, not null) keeps ``rule``; ``scope`` holds the objects it is looked up in."""
    if rule.shape:
        expected = tuple(_dimension(name, scope) for name in rule.shape)
        size = _shape(value)
        if len(size) != len(expected) or any(want is not None and got != want for got, want in zip(size, expected)):
            wanted = "×".join("?" if want is None else str(want) for want in expected)
            raise TypeError(f"{path} must have size {wanted} ({' × '.join(rule.shape)}; got {_shape_text(size)})")
    for where, number in _numbers(value, path):
        if rule.finite and not math.isfinite(number):
            raise TypeError(f"{where} must be a finite number (got {_json_type(number)})")
        if rule.low is not None and (number < rule.low or (rule.above and number == rule.low)):
            bound = f"above {rule.low:g}" if rule.above else f"at least {rule.low:g}"
            raise TypeError(f"{where} must be {bound} (got {_json_type(number)})")


def _dimension(name: str, scope: tuple[dict, ...]) -> int | None:
    """The size a :attr:`_Rule.shape` name stands for: the nearest such field's integer, or its list's length."""
    for data in scope:
        if name in data:
            value = data[name]
            return len(value) if isinstance(value, list) else value if isinstance(value, int) else None
    return None


def _shape(value: Any) -> tuple[int, ...]:
    """The size of nested lists along each axis, read along their first items (``[]`` is ``(0,)``)."""
    if not isinstance(value, (list, tuple)):
        return ()
    return (len(value), *_shape(value[0])) if value else (0,)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "empty" if shape[:1] == (0,) else "×".join(map(str, shape)) or "a single value"


def _numbers(value: Any, path: str) -> Iterator[tuple[str, float]]:
    """Every number in ``value`` (nested lists), with its path."""
    if isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            yield from _numbers(item, f"{path}[{k}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def _fits(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


_JSON_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "true or false", list: "a list",
               tuple: "a list", dict: "an object"}


def _json_type(value: Any) -> str:
    """How a JSON value is named in a message: its JSON type and a short excerpt."""
    name = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    excerpt = repr(value) if isinstance(value, (bool, int, float, str)) else ""
    return f"{name} {excerpt[:40]}".rstrip()


def report_file(path: str | Path) -> Path:
    """The JSON file a report path names: ``DIR/report.json`` for a folder, the path itself otherwise."""
    path = Path(path)
    return path / REPORT_JSON if path.is_dir() else path


def check_report_path(path: str | Path, *, overwrite: bool = False, option: str = "--json") -> Path:
    """Check, before an audit runs, that a report file can be written at ``path`` (nothing is created).

    Args:
        path: The JSON file.
        overwrite: Allow replacing a file already there (the report of an earlier audit, or any file: the user named
            this very file).
        option: The option that named the file, for the messages.

    Raises:
        ReportFileError: ``path`` is a folder, a parent is a file, the folder it would go in is not writable, or
            ``path`` exists and ``overwrite`` is off.
    """
    path = Path(path)
    if path.is_dir():
        raise ReportFileError(f"{option} '{path}' is a folder", f"name a file (e.g. {path / REPORT_JSON}), or pass "
                              "the folder as --out")
    if path.exists() and not overwrite:
        earlier = _earlier_report(path)
        if earlier is None:
            raise ReportFileError(f"{option} '{path}' already exists and is not a ppp-audit report",
                                  "name another file (or pass --overwrite to replace it)")
        raise ReportFileError(f"{option} '{path}' already holds the report of an earlier audit ({earlier})",
                              "pass --overwrite to replace it, or name another file")
    _check_writable_folder(path.parent, option, path)
    return path


def _earlier_report(path: Path) -> str | None:
    """``Report.describe()`` of the report at ``path``, ``None`` if it holds none."""
    try:
        return Report.load(path).describe()
    except ReportFileError:
        return None


def written_files(folder: str | Path) -> WrittenFiles:
    """The files ppp-audit wrote in a report folder (:class:`~ppp_audit.files.WrittenFiles`); in a folder written
    before ppp-audit kept that list, a readable ``report.json`` counts as its own."""
    written = WrittenFiles.read(folder)
    if not written.recorded and _earlier_report(written.folder / REPORT_JSON) is not None:
        written.files.add(REPORT_JSON)
    return written


def check_report_folder(path: str | Path, *, overwrite: bool = False, option: str = "--out",
                        replace_hint: str = "pass --overwrite to replace it, or choose another folder") -> Path:
    """Check, before an audit runs, that its report folder can be written at ``path`` without replacing another audit.

    Args:
        path: The folder for report.json, figures and the page.
        overwrite: Allow replacing a report that is already there (and the figures it does not draw again).
        option: The option that named the folder, for the messages.
        replace_hint: What to do about a report already there (a command without ``--overwrite`` says its own).

    Raises:
        ReportFileError: ``path`` is a file, cannot be written, holds a ``report.json`` ppp-audit did not write, or
            already holds a report and ``overwrite`` is off.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ReportFileError(f"{option} '{path}' is a file, not a folder", f"pass a folder for {option} (or --json "
                              "FILE for the JSON alone)")
    existing = path / REPORT_JSON
    if not written_files(path).owns(REPORT_JSON):
        raise ReportFileError(f"{option} '{path}' holds a {REPORT_JSON} that ppp-audit did not write",
                              "choose another folder (ppp-audit replaces only files it wrote)")
    if existing.exists() and not overwrite:
        earlier = _earlier_report(existing)
        earlier = f"the report of an earlier audit ({earlier})" if earlier else f"a {REPORT_JSON}"
        raise ReportFileError(f"{option} '{path}' already holds {earlier}", replace_hint)
    _check_writable_folder(path, option, path)
    return path


def _check_writable_folder(folder: Path, option: str, named: Path) -> None:
    """The nearest existing folder at or above ``folder`` is a folder we can create files in (probed, then removed)."""
    import tempfile

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ReportFileError(f"{option} '{named}': '{existing}' is a file, not a folder", "pick another path")
    try:  # a folder still to be made is probed by making one beside where it will go
        if existing == folder:
            tempfile.NamedTemporaryFile(dir=existing, prefix=".ppp-audit-probe-").close()
        else:
            tempfile.TemporaryDirectory(dir=existing, prefix=".ppp-audit-probe-").cleanup()
    except OSError as exc:
        raise ReportFileError(f"{option} '{named}' cannot be written ('{existing}': {exc.strerror or exc})",
                              "pick a writable path") from None


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning (docs/finetune.md): PPP after the padding swap *and* training, per scheme
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

    A repair (``settings["repair"]``, docs/repair.md) also holds the consistency term of its steps
    (``consistency_loss``, downsampled as ``train_loss``), the tiling consistency per layer of the model before and
    after it (``tiling_before``/``tiling_after``: ``RMS(f(x) - stitched tiles) / RMS(σ)`` on the held-out images,
    ``σ`` the features' spread over them; ``None`` where tiles do not fit), and with ``--repair-compare`` the plain
    fine-tune of the same budget (``plain``, a :class:`FinetuneResult` of its own).
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
    consistency_loss: list[float] = field(default_factory=list)
    tiling_before: list[float | None] | None = None
    tiling_after: list[float | None] | None = None
    plain: "FinetuneResult | None" = None

    @property
    def repaired(self) -> bool:
        """Whether the objective held the repair's consistency term."""
        return bool(self.settings.get("repair"))

    @staticmethod
    def last_tiling(values: list[float | None] | None) -> float | None:
        """The tiling consistency of the last layer that has one (``None`` without any)."""
        return next((v for v in reversed(values or []) if v is not None), None)

    def to_dict(self) -> dict[str, Any]:
        out = {"steps": self.steps, "settings": self.settings, "last_strength": self.last_strength,
               "max_strength": self.max_strength, "before": self.before, "after": self.after,
               "original": self.original, "curve": [asdict(point) for point in self.curve],
               "train_loss": self.train_loss, "train_loss_every": self.train_loss_every, "weights": self.weights,
               "seconds": self.seconds, "layers": [layer.to_dict() for layer in self.layers]}
        if self.repaired or self.tiling_after is not None:
            out.update(consistency_loss=self.consistency_loss, tiling_before=self.tiling_before,
                       tiling_after=self.tiling_after, plain=self.plain.to_dict() if self.plain else None)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FinetuneResult":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # a newer 1.x writer's fields are ignored
        data["layers"] = [LayerResult.from_dict(layer) for layer in data["layers"]]
        data["curve"] = [CurvePoint(**point) for point in data.get("curve", [])]
        data["plain"] = cls.from_dict(data["plain"]) if data.get("plain") else None
        return cls(**data)
