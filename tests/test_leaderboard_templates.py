"""The leaderboard page as its jinja2 templates render it (ppp_audit/templates/leaderboard, issue #30): ranked when it
opens, every value escaped, nothing left unrendered, its data files linked, its Content-Security-Policy in place.

The sweep folder is the one tests/test_leaderboard.py builds (real audits of tiny random-init models); the hostile
names are put into a copy of its board.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import replace
from html.parser import HTMLParser

import pytest
from test_leaderboard import FAILING, sweep, written  # noqa: F401 - the sweep folder's fixtures, shared

from ppp_audit.leaderboard import LEADERBOARD_CSV, LEADERBOARD_PARQUET, RANK_KEY, LostRun, leaderboard_html
from ppp_audit.pages import CSP, templates

HOSTILE = '<script>alert("pwned")</script>&\'x'
"""A model name (and a failure reason) that must come out as text, never as markup."""


class _Tree(HTMLParser):
    """The page's table cells by row, its links, its meta tags and the text of its scripts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.heads: list[dict[str, str | None]] = []
        self.rows: list[list[dict[str, str | None]]] = []
        self.links: list[str] = []
        self.metas: list[dict[str, str | None]] = []
        self.scripts: list[str] = []
        self.codes: list[str] = []
        self._in: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "th" and "data-column" in values:
            self.heads.append(values)
        elif tag == "tr" and "tbody" in self._in:
            self.rows.append([])
        elif tag == "td" and self.rows and "tbody" in self._in:
            self.rows[-1].append(values)
        elif tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        elif tag == "meta":
            self.metas.append(values)
        elif tag == "script":
            self.scripts.append("")
        self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag):]

    def handle_data(self, data: str) -> None:
        inside = self._in[-1] if self._in else None
        if inside == "script":
            self.scripts[-1] += data
        if inside == "code":
            self.codes.append(data)


@pytest.fixture(scope="module")
def hostile(written):  # noqa: F811 - the fixture
    """The sweep's board with its first model renamed :data:`HOSTILE` and a failed run of that name, as a page."""
    board = written.board
    first = board.rows[0]["model"]
    rows = [{**row, "model": HOSTILE} if row["model"] == first else row for row in board.rows]
    failed = [*board.failed, LostRun(HOSTILE, "abc123", HOSTILE, None)]
    return leaderboard_html(replace(board, rows=rows, failed=failed))


def test_page_opens_ranked(written):  # noqa: F811 - the fixture
    tree = _Tree(written.html.read_text())
    columns = [head["data-column"] for head in tree.heads]
    assert columns[:2] == ["#", "model"]
    assert [head["data-column"] for head in tree.heads if head.get("aria-sort")] == [RANK_KEY]
    assert [row[0]["data-value"] for row in tree.rows] == [str(k) for k in range(1, len(written.board.rows) + 1)]
    strengths = [float(row[columns.index(RANK_KEY)]["data-value"] or "nan") for row in tree.rows]
    assert strengths[0] == max(row[RANK_KEY] for row in written.board.rows if row[RANK_KEY] is not None)
    assert strengths == sorted(strengths, reverse=True)  # every fixture row has a strength
    assert all(head.get("data-kind") in ("num", "text") and head.get("data-first") for head in tree.heads)
    assert all(row[1].get("class") == "model" for row in tree.rows)  # the sticky model column


def test_hostile_names_appear_only_escaped(hostile):
    assert "<script>alert" not in hostile and "&lt;script&gt;alert(" in hostile
    tree = _Tree(hostile)
    assert len(tree.scripts) == 1 and "addEventListener" in tree.scripts[0]  # the sort script, and only it
    assert HOSTILE in [row[1]["data-value"] for row in tree.rows]  # the attribute reads back as the name
    assert HOSTILE in tree.codes  # the failed run, listed by its name


def test_nothing_left_unrendered(written, hostile):  # noqa: F811 - the fixture
    for text in (written.html.read_text(), hostile):
        assert not any(mark in text for mark in ("{{", "{%", "{#")), [m for m in ("{{", "{%", "{#") if m in text]
        assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")


def test_data_files_and_failed_runs_are_linked_and_listed(written):  # noqa: F811 - the fixture
    text = written.html.read_text()
    tree = _Tree(text)
    assert LEADERBOARD_CSV in tree.links and LEADERBOARD_PARQUET in tree.links
    assert FAILING in tree.codes and "Failed runs (1)" in text and "Sweep settings" in text


def test_the_scatter_legend_can_break_between_its_items(written):  # noqa: F811 - the fixture
    # Its items do not wrap inside (white-space: nowrap): with nothing between them the legend is one unbreakable run,
    # which made the page 508 px wide at 420 px (scripts/browser_check.py).
    import re

    legend = re.search(r'<p class="legend">(.*?)</p>', written.html.read_text(), re.S).group(1)
    items = legend.count("</span> ")
    assert items >= legend.count('<span style="color:') >= 1 and "</span><span>" not in legend


def test_csp_meta_is_there(written):  # noqa: F811 - the fixture
    (policy,) = [meta for meta in _Tree(written.html.read_text()).metas
                 if meta.get("http-equiv") == "Content-Security-Policy"]
    assert policy["content"] == CSP


def test_templates_ship_and_both_pages_share_one_environment():
    from ppp_audit.render.html import _environment

    shipped = importlib.resources.files("ppp_audit") / "templates" / "leaderboard"
    names = {entry.name for entry in shipped.iterdir() if entry.is_file()}
    assert {"page.html", "_table.html", "_scatter.html", "_lost.html", "_settings.html", "sort.js"} <= names
    assert _environment() is templates()
    listed = set(templates().list_templates())
    assert {f"leaderboard/{name}" for name in names} <= listed and "page.html" in listed
