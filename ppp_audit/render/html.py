"""The HTML page of a report: provenance, the table, figures, and whatever else the report holds.

The page is built from *sections*: ``@register_section(name, title, order, fields)`` on a function
``(report, page) -> str | None`` that returns an HTML fragment (or ``None`` to leave the section out). ``fields``
names the top-level report keys (``report.to_dict()``) the section presents; keys no section claims are still shown,
generically, under "More results", so a new optional report field is never silently dropped.

Figures are linked by relative path to the PNGs written next to the page (``figures/*.png``: the page needs that
folder beside it), or embedded as ``data:`` URIs with ``embed=True`` (``ppp-audit show DIR --embed``: one file to
share); the page header says which. The page loads nothing from the network: a Content-Security-Policy forbids it,
and an inline script marks ``<html data-images-loaded="k/n">`` and says "k of n figures loaded" once loaded.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..files import atomic_write
from ..pages import CSP, PAGE_CSS, scheme_anchor, without_local_paths
from ..report import NATIVE, REPORT_HTML, REPORT_JSON, format_number
from .tables import (
    render_channels_table, render_curve_table, render_finetune_table, render_reference_table, render_table,
)
from ..registry import Registry

if TYPE_CHECKING:
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
        return [f for f in self.figures if f.section == section]

    def image(self, figure: "FigureFile") -> str:
        """A ``<figure>`` for one PNG (marks it shown, so "Other figures" leaves it out)."""
        self.shown.add(figure.key)
        if self.embed:
            data = base64.b64encode((self.out_dir / figure.filename).read_bytes()).decode("ascii")
            src = f"data:image/png;base64,{data}"
        else:
            src = html.escape(figure.filename)
        width, height = figure.size_px
        image = f'<img src="{src}" width="{width}" height="{height}" alt="{html.escape(figure.alt)}">'
        if not self.embed:  # the full-size PNG (an embedded page links nothing: a data: URI cannot be opened)
            image = f'<a href="{src}" title="the full-size PNG">{image}</a>'
        return f"<figure>{image}<figcaption>{html.escape(figure.title)}</figcaption></figure>"

    def gallery(self, section: str, intro: str = "") -> str | None:
        """The section's figures (after an ``intro`` paragraph's HTML), or ``None`` when it has none."""
        figures = self.figures_for(section)
        if not figures:
            return None
        return intro + '<div class="gallery">' + "".join(self.image(f) for f in figures) + "</div>"


SectionRenderer = Callable[["Report", Page], "str | None"]


@dataclass
class Section:
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
# Built-in sections
# ---------------------------------------------------------------------------------------------------------------------


@register_section("summary", "Audit", order=10, fields=(
    "schema_version", "created", "environment", "model", "data", "input_size", "margin", "window", "seed", "device",
    "precision", "estimator", "timings"))
def _summary(report: "Report", page: Page) -> str:
    data = report.to_dict()
    rows = {
        "model": page.shareable(data["model"]),
        "images": page.shareable(data["data"]),
        "crop S / margin m / window": f"{report.input_size} / {report.margin} / {report.window} px",
        "seed · device · precision": f"{report.seed} · {report.device} · {report.precision}",
        "estimator": report.estimator,
        "timings": data["timings"],
        "versions": page.shareable(data["environment"]),
        "created · schema": f"{report.created} · {report.schema_version}",
    }
    if page.embed:  # copied alone, the page has no JSON beside it to link to
        link = (f"<p>Machine-readable: <code>{html.escape(page.json_name)}</code>, in the report folder this page was "
                "made from (not part of this file).</p>")
    else:
        link = f'<p>Machine-readable: <a href="{html.escape(page.json_name)}">{html.escape(page.json_name)}</a></p>'
    return generic_html(rows) + link


@register_section("table", "PPP strength per layer", order=20, fields=("results",))
def _table(report: "Report", page: Page) -> str:
    return rich_table_html(render_table(report)) + scheme_list(report)


def scheme_list(report: "Report") -> str:
    """One line per scheme with its model-level numbers, each with its anchor (:func:`~ppp_audit.pages.scheme_anchor`:
    a leaderboard point opens the run page there)."""
    items = []
    for result in report.results:
        last = result.layers[-1].name if result.layers else "?"
        top = result.max_layer.name if result.max_layer is not None else "?"
        items.append(f'<li id="{scheme_anchor(result.scheme)}"><strong>{html.escape(result.label)}</strong>: '
                     f"strength {format_number(result.last_strength)} at the last stage ({html.escape(last)}), "
                     f"{format_number(result.max_strength)} at most ({html.escape(top)}); "
                     f"{html.escape(patch_line(result.scheme, result.patch).split(': ', 1)[-1])}</li>")
    return f'<ul class="schemes">{"".join(items)}</ul>'


@register_section("reference", "Padding-free reference: margin and global context", order=25, fields=("geometry",))
def _reference(report: "Report", page: Page) -> str | None:
    table = render_reference_table(report)
    if table is None:
        return None
    return ("<p>The margin is the smallest that leaves at most the tolerance of each layer's input influence (the "
            "gradient mass of its receptive field) beyond it; global modules (squeeze-excitation, GRN, ...) take their "
            "statistics over the crop's footprint in the window pass. Layers marked * are partial: the strength "
            "measured again against a smaller margin m2 shows how far they move.</p>" + rich_table_html(table))


@register_section("strength", "Strength by stage", order=30)
def _strength(report: "Report", page: Page) -> str | None:
    return page.gallery("strength")


@register_section("convergence", "Convergence in N", order=35)
def _convergence(report: "Report", page: Page) -> str | None:
    return page.gallery("convergence", "<p>Each stage's strength measured again on the first N/8, N/4, N/2 and N "
                        "images: a curve that has levelled off says N was enough. The subsets are nested, so the "
                        "points are correlated, and the smallest are the noisiest.</p>")


@register_section("mist", "The mask rising out of the mist", order=37)
def _mist(report: "Report", page: Page) -> str | None:
    if not page.figures_for("mist"):
        return None
    return page.gallery("mist", f"<p>{html.escape(mist_text(report))}</p>")


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
    return page.gallery("maps", "<p>Channel-RMS of the mean padded-minus-reference features P at each position "
                        "(debiased), one colour scale per stage. Dashed contour: above the noise floor of its "
                        "ring.</p>")


@register_section("channels", "Which channels carry the pattern", order=45)
def _channels(report: "Report", page: Page) -> str | None:
    table = render_channels_table(report)
    if table is None:
        return None
    intro = ("<p>Padding-aware neurons: how the layer's debiased pattern energy Σ P² divides among its channels. The "
             "share of the strongest 1 % and 10 % of channels and the effective number of channels (Σ e)² / Σ e² "
             "say how concentrated it is; the curve shows the share of the strongest k channels against k (the "
             "diagonal: every channel alike), the maps P of the strongest channels (red: the padding raises the feature, blue: "
             "lowers it). –: no pattern significantly above the noise (docs/metrics.md).</p>")
    return intro + rich_table_html(table) + (page.gallery("channels") or "")


@register_section("extent", "Extent from the border", order=50)
def _extent(report: "Report", page: Page) -> str | None:
    return page.gallery("extent", "<p>Channel-RMS of P against distance to the nearest border (input pixels), for "
                        "all positions and per side; grey: noise floor; dotted line: extent.</p>")


@register_section("patches", "What each scheme patched", order=60)
def _patches(report: "Report", page: Page) -> str:
    parts = []
    for result in report.results:
        parts.append(f"<details><summary>{html.escape(patch_line(result.scheme, result.patch))}</summary>"
                     f"{generic_html(patch_details(result.scheme, result.patch))}</details>")
    return "".join(parts)


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
    return "".join(rich_table_html(t) for t in tables) + (page.gallery("finetune") or "")


@register_section("repair", "PPP repair", order=75)
def _repair(report: "Report", page: Page) -> str | None:
    return page.gallery("repair", "<p>PPP strength per stage before, after a plain fine-tune of the same budget "
                        "(<code>--repair-compare</code>) and after the repair, on the held-out images; the fine-tune "
                        "table above gives the numbers, held-out agreement and tiling consistency "
                        "(docs/repair.md).</p>")


@register_section("other_figures", "Other figures", order=90)
def _other_figures(report: "Report", page: Page) -> str | None:
    known = set(SECTIONS)
    rest = [f for f in page.figures if f.key not in page.shown and f.section not in known]
    if not rest:
        return None
    return '<div class="gallery">' + "".join(page.image(f) for f in rest) + "</div>"


@register_section("more", "More results", order=95)
def _more(report: "Report", page: Page) -> str | None:
    claimed = {name for section in SECTIONS.values() for name in section.fields}
    extra = {k: v for k, v in report.to_dict().items() if k not in claimed and v not in (None, {}, [])}
    if not extra:
        return None
    return "".join(f"<h3>{html.escape(_label(k))}</h3>{generic_html(page.shareable(v))}" for k, v in extra.items())


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


def _label(key: str) -> str:
    return key.replace("_", " ")


def _scalar(value: Any) -> str:
    if value is None or isinstance(value, float):
        return format_number(value, 4, fixed_from=None)
    return html.escape(str(value))


def generic_html(value: Any, depth: int = 0) -> str:
    """Any JSON-like value as HTML: dicts as key/value tables, lists of dicts as tables, short lists inline."""
    if isinstance(value, dict):
        if not value:
            return "<em>none</em>"
        rows = "".join(f"<tr><th>{html.escape(_label(str(k)))}</th><td>{generic_html(v, depth + 1)}</td></tr>"
                       for k, v in value.items())
        return _scroll(f'<table class="kv">{rows}</table>', depth)
    if isinstance(value, (list, tuple)):
        if not value:
            return "<em>none</em>"
        if all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(k for v in value for k in v))
            head = "".join(f"<th>{html.escape(_label(str(c)))}</th>" for c in columns)
            body = "".join("<tr>" + "".join(f"<td>{generic_html(v.get(c), depth + 1)}</td>" for c in columns)
                           + "</tr>" for v in value)
            return _scroll(f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>', depth)
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            shown = ", ".join(_scalar(v) for v in value[:12])
            return f"[{shown}{', …' if len(value) > 12 else ''}]" + (
                f" <small>({len(value)} values)</small>" if len(value) > 12 else "")
        return "<ul>" + "".join(f"<li>{generic_html(v, depth + 1)}</li>" for v in value) + "</ul>"
    return _scalar(value)


def _scroll(table: str, depth: int = 0) -> str:
    """A top-level table in its own sideways-scrolling box, so a wide table never widens the page."""
    return f'<div class="scroll">{table}</div>' if depth == 0 else table


def rich_table_html(table: "Table") -> str:
    """A rich :class:`~rich.table.Table` of plain-text cells as an HTML table (title, header, sections, caption)."""
    from rich.text import Text

    def text(cell: Any) -> str:
        plain = cell.plain if isinstance(cell, Text) else str(cell)
        return html.escape(plain).replace("\n", "<br>")

    columns = table.columns
    head = "".join(f'<th class="{c.justify}">{text(c.header)}</th>' for c in columns)
    cells = [list(c.cells) for c in columns]
    body = []
    for i, row in enumerate(table.rows):
        classes = [cls for cls, on in (("bold", bool(row.style) and "bold" in str(row.style)),
                                       ("section-end", row.end_section)) if on]
        tds = "".join(f'<td class="{c.justify}">{text(cells[j][i])}</td>' for j, c in enumerate(columns))
        body.append(f'<tr class="{" ".join(classes)}">{tds}</tr>' if classes else f"<tr>{tds}</tr>")
    title = f"<caption>{text(table.title)}</caption>" if table.title else ""
    note = f'<p class="note">{text(table.caption)}</p>' if table.caption else ""
    return (f'<div class="scroll"><table class="grid results">{title}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{note}')


REPORT_EMBEDDED_HTML = "report.embedded.html"
"""The page of ``ppp-audit show DIR --embed``: its figures inside, one file to send around; beside ``report.html``,
which it never replaces."""

_CSS = PAGE_CSS + """
body{max-width:1200px}
table.kv th{text-align:left;padding:.1rem .8rem .1rem 0;vertical-align:top;font-weight:600}
table.kv td{padding:.1rem 0;overflow-wrap:anywhere}table.kv table.kv{font-size:inherit;margin:0}
table.results caption{text-align:left;font-weight:600;padding-bottom:.3rem}
tr.bold td{font-weight:700}tr.section-end td{border-bottom:2px solid #888}
.gallery{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0;max-width:100%}
img{max-width:100%;height:auto;border:1px solid #eee}
details{margin:.3rem 0}summary{cursor:pointer}
#image-status{color:#555;font-size:.8rem}
"""
"""The shared stylesheet (:data:`ppp_audit.pages.PAGE_CSS`) and the report page's own rules."""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.documentElement.setAttribute("data-images-loaded", loaded + "/" + images.length);
  document.getElementById("image-status").textContent = loaded + " of " + images.length + " figures loaded";
});
"""


def render_html(report: "Report", page: Page) -> str:
    """The whole page as a string."""
    title = f"PPP audit · {report.model.get('name', '?')}"
    sections = []
    for section in sorted(SECTIONS.values(), key=lambda s: s.order):
        fragment = section.render(report, page)
        if fragment:
            sections.append((section, fragment))
    nav = "".join(f'<a href="#{s.name}">{html.escape(s.title)}</a>' for s, _ in sections)
    body = "".join(f'<section id="{s.name}"><h2>{html.escape(s.title)}</h2>{fragment}</section>'
                   for s, fragment in sections)
    version = report.environment.get("ppp_audit", "?")
    up = (f'<p class="note"><a href="{html.escape(page.up, quote=True)}" rel="up">↑ the sweep\'s leaderboard</a> '
          "(<code>ppp-audit leaderboard DIR</code> writes it)</p>" if page.up and not page.embed else "")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"{up}<h1>{html.escape(title)}</h1>"
        f'<p class="note">Position-information Pattern from Padding · ppp-audit {html.escape(version)} · '
        f'<span id="image-status">figures not checked (scripts off)</span> · {_figures_note(page)}</p>'
        f"<nav>{nav}</nav>{body}"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def _figures_note(page: Page) -> str:
    """Where the page's figures are: embedded (the file stands alone) or in ``figures/`` next to it."""
    if page.embed:
        return "figures embedded: this file stands alone"
    if not page.figures:
        return "no figures"
    folder = html.escape(Path(page.figures[0].filename).parent.as_posix() or ".")
    return (f"figures in {folder}/ next to this page (<code>ppp-audit show DIR --embed</code> makes one shareable "
            "file)")


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
