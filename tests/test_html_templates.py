"""The report page as its jinja2 templates render it (ppp_audit/render/templates): the same document as before the
templates (its Content-Security-Policy, the one stylesheet, every text), with every value escaped unless it is HTML
on purpose, nothing left unrendered, and the embedded page standing alone."""

from __future__ import annotations

import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_figures import planted_report  # noqa: F401 - the planted two-scheme report, shared

from ppp_audit.pages import CSP, PAGE_CSS
from ppp_audit.report import Report

NASTY = "<script>alert('x')</script>"
SECRET = "/home/someone/private"


class _Page(HTMLParser):
    """The meta tags, stylesheets, links and every text of a page (attributes and text as a browser reads them)."""

    def __init__(self) -> None:
        super().__init__()
        self.metas: list[dict[str, str | None]] = []
        self.styles: list[str] = []
        self.links: list[str] = []
        self.scripts: list[str] = []
        self.texts: list[str] = []
        self.ids: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "meta":
            self.metas.append(values)
        self.links.extend(v for k, v in attrs if k in ("href", "src") and v is not None)
        if values.get("id"):
            self.ids.append(values["id"])
        self._open = tag if tag in ("style", "script") else None

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open == "style":
            self.styles.append(data)
        elif self._open == "script":
            self.scripts.append(data)
        else:
            self.texts.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


@pytest.fixture(scope="module")
def nasty_report(planted_report: Report) -> Report:  # noqa: F811
    """The planted report with a scheme and a layer named like a script tag, and local paths in its provenance."""
    native, reflect = planted_report.results
    layers = [replace(layer, name=f"{NASTY}{k}") for k, layer in enumerate(reflect.layers)]
    return replace(planted_report, results=[native, replace(reflect, scheme=NASTY, layers=layers)],
                   model={**planted_report.model, "weights": f"file:{SECRET}/w.safetensors"},
                   data={**planted_report.data, "path": f"{SECRET}/photos"})


@pytest.fixture(scope="module")
def pages(nasty_report: Report, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The linked page and the embedded page of the nasty report (with its figures)."""
    from ppp_audit.render import write_outputs

    out = tmp_path_factory.mktemp("templates")
    linked = write_outputs(nasty_report, out)
    embedded = write_outputs(nasty_report, out, overwrite=False, embed=True)
    assert linked.figures, "the planted report draws figures"
    return {"linked": linked.html.read_text(), "embedded": embedded.html.read_text()}


@pytest.mark.parametrize("kind", ["linked", "embedded"])
def test_page_keeps_its_csp_and_the_one_stylesheet(pages: dict[str, str], kind: str) -> None:
    page = _parse(pages[kind])
    policies = [m["content"] for m in page.metas if m.get("http-equiv") == "Content-Security-Policy"]
    assert policies == [CSP]
    assert len(page.styles) == 1 and page.styles[0].startswith(PAGE_CSS)  # the shared sheet, then the page's rules
    assert "&#34;" not in page.styles[0] and '"Segoe UI"' in page.styles[0]  # the stylesheet is not escaped
    assert len(page.scripts) == 1 and 'getElementById("image-status")' in page.scripts[0]
    assert pages[kind].startswith("<!DOCTYPE html>\n") and pages[kind].endswith("</html>\n")


@pytest.mark.parametrize("kind", ["linked", "embedded"])
def test_names_are_escaped(pages: dict[str, str], kind: str) -> None:
    text = pages[kind]
    assert "<script>alert" not in text and text.count("<script>") == 1  # only the page's own script
    shown = "".join(_parse(text).texts)
    assert f"{NASTY}1" in shown  # the layer name, shown as text
    assert shown.count(NASTY) >= 3  # in the table, the scheme list and the patch summary


@pytest.mark.parametrize("kind", ["linked", "embedded"])
def test_nothing_is_left_unrendered(pages: dict[str, str], kind: str) -> None:
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", pages[kind])
    text = re.sub(r"<style>.*?</style>", "<style></style>", text, flags=re.S)  # CSS has its own braces: @media{..}}
    for mark in ("{{", "}}", "{%", "%}", "{#", "#}"):
        assert mark not in text
    assert "None" not in "".join(_parse(text).texts).split()  # no missing value printed as None


def test_embedded_page_has_no_local_path_and_no_json_link(pages: dict[str, str]) -> None:
    page = _parse(pages["embedded"])
    assert all(link.startswith(("#", "data:image/png;base64,")) for link in page.links)
    assert not any("report.json" in link for link in page.links)
    shown = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", pages["embedded"])
    assert SECRET not in shown and "/home/" not in shown and "a local file (w.safetensors)" in shown
    assert "report.json" in "".join(page.texts)  # named, as the file in the report folder, but not linked
    linked = _parse(pages["linked"])
    assert "report.json" in linked.links and f"file:{SECRET}/w.safetensors" in "".join(linked.texts)


def test_every_section_keeps_its_anchor(pages: dict[str, str]) -> None:
    from ppp_audit.pages import scheme_anchor

    page = _parse(pages["linked"])
    sections = [link[1:] for link in page.links if link.startswith("#")]
    assert sections and set(sections) <= set(page.ids) and "summary" in sections and "table" in sections
    assert scheme_anchor(NASTY) in page.ids and scheme_anchor("native") in page.ids


def test_table_section_renders_its_header_and_rows() -> None:
    from rich.table import Table
    from rich.text import Text

    from ppp_audit.render.html import rich_table_html

    table = Table(title="Fine-tune <1>", caption="a & b\nsecond line")
    table.add_column("scheme")
    table.add_column(Text("top-1\nagreement"), justify="right")
    table.add_row("native", Text("0.875"), style="bold")
    table.add_row(NASTY, "0.5", end_section=True)
    table.add_row("reflect", "0.25")
    text = rich_table_html(table)
    assert re.sub(r"\s+", "", text) == re.sub(r"\s+", "", (
        '<div class="scroll"><table class="grid results"><caption>Fine-tune &lt;1&gt;</caption>'
        '<thead><tr><th class="left">scheme</th><th class="right">top-1<br>agreement</th></tr></thead><tbody>'
        '<tr class="bold"><td class="left">native</td><td class="right">0.875</td></tr>'
        '<tr class="section-end"><td class="left">&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</td>'
        '<td class="right">0.5</td></tr>'
        '<tr><td class="left">reflect</td><td class="right">0.25</td></tr>'
        '</tbody></table></div><p class="note">a &amp; b<br>second line</p>'))


def test_results_table_section_lists_every_layer(planted_report: Report) -> None:  # noqa: F811
    from ppp_audit.render.html import Page, render_html

    text = render_html(planted_report, Page(figures=[], out_dir=Path(".")))
    section = text[text.index('<section id="table">'):]
    section = section[:section.index("</section>")]
    rows = re.findall(r"<tr[ >].*?</tr>", section, re.S)
    header = re.findall(r"<th[^>]*>(.*?)</th>", rows[0], re.S)
    assert header and "<thead>" in section and len(rows) == 1 + sum(len(r.layers) for r in planted_report.results)
    assert all(f">{layer.name}<" in section for r in planted_report.results for layer in r.layers)
    assert "no figures" in text  # the header says where the figures are


def test_a_registered_section_renders_as_html(planted_report: Report) -> None:  # noqa: F811
    from ppp_audit.render import SECTIONS, register_section
    from ppp_audit.render.html import Page, render_html

    @register_section("templates_test", "Plugin <section>", order=99)
    def _plugin(report: Report, page: Page) -> str:
        return "<p id='plugin'>from a <em>plugin</em></p>" + (page.gallery("nothing") or "")

    try:
        text = render_html(planted_report, Page(figures=[], out_dir=Path(".")))
    finally:
        SECTIONS.pop("templates_test")
    assert "<p id='plugin'>from a <em>plugin</em></p>" in text  # its fragment is HTML, put in as it is
    assert '<h2>Plugin &lt;section&gt;</h2>' in text and '<a href="#templates_test">Plugin &lt;section&gt;</a>' in text


def test_generic_values_escape_and_nest() -> None:
    from ppp_audit.render.html import generic_html

    text = generic_html({"a_key": {"inner": NASTY}, "rows": [{"x": 1.23456789}, {"y": None}], "long": list(range(20))})
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert text.count('<div class="scroll">') == 1  # only the top-level table scrolls in its own box
    assert "<th>a key</th>" in text and "1.235" in text and "–" in text and "(20 values)" in text


def test_importing_the_page_module_imports_no_jinja2() -> None:
    import subprocess
    import sys

    code = "import sys, ppp_audit.render.html; print('jinja2' in sys.modules, 'markupsafe' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_templates_ship_with_the_package() -> None:
    import importlib.resources

    templates = importlib.resources.files("ppp_audit.render").joinpath("templates")
    names = {entry.name for entry in templates.iterdir()}
    assert {"page.html", "_table.html", "_macros.html", "sections"} <= names
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"ppp_audit.render" = ["templates/*.html", "templates/sections/*.html"]' in pyproject
    assert re.search(r'^\s*"jinja2>=', pyproject, re.M)
