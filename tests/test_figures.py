"""Figures, terminal heatmap, HTML page and ``ppp-audit show`` (docs/figures.md).

The planted report is measured, not typed in: a PPPAccumulator sees synthetic features whose padded version carries a
known border signal (top row for ``native``, left column for ``reflect``), and the tests look for that signal in the
decoded PNG pixels and in the terminal colours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

H = W = 8
STRIDE = 8.0


def _planted_stats(side: str, amplitude: float, seed: int):
    import torch

    from ppp_audit.metrics import PPPAccumulator

    generator = torch.Generator().manual_seed(seed)
    signal = torch.zeros(4, H, W, dtype=torch.float64)
    if side == "top":
        signal[:, 0, :] = amplitude
    else:
        signal[:, :, 0] = amplitude
    acc = PPPAccumulator(groups=8)
    for _ in range(4):
        b = torch.randn(16, 4, H, W, generator=generator, dtype=torch.float64)
        acc.update(b + signal, b)
    return acc.compute(stride_px=STRIDE)


@pytest.fixture(scope="module")
def planted_report():
    from ppp_audit.report import LayerResult, Report, SchemeResult

    def scheme(name: str, side: str, amplitude: float) -> SchemeResult:
        layers = [LayerResult(name=f"stage{k}", receptive_radius_px=20.0, reference_partial=False,
                              stats=_planted_stats(side, amplitude, seed=k + len(name))) for k in range(2)]
        return SchemeResult(scheme=name, patch={"scheme": name, "native_padding": "zeros", "num_patched": 3,
                                                "patched": [], "unpatched": []}, layers=layers)

    return Report(
        environment={"ppp_audit": "test", "torch": "-", "timm": "-", "python": "-"},
        model={"name": "planted", "architecture": "planted", "weights": "synthetic"},
        data={"kind": "synthetic", "num_images": 64}, input_size=64, margin=16, seed=0, device="cpu",
        precision="fp32", results=[scheme("native", "top", 1.0), scheme("reflect", "left", 0.6)],
    )


@pytest.fixture(scope="module")
def written(planted_report, tmp_path_factory):
    from ppp_audit.render import write_outputs

    out = tmp_path_factory.mktemp("planted")
    return write_outputs(planted_report, out)


def _luminance(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=float)
    return rgb, rgb @ np.array([0.2126, 0.7152, 0.0722])


def test_planted_stats_are_what_was_planted(planted_report):
    """Guard for the pixel tests: the measured map itself has the planted border."""
    import numpy as np

    top = np.asarray(planted_report.scheme("native").layers[-1].stats.ppp_map)
    left = np.asarray(planted_report.scheme("reflect").layers[-1].stats.ppp_map)
    assert top[0].mean() == pytest.approx(1.0, abs=0.15) and top[1:].mean() < 0.1
    assert left[:, 0].mean() == pytest.approx(0.6, abs=0.15) and left[:, 1:].mean() < 0.1


def test_pngs_decode_with_expected_sizes(written, planted_report):
    from PIL import Image

    from ppp_audit.render.figures import DPI, extent_figure_size, map_figure_size

    keys = [f.key for f in written.figures]
    assert keys == ["ppp_map/stage0", "ppp_map/stage1", "extent/stage0", "extent/stage1", "strength",
                    "convergence", "mist", "channels", "channel_maps/stage0", "channel_maps/stage1"]
    expected = {"ppp_map": map_figure_size(2), "extent": extent_figure_size(2)}
    for figure in written.figures:
        path = written.out_dir / figure.filename
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == figure.size_px
            kind = figure.key.split("/")[0]
            if kind in expected:
                assert image.size == (round(expected[kind][0] * DPI), round(expected[kind][1] * DPI))
    # A third scheme makes the map figure one panel wider.
    assert map_figure_size(3)[0] > map_figure_size(2)[0]


def test_heatmap_pixels_show_the_planted_border(written):
    import numpy as np
    from matplotlib import colormaps

    figure = next(f for f in written.figures if f.key == "ppp_map/stage1")
    rgb, lum = _luminance(written.out_dir / figure.filename)
    assert set(figure.panels_px) == {"native", "reflect"}
    dark = np.asarray(colormaps["viridis"](0.0)[:3]) * 255
    for label, bright_side in (("native", "top"), ("reflect", "left")):
        left, top, right, bottom = figure.panels_px[label]
        assert right - left == pytest.approx(bottom - top, abs=2)  # square map, square image area
        inset = 3
        panel = lum[top + inset:bottom - inset, left + inset:right - inset]
        panel_rgb = rgb[top + inset:bottom - inset, left + inset:right - inset]
        # The box is the heatmap: its most common colour is viridis' low end (the quiet interior), not background.
        colours, counts = np.unique(panel_rgb.reshape(-1, 3), axis=0, return_counts=True)
        assert np.abs(colours[counts.argmax()] - dark).max() < 8
        cell = panel.shape[0] / H
        if bright_side == "top":
            border, rest = panel[: int(cell) - inset], panel[int(2 * cell):]
            other = panel[:, : int(cell) - inset][int(2 * cell):]  # left column, away from the top row
        else:
            border, rest = panel[:, : int(cell) - inset], panel[:, int(2 * cell):]
            other = panel[: int(cell) - inset][:, int(2 * cell):]  # top row, away from the left column
        assert border.mean() > rest.mean() + 80, (label, border.mean(), rest.mean())
        assert other.mean() < rest.mean() + 20, (label, other.mean(), rest.mean())


def test_terminal_heatmap_colours_follow_the_map(planted_report):
    from rich.console import Console

    from ppp_audit.render import TerminalHeatmap

    console = Console(force_terminal=True, color_system="truecolor", width=120, record=True)
    lines = console.render_lines(TerminalHeatmap(planted_report), console.options, pad=False)

    def brightness(colour) -> float:
        r, g, b = colour.get_truecolor()
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    blocks = [[s for s in line if s.text == "▀"] for line in lines]
    rows = [row for row in blocks if row]
    per_panel = len(rows[0]) // 2  # two panels of equal width side by side
    first, later = rows[0][:per_panel], [s for row in rows[2:] for s in row[:per_panel]]
    # native's top map row is the upper half of the first text row: bright; rows further down: dark.
    assert min(brightness(s.style.color) for s in first) > 150
    assert max(brightness(s.style.color) for s in later) < 100

    plain = Console(color_system=None, width=120, record=True)
    plain.print(TerminalHeatmap(planted_report))
    text = plain.export_text()
    map_lines = [line for line in text.splitlines() if "@" in line or line.startswith(" ")]
    assert map_lines[0].split()[0].startswith("@@")  # top row of native at full scale


def test_html_references_only_files_it_ships(written):
    from ppp_audit.render import page_resources

    text = written.html.read_text(encoding="utf-8")
    resources = page_resources(text)
    ids = set(re.findall(r'id="([^"]+)"', text))
    referenced = set()
    for value in resources:
        parsed = urlparse(value)
        assert not parsed.scheme and not parsed.netloc, value
        if value.startswith("#"):
            assert value[1:] in ids, value
            continue
        assert not value.startswith("/") and ".." not in Path(value).parts, value
        assert (written.out_dir / value).is_file(), value
        referenced.add(value)
    assert {f.filename for f in written.figures} | {"report.json"} == referenced
    assert not re.search(r"https?://|url\(|@import", text)
    assert text.count("<img ") == len(written.figures)


def _copy_of(written, tmp_path: Path) -> Path:
    """The planted report's output folder, copied, so a test can re-render the page without redrawing figures."""
    import shutil

    return Path(shutil.copytree(written.out_dir, tmp_path / "copy"))


def test_embedded_page_is_one_file(planted_report, written, tmp_path):
    import base64

    from ppp_audit.render import page_resources, write_outputs

    outputs = write_outputs(planted_report, _copy_of(written, tmp_path), overwrite=False, embed=True)
    assert not any(f.written for f in outputs.figures) and outputs.html_written
    images = [v for v in page_resources(outputs.html.read_text()) if v.startswith("data:")]
    assert len(images) == len(outputs.figures)
    for value in images:
        assert base64.b64decode(value.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_new_report_fields_and_sections_are_rendered(planted_report, written, tmp_path):
    from ppp_audit.render import FIGURES, SECTIONS, FigureSpec, register_figure, register_section, write_outputs
    from ppp_audit.render.figures import _new_figure
    from ppp_audit.report import Report

    @dataclass
    class ReportWithExtras(Report):
        baselines: dict = field(default_factory=dict)
        finetune: dict = field(default_factory=dict)

        def to_dict(self):
            return {**super().to_dict(), "baselines": self.baselines, "finetune": self.finetune}

    base = {k: getattr(planted_report, k) for k in ("environment", "model", "data", "input_size", "margin", "seed",
                                                     "device", "precision", "results")}
    report = ReportWithExtras(**base, baselines={"posenet": {"spc": 0.4321, "mae": 0.1}},
                              finetune={"steps": 25, "top1_agreement": 0.875})

    @register_section("finetune_test", "Fine-tune", order=70, fields=("finetune",))
    def _finetune(report, page):
        return f"<p id='ft'>steps={report.finetune['steps']}</p>" + (page.gallery("formation") or "")

    @register_figure("formation_test")
    def _formation(report):
        def draw():
            fig = _new_figure((2.0, 1.5))
            return fig, {"curve": fig.add_subplot()}
        return [FigureSpec(key="formation", filename="figures/formation.png", section="formation",
                           title="formation", alt="formation curve", size_in=(2.0, 1.5), draw=draw)]

    out = _copy_of(written, tmp_path)
    (out / "report.json").unlink()  # this report has more fields than the planted one
    try:
        outputs = write_outputs(report, out, overwrite=False)
        text = outputs.html.read_text()
    finally:
        SECTIONS.pop("finetune_test")
        FIGURES.pop("formation_test")
    assert [f.key for f in outputs.figures if f.written] == ["formation"]
    assert "<p id='ft'>steps=25</p>" in text and 'src="figures/formation.png"' in text
    more = text.split('<section id="more">', 1)[1]
    assert "baselines" in more and "0.4321" in more  # unclaimed field: shown generically
    assert "top1_agreement" not in more  # claimed by the fine-tune section


# ---------------------------------------------------------------------------------------------------------------------
# The CLI: --out writes everything; show re-renders it
# ---------------------------------------------------------------------------------------------------------------------

AUDIT_ARGS = ["resnet18", "--no-pretrained", "-p", "reflect", "-n", "4", "-b", "4", "--input-size", "64",
              "--layers", "layer3,layer4", "--no-progress"]


@pytest.fixture(scope="module")
def cli_audit(tmp_path_factory):
    from typer.testing import CliRunner

    from ppp_audit.cli import app

    out = tmp_path_factory.mktemp("cli") / "audit"
    result = CliRunner().invoke(app, [*AUDIT_ARGS, "--out", str(out)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return out, result


def test_out_writes_json_figures_and_page(cli_audit):
    out, result = cli_audit
    assert (out / "report.json").is_file() and (out / "report.html").is_file()
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == ["channel_energy.png", "channel_maps_00_layer3.png", "channel_maps_01_layer4.png",
                    "convergence.png", "extent_00_layer3.png", "extent_01_layer4.png", "mist.png",
                    "ppp_map_00_layer3.png", "ppp_map_01_layer4.png", "strength.png"]
    assert "10 figures and report.html written" in result.stderr


def test_show_reproduces_the_table(cli_audit):
    from rich.console import Console
    from typer.testing import CliRunner

    from ppp_audit.cli import app
    from ppp_audit.render import full_width, render_table
    from ppp_audit.report import Report

    out, audited = cli_audit
    table = Console(width=100, record=True, color_system=None)
    rendered = render_table(Report.load(out))
    with full_width(table, [rendered]):  # as the CLI prints to a pipe: at the table's own width
        table.print(rendered)
    table_text = table.export_text()
    assert table_text in audited.stdout
    assert "PPP map · stage layer4" in audited.stdout

    removed = out / "figures" / "strength.png"
    kept = out / "figures" / "ppp_map_01_layer4.png"
    removed.unlink()
    kept_mtime = kept.stat().st_mtime_ns
    shown = CliRunner().invoke(app, ["show", str(out)], env={"COLUMNS": "100"})
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == audited.stdout
    assert removed.is_file() and kept.stat().st_mtime_ns == kept_mtime  # only the missing figure was drawn
    assert "1 figure and report.html written" in shown.stderr

    again = CliRunner().invoke(app, ["show", str(out / "report.json"), "--no-figures"], env={"COLUMNS": "100"})
    assert again.exit_code == 0 and again.stdout == audited.stdout


def test_show_bad_input(tmp_path):
    from typer.testing import CliRunner

    from ppp_audit.cli import app

    missing = CliRunner().invoke(app, ["show", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no report at" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": "1.0"}')
    result = CliRunner().invoke(app, ["show", str(bad)])
    assert result.exit_code == 2 and "not a ppp-audit report" in result.stderr


def test_report_without_maps_still_renders(planted_report, tmp_path):
    """Layers with no map or profile (reports of schema <= 1.2 measured with the mean-feature estimator, which then
    kept none) give a page with the table and no figures."""
    import torch
    from rich.console import Console

    from ppp_audit.metrics import PPPAccumulator
    from ppp_audit.render import TerminalHeatmap, write_outputs
    from ppp_audit.report import LayerResult, Report, SchemeResult

    acc = PPPAccumulator(groups=4, with_reference=False)
    acc.update(torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0)))
    stats = acc.compute(8.0)
    stats.ppp_map, stats.profile, stats.side_profiles, stats.mist = None, None, {}, None  # mean-feature, schema <= 1.2
    stats.strength, stats.strength_ci, stats.convergence = None, None, None  # ... and no strength either
    layer = LayerResult(name="stage0", receptive_radius_px=4.0, reference_partial=False, stats=stats)
    base = {k: getattr(planted_report, k) for k in ("environment", "model", "data", "input_size", "margin", "seed",
                                                     "device", "precision")}
    patch = {"scheme": "native", "native_padding": "zeros", "num_patched": 0, "patched": [], "unpatched": []}
    report = Report(**base, results=[SchemeResult(scheme="native", patch=patch, layers=[layer])], estimator="mean")
    outputs = write_outputs(report, tmp_path)
    assert outputs.figures == [] and "<img" not in outputs.html.read_text()
    console = Console(record=True, width=100)
    console.print(TerminalHeatmap(report))
    assert console.export_text() == ""


def test_audit_reports_convergence_ending_at_the_strength(cli_audit):
    """End to end: every layer's convergence curve ends at its reported strength, on nested, growing image counts."""
    import json

    out, _ = cli_audit
    data = json.loads((out / "report.json").read_text())
    for result in data["results"]:
        for layer in result["layers"]:
            counts = [n for n, _ in layer["convergence"]]
            assert counts == sorted(set(counts)) and counts[-1] == layer["n"] == data["data"]["num_images"]
            assert layer["convergence"][-1][1] == layer["strength"]
