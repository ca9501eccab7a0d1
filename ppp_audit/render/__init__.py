"""Renderers and sinks of a :class:`~ppp_audit.report.Report` (docs/figures.md): rich tables, terminal, PNG figures, HTML.

``write_outputs(report, out_dir)`` writes ``report.json``, ``figures/*.png`` and ``report.html`` into one folder;
``print_report(console, report)`` prints the tables and a terminal heatmap of the last stage. matplotlib is imported
only when a figure is drawn. Reports are read with :meth:`Report.load <ppp_audit.report.Report.load>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ReportFileError
from ..report import REPORT_HTML, REPORT_JSON, Report
from .figures import FIGURES, FigureFile, FigureSpec, figure_specs, register_figure, write_figures
from .html import SECTIONS, page_resources, register_section, render_html, write_html
from .tables import render_baselines, render_curve_table, render_finetune_table, render_table
from .terminal import TerminalHeatmap, full_width

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Outputs:
    """What :func:`write_outputs` left in ``out_dir``."""

    out_dir: Path
    json: Path
    html: Path
    figures: list[FigureFile]
    html_written: bool

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
        overwrite: Redraw figures and rewrite files that exist, and delete figures this report does not draw;
            ``False`` only fills in what is missing.
        embed: Embed the images in the HTML as data URIs (one file to share) instead of linking ``figures/*.png``.
        source: The JSON file the report was read from; if it lies in ``out_dir`` the page links to it as is.

    Raises:
        ReportFileError: ``out_dir`` already holds a different ``report.json`` and ``overwrite`` is off, or
            matplotlib is missing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = _place_json(report, out_dir, overwrite, Path(source) if source else None)
    try:
        figures = write_figures(report, out_dir, overwrite=overwrite)
    except ImportError as exc:
        raise ReportFileError(f"figures need matplotlib ({exc})", "pip install matplotlib") from None
    if overwrite:
        _remove_stale_figures(out_dir, figures)
    html_path = out_dir / REPORT_HTML
    html_written = overwrite or embed or not html_path.exists() or any(f.written for f in figures)
    if html_written:
        write_html(report, out_dir, figures, json_name=json_path.name, embed=embed, filename=REPORT_HTML)
    return Outputs(out_dir=out_dir, json=json_path, html=html_path, figures=figures, html_written=html_written)


def _remove_stale_figures(out_dir: Path, figures: list[FigureFile]) -> None:
    """Delete the PNGs in ``figures/`` this report did not draw: left by an earlier audit into the same folder, they
    would sit beside the new page as if they belonged to it."""
    drawn = {(out_dir / figure.filename).resolve() for figure in figures}
    for png in (out_dir / "figures").glob("*.png"):
        if png.resolve() not in drawn:
            png.unlink()


def _place_json(report: Report, out_dir: Path, overwrite: bool, source: Path | None) -> Path:
    if source is not None and source.resolve().parent == out_dir.resolve():
        return source
    target = out_dir / REPORT_JSON
    if target.exists() and not overwrite:
        if Report.load(target).to_json() != report.to_json():
            raise ReportFileError(f"'{target}' holds a different report",
                                  "choose another --out folder, or pass --overwrite to replace it")
        return target
    return report.save(target)


__all__ = [
    "FIGURES", "FigureFile", "FigureSpec", "Outputs", "REPORT_HTML", "REPORT_JSON", "SECTIONS", "TerminalHeatmap",
    "figure_specs", "full_width", "page_resources", "print_report", "register_figure", "register_section",
    "render_baselines", "render_curve_table", "render_finetune_table", "render_html", "render_table", "write_figures",
    "write_html", "write_outputs",
]
