"""The HTML page of a report: provenance, the table, figures, and whatever else the report holds.

The page is built from *sections*: ``@register_section(name, title, order, fields)`` on a function
``(report, page) -> str | None`` that returns an HTML fragment (or ``None`` to leave the section out). ``fields``
names the top-level report keys (``report.to_dict()``) the section presents; keys no section claims are still shown,
generically, under "More results", so a new optional report field is never silently dropped.

Figures are linked by relative path to the PNGs written next to the page (``figures/*.png``: the page needs that
folder beside it), or embedded as ``data:`` URIs with ``embed=True`` (``ppp-audit show DIR --embed``: one file to
share); the page header says which. The page loads nothing from the network: a Content-Security-Policy forbids it,
and an inline script marks ``<html data-images-loaded="k/n">`` and says "k of n figures loaded" once loaded.

The markup lives in jinja2 templates (``ppp_audit/render/templates``: ``page.html``, the partials ``_*.html`` and
``sections/*.html``), rendered with autoescaping on: every value is escaped unless it is deliberately passed as
:class:`markupsafe.Markup` (a section's fragment, a rendered table or figure). jinja2 is imported on the first page
rendered, so importing :mod:`ppp_audit` stays light.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..files import atomic_write
from ..pages import CSP, PAGE_CSS, scheme_anchor, templates, without_local_paths
from ..report import NATIVE, REPORT_HTML, REPORT_JSON, format_number
from .tables import (
    render_channels_table, render_curve_table, render_finetune_table, render_reference_table, render_table,
)
from ..registry import Registry

if TYPE_CHECKING:
    import jinja2
    from rich.table import Table

    from ..report import Report
    from .figures import FigureFile


@dataclass
class Page:
    """What a section renderer may use besides the report.

    Args:
        figures: The figures written for the report (paths relative to ``out_dir``).
        out_dir: The folder the page is written to.
        json_name: File name of the report JSON next to the page.
        embed: Embed images as data URIs instead of linking them (a page that stands alone: it links nothing beside
            it, and says local paths as "a local file").
        shown: Keys of the figures shown so far (so "Other figures" leaves them out).
        up: The leaderboard page this run's page belongs to, relative to it (a run folder of a sweep), or ``None``.
    """

    figures: list["FigureFile"]
    out_dir: Path
    json_name: str = REPORT_JSON
    embed: bool = False
    shown: set[str] = field(default_factory=set)
    up: str | None = None

    def shareable(self, value: Any) -> Any:
        """``value`` as this page may show it: with local absolute paths said as "a local file" when embedded."""
        return without_local_paths(value) if self.embed else value

    def figures_for(self, section: str) -> list["FigureFile"]:
        """The figures drawn for ``section``."""
        return [f for f in self.figures if f.section == section]

    def image(self, figure: "FigureFile") -> str:
        """A ``<figure>`` for one PNG (marks it shown, so "Other figures" leaves it out).

        Args:
            figure: The figure; linked to its PNG, or with the PNG inside as a data URI when embedded.

        Returns:
            The ``<figure>`` element's HTML.
        """
        self.shown.add(figure.key)
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode((self.out_dir / figure.filename).read_bytes()).decode()
        else:
            src = figure.filename
        width, height = figure.size_px
        return _render("_figure.html", src=src, width=width, height=height, alt=figure.alt, title=figure.title,
                       link=not self.embed)

    def gallery(self, section: str, intro: str = "") -> str | None:
        """The section's figures after an ``intro``, or ``None`` when it has none.

        Args:
            section: The section whose figures to show.
            intro: HTML shown before them (a paragraph, say).

        Returns:
            The gallery's HTML, or ``None``.
        """
        figures = self.figures_for(section)
        return self._gallery(figures, intro) if figures else None

    def _gallery(self, figures: list["FigureFile"], intro: str = "") -> str:
        return _render("_gallery.html", intro=_html(intro), images=[_html(self.image(f)) for f in figures])


SectionRenderer = Callable[["Report", Page], "str | None"]


@dataclass
class Section:
    """A registered page section (:func:`register_section`)."""

    name: str
    title: str
    order: int
    fields: tuple[str, ...]
    render: SectionRenderer


SECTIONS: Registry[Section] = Registry("HTML section")


def register_section(name: str, title: str, order: int = 100,
                     fields: tuple[str, ...] = ()) -> Callable[[SectionRenderer], SectionRenderer]:
    """Register a page section; ``order`` sorts sections, ``fields`` are the report keys it presents."""

    def decorator(render: SectionRenderer) -> SectionRenderer:
        SECTIONS.add(name, Section(name=name, title=title, order=order, fields=tuple(fields), render=render))
        return render

    return decorator


# ---------------------------------------------------------------------------------------------------------------------
# Built-in sections (their markup: templates/sections/NAME.html)
# ---------------------------------------------------------------------------------------------------------------------


@register_section("summary", "Audit", order=10, fields=(
    "schema_version", "created", "environment", "model", "data", "input_size", "margin", "window", "seed", "device",
    "precision", "estimator", "timings"))
def _summary(report: "Report", page: Page) -> str:
    data = report.to_dict()
    canvas, tiles = report.canvas, report.tiles
    geometry = (("crop S / periodic canvas / context", f"{report.input_size} / {canvas['side']} / "
                 f"{canvas['context_px']} px every way") if canvas else
                ("crop S / border m / tiles", f"{report.input_size} / {report.margin} px / {tiles['crops']} crops "
                 f"tiled inside {tiles['photos']} photos at scale {tiles['scale']:g}") if tiles else
                ("crop S / margin m / window", f"{report.input_size} / {report.margin} / {report.window} px"))
    rows = {
        "model": page.shareable(data["model"]),
        "images": page.shareable(data["data"]),
        geometry[0]: geometry[1],
        "seed · device · precision": f"{report.seed} · {report.device} · {report.precision}",
        "estimator": report.estimator,
        "timings": data["timings"],
        "versions": page.shareable(data["environment"]),
        "created · schema": f"{report.created} · {report.schema_version}",
    }
    return _render("sections/summary.html", rows=rows, json_name=page.json_name, embed=page.embed)


@register_section("table", "PPP strength per layer", order=20, fields=("results",))
def _table(report: "Report", page: Page) -> str:
    return _render("sections/table.html", table=_html(rich_table_html(render_table(report))),
                   schemes=_schemes(report))


def scheme_list(report: "Report") -> str:
    """One line per scheme with its model-level numbers, each with its anchor (:func:`~ppp_audit.pages.scheme_anchor`:
    a leaderboard point opens the run page there)."""
    return _render("_schemes.html", schemes=_schemes(report))


def _schemes(report: "Report") -> list[dict[str, str]]:
    """What :func:`scheme_list` says of each scheme (``templates/_schemes.html`` lays it out)."""
    return [{"anchor": scheme_anchor(result.scheme), "label": result.label,
             "last": format_number(result.last_strength),
             "last_layer": result.layers[-1].name if result.layers else "?",
             "top": format_number(result.max_strength),
             "top_layer": result.max_layer.name if result.max_layer is not None else "?",
             "patched": patch_line(result.scheme, result.patch).split(": ", 1)[-1]} for result in report.results]


@register_section("reference", "Padding-free reference: margin and global context", order=25, fields=("geometry",))
def _reference(report: "Report", page: Page) -> str | None:
    table = render_reference_table(report)
    if table is None:
        return None
    return _render("sections/reference.html", table=_html(rich_table_html(table)), canvas=report.canvas is not None,
                   tiles=report.tiles is not None)


@register_section("strength", "Strength by stage", order=30)
def _strength(report: "Report", page: Page) -> str | None:
    return page.gallery("strength")


@register_section("convergence", "Convergence in N", order=35)
def _convergence(report: "Report", page: Page) -> str | None:
    return page.gallery("convergence", _render("sections/convergence.html"))


@register_section("mist", "The mask rising out of the mist", order=37)
def _mist(report: "Report", page: Page) -> str | None:
    if not page.figures_for("mist"):
        return None
    return page.gallery("mist", _render("sections/mist.html", text=mist_text(report)))


def mist_text(report: "Report") -> str:
    """What the mist figure shows, true for this report: its image counts, its rows, its schemes, its processes."""
    counts, schemes = [], []
    for result in report.results:
        layer = next((layer for layer in result.layers if layer.stats.mist is not None), None)
        if layer is not None and len(schemes) < 2:  # the figure draws the first two schemes that have snapshots
            counts = counts or list(layer.stats.mist.counts)
            schemes.append(result.label)
    pattern = ("the PPP map: channel-RMS of the mean padded-minus-reference features, raw (one image has no variance "
               "to debias with)" if report.estimator != "mean-feature" else "the channel-RMS of the mean features "
               "less their per-channel spatial mean (the mean-feature estimator)")
    shown = [("the first image" if k == 1 else f"the first {k}") for k in counts[:-1]]
    shown.append(f"all N={counts[-1]}" if counts else "all N")
    after = ", ".join(shown[:-1]) + (" and " if len(shown) > 1 else "") + shown[-1]
    rows = (f"two rows for each of {' and '.join(schemes)}" if len(schemes) > 1 else f"two rows for {schemes[0]}"
            if schemes else "two rows")
    processes = int(report.timings.get("processes") or 1)
    source = f" of the first of the {processes} processes" if processes > 1 else ""
    return (f"One stage's maps after {after} images, {rows}: the channel-averaged mean feature map (upper row) and "
            f"{pattern} (lower row). In one image the picture is the image's content: the mist. Averaged over more "
            "images the content cancels, and what stays at the border is the position pattern the padding leaves: "
            "the mask. Each panel has its own colour scale, so its bar gives the sizes; the maps come from the "
            f"first images measured{source}.")


@register_section("maps", "PPP maps", order=40)
def _maps(report: "Report", page: Page) -> str | None:
    return page.gallery("maps", _render("sections/maps.html"))


@register_section("channels", "Which channels carry the pattern", order=45)
def _channels(report: "Report", page: Page) -> str | None:
    table = render_channels_table(report)
    if table is None:
        return None
    return _render("sections/channels.html", table=_html(rich_table_html(table)),
                   gallery=_html(page.gallery("channels") or ""))


@register_section("extent", "Extent from the border", order=50)
def _extent(report: "Report", page: Page) -> str | None:
    return page.gallery("extent", _render("sections/extent.html"))


@register_section("patches", "What each scheme patched", order=60)
def _patches(report: "Report", page: Page) -> str:
    patches = [{"line": patch_line(result.scheme, result.patch), "details": patch_details(result.scheme, result.patch)}
               for result in report.results]
    return _render("sections/patches.html", patches=patches)


def patch_details(scheme: str, patch: dict[str, Any]) -> dict[str, Any]:
    """A scheme's patch summary as the page lists it; the native row patches nothing, so its sites are listed as
    the padding sites they are, not as "patched"."""
    if scheme != NATIVE:
        return patch
    names = {"num_patched": "padding sites (unchanged)", "patched": "padding sites",
             "unpatched": "sites the schemes leave as they are"}
    return {names.get(key, key): value for key, value in patch.items()}


def patch_line(scheme: str, patch: dict[str, Any]) -> str:
    """One line on what ``scheme`` did to the padding sites; the native row patches nothing, and says so."""
    sites = patch.get("num_patched", len(patch.get("patched", [])))
    others = len(patch.get("unpatched", []))
    plural = "" if sites == 1 else "s"
    if scheme == NATIVE:
        return (f"{scheme}: {sites} padding site{plural} (native, unchanged), {others} that the schemes leave as "
                "they are")
    return f"{scheme}: {sites} padding site{plural} patched, {others} not patched"


@register_section("finetune", "Fine-tuning after the swap", order=70)
def _finetune(report: "Report", page: Page) -> str | None:
    tables = [t for t in (render_finetune_table(report), render_curve_table(report)) if t is not None]
    if not tables:
        return None
    return _render("sections/finetune.html", tables=[_html(rich_table_html(t)) for t in tables],
                   gallery=_html(page.gallery("finetune") or ""))


@register_section("repair", "PPP repair", order=75)
def _repair(report: "Report", page: Page) -> str | None:
    return page.gallery("repair", _render("sections/repair.html"))


@register_section("other_figures", "Other figures", order=90)
def _other_figures(report: "Report", page: Page) -> str | None:
    known = set(SECTIONS)
    rest = [f for f in page.figures if f.key not in page.shown and f.section not in known]
    return page._gallery(rest) if rest else None


@register_section("more", "More results", order=95)
def _more(report: "Report", page: Page) -> str | None:
    claimed = {name for section in SECTIONS.values() for name in section.fields}
    extra = {k: page.shareable(v) for k, v in report.to_dict().items() if k not in claimed and v not in (None, {}, [])}
    if not extra:
        return None
    return _render("sections/more.html", extra=extra)


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _environment() -> "jinja2.Environment":
    """The pages' shared environment (:func:`ppp_audit.pages.templates`, made on first use) with this page's filters
    and tests."""
    environment = templates()
    environment.filters.update(label=_label, scalar=_scalar, columns_of=_columns)
    environment.tests.update(json_object=lambda value: isinstance(value, dict),
                             json_array=lambda value: isinstance(value, (list, tuple)),
                             nested=lambda value: isinstance(value, (dict, list, tuple)))
    return environment


def _render(template: str, **context: Any) -> str:
    """``template`` (a path under ``templates/``) rendered with ``context``, autoescaped."""
    return _environment().get_template(template).render(**context)


def _html(text: str) -> Any:
    """``text``, which is HTML already (a rendered fragment), marked so that a template puts it in unescaped."""
    from markupsafe import Markup

    return Markup(text)


def _label(key: Any) -> str:
    return str(key).replace("_", " ")


def _scalar(value: Any) -> str:
    if value is None or isinstance(value, float):
        return format_number(value, 4, fixed_from=None)
    return str(value)


def _columns(rows: list[dict]) -> list[Any]:
    """The keys of a list of dicts, in order of first appearance (the columns of its table)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def generic_html(value: Any, depth: int = 0) -> str:
    """Any JSON-like value as HTML: dicts as key/value tables, lists of dicts as tables, short lists inline.

    Args:
        value: The value.
        depth: How deep in an enclosing table it is shown; a top-level (0) table scrolls sideways in its own box.

    Returns:
        The HTML (``templates/_macros.html``: ``generic``).
    """
    return _render("_generic.html", value=value, depth=depth)


def rich_table_html(table: "Table") -> str:
    """A rich :class:`~rich.table.Table` of plain-text cells as an HTML table (``templates/_table.html``: title,
    header, rows with bold rows and section ends marked, caption), in its own sideways-scrolling box.

    Args:
        table: The table (cells ``str`` or :class:`~rich.text.Text`; styles other than a bold row are dropped).

    Returns:
        The table's HTML.
    """
    from rich.text import Text

    def text(cell: Any) -> str:
        return cell.plain if isinstance(cell, Text) else str(cell)

    cells = [[text(cell) for cell in column.cells] for column in table.columns]
    rows = [{"classes": [name for name, on in (("bold", bool(row.style) and "bold" in str(row.style)),
                                               ("section-end", row.end_section)) if on],
             "cells": [column[i] for column in cells]} for i, row in enumerate(table.rows)]
    columns = [{"justify": column.justify, "header": text(column.header)} for column in table.columns]
    return _render("_table.html", title=text(table.title) if table.title else None,
                   caption=text(table.caption) if table.caption else None, columns=columns, rows=rows)


REPORT_EMBEDDED_HTML = "report.embedded.html"
"""The page of ``ppp-audit show DIR --embed``: its figures inside, one file to send around; beside ``report.html``,
which it never replaces."""

_CSS = PAGE_CSS + """
body{max-width:1200px}
table.kv th{text-align:left;padding:.1rem .8rem .1rem 0;vertical-align:top;font-weight:600;overflow-wrap:normal}
table.kv td{padding:.1rem 0;overflow-wrap:anywhere}table.kv table.kv{font-size:inherit;margin:0}
table.results caption{text-align:left;font-weight:600;padding-bottom:.3rem}
tr.bold td{font-weight:700}tr.section-end td{border-bottom:2px solid #888}
.gallery{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0;max-width:100%}
img{max-width:100%;height:auto;border:1px solid #eee}
details{margin:.3rem 0}summary{cursor:pointer}
#image-status{color:#555;font-size:.8rem}
"""
"""The shared stylesheet (:data:`ppp_audit.pages.PAGE_CSS`) and the report page's own rules."""


def render_html(report: "Report", page: Page) -> str:
    """The whole page as a string (``templates/page.html``).

    Args:
        report: The report.
        page: The figures and the settings of the page (embedded or linked, its sweep's leaderboard).

    Returns:
        The HTML document; each registered section that rendered a fragment, in order.
    """
    sections = []
    for section in sorted(SECTIONS.values(), key=lambda s: s.order):
        fragment = section.render(report, page)
        if fragment:  # a section's fragment is HTML by contract
            sections.append({"name": section.name, "title": section.title, "html": _html(fragment)})
    folder = (Path(page.figures[0].filename).parent.as_posix() or ".") if page.figures else None
    return _render("page.html", title=f"PPP audit · {report.model.get('name', '?')}",
                   version=report.environment.get("ppp_audit", "?"), csp=CSP, css=_html(_CSS), up=page.up,
                   embed=page.embed, figures_folder=folder, sections=sections) + "\n"


def write_html(report: "Report", out_dir: str | Path, figures: list["FigureFile"], json_name: str = REPORT_JSON,
               embed: bool = False, filename: str = REPORT_HTML) -> Path:
    """Write ``report.html`` (or ``filename``) into ``out_dir`` (atomically) and return its path. A run folder of
    a sweep (``DIR/runs/MODEL/HASH``) links up to the sweep's ``leaderboard.html``."""
    out_dir = Path(out_dir)
    page = Page(figures=figures, out_dir=out_dir, json_name=json_name, embed=embed, up=_leaderboard_of(out_dir))
    text = render_html(report, page)
    return atomic_write(out_dir / filename, text)


def _leaderboard_of(out_dir: Path) -> str | None:
    """The leaderboard page of the sweep a run folder lies in, relative to it (``../../../leaderboard.html``)."""
    from ..runs import RUNS  # the sweep's layout: DIR/runs/MODEL/HASH, the leaderboard at DIR/leaderboard.html

    parts = out_dir.resolve().parts
    return "../../../leaderboard.html" if len(parts) > 3 and parts[-3] == RUNS else None


def page_resources(text: str) -> list[str]:
    """Every ``src``/``href`` value in an HTML page (for checking that a page ships what it references)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(v for k, v in attrs if k in ("src", "href") and v is not None)

    Collector().feed(text)
    return found


__all__ = ["Page", "REPORT_EMBEDDED_HTML", "SECTIONS", "Section", "generic_html", "mist_text", "page_resources",
           "patch_details", "patch_line", "register_section", "render_html", "rich_table_html", "scheme_list",
           "write_html"]
