"""What a reader of the pages relies on, checked on the generated HTML (no browser; scripts/browser_check.py opens
the same pages in headless Chromium): the leaderboard opens ranked and its points open the run page at their scheme,
which links back; the embedded page stands alone (no link it cannot follow, no local path) beside the linked one;
every table of the report page scrolls in its own box; figures link to their PNGs; the text is true for the run.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_figures import planted_report  # noqa: F401 - the planted two-scheme report, shared

from ppp_audit.leaderboard import COLUMNS, Leaderboard, leaderboard_html
from ppp_audit.pages import scheme_anchor, without_local_paths
from ppp_audit.report import NATIVE

SECRET = "/home/someone/private"


class _Tree(HTMLParser):
    """Every element's tag and attributes with its ancestors' (tag, class) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = []
        self.elements: list[tuple[str, dict, list[tuple[str, str]]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs, list(self.stack)))
        if tag not in ("img", "meta", "br", "use", "path", "input", "link"):
            self.stack.append((tag, attrs.get("class") or ""))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break


def _tree(text: str) -> _Tree:
    tree = _Tree()
    tree.feed(text)
    return tree


def _links(text: str) -> list[str]:
    return [value for _, attrs, _ in _tree(text).elements for key, value in attrs.items()
            if key in ("href", "src", "xlink:href") and value is not None]


# ---- the leaderboard ------------------------------------------------------------------------------------------------


def _board(strengths: list[float | None]) -> Leaderboard:
    names = [column.name for column in COLUMNS]
    rows = []
    for k, value in enumerate(strengths):
        row = dict.fromkeys(names)
        row.update(model=f"m{k}", family="f", scheme=NATIVE if k % 2 == 0 else "reflect", padding="zeros",
                   params=10 ** 6 * (k + 1), last_strength=value, report_html=f"runs/m{k}/h/report.html",
                   report_json=f"runs/m{k}/h/report.json")
        rows.append(row)
    kinds = {column.name: column.kind for column in COLUMNS}
    return Leaderboard(rows=rows, columns=names, kinds=kinds, runs=len(rows))


def test_leaderboard_opens_ranked():
    """Folder order in, ranked out: highest last-stage strength first, rows without one last, a rank column."""
    text = leaderboard_html(_board([0.2, None, 0.9, 0.0, 0.5]))
    body = text[text.index("<tbody>"):text.index("</tbody>")]
    assert re.findall(r'<tr><td class="num" data-value="(\d+)">', body) == ["1", "2", "3", "4", "5"]
    assert re.findall(r'<td class="model" data-value="([^"]+)">', body) == ["m2", "m4", "m0", "m3", "m1"]
    assert 'data-column="last_strength" data-kind="num" data-first="descending" aria-sort="descending"' in text


def test_leaderboard_headers_are_buttons_with_plain_tooltips():
    tree = _tree(leaderboard_html(_board([0.1, 0.2])))
    heads = [attrs for tag, attrs, stack in tree.elements if tag == "th" and "data-column" in attrs]
    buttons = [attrs for tag, attrs, stack in tree.elements if tag == "button"]
    assert len(heads) == len(buttons) > 10 and all("`" not in b["title"] for b in buttons)
    table = next(stack for tag, attrs, stack in tree.elements if tag == "table" and attrs.get("id") == "leaderboard")
    assert ("div", "scroll") in table  # in its own scroll box


def test_leaderboard_points_open_the_run_page_at_their_scheme():
    text = leaderboard_html(_board([0.1, 0.2]))
    points = [value for value in _links(text) if value.startswith("runs/")]
    assert "runs/m0/h/report.html#scheme-native" in points and "runs/m1/h/report.html#scheme-reflect" in points
    assert "leaderboard.csv" in _links(text) and "leaderboard.parquet" in _links(text)
    assert 'width="760"' not in text and "viewBox=" in text  # the scatter scales to its box


def test_run_page_has_scheme_anchors_and_links_back(planted_report, tmp_path):  # noqa: F811
    from ppp_audit.render import write_html

    folder = tmp_path / "sweep" / "runs" / "planted" / "abc123"
    text = write_html(planted_report, folder, []).read_text()
    ids = set(re.findall(r'id="([^"]+)"', text))
    assert {scheme_anchor(result.scheme) for result in planted_report.results} <= ids
    assert '<a href="../../../leaderboard.html" rel="up">' in text
    alone = write_html(planted_report, tmp_path / "elsewhere", []).read_text()
    assert 'rel="up"' not in alone  # not a run folder of a sweep: no leaderboard to go back to


# ---- the report page ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(planted_report, tmp_path_factory):  # noqa: F811
    """A report folder with a weights file and an image folder under a home folder, its linked page and its
    embedded page."""
    from ppp_audit.render import write_outputs

    report = replace(planted_report, model={**planted_report.model, "weights": f"file:{SECRET}/w.safetensors"},
                     data={**planted_report.data, "path": f"{SECRET}/photos"})
    out = tmp_path_factory.mktemp("shared")
    linked = write_outputs(report, out)
    before = linked.html.read_bytes()
    embedded = write_outputs(report, out, overwrite=False, embed=True)
    return SimpleNamespace(out=out, linked=linked, embedded=embedded, before=before)


def test_embed_writes_its_own_file(shared):
    assert shared.embedded.html.name == "report.embedded.html" and shared.linked.html.name == "report.html"
    assert shared.linked.html.read_bytes() == shared.before  # the linked page is left as it is


def test_embedded_page_copied_alone_stands_alone(shared, tmp_path):
    alone = Path(shutil.copy(shared.embedded.html, tmp_path / "sent.html"))
    text = alone.read_text()
    ids = set(re.findall(r'id="([^"]+)"', text))
    for link in _links(text):
        if link.startswith("data:image/png;base64,"):
            continue
        assert link.startswith("#") and link[1:] in ids, link  # nothing beside it to follow
    shown = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert SECRET not in shown and "/home/" not in shown and "a local file (w.safetensors)" in shown
    assert "this file stands alone" in text


def test_linked_page_figures_open_their_png(shared):
    tree = _tree(shared.linked.html.read_text())
    images = [(attrs, stack) for tag, attrs, stack in tree.elements if tag == "img"]
    assert images
    links = {attrs["href"] for tag, attrs, _ in tree.elements if tag == "a" and "href" in attrs}
    assert all(attrs["src"] in links and (shared.out / attrs["src"]).is_file() for attrs, _ in images)


def test_every_report_table_scrolls_in_its_own_box(shared):
    for page in (shared.linked.html, shared.embedded.html):
        tree = _tree(page.read_text())
        tables = [stack for tag, _, stack in tree.elements if tag == "table"]
        assert tables and all(("div", "scroll") in stack for stack in tables)


# ---- text true for the run ------------------------------------------------------------------------------------------


def _mist_report(counts: list[int], processes: int) -> SimpleNamespace:
    layer = SimpleNamespace(stats=SimpleNamespace(mist=SimpleNamespace(counts=counts)))
    results = [SimpleNamespace(label="native (zeros)", layers=[layer]), SimpleNamespace(label="reflect",
                                                                                        layers=[layer])]
    return SimpleNamespace(results=results, estimator="delta", timings={"processes": processes})


def test_mist_text_names_the_panels_it_has():
    from ppp_audit.render.html import mist_text

    text = mist_text(_mist_report([1, 10, 64], 1))
    assert "100" not in text and "the first image, the first 10 and all N=64 images" in text
    assert "two rows for each of native (zeros) and reflect" in text and "upper row" in text
    assert "torchrun" not in text and "process" not in text
    assert "of the first of the 4 processes" in mist_text(_mist_report([1, 10, 100, 128], 4))


def test_native_patch_details_say_unchanged():
    from ppp_audit.render.html import patch_details

    details = patch_details(NATIVE, {"scheme": NATIVE, "num_patched": 17, "patched": [], "unpatched": []})
    assert "num_patched" not in details and details["padding sites (unchanged)"] == 17
    assert patch_details("reflect", {"num_patched": 17})["num_patched"] == 17


def test_local_paths_are_said_as_a_local_file():
    assert without_local_paths({"weights": "file:/root/.cache/x/model.safetensors", "kind": "folder photos",
                                "repo": "timm/beans", "rel": "figures/a.png"}) == {
        "weights": "file: a local file (model.safetensors)", "kind": "folder photos", "repo": "timm/beans",
        "rel": "figures/a.png"}
