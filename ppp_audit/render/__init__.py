"""Renderers and sinks of a :class:`~ppp_audit.report.Report` (docs/figures.md): rich tables, terminal, PNG figures,
HTML.

``write_outputs(report, out_dir)`` writes ``report.json``, ``figures/*.png`` and ``report.html`` into one folder;
``print_report(console, report)`` prints the tables and a terminal heatmap of the last stage. matplotlib is imported
only when a figure is drawn. Reports are read with :meth:`Report.load <ppp_audit.report.Report.load>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ReportFileError
from ..files import WrittenFiles
from ..report import REPORT_HTML, REPORT_JSON, Report, written_files
from .figures import FIGURES, FigureFile, FigureSpec, figure_specs, register_figure, write_figures
from .html import REPORT_EMBEDDED_HTML, SECTIONS, page_resources, register_section, render_html, write_html
from .tables import render_baselines, render_channels_table, render_curve_table, render_finetune_table, render_table
from .terminal import TerminalHeatmap, full_width

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Outputs:
    """What :func:`write_outputs` left in ``out_dir``.

    ``kept`` maps each file of someone else's that a figure or the page would have replaced to the free name used
    instead (:meth:`WrittenFiles.place <ppp_audit.files.WrittenFiles.place>`)."""

    out_dir: Path
    json: Path
    html: Path
    figures: list[FigureFile]
    html_written: bool
    kept: dict[str, str] = field(default_factory=dict)

    @property
    def written(self) -> list[Path]:
        paths = [self.out_dir / f.filename for f in self.figures if f.written]
        return paths + ([self.html] if self.html_written else [])


def print_report(console: "Console", report: Report) -> None:
    """The terminal view: the per-layer table, the last stage's PPP map of every scheme, then fine-tune and baseline
    tables. On a pipe or file every table prints at its full width (:func:`~.terminal.full_width`)."""
    tables = [render_table(report), *(t for t in (render_finetune_table(report), render_curve_table(report),
                                                  *render_baselines(report)) if t is not None)]
    with full_width(console, tables):
        console.print(tables[0])
        console.print(TerminalHeatmap(report))
        for table in tables[1:]:
            console.print(table)


def write_outputs(report: Report, out_dir: str | Path, *, overwrite: bool = True, embed: bool = False,
                  source: str | Path | None = None) -> Outputs:
    """Write the report's JSON, PNG figures and HTML page into ``out_dir``.

    Args:
        report: The report.
        out_dir: Destination folder (created).
        overwrite: Redraw figures and rewrite files that exist, and delete the figures ppp-audit drew here for an
            earlier report that this one does not draw; ``False`` only fills in what is missing. Either way a file
            ppp-audit did not write is never replaced or deleted: what would land on it goes beside it under a free
            name (``Outputs.kept``).
        embed: Write ``report.embedded.html`` (:data:`~.html.REPORT_EMBEDDED_HTML`), the page with its images inside
            as data URIs (one file to share, linking nothing beside it), instead of ``report.html``, which links
            ``figures/*.png`` and is left as it is.
        source: The JSON file the report was read from; if it lies in ``out_dir`` the page links to it as is.

    Raises:
        ReportFileError: ``out_dir`` already holds a different ``report.json`` and ``overwrite`` is off, a
            ``report.json`` ppp-audit did not write, or matplotlib is missing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    own = _written_files(out_dir)
    json_path = _place_json(report, out_dir, overwrite, Path(source) if source else None, own)
    kept: dict[str, str] = {}

    def place(name: str) -> str:
        placed = own.place(name)
        if placed != name:
            kept[name] = placed
        own.files.add(placed)
        return placed

    try:
        try:
            figures = write_figures(report, out_dir, overwrite=overwrite, place=place)
        except ImportError as exc:
            raise ReportFileError(f"figures need matplotlib ({exc})", "pip install matplotlib") from None
        if overwrite:
            _remove_stale_figures(own, figures)
        html_name = place(REPORT_EMBEDDED_HTML if embed else REPORT_HTML)  # an embedded page never replaces the other
        html_path = out_dir / html_name
        html_written = overwrite or embed or not html_path.exists() or any(f.written for f in figures)
        if html_written:
            write_html(report, out_dir, figures, json_name=json_path.name, embed=embed, filename=html_name)
    finally:
        own.save()  # what was written is on the list even when a later file failed
    return Outputs(out_dir=out_dir, json=json_path, html=html_path, figures=figures, html_written=html_written,
                   kept=kept)


def _written_files(out_dir: Path) -> WrittenFiles:
    """The files ppp-audit wrote in ``out_dir``; in a folder from before it kept that list, the readable report
    there and the figures and page that report draws."""
    own = written_files(out_dir)
    if not own.recorded and REPORT_JSON in own.files:
        own.files |= {REPORT_HTML, *(spec.filename for spec in figure_specs(Report.load(out_dir / REPORT_JSON)))}
    return own


def _remove_stale_figures(own: WrittenFiles, figures: list[FigureFile]) -> None:
    """Delete the figures ppp-audit drew here for an earlier report that this one does not draw: they would sit
    beside the new page as if they belonged to it. Files ppp-audit did not write are never touched."""
    drawn = {figure.filename for figure in figures}
    for name in sorted(own.files):
        if name.startswith("figures/") and name not in drawn:
            (own.folder / name).unlink(missing_ok=True)
            own.files.discard(name)


def _place_json(report: Report, out_dir: Path, overwrite: bool, source: Path | None, own: WrittenFiles) -> Path:
    """The report's JSON in ``out_dir``: ``source`` if it lies there, else ``report.json`` (written, and recorded)."""
    if source is not None and source.resolve().parent == out_dir.resolve():
        if source.name == REPORT_JSON:  # saved by :func:`save_report`, or read from there by `show`
            own.files.add(REPORT_JSON)
        return source
    target = out_dir / REPORT_JSON
    if target.exists() and not overwrite:
        if Report.load(target).to_json() != report.to_json():
            raise ReportFileError(f"'{target}' holds a different report",
                                  "choose another --out folder, or pass --overwrite to replace it")
        return target
    return save_report(report, out_dir, own)


def save_report(report: Report, out_dir: str | Path, own: WrittenFiles | None = None) -> Path:
    """Save ``report.json`` into a report folder and put it on the folder's list of files ppp-audit wrote (before
    the figures and page: the JSON reaches the disk first).

    Raises:
        ReportFileError: The folder holds a ``report.json`` ppp-audit did not write, or it cannot be written.
    """
    out_dir = Path(out_dir)
    own = _written_files(out_dir) if own is None else own  # read before the new report replaces the old one
    if not own.owns(REPORT_JSON):
        raise ReportFileError(f"'{out_dir / REPORT_JSON}' is not a report ppp-audit wrote",
                              "choose another folder (ppp-audit replaces only files it wrote)")
    path = report.save(out_dir / REPORT_JSON)
    own.files.add(REPORT_JSON)
    own.save()
    return path


__all__ = [
    "FIGURES", "FigureFile", "FigureSpec", "Outputs", "REPORT_EMBEDDED_HTML", "REPORT_HTML", "REPORT_JSON", "SECTIONS",
    "TerminalHeatmap",
    "figure_specs", "full_width", "page_resources", "print_report", "register_figure", "register_section",
    "render_baselines", "render_channels_table", "render_curve_table", "render_finetune_table", "render_html",
    "render_table", "save_report",
    "write_figures", "write_html", "write_outputs",
]
