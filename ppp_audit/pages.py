"""What the HTML pages share (torch-free, imports nothing at import time): one jinja2 environment, one stylesheet,
the anchor of a scheme on a run's page, and local paths said as "a local file" on a page meant to be sent around.

The report page (:mod:`ppp_audit.render.html`) and the leaderboard page (:mod:`ppp_audit.leaderboard`) are both
rendered by :func:`templates` (its templates: ``ppp_audit/render/templates`` for the report page,
``ppp_audit/templates/leaderboard`` for the leaderboard) and both use :data:`PAGE_CSS` (each adds its own few rules);
a leaderboard point links to ``report.html#`` :func:`scheme_anchor`.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

PAGE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:1rem 2rem;
color:#222;line-height:1.4}
@media (max-width:600px){body{padding:.5rem .6rem}}
h1{font-size:1.5rem;margin-bottom:.2rem;overflow-wrap:anywhere}h2{font-size:1.2rem;border-bottom:1px solid #ddd;
padding-bottom:.2rem;margin-top:2rem}h3{font-size:1rem}
nav{display:flex;flex-wrap:wrap;gap:.2rem 1rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
table.grid th,table.grid td{border:1px solid #ccc;padding:.2rem .5rem;vertical-align:top}
.scroll{overflow-x:auto;max-width:100%}
td.num,td.right,th.right{text-align:right;font-variant-numeric:tabular-nums}td.center,th.center{text-align:center}
.note,figcaption,small{color:#555;font-size:.8rem}
pre{overflow-x:auto}code{overflow-wrap:anywhere}
:target{background:#fff6d5}
"""
"""The stylesheet of every page ppp-audit writes (the report page and the leaderboard add their own rules)."""

CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")
"""The pages' Content-Security-Policy: they load nothing from the network (links are navigation, not loads)."""

TEMPLATE_FOLDERS = ("render/templates", "templates")
"""The folders of the pages' templates inside the ``ppp_audit`` package, searched in order: the report page's
(``page.html``, ``_*.html``, ``sections/*.html``), then the leaderboard's (``leaderboard/*.html``)."""


@functools.lru_cache(maxsize=1)
def templates() -> "jinja2.Environment":
    """The one jinja2 environment of every page (made on first use: jinja2 is imported only when a page is rendered).

    Autoescaping is on for ``.html`` templates (a value is escaped unless passed as :class:`markupsafe.Markup`),
    blocks trim their newline and leading space, and an undefined name raises. The loader reads the package's files
    (:data:`TEMPLATE_FOLDERS`) without importing any module of ppp_audit but ``ppp_audit`` itself.

    Returns:
        The cached environment; a page module may add its own filters and tests to it.
    """
    import jinja2

    loader = jinja2.ChoiceLoader([jinja2.PackageLoader("ppp_audit", folder) for folder in TEMPLATE_FOLDERS])
    return jinja2.Environment(loader=loader, autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True,
                              lstrip_blocks=True, undefined=jinja2.StrictUndefined)


LOCAL_FILE = "a local file"
"""What a shared page says in place of a local absolute path."""


def scheme_anchor(scheme: str) -> str:
    """The id of a scheme's entry on a run's page (``reflect`` -> ``scheme-reflect``), which leaderboard points open."""
    return "scheme-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", scheme)


_PATH = re.compile(r"(?<![\w./~-])~?/(?:[^\s/'\"<>,;()]+/)*[^\s/'\"<>,;()]+")
"""An absolute path in a longer text (``/home/me/w.safetensors``), not a relative one (``figures/a.png``)."""


def without_local_paths(value: Any) -> Any:
    """``value`` (any JSON-like value) with every local absolute path said as "a local file (NAME)": for a page
    meant to be sent around (``file:/home/me/w.safetensors`` -> ``file: a local file (w.safetensors)``)."""
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_local_paths(item) for item in value]
    if isinstance(value, str) and ("/" in value or "~" in value or os.sep in value):
        def local(match: re.Match) -> str:
            space = " " if match.start() and value[match.start() - 1] == ":" else ""
            return f"{space}{LOCAL_FILE} ({PurePath(match.group(0)).name})"

        return _PATH.sub(local, value)
    return value


__all__ = ["CSP", "LOCAL_FILE", "PAGE_CSS", "TEMPLATE_FOLDERS", "scheme_anchor", "templates", "without_local_paths"]
