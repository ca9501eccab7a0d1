"""PNG figures of a :class:`~ppp_audit.report.Report` (docs/figures.md): PPP maps, extent curves, strength by stage,
convergence in N, the mask rising out of the mist.

Figures come from a registry of *figure factories*: ``@register_figure(name)`` on a function ``report ->
list[FigureSpec]``. A spec names its file and the report section that shows it, and draws lazily, so callers can
skip figures that already exist without importing matplotlib. Drawing uses ``matplotlib.figure.Figure`` with the
Agg canvas (no pyplot, no global state) at a fixed size: a PNG's pixel size is ``figsize * DPI``, never cropped.

Palette: viridis for maps; Okabe-Ito (colour-blind safe) for lines, with line styles as a second cue.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..files import atomic_write
from ..report import format_number
from ..registry import Registry

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..report import BorderProfile, LayerResult, LayerStats, Report, SchemeResult

DPI = 100
MAP_CMAP = "viridis"
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
SIDE_STYLES = {
    "all sides": dict(color=OKABE_ITO["black"], linestyle="-", linewidth=2.2, marker="o", markersize=3.5),
    "top": dict(color=OKABE_ITO["orange"], linestyle="-", linewidth=1.4),
    "bottom": dict(color=OKABE_ITO["sky_blue"], linestyle="--", linewidth=1.4),
    "left": dict(color=OKABE_ITO["bluish_green"], linestyle="-.", linewidth=1.4),
    "right": dict(color=OKABE_ITO["vermillion"], linestyle=":", linewidth=1.6),
}
_SCHEME_COLOURS = [OKABE_ITO[k] for k in ("black", "blue", "vermillion", "bluish_green", "reddish_purple", "orange",
                                           "sky_blue")]
_SCHEME_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]

# Layout of the map figure, in inches (fixed, so panel positions and PNG sizes are known in advance).
MAP_PANEL_IN = 2.3
MAP_GAP_IN = 0.45
MAP_LEFT_IN = 0.7
MAP_CBAR_GAP_IN = 0.3
MAP_CBAR_IN = 0.15
MAP_RIGHT_IN = 1.25
MAP_BOTTOM_IN = 0.95
MAP_TOP_IN = 1.1
EXTENT_PANEL_IN = (3.4, 2.6)
EXTENT_MARGINS_IN = dict(left=0.75, right=0.2, bottom=1.1, top=1.0, gap=0.35)


def scheme_colour(index: int) -> str:
    """The line colour of the ``index``-th scheme of a report (the same in every figure)."""
    return _SCHEME_COLOURS[index % len(_SCHEME_COLOURS)]


@dataclass
class FigureSpec:
    """A figure a report can have, before it is drawn.

    Args:
        key: Unique id, e.g. ``ppp_map/layer3``.
        filename: Path of the PNG relative to the output folder (``figures/...``).
        section: The report section that shows it (see :mod:`ppp_audit.render.html`).
        title: One line shown above it in the HTML page.
        alt: Text alternative for the image.
        size_in: Figure size in inches; the PNG is ``size_in * DPI`` pixels.
        draw: Builds the matplotlib figure; returns it and the axes of its panels by label (may be empty).
    """

    key: str
    filename: str
    section: str
    title: str
    alt: str
    size_in: tuple[float, float]
    draw: Callable[[], tuple["Figure", dict[str, "Axes"]]]

    @property
    def size_px(self) -> tuple[int, int]:
        return round(self.size_in[0] * DPI), round(self.size_in[1] * DPI)


@dataclass
class FigureFile:
    """A figure on disk. ``panels_px`` maps a panel label to the (left, top, right, bottom) pixel box of its data
    (known only when the figure was drawn in this call)."""

    key: str
    filename: str
    section: str
    title: str
    alt: str
    size_px: tuple[int, int]
    written: bool
    panels_px: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


FigureFactory = Callable[["Report"], list[FigureSpec]]
FIGURES: Registry[FigureFactory] = Registry("figure")


def register_figure(name: str) -> Callable[[FigureFactory], FigureFactory]:
    """Register a figure factory ``report -> list[FigureSpec]`` under ``name`` (later names replace earlier)."""
    return FIGURES.register(name)


def figure_specs(report: "Report") -> list[FigureSpec]:
    """Every figure the registered factories make for ``report``, in registration order."""
    return [spec for factory in FIGURES.values() for spec in factory(report)]


def write_figures(report: "Report", out_dir: str | Path, overwrite: bool = True,
                  place: Callable[[str], str] | None = None) -> list[FigureFile]:
    """Draw the report's figures into ``out_dir`` (PNG). With ``overwrite=False`` existing files are kept.

    Args:
        report: The report.
        out_dir: The folder (figures go to its ``figures/``).
        overwrite: Redraw figures whose file exists.
        place: Where the figure meant for a file name goes (default: that name), e.g.
            :meth:`WrittenFiles.place <ppp_audit.files.WrittenFiles.place>`, which keeps files ppp-audit did not write.
    """
    out_dir = Path(out_dir)
    files = []
    for spec in figure_specs(report):
        filename = place(spec.filename) if place is not None else spec.filename
        path = out_dir / filename
        if path.exists() and not overwrite:
            files.append(_file(spec, filename, written=False))
            continue
        fig, panels = spec.draw()
        boxes = _panel_boxes(fig, panels)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None},
                                                   pil_kwargs={"optimize": True}))
        files.append(_file(spec, filename, written=True, panels_px=boxes))
    return files


def _file(spec: FigureSpec, filename: str, **kwargs: Any) -> FigureFile:
    return FigureFile(key=spec.key, filename=filename, section=spec.section, title=spec.title, alt=spec.alt,
                      size_px=spec.size_px, **kwargs)


def _panel_boxes(fig: "Figure", panels: dict[str, "Axes"]) -> dict[str, tuple[int, int, int, int]]:
    """Pixel box (left, top, right, bottom; origin top-left) of each panel's image data, or of the axes."""
    fig.canvas.draw()  # fixes transforms (equal aspect) before reading positions
    height = fig.bbox.height
    boxes = {}
    for label, ax in panels.items():
        images = ax.get_images()
        if images:
            x0, x1, y0, y1 = images[0].get_extent()
            (px0, py0), (px1, py1) = ax.transData.transform([(x0, y0), (x1, y1)])
        else:
            px0, py0, px1, py1 = ax.bbox.x0, ax.bbox.y0, ax.bbox.x1, ax.bbox.y1
        left, right = sorted((px0, px1))
        bottom, top = sorted((py0, py1))
        boxes[label] = (round(left), round(height - top), round(right), round(height - bottom))
    return boxes


def _new_figure(size_in: tuple[float, float]) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_in, dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "layer"


def model_label(report: "Report") -> str:
    """``model (weights)``, with a weights file shortened to its name."""
    model = report.model.get("name", "?")
    weights = str(report.model.get("weights") or "")
    if "/" in weights or "\\" in weights:
        weights = re.split(r"[/\\]", weights)[-1]
    return f"{model} ({weights})" if weights else model


def _header(report: "Report", layer: "LayerResult") -> str:
    return (f"{model_label(report)}\nstage {layer.name} (stride {layer.stats.stride_px:g}) · N={layer.stats.n} "
            f"{report.data.get('kind', '')}").rstrip()


def _floor_map(layer: "LayerResult"):
    """Per-position noise floor: the overall profile's floor of the ring each position lies in (NaN if unknown)."""
    import numpy as np

    stats = layer.stats
    h, w = stats.height, stats.width
    y, x = np.mgrid[0:h, 0:w]
    rings = np.minimum.reduce([y, h - 1 - y, x, w - 1 - x])
    floors = np.asarray(stats.profile.noise_floor if stats.profile else [], dtype=float)
    out = np.full((h, w), np.nan)
    known = rings < len(floors)
    out[known] = floors[rings[known]]
    return out


def max_noise_floor(profile: "BorderProfile | None") -> float | None:
    """The highest ring noise floor of a profile: a map value above it is above the noise in every ring."""
    if profile is None or not profile.noise_floor:
        return None
    values = [v for v in profile.noise_floor if math.isfinite(v)]
    return max(values) if values else None


# ---------------------------------------------------------------------------------------------------------------------
# PPP maps: one figure per stage, one panel per scheme, one shared colour scale
# ---------------------------------------------------------------------------------------------------------------------


def map_figure_size(num_panels: int) -> tuple[float, float]:
    """Size (inches) of a PPP-map figure with ``num_panels`` scheme panels."""
    width = (MAP_LEFT_IN + num_panels * MAP_PANEL_IN + (num_panels - 1) * MAP_GAP_IN + MAP_CBAR_GAP_IN + MAP_CBAR_IN
             + MAP_RIGHT_IN)
    return width, MAP_BOTTOM_IN + MAP_PANEL_IN + MAP_TOP_IN


Panel = tuple[int, str, "LayerResult"]
"""(scheme index, scheme label, that scheme's result for one stage)."""


def _stage_panels(report: "Report",
                  has: Callable[["LayerStats"], bool]) -> list[tuple[int, "LayerResult", list[Panel]]]:
    """Per stage: its index, the first scheme's result for it, and every scheme's result that ``has`` what is drawn."""
    stages = []
    for index, first in enumerate(report.results[0].layers):
        panels = [(i, r.scheme, r.layers[index]) for i, r in enumerate(report.results)
                  if index < len(r.layers) and has(r.layers[index].stats)]
        if panels:
            stages.append((index, first, panels))
    return stages


@register_figure("ppp_map")
def ppp_map_figures(report: "Report") -> list[FigureSpec]:
    """Per stage: the channel-RMS PPP map of every scheme that has one, side by side on one colour scale."""
    specs = []
    for index, first, panels in _stage_panels(report, lambda stats: stats.ppp_map is not None):
        schemes = ", ".join(label for _, label, _ in panels)
        specs.append(FigureSpec(
            key=f"ppp_map/{first.name}", filename=f"figures/ppp_map_{index:02d}_{_slug(first.name)}.png",
            section="maps", title=f"PPP map · {first.name} (stride {first.stats.stride_px:g})",
            alt=f"Channel-RMS PPP map of {report.model.get('name')} at stage {first.name} for {schemes}",
            size_in=map_figure_size(len(panels)),
            draw=lambda panels=panels, first=first: _draw_maps(report, first, panels),
        ))
    return specs


def _draw_maps(report: "Report", first: "LayerResult", panels: list[tuple[int, str, "LayerResult"]]):
    import numpy as np
    from matplotlib import patheffects
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    size = map_figure_size(len(panels))
    fig = _new_figure(size)
    maps = [np.asarray(layer.stats.ppp_map, dtype=float) for _, _, layer in panels]
    vmax = max((float(np.nanmax(m)) for m in maps if m.size), default=0.0) or 1.0
    norm = Normalize(vmin=0.0, vmax=vmax)
    axes: dict[str, Axes] = {}
    outline = [patheffects.Stroke(linewidth=2.6, foreground="black"), patheffects.Normal()]

    def rect(left_in: float, width_in: float) -> list[float]:
        return [left_in / size[0], MAP_BOTTOM_IN / size[1], width_in / size[0], MAP_PANEL_IN / size[1]]

    for k, ((scheme_index, label, layer), values) in enumerate(zip(panels, maps)):
        stats = layer.stats
        ax = fig.add_axes(rect(MAP_LEFT_IN + k * (MAP_PANEL_IN + MAP_GAP_IN), MAP_PANEL_IN))
        height_px, width_px = stats.height * stats.stride_px, stats.width * stats.stride_px
        ax.imshow(values, cmap=MAP_CMAP, norm=norm, origin="upper", interpolation="nearest",
                  extent=(0, width_px, height_px, 0))
        # Contour where the map crosses its ring's noise floor: inside it, the pattern is measurably there.
        floor = _floor_map(layer)
        above = np.where(np.isfinite(floor), (values > floor).astype(float), 0.0)
        # A debiased strength of 0 says no pattern above the noise: positions above the floor are then chance
        # crossings, a speckle that a contour would draw as if it were a pattern.
        nothing = stats.strength is not None and stats.strength <= 0
        if min(values.shape) >= 2 and 0 < above.sum() < above.size and not nothing:
            centres_y = (np.arange(stats.height) + 0.5) * stats.stride_px
            centres_x = (np.arange(stats.width) + 0.5) * stats.stride_px
            contour = ax.contour(centres_x, centres_y, above, levels=[0.5], colors="white", linewidths=1.2,
                                 linestyles="--")
            contour.set_path_effects(outline)
        known = np.isfinite(floor)
        share = f"{above[known].mean():.0%} of positions above the floor" if known.any() else "no noise floor"
        if nothing:
            share = "no pattern above noise" + (f"; {above[known].mean():.0%} over floor by chance"
                                                 if known.any() and above[known].any() else "")
        ax.set_title(f"{report.results[scheme_index].label} · strength {format_number(stats.strength)}\n{share}",
                     fontsize=8.5,
                     color=scheme_colour(scheme_index))
        ax.set_xlabel("x (input px)", fontsize=8)
        if k == 0:
            ax.set_ylabel("y (input px)", fontsize=8)
        ax.tick_params(labelsize=7)
        axes[label] = ax

    cax_left = MAP_LEFT_IN + len(panels) * MAP_PANEL_IN + (len(panels) - 1) * MAP_GAP_IN + MAP_CBAR_GAP_IN
    cax = fig.add_axes(rect(cax_left, MAP_CBAR_IN))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=MAP_CMAP), cax=cax)
    bar.set_label("channel-RMS of P (feature units)", fontsize=8)
    cax.tick_params(labelsize=7)
    for scheme_index, label, layer in panels:
        level = max_noise_floor(layer.stats.profile)
        if level is not None and level <= vmax:
            # A triangle left of the bar, in the scheme's colour, points at that scheme's noise floor.
            cax.plot([-0.6], [level], marker=">", markersize=8, color=scheme_colour(scheme_index), clip_on=False,
                     transform=cax.get_yaxis_transform(), markeredgecolor="white", markeredgewidth=0.6)
    fig.suptitle(_header(report, first), fontsize=10, x=0.02, ha="left", y=1 - 0.12 / size[1], va="top")
    fig.text(0.02, 0.12 / size[1],
             "dashed contour: where the map exceeds the noise floor of its ring · ▸ at the colour bar: the highest "
             "ring noise floor (scheme colour)", fontsize=7, color="#444444", ha="left", va="bottom", wrap=True)
    return fig, axes


# ---------------------------------------------------------------------------------------------------------------------
# Extent curves: strength against distance from the border, per side
# ---------------------------------------------------------------------------------------------------------------------


def extent_figure_size(num_panels: int) -> tuple[float, float]:
    """Size (inches) of an extent figure with ``num_panels`` scheme panels."""
    m = EXTENT_MARGINS_IN
    width = m["left"] + num_panels * EXTENT_PANEL_IN[0] + (num_panels - 1) * m["gap"] + m["right"]
    return width, m["bottom"] + EXTENT_PANEL_IN[1] + m["top"]


@register_figure("extent")
def extent_figures(report: "Report") -> list[FigureSpec]:
    """Per stage: channel-RMS of P against distance from the border (input px), all sides and each side."""
    specs = []
    for index, first, panels in _stage_panels(report, lambda stats: stats.profile is not None):
        specs.append(FigureSpec(
            key=f"extent/{first.name}", filename=f"figures/extent_{index:02d}_{_slug(first.name)}.png",
            section="extent", title=f"Extent · {first.name} (stride {first.stats.stride_px:g})",
            alt=f"PPP strength against distance from the border at stage {first.name}, per side and scheme",
            size_in=extent_figure_size(len(panels)),
            draw=lambda panels=panels, first=first: _draw_extent(report, first, panels),
        ))
    return specs


def _draw_extent(report: "Report", first: "LayerResult", panels: list[tuple[int, str, "LayerResult"]]):
    size = extent_figure_size(len(panels))
    m = EXTENT_MARGINS_IN
    fig = _new_figure(size)
    axes: dict[str, Axes] = {}
    top = 0.0
    for _, _, layer in panels:
        profiles = [layer.stats.profile, *layer.stats.side_profiles.values()]
        top = max([top, *(v for p in profiles for v in [*p.rms, *p.noise_floor] if math.isfinite(v))])
    top = top * 1.08 or 1.0
    # Zoom in on the border where the pattern is short-ranged; the far rings are flat at the floor anyway.
    # The axis ends at the farthest position's centre: no position, and no extent, lies beyond it.
    full = max((p.distance_px[-1] for _, _, layer in panels for p in [layer.stats.profile] if p.distance_px),
               default=1.0)
    reach = max(p.extent_px for _, _, layer in panels
                for p in [layer.stats.profile, *layer.stats.side_profiles.values()])
    right = min(full, max(2.5 * reach, 10 * first.stats.stride_px))
    handles = {}
    for k, (scheme_index, label, layer) in enumerate(panels):
        left = m["left"] + k * (EXTENT_PANEL_IN[0] + m["gap"])
        ax = fig.add_axes([left / size[0], m["bottom"] / size[1], EXTENT_PANEL_IN[0] / size[0],
                           EXTENT_PANEL_IN[1] / size[1]])
        overall = layer.stats.profile
        floor = ax.fill_between(overall.distance_px, 0, overall.noise_floor, color="#BBBBBB", alpha=0.6,
                                linewidth=0, step="mid")
        handles["noise floor (all sides)"] = floor
        curves = {"all sides": overall, **layer.stats.side_profiles}
        for side, profile in curves.items():
            style = SIDE_STYLES.get(side, dict(color="#777777", linestyle="-"))
            (line,) = ax.plot(profile.distance_px, profile.rms, **style)
            handles.setdefault(side, line)
        extent_line = ax.axvline(overall.extent_px, color=OKABE_ITO["reddish_purple"], linestyle=(0, (1, 1)),
                                 linewidth=1.5)
        handles["extent (all sides)"] = extent_line
        sides = ", ".join(f"{s[0].upper()} {p.extent_px:g}" for s, p in layer.stats.side_profiles.items())
        ax.set_title(f"{report.results[scheme_index].label} · extent {overall.extent_px:g} px\n({sides})",
                     fontsize=8.5, color=scheme_colour(scheme_index))
        ax.set_ylim(0, top)
        ax.set_xlim(0, right)
        zoom = f", first {right:g} of {full:g}" if right < full else ""
        ax.set_xlabel(f"distance from the border (input px{zoom})", fontsize=8)
        if k == 0:
            ax.set_ylabel("channel-RMS of P", fontsize=8)
        else:
            ax.tick_params(labelleft=False)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, linewidth=0.5)
        axes[label] = ax
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower left", ncol=4, fontsize=7.5, frameon=False,
               bbox_to_anchor=(m["left"] / size[0], 0.02))
    fig.suptitle(_header(report, first), fontsize=10, x=0.02, ha="left", y=1 - 0.12 / size[1], va="top")
    return fig, axes


# ---------------------------------------------------------------------------------------------------------------------
# Strength by stage
# ---------------------------------------------------------------------------------------------------------------------

STRENGTH_SIZE_IN = (6.4, 3.6)


@register_figure("strength")
def strength_figures(report: "Report") -> list[FigureSpec]:
    """PPP strength (with its 95 % CI) at every stage, one line per scheme."""
    if not any(layer.stats.strength is not None for r in report.results for layer in r.layers):
        return []
    return [FigureSpec(
        key="strength", filename="figures/strength.png", section="strength", title="PPP strength by stage",
        alt=f"PPP strength with 95% confidence intervals per stage of {report.model.get('name')}, one line per scheme",
        size_in=STRENGTH_SIZE_IN, draw=lambda: _draw_strength(report),
    )]


def _draw_strength(report: "Report"):
    fig = _new_figure(STRENGTH_SIZE_IN)
    ax = fig.add_axes([0.11, 0.2, 0.62, 0.66])
    count = len(report.results)
    for i, result in enumerate(report.results):
        xs, ys, lows, highs = [], [], [], []
        for j, layer in enumerate(result.layers):
            stats = layer.stats
            if stats.strength is None:
                continue
            xs.append(j + (i - (count - 1) / 2) * 0.06)  # a small dodge keeps CI bars apart
            ys.append(stats.strength)
            low, high = stats.strength_ci or (stats.strength, stats.strength)
            lows.append(stats.strength - low)
            highs.append(high - stats.strength)
        ax.errorbar(xs, ys, yerr=[lows, highs], label=result.label, color=scheme_colour(i),
                    marker=_SCHEME_MARKERS[i % len(_SCHEME_MARKERS)], markersize=5, capsize=3, linewidth=1.5)
    _style_strength_axes(ax, report.results[0].layers, legend_title="padding")
    n = report.data.get("num_images", "?")
    fig.suptitle(f"{model_label(report)}\nPPP strength ± 95% CI · N={n} {report.data.get('kind', '')}".rstrip(),
                 fontsize=10, x=0.02, ha="left", y=0.98, va="top")
    return fig, {"strength": ax}


# ---------------------------------------------------------------------------------------------------------------------
# Convergence in N: one panel per scheme, one line per stage
# ---------------------------------------------------------------------------------------------------------------------

CONVERGENCE_PANEL_IN = (3.0, 2.6)
CONVERGENCE_MARGINS_IN = dict(left=0.7, right=1.9, bottom=0.6, top=0.95, gap=0.35)


def convergence_figure_size(num_panels: int) -> tuple[float, float]:
    """Size (inches) of the convergence figure with ``num_panels`` scheme panels."""
    m, (w, h) = CONVERGENCE_MARGINS_IN, CONVERGENCE_PANEL_IN
    return m["left"] + num_panels * w + (num_panels - 1) * m["gap"] + m["right"], m["bottom"] + h + m["top"]


def _has_convergence(result: "SchemeResult") -> bool:
    return any(layer.stats.convergence for layer in result.layers)


@register_figure("convergence")
def convergence_figures(report: "Report") -> list[FigureSpec]:
    """Strength against the number of images (nested subsets N/8 ... N, log2 axis), one panel per scheme; none for
    reports without ``convergence`` (before schema 1.5)."""
    panels = [(i, result) for i, result in enumerate(report.results) if _has_convergence(result)]
    if not panels:
        return []
    return [FigureSpec(
        key="convergence", filename="figures/convergence.png", section="convergence",
        title="PPP strength against the number of images",
        alt=f"PPP strength per stage of {report.model.get('name')} measured on N/8, N/4, N/2 and N images, one panel "
            "per scheme",
        size_in=convergence_figure_size(len(panels)), draw=lambda: _draw_convergence(report, panels),
    )]


def _draw_convergence(report: "Report", panels: list[tuple[int, "SchemeResult"]]):
    fig = _new_figure(convergence_figure_size(len(panels)))
    width_in, height_in = convergence_figure_size(len(panels))
    m, (w, h) = CONVERGENCE_MARGINS_IN, CONVERGENCE_PANEL_IN
    axes: dict[str, "Axes"] = {}
    first = None
    for k, (_, result) in enumerate(panels):
        left = m["left"] + k * (w + m["gap"])
        ax = fig.add_axes([left / width_in, m["bottom"] / height_in, w / width_in, h / height_in], sharey=first)
        first = first or ax
        for j, layer in enumerate(result.layers):
            points = layer.stats.convergence or []
            xs = [n for n, value in points if value is not None]
            ys = [value for _, value in points if value is not None]
            if xs:
                ax.plot(xs, ys, color=scheme_colour(j), marker=_SCHEME_MARKERS[j % len(_SCHEME_MARKERS)],
                        markersize=4, linewidth=1.5, label=f"{layer.name} (s={layer.stats.stride_px:g})")
        ax.set_xscale("log", base=2)
        sizes = sorted({n for layer in result.layers for n, _ in (layer.stats.convergence or [])})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("images", fontsize=8)
        ax.set_title(result.label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, linewidth=0.5)
        axes[result.label] = ax
    top = max((v for _, r in panels for layer in r.layers for _, v in (layer.stats.convergence or []) if v), default=1)
    first.set_ylim(0, 1.1 * top)
    for ax in list(axes.values())[1:]:
        ax.tick_params(labelleft=False)
    first.set_ylabel("PPP strength  RMS(P)/RMS(σ)", fontsize=8)
    fig.legend(*first.get_legend_handles_labels(), loc="upper left", fontsize=7, frameon=False, title="stage",
               title_fontsize=7,
               bbox_to_anchor=((width_in - m["right"] + 0.1) / width_in, (m["bottom"] + h) / height_in))
    n = report.data.get("num_images", "?")
    fig.suptitle(f"{model_label(report)}\nPPP strength on nested subsets of the N={n} images (points correlated)",
                 fontsize=10, x=0.02, ha="left", y=0.98, va="top")
    return fig, axes


# ---------------------------------------------------------------------------------------------------------------------
# The mask rising out of the mist: one stage's mean feature and PPP maps after 1, 10, 100 and N images
# ---------------------------------------------------------------------------------------------------------------------

MIST_PANEL_IN = 1.6
MIST_MARGINS_IN = dict(left=1.05, right=0.1, bottom=0.6, top=1.05, row_gap=0.12, group_gap=0.45, cbar_gap=0.05,
                       cbar=0.09, cbar_labels=0.5)
MIST_SCHEMES = 2
"""The mist figure shows the native padding and the first compared scheme: two rows each stay readable."""


def mist_figure_size(num_columns: int, num_schemes: int) -> tuple[float, float]:
    """Size (inches) of the mist figure: ``num_columns`` image counts, two rows per scheme."""
    m = MIST_MARGINS_IN
    pitch = MIST_PANEL_IN + m["cbar_gap"] + m["cbar"] + m["cbar_labels"]
    rows_in = num_schemes * (2 * MIST_PANEL_IN + m["row_gap"]) + (num_schemes - 1) * m["group_gap"]
    return m["left"] + num_columns * pitch + m["right"], m["top"] + rows_in + m["bottom"]


def _mist_panels(report: "Report") -> tuple["LayerResult", list[tuple[int, "SchemeResult", "LayerResult"]]] | None:
    """The first scheme's result for the layer with mist snapshots (the first such in stage order) and up to
    :data:`MIST_SCHEMES` schemes' results for it, native first; ``None`` when no layer has them (reports before
    schema 1.6)."""
    for _, _, panels in _stage_panels(report, lambda stats: stats.mist is not None):
        chosen = [(i, report.results[i], layer) for i, _, layer in panels][:MIST_SCHEMES]
        return chosen[0][2], chosen
    return None


def _count_label(count: int, last: bool) -> str:
    images = "image" if count == 1 else "images"
    return f"all N={count} {images}" if last else f"first {count} {images}" if count > 1 else "1 image"


@register_figure("mist")
def mist_figures(report: "Report") -> list[FigureSpec]:
    """The mask rising out of the mist (the paper's teaser): the mist layer's channel-averaged mean feature map and
    PPP map after the first 1, 10, 100 and all N images, for the native padding and the first compared scheme."""
    chosen = _mist_panels(report)
    if chosen is None:
        return []
    first, panels = chosen
    counts = first.stats.mist.counts
    schemes = " and ".join(result.label for _, result, _ in panels)
    return [FigureSpec(
        key="mist", filename="figures/mist.png", section="mist",
        title=f"The mask rising out of the mist · {first.name} (stride {first.stats.stride_px:g})",
        alt=f"Mean feature and PPP maps of {report.model.get('name')} at stage {first.name} after "
            f"{', '.join(str(k) for k in counts)} images, for {schemes}",
        size_in=mist_figure_size(len(counts), len(panels)), draw=lambda: _draw_mist(report, first, panels),
    )]


def _draw_mist(report: "Report", first: "LayerResult", panels: list[tuple[int, "SchemeResult", "LayerResult"]]):
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    m = MIST_MARGINS_IN
    columns = max(len(layer.stats.mist.counts) for _, _, layer in panels)
    size = mist_figure_size(columns, len(panels))
    fig = _new_figure(size)
    pitch = MIST_PANEL_IN + m["cbar_gap"] + m["cbar"] + m["cbar_labels"]
    mean_feature = report.estimator != "mean-feature"
    ppp_name = "PPP map" if mean_feature else "P′ map"
    axes: dict[str, Axes] = {}
    for g, (scheme_index, result, layer) in enumerate(panels):
        mist = layer.stats.mist
        rows = (("mean_feature", "mean feature", mist.mean_feature), ("ppp", ppp_name, mist.ppp))
        for r, (key, row_name, maps) in enumerate(rows):
            top_in = m["top"] + g * (2 * MIST_PANEL_IN + m["row_gap"] + m["group_gap"]) + r * (MIST_PANEL_IN
                                                                                               + m["row_gap"])
            bottom = 1 - (top_in + MIST_PANEL_IN) / size[1]
            for c, (count, values) in enumerate(zip(mist.counts, maps)):
                values = np.asarray(values, dtype=float)
                left_in = m["left"] + c * pitch
                ax = fig.add_axes([left_in / size[0], bottom, MIST_PANEL_IN / size[0], MIST_PANEL_IN / size[1]])
                # Each panel on its own scale: one image's content spans a wider range than the pattern, and a shared
                # scale would flatten the later panels (their colour bars give the sizes).
                low = 0.0 if key == "ppp" else float(np.nanmin(values))
                high = float(np.nanmax(values))
                norm = Normalize(vmin=low, vmax=high if high > low else low + 1e-12)
                ax.imshow(values, cmap=MAP_CMAP, norm=norm, origin="upper", interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if g == 0 and r == 0:
                    ax.set_title(_count_label(count, c == len(mist.counts) - 1), fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{result.label}\n{row_name}", fontsize=8.5, color=scheme_colour(scheme_index))
                cax = fig.add_axes([(left_in + MIST_PANEL_IN + m["cbar_gap"]) / size[0], bottom, m["cbar"] / size[0],
                                    MIST_PANEL_IN / size[1]])
                bar = fig.colorbar(ScalarMappable(norm=norm, cmap=MAP_CMAP), cax=cax)
                bar.locator = MaxNLocator(nbins=3)
                bar.update_ticks()
                cax.tick_params(labelsize=6, length=2)
                axes[f"{result.scheme}/{key}/{count}"] = ax
    stats = first.stats
    fig.suptitle(f"{model_label(report)}\nThe mask rising out of the mist · stage {first.name} (stride "
                 f"{stats.stride_px:g}, {stats.height}×{stats.width}) · {report.data.get('kind', '')}".rstrip(" ·"),
                 fontsize=10, x=0.02, ha="left", y=1 - 0.12 / size[1], va="top")
    pattern = ("channel-RMS of the mean of Δ (padded − padding-free; raw, not debiased)" if mean_feature else
               "channel-RMS of the mean features less their spatial mean (mean-feature estimator)")
    fig.text(0.02, 0.1 / size[1],
             f"for each padding, upper row: channel-averaged mean feature; lower row: {pattern}. Each panel has its "
             "own colour scale (its "
             "bar): one image's content dominates, over many it cancels and the border pattern stays.",
             fontsize=7, color="#444444", ha="left", va="bottom", wrap=True)
    return fig, axes


# ---------------------------------------------------------------------------------------------------------------------

FORMATION_SIZE_IN = (6.4, 3.6)


@register_figure("formation")
def formation_figures(report: "Report") -> list[FigureSpec]:
    """Fine-tune runs: PPP strength per stage against optimiser steps (the formation curve), one figure per scheme.

    The curve starts right after the swap (step 0) and ends after fine-tuning; the native (pre-swap) level of each
    stage is drawn dashed, so one sees whether training rebuilds the pattern the swap removed.
    """
    specs = []
    for index, result in enumerate(report.results):
        tune = result.finetune
        if tune is None:
            continue
        specs.append(FigureSpec(
            key=f"formation/{result.scheme}", filename=f"figures/formation_{_slug(result.scheme)}.png",
            section="finetune", title=f"PPP formation while fine-tuning with {result.scheme} padding",
            alt=f"PPP strength per stage against fine-tuning steps of {report.model.get('name')} with "
                f"{result.scheme} padding, native levels dashed",
            size_in=FORMATION_SIZE_IN, draw=lambda result=result: _draw_formation(report, result),
        ))
    return specs


def _formation_points(result: "SchemeResult") -> list[tuple[int, list[float | None]]]:
    """(step, strength per stage) from right after the swap to after fine-tuning, curve points in between."""
    tune = result.finetune
    points = {0: [layer.stats.strength for layer in result.layers]}
    points.update({p.step: p.strengths for p in tune.curve})
    points[tune.steps] = [layer.stats.strength for layer in tune.layers]
    return sorted(points.items())


def _draw_formation(report: "Report", result: "SchemeResult"):
    fig = _new_figure(FORMATION_SIZE_IN)
    ax = fig.add_axes([0.11, 0.16, 0.62, 0.68])
    points = _formation_points(result)
    steps = [step for step, _ in points]
    native = report.results[0].layers
    for j, layer in enumerate(result.layers):
        colour = scheme_colour(j)
        ys = [strengths[j] if strengths[j] is not None else float("nan") for _, strengths in points]
        ax.plot(steps, ys, color=colour, marker=_SCHEME_MARKERS[j % len(_SCHEME_MARKERS)], markersize=4,
                linewidth=1.5, label=f"{layer.name} (s={layer.stats.stride_px:g})")
        if native[j].stats.strength is not None:
            ax.axhline(native[j].stats.strength, color=colour, linestyle="--", linewidth=0.8, alpha=0.7)
    ax.set_xlabel("fine-tuning step", fontsize=8)
    ax.set_ylabel("PPP strength  RMS(P)/RMS(σ)", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False, title="stage (dashed: native)",
              title_fontsize=7)
    n = report.data.get("num_images", "?")
    fig.suptitle(f"{model_label(report)}\n{result.scheme} padding: PPP while fine-tuning · held-out N={n}",
                 fontsize=10, x=0.02, ha="left", y=0.98, va="top")
    return fig, {"formation": ax}


# ---------------------------------------------------------------------------------------------------------------------
# PPP repair (docs/repair.md): strength per stage before, after a plain fine-tune and after the repair
# ---------------------------------------------------------------------------------------------------------------------


def repair_curves(result: "SchemeResult") -> list[tuple[str, list[float | None]]]:
    """(label, strength per stage) of a repaired scheme: before (right after the swap, or native), after the plain
    fine-tune of ``--repair-compare`` when there is one, and after the repair."""
    tune = result.finetune
    curves = [("before", [layer.stats.strength for layer in result.layers])]
    if tune.plain is not None:
        curves.append((f"plain +{tune.plain.steps}", [layer.stats.strength for layer in tune.plain.layers]))
    curves.append((f"repaired +{tune.steps}", [layer.stats.strength for layer in tune.layers]))
    return curves


@register_figure("repair")
def repair_figures(report: "Report") -> list[FigureSpec]:
    """One figure per repaired scheme: PPP strength per stage before, after a plain fine-tune and after the repair."""
    return [FigureSpec(
        key=f"repair/{result.scheme}", filename=f"figures/repair_{_slug(result.scheme)}.png", section="repair",
        title=f"PPP repair with {result.scheme} padding",
        alt=f"PPP strength per stage of {report.model.get('name')} with {result.scheme} padding before, after a plain "
            "fine-tune and after the repair",
        size_in=STRENGTH_SIZE_IN, draw=lambda result=result: _draw_repair(report, result),
    ) for result in report.results if result.finetune is not None and result.finetune.repaired]


def _style_strength_axes(ax: "Axes", layers: list["LayerResult"], legend_title: str) -> None:
    """The axes of a strength-by-stage plot: one tick per stage (name and stride), strength from 0, the legend
    outside."""
    ax.set_xticks(range(len(layers)), [f"{layer.name}\n(s={layer.stats.stride_px:g})" for layer in layers],
                  fontsize=7)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("PPP strength  RMS(P)/RMS(σ)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, title=legend_title,
              title_fontsize=8)


def _draw_repair(report: "Report", result: "SchemeResult"):
    fig = _new_figure(STRENGTH_SIZE_IN)
    ax = fig.add_axes([0.11, 0.2, 0.62, 0.66])
    layers = result.layers
    for i, (label, strengths) in enumerate(repair_curves(result)):
        points = [(j, v) for j, v in enumerate(strengths) if v is not None]
        ax.plot([j for j, _ in points], [v for _, v in points], label=label, color=scheme_colour(i),
                marker=_SCHEME_MARKERS[i % len(_SCHEME_MARKERS)], markersize=5, linewidth=1.5)
    _style_strength_axes(ax, layers, legend_title="model")
    n = report.data.get("num_images", "?")
    fig.suptitle(f"{model_label(report)}\n{result.scheme} padding: PPP before and after repair · held-out N={n}",
                 fontsize=10, x=0.02, ha="left", y=0.98, va="top")
    return fig, {"repair": ax}


# ---------------------------------------------------------------------------------------------------------------------
# Channels (docs/metrics.md#channels): how concentrated the pattern is, and the maps of the strongest channels
# ---------------------------------------------------------------------------------------------------------------------

CHANNEL_PANEL_IN = (2.4, 2.3)
CHANNEL_MARGINS_IN = dict(left=0.75, right=1.7, bottom=0.65, top=0.95, gap=0.3)
CHANNEL_MAP_IN = 1.5
CHANNEL_MAP_MARGINS_IN = dict(left=1.0, right=0.2, bottom=0.45, top=1.15, col_gap=0.25, row_gap=0.5)
CHANNEL_MAP_CMAP = "RdBu_r"
"""Diverging (a channel's ``P_c`` is signed), centred on 0: red where padding raises the feature, blue where it lowers
it."""


def channel_figure_size(num_panels: int) -> tuple[float, float]:
    """Size (inches) of the channel-energy figure with ``num_panels`` stage panels."""
    m, (w, h) = CHANNEL_MARGINS_IN, CHANNEL_PANEL_IN
    return m["left"] + num_panels * w + (num_panels - 1) * m["gap"] + m["right"], m["bottom"] + h + m["top"]


def channel_maps_figure_size(num_columns: int, num_rows: int) -> tuple[float, float]:
    """Size (inches) of a figure of channel maps: ``num_columns`` channels, one row per scheme."""
    m, side = CHANNEL_MAP_MARGINS_IN, CHANNEL_MAP_IN
    return (m["left"] + num_columns * side + (num_columns - 1) * m["col_gap"] + m["right"],
            m["top"] + num_rows * side + (num_rows - 1) * m["row_gap"] + m["bottom"])


def _shares_of(stats: "LayerStats"):
    shares = stats.channel_shares
    return shares if shares is not None and shares.measured and not stats.non_finite else None


@register_figure("channels")
def channel_figures(report: "Report") -> list[FigureSpec]:
    """The sorted channel-energy curve: per stage, the share of the pattern energy in the strongest k channels
    against k as a fraction of the channels, one line per scheme (the diagonal: every channel alike)."""
    stages = _stage_panels(report, lambda stats: _shares_of(stats) is not None
                           and bool(stats.channel_shares.cumulative))
    if not stages:
        return []
    return [FigureSpec(
        key="channels", filename="figures/channel_energy.png", section="channels",
        title="Which channels carry the pattern: energy share of the strongest channels",
        alt=f"Share of the PPP energy in the strongest channels of {report.model.get('name')} per stage and scheme",
        size_in=channel_figure_size(len(stages)), draw=lambda: _draw_channel_energy(report, stages),
    )]


def _draw_channel_energy(report: "Report", stages: list[tuple[int, "LayerResult", list[Panel]]]):
    m, (w, h) = CHANNEL_MARGINS_IN, CHANNEL_PANEL_IN
    size = channel_figure_size(len(stages))
    fig = _new_figure(size)
    axes: dict[str, "Axes"] = {}
    first_ax = None
    for k, (_, first, panels) in enumerate(stages):
        left = m["left"] + k * (w + m["gap"])
        ax = fig.add_axes([left / size[0], m["bottom"] / size[1], w / size[0], h / size[1]], sharey=first_ax)
        first_ax = first_ax or ax
        channels = first.stats.channels
        ax.plot([1 / channels, 1.0], [1 / channels, 1.0], color="#999999", linestyle="--", linewidth=0.9,
                label="every channel alike")
        for scheme_index, _, layer in panels:
            shares = layer.stats.channel_shares
            xs = [count / layer.stats.channels for count, _ in shares.cumulative]
            ax.plot(xs, [share for _, share in shares.cumulative], color=scheme_colour(scheme_index),
                    marker=_SCHEME_MARKERS[scheme_index % len(_SCHEME_MARKERS)], markersize=3, linewidth=1.5,
                    label=report.results[scheme_index].label)
        ax.set_xscale("log")
        ax.set_xlim(min(0.5 / channels, 0.005), 1.0)
        ax.set_ylim(0.0, 1.02)
        for fraction in (0.01, 0.1):
            ax.axvline(fraction, color="#cccccc", linewidth=0.7, zorder=0)
        ax.set_title(f"{first.name} (s={first.stats.stride_px:g}, C={channels})", fontsize=8.5)
        ax.set_xlabel("strongest channels (fraction of C)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, linewidth=0.5)
        if k:
            ax.tick_params(labelleft=False)
        axes[first.name] = ax
    first_ax.set_ylabel("share of the pattern energy Σ P²", fontsize=8)
    handles, labels = [], []
    for ax in axes.values():  # every scheme once, whichever stage drew it
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="upper left", fontsize=7, frameon=False, title="padding", title_fontsize=7,
               bbox_to_anchor=((size[0] - m["right"] + 0.1) / size[0], (m["bottom"] + h) / size[1]))
    n = report.data.get("num_images", "?")
    fig.suptitle(f"{model_label(report)}\nHow concentrated the pattern is: sorted channel energies (debiased) · N={n}",
                 fontsize=10, x=0.02, ha="left", y=1 - 0.1 / size[1], va="top")
    return fig, axes


@register_figure("channel_maps")
def channel_map_figures(report: "Report") -> list[FigureSpec]:
    """Per stage: the maps ``P_c`` of its strongest channels (up to 4), one row per scheme."""
    specs = []
    for index, first, panels in _stage_panels(report, lambda stats: _shares_of(stats) is not None
                                              and bool(stats.channel_shares.top_maps)):
        columns = max(len(layer.stats.channel_shares.top_maps) for _, _, layer in panels)
        specs.append(FigureSpec(
            key=f"channel_maps/{first.name}", filename=f"figures/channel_maps_{index:02d}_{_slug(first.name)}.png",
            section="channels", title=f"Strongest channels · {first.name} (stride {first.stats.stride_px:g})",
            alt=f"PPP maps of the strongest channels of {report.model.get('name')} at stage {first.name}",
            size_in=channel_maps_figure_size(columns, len(panels)),
            draw=lambda panels=panels, first=first, columns=columns: _draw_channel_maps(report, first, panels,
                                                                                       columns),
        ))
    return specs


def _draw_channel_maps(report: "Report", first: "LayerResult", panels: list[Panel], columns: int):
    import numpy as np
    from matplotlib.colors import Normalize

    m, side = CHANNEL_MAP_MARGINS_IN, CHANNEL_MAP_IN
    size = channel_maps_figure_size(columns, len(panels))
    fig = _new_figure(size)
    axes: dict[str, "Axes"] = {}
    for r, (scheme_index, scheme, layer) in enumerate(panels):
        stats, shares = layer.stats, layer.stats.channel_shares
        top_in = m["top"] + r * (side + m["row_gap"])
        for c, (values, (channel, share, where)) in enumerate(zip(shares.top_maps, shares.top)):
            values = np.asarray(values, dtype=float)
            left_in = m["left"] + c * (side + m["col_gap"])
            ax = fig.add_axes([left_in / size[0], 1 - (top_in + side) / size[1], side / size[0], side / size[1]])
            # Each channel on its own symmetric scale: the channels differ in size, and the sign is the point.
            bound = float(np.nanmax(np.abs(values))) if values.size else 0.0
            ax.imshow(values, cmap=CHANNEL_MAP_CMAP, norm=Normalize(-(bound or 1.0), bound or 1.0), origin="upper",
                      interpolation="nearest", extent=(0, stats.width * stats.stride_px,
                                                       stats.height * stats.stride_px, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            largest = format_number(bound, fixed_from=None)
            ax.set_title(f"#{channel} · {100 * share:.3g} % · {where}\n|P| ≤ {largest}", fontsize=7.5)
            if c == 0:
                ax.set_ylabel(report.results[scheme_index].label, fontsize=8.5, color=scheme_colour(scheme_index))
            axes[f"{scheme}/{channel}"] = ax
    fig.suptitle(f"{_header(report, first)}\nP of the strongest channels (share of the layer's pattern energy, side)",
                 fontsize=9.5, x=0.02, ha="left", y=1 - 0.08 / size[1], va="top")
    fig.text(0.02, 0.08 / size[1], "red: padding raises the feature, blue: lowers it; each map on its own scale",
             fontsize=7, color="#444444", ha="left", va="bottom")
    return fig, axes
