"""The leaderboard of a sweep folder (docs/leaderboard.md): rows, files, page, terminal table, CLI and Hub push.

The sweep folder is built here as ``ppp-audit sweep`` lays it out (ppp_audit/runs.py): real audits of tiny random-init
timm models at 64 px, their report.json, a page for some, run.json written last, and one model whose audit fails.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_helpers import fails, run_without_torch, runner
from test_hub import TOKEN, hub  # noqa: F401 - the loopback Hub fixture, shared with the report pushes

from ppp_audit.cli import app
from ppp_audit.errors import PPPAuditError
from ppp_audit.leaderboard import (
    COLUMNS,
    LEADERBOARD_CSV,
    LEADERBOARD_HTML,
    LEADERBOARD_PARQUET,
    build_leaderboard,
    family_of,
    leaderboard_rows,
    read_join,
    read_leaderboard,
    split_tag,
    stride_column,
    write_leaderboard,
)
from ppp_audit.report import NATIVE, REPORT_JSON
from ppp_audit.runs import DONE, FAILED, RunRecord, iter_records, result_settings, run_folder, write_record

SOURCE = str(Path(__file__).resolve().parents[1])
SETTINGS = {"paddings": ["reflect"], "input_size": 64, "num_images": 4, "pretrained": False, "seed": 0}
MODELS = {  # model -> the family a sweep records (None: left to the leaderboard's fallback), a page or not
    "resnet10t": ("resnet", True),
    "repvgg_a0": ("byobnet", True),  # its deep stages are partial at this margin
    "ghostnet_050": ("ghostnet", False),
    "regnetx_002.pycls_in1k": (None, False),  # a tagged name, family from the architecture
    "mobilenetv3_small_050": ("mobilenetv3", False),  # reflect cannot pad its 2x2 maps at 64 px: a failed run
}
FAILING = "mobilenetv3_small_050"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def _one_thread():
    """Models this small gain nothing from threads, and lose ten times over on a shared, busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """A sweep folder of real audits (5 models, native + reflect, 4 dead-leaves windows at 64 px)."""
    import timm

    from ppp_audit.engine import AuditConfig, audit
    from ppp_audit.render import write_html

    out = tmp_path_factory.mktemp("sweep")
    reports, params = {}, {}
    with _one_thread():
        for model, (family, page) in MODELS.items():
            folder = run_folder(out, model, SETTINGS)
            params[model] = sum(p.numel() for p in timm.create_model(model, pretrained=False).parameters())
            started = time.perf_counter()
            try:
                report = audit(AuditConfig(model=model, pretrained=False, paddings=SETTINGS["paddings"],
                                           num_images=4, batch_size=4, input_size=64, device="cpu"))
            except PPPAuditError as exc:
                write_record(folder, RunRecord(model, SETTINGS, FAILED, reason=exc.message, family=family,
                                               params=params[model], seconds=time.perf_counter() - started))
                continue
            report.save(folder / REPORT_JSON)
            if page:
                write_html(report, folder, [])  # the page without figures: the links need it, not its PNGs
            write_record(folder, RunRecord(model, SETTINGS, DONE, family=family, params=params[model],
                                           seconds=time.perf_counter() - started, finished=_now()))
            reports[model] = report
    assert FAILING not in reports and len(reports) == len(MODELS) - 1
    return SimpleNamespace(dir=out, reports=reports, params=params)


@pytest.fixture(scope="session")
def written(sweep):
    """The leaderboard files, written once into the sweep folder."""
    return write_leaderboard(sweep.dir)


def _copy(sweep, tmp_path: Path) -> Path:
    target = tmp_path / "sweep"
    shutil.copytree(sweep.dir, target)
    return target


def _row(rows: list[dict], model: str, scheme: str) -> dict:
    (row,) = [row for row in rows if row["model"] == model and row["scheme"] == scheme]
    return row


# ---- rows -----------------------------------------------------------------------------------------------------------


def test_one_row_per_model_and_scheme(sweep):
    board = read_leaderboard(sweep.dir)
    expected = {(model, result.scheme) for model, report in sweep.reports.items() for result in report.results}
    assert [(row["model"], row["scheme"]) for row in board.rows] == sorted(expected, key=lambda k: (
        sorted(MODELS).index(k[0]), k[1] != NATIVE))  # folder order, native first
    assert board.runs == len(MODELS) and board.models == len(sweep.reports)

    for model, report in sweep.reports.items():
        family, page = MODELS[model]
        native_last = report.scheme(NATIVE).last_strength
        for result in report.results:
            row = _row(board.rows, model, result.scheme)
            last, top = result.layers[-1], result.max_layer
            assert row["architecture"] == report.model["architecture"] and row["weights"] == "random-init"
            assert row["family"] == (family or family_of(report.model["architecture"]))
            assert row["params"] == sweep.params[model] and row["num_images"] == 4 and row["input_size"] == 64
            assert row["margin"] == report.margin and row["estimator"] == report.estimator
            assert row["reference"] == report.geometry["reference"]["kind"]
            assert row["padding"] == result.padding and row["last_layer"] == last.name
            assert row["last_strength"] == pytest.approx(last.stats.strength)
            # an unbounded interval (a mist the sums cannot resolve: docs/metrics.md) has no upper bound in the table
            bounds = lambda ci: [None if math.isinf(v) else pytest.approx(v) for v in ci]  # noqa: E731
            assert [row["last_strength_low"], row["last_strength_high"]] == bounds(last.stats.strength_ci)
            assert row["max_layer"] == top.name and row["max_strength"] == pytest.approx(top.stats.strength)
            assert [row["max_strength_low"], row["max_strength_high"]] == bounds(top.stats.strength_ci)
            assert row["extent_px"] == last.stats.extent_px
            assert row["partial_layers"] == sum(layer.reference_partial for layer in result.layers)
            for layer in result.layers:
                assert row[stride_column(layer.stats.stride_px)] == pytest.approx(layer.stats.strength)
            assert row["stages"].split(",") == [f"{l.name}@{l.stats.stride_px:g}" for l in result.layers]
            if result.scheme == NATIVE:
                assert row["change_vs_native"] is None
            else:
                assert row["change_vs_native"] == pytest.approx(last.stats.strength / native_last - 1)
            folder = run_folder(sweep.dir, model, SETTINGS)
            assert sweep.dir / row["report_json"] == folder / REPORT_JSON
            assert row["report_html"] == (f"{folder.relative_to(sweep.dir).as_posix()}/report.html" if page else None)
    assert any(row["partial_layers"] for row in board.rows)  # repvgg: the count is exercised
    # Stage names differ (layer4, final_conv, blocks.7, s4); the stride columns line them up.
    assert board.stage_columns == ["s2", "s4", "s8", "s16", "s32"]
    assert board.columns.index("s2") == board.columns.index("partial_layers") + 1
    assert leaderboard_rows(iter_records(sweep.dir)) == board.rows


def test_names_and_families():
    assert split_tag("resnet18.a1_in1k") == ("resnet18", "a1_in1k") and split_tag("resnet18") == ("resnet18", None)
    assert split_tag("hf-hub:timm/resnet18.a1_in1k")[1] is None  # a Hub id is not a timm name
    assert [family_of(a) for a in ("resnet10t", "mobilenetv3_small_050", "regnetx_002", "tf_efficientnet_lite0",
                                   "densenet121", "convnext_tiny")] == [
        "resnet", "mobilenetv3", "regnetx", "efficientnet", "densenet", "convnext"]


def test_failed_runs_are_listed_not_rowed(sweep):
    from rich.console import Console

    from ppp_audit.render.tables import render_leaderboard_table

    board = read_leaderboard(sweep.dir)
    assert FAILING not in {row["model"] for row in board.rows}
    (failed,) = board.failed
    recorded = next(r for r in iter_records(sweep.dir) if r.model == FAILING)
    assert failed.model == FAILING and failed.reason == recorded.reason and "cannot pad" in failed.reason
    assert failed.path == run_folder(sweep.dir, FAILING, SETTINGS).relative_to(sweep.dir).as_posix()
    runs, models = len(MODELS), len(sweep.reports)
    assert board.describe() == f"{len(board.rows)} rows from {runs} runs of {models} models; 1 failed"

    console = Console(width=400, record=True)
    console.print(render_leaderboard_table(board, top=3))
    text = console.export_text()
    assert "top 3 of" in text and f"1 failed: {FAILING}: padding scheme 'reflect' cannot pad" in text
    ranked = sorted(board.rows, key=lambda row: -row["last_strength"])
    cells = [line.split("│")[1:3] for line in text.splitlines() if line.startswith("│")]
    assert [(rank.strip(), model.strip()) for rank, model in cells] == [
        (str(k), row["model"]) for k, row in enumerate(ranked[:3], 1)]


def test_unreadable_or_partial_report_is_listed_not_raised(sweep, tmp_path):
    out = _copy(sweep, tmp_path)
    broken = run_folder(out, "ghostnet_050", SETTINGS) / REPORT_JSON
    broken.write_text("{not json")
    partial = sweep.reports["resnet10t"].to_dict()
    partial["interrupted"] = "stopped by Ctrl-C after 2 of 4 images; the statistics cover those"
    (run_folder(out, "resnet10t", SETTINGS) / REPORT_JSON).write_text(json.dumps(partial))
    board = read_leaderboard(out)
    assert [(lost.model, lost.reason.split(" (")[0]) for lost in board.unreadable] == [
        ("ghostnet_050", f"'{broken}' is not valid JSON"), ("resnet10t", "its report is partial")]
    assert {row["model"] for row in board.rows} == {"regnetx_002.pycls_in1k", "repvgg_a0"} and len(board.failed) == 1

    result = runner.invoke(app, ["leaderboard", str(out)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "1 failed, 2 unreadable" in result.stderr and "2 unreadable: ghostnet_050" in result.stdout


# ---- files ----------------------------------------------------------------------------------------------------------


def test_parquet_and_csv_load_with_pandas_and_datasets(written):
    import datasets
    import pandas

    board = written.board
    assert written.paths == tuple(written.folder / name for name in (LEADERBOARD_CSV, LEADERBOARD_PARQUET,
                                                                     LEADERBOARD_HTML))
    for frame in (pandas.read_parquet(written.parquet), pandas.read_csv(written.csv)):
        assert list(frame.columns) == board.columns and len(frame) == len(board.rows)
        assert list(frame["model"]) == [row["model"] for row in board.rows]
        assert list(frame["last_strength"]) == pytest.approx([row["last_strength"] for row in board.rows])
        assert list(frame["params"]) == [row["params"] for row in board.rows]
    typed = pandas.read_parquet(written.parquet)
    assert str(typed["params"].dtype) == "Int64" and typed["report_html"].isna().sum() == sum(
        row["report_html"] is None for row in board.rows)

    table = datasets.load_dataset("parquet", data_files=str(written.parquet), split="train",
                                  cache_dir=str(written.parquet.parent / ".datasets-cache"))  # no stale cache
    assert table.column_names == board.columns and table.num_rows == len(board.rows)
    assert table.features["params"].dtype == "int64" and table.features["last_strength"].dtype == "float64"
    for loaded, row in zip(table, board.rows, strict=True):
        assert loaded["model"] == row["model"] and loaded["scheme"] == row["scheme"]
        assert loaded["s32"] == pytest.approx(row["s32"])


def test_join_adds_columns_by_model_name(sweep, tmp_path):
    results = tmp_path / "results-imagenet.csv"
    results.write_text(
        "model,top1,top5,params,s16,interpolation\n"
        "resnet10t.c3_in1k,68.3,88.1,5.4,1,bicubic\n"  # the only resnet10t: the untagged run matches it
        "regnetx_002.pycls_in1k,68.7,88.5,2.7,1,bicubic\n"  # the full name matches first
        "regnetx_002.other_tag,1.0,2.0,2.7,1,bicubic\n"
        "ghostnet_050.a_in1k,60.0,80.0,2.6,1,bilinear\n"  # two ghostnet_050 tags: ambiguous, no match
        "ghostnet_050.b_in1k,61.0,81.0,2.6,1,bilinear\n"
        "repvgg_a0,,,9.1,1,\n"  # empty cells are missing values
    )
    board = read_leaderboard(sweep.dir, join=results)
    # `params` and `s16` are the leaderboard's own: renamed, so they replace nothing
    assert board.columns[-5:] == ["top1", "top5", "params_join", "s16_join", "interpolation"]
    assert _row(board.rows, "resnet10t", NATIVE)["s16"] == pytest.approx(
        sweep.reports["resnet10t"].scheme(NATIVE).layer("layer3").stats.strength)
    assert board.kinds["top1"] == "float" and board.kinds["interpolation"] == "str"
    for row in board.rows:
        expected = {"resnet10t": 68.3, "regnetx_002.pycls_in1k": 68.7}.get(row["model"])
        assert row["top1"] == expected
    assert _row(board.rows, "repvgg_a0", NATIVE)["params_join"] == 9.1
    assert _row(board.rows, "repvgg_a0", NATIVE)["interpolation"] is None
    assert board.join.matched == 3 and board.join.unmatched == ["ghostnet_050"]
    assert board.join.file == results.name

    out = _copy(sweep, tmp_path)
    written = write_leaderboard(out, join=results)
    import pandas

    frame = pandas.read_parquet(written.parquet)
    joined = frame.dropna(subset=["top1"])
    assert sorted(zip(joined["model"], joined["top1"])) == [("regnetx_002.pycls_in1k", 68.7)] * 2 + [
        ("resnet10t", 68.3)] * 2
    assert "joined top1, top5, params_join, s16_join, interpolation from results-imagenet.csv" in " ".join(
        runner.invoke(app, ["leaderboard", str(out), "--join", str(results)], env={"COLUMNS": "300"}).stdout.split())


def test_join_file_errors(tmp_path):
    with pytest.raises(PPPAuditError, match="does not exist"):
        read_join(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,top1\nresnet18,70\n")
    with pytest.raises(PPPAuditError, match="has no 'model' column \\(columns: name, top1\\)"):
        read_join(bad)


# ---- the page -------------------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """The leaderboard table's body rows and the scatter's linked points: (link, marker, attributes of the marker's
    ``<use>``, whose ``x`` and ``y`` are its centre). matplotlib's SVG draws a point as ``<g class="point">`` (the
    page adds the class and a ``<title>``) around an ``<a xlink:href>`` around a ``<use>`` of its marker's path."""

    def __init__(self) -> None:
        super().__init__()
        self.rows, self.points, self.resources = 0, [], []
        self._in_body = self._in_svg = self._in_point = False
        self._link: str | None = None
        self.markers: dict[str, str] = {}  # marker path id -> its "d"
        self._defs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.resources += [value for key, value in attrs.items() if key in ("src", "href", "xlink:href")
                           and not value.startswith("#")]
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows += 1
        elif tag == "svg":
            self._in_svg = True
        elif tag == "g" and self._in_svg and attrs.get("class") == "point":
            self._in_point = True
        elif tag == "path" and self._in_point and "id" in attrs:
            self.markers[attrs["id"]] = attrs["d"]
        elif tag == "a" and self._in_point:
            self._link = attrs["xlink:href"]
        elif tag == "use" and self._link is not None:
            self.points.append((self._link, self.markers[attrs["xlink:href"][1:]], attrs))
            self._link, self._in_point = None, False

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "svg":
            self._in_svg = False


def test_html_has_the_table_and_one_linked_point_per_row(written, sweep):
    text = written.html.read_text()
    page = _Page()
    page.feed(text)
    board = written.board
    assert page.rows == len(board.rows)
    assert len(page.points) == len(board.rows)  # every fixture row has a parameter count and a strength
    links = sorted(f"{row['report_html']}#scheme-{row['scheme']}" if row["report_html"] else row["report_json"]
                   for row in board.rows)  # a run page opens at the point's scheme
    assert sorted(link for link, _, _ in page.points) == links
    for resource in page.resources:  # nothing from the network; every link is a file beside the page
        assert "://" not in resource and (sweep.dir / resource.split("#")[0]).is_file(), resource
    assert {LEADERBOARD_CSV, LEADERBOARD_PARQUET} <= set(page.resources)
    assert "Content-Security-Policy" in text and "addEventListener(\"click\"" in text
    assert re.search(rf"Failed runs \(1\)</h2>\s*<ul>\s*<li><code>{FAILING}</code>", text)
    last = max(record.finished for record in iter_records(sweep.dir) if record.finished)
    assert f"runs up to {last}" in text

    # Log x: the native points (the first marker) lie left to right in order of parameter count, at log10 spacing.
    circles = sorted((float(attrs["x"]), link.split("#")[0]) for link, marker, attrs in page.points
                     if "C" in marker)  # a circle's path is Bézier curves, a square's straight lines
    natives = sorted((row["params"], row["report_html"] or row["report_json"]) for row in board.rows
                     if row["scheme"] == NATIVE)
    assert [link for _, link in circles] == [link for _, link in natives]
    (x0, _), (x1, _), *_ = circles
    (p0, _), (p1, _), *_ = natives
    (x_last, _), (p_last, _) = circles[-1], natives[-1]
    assert (x1 - x0) / (x_last - x0) == pytest.approx(math.log(p1 / p0) / math.log(p_last / p0), abs=0.01)


def _points(board) -> dict[str, tuple[float, float]]:
    """The scatter's point centres by link."""
    from ppp_audit.leaderboard import scatter_svg

    page = _Page()
    page.feed(scatter_svg(board))
    return {link: (float(attrs["x"]), float(attrs["y"])) for link, _, attrs in page.points}


def _board(values: list[float], params: list[int]):
    from ppp_audit.leaderboard import Leaderboard

    rows = [{"model": f"m{k}", "family": "f", "scheme": NATIVE, "padding": "zeros", "params": p,
             "last_strength": v, "report_json": f"m{k}.json"} for k, (v, p) in enumerate(zip(values, params))]
    return Leaderboard(rows=rows, columns=list(rows[0]), kinds={}, runs=len(rows))


def test_scatter_axes():
    """Linear y for values within two decades; log y beyond, with zeros on a row below the log range."""
    linear = _points(_board([0.0, 0.5, 1.0], [10**6, 10**6, 10**6]))
    (_, y0), (_, y1), (_, y2) = (linear[f"m{k}.json"] for k in range(3))
    assert y0 > y1 > y2 and y0 - y1 == pytest.approx(y1 - y2, abs=0.25)  # the SVG rounds to 0.1

    logged = _points(_board([0.0, 0.01, 0.1, 10.0], [10**5, 10**6, 10**7, 10**8]))
    (x0, z), (x1, a), (x2, b), (x3, c) = (logged[f"m{k}.json"] for k in range(4))
    assert x1 - x0 == pytest.approx(x2 - x1, abs=0.25) and x2 - x1 == pytest.approx(x3 - x2, abs=0.25)  # log x
    assert a - b == pytest.approx((b - c) / 2, abs=0.25)  # one decade, then two
    assert z > a  # the zero, below the lowest value


def test_page_opens_ranked_in_a_scroll_box(written):
    """Ranked as the terminal table (rank column 1, 2, ...; the strengths falling; the strength header marked
    sorted), the table in its own scroll box, every header a button, tooltips without Markdown. Sorting by a click
    is checked in a browser: scripts/browser_check.py."""
    from ppp_audit.render.tables import render_leaderboard_table

    text = written.html.read_text()
    table = text[text.index('<div class="scroll" role="region"'):]
    table = table[:table.index("</table></div>")]
    heads = re.findall(r'<th[^>]* data-column="([^"]+)"[^>]*>(<button type="button" title="([^"]*)">)?', table)
    assert heads[0][0] == "#" and heads[1][0] == "model" and all(button for _, button, _ in heads)
    assert not any("`" in tip for _, _, tip in heads)
    assert 'data-column="last_strength" data-kind="num" data-first="descending" aria-sort="descending"' in table
    ranks = [int(rank) for rank in re.findall(r'<tr><td class="num" data-value="(\d+)">', table)]
    assert ranks == list(range(1, len(written.board.rows) + 1))
    models = re.findall(r'<td class="model" data-value="([^"]+)">', table)
    terminal = render_leaderboard_table(written.board, top=len(written.board.rows))
    assert models == list(terminal.columns[1].cells)  # the terminal table's order


# ---- the command line -----------------------------------------------------------------------------------------------


def test_cli_writes_the_files_and_prints_the_top(sweep, tmp_path):
    out = _copy(sweep, tmp_path)
    result = runner.invoke(app, ["leaderboard", str(out), "--top", "2"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert all((out / name).is_file() for name in (LEADERBOARD_CSV, LEADERBOARD_PARQUET, LEADERBOARD_HTML))
    board = read_leaderboard(out)
    assert f"{board.describe()}: {LEADERBOARD_CSV}, {LEADERBOARD_PARQUET}, {LEADERBOARD_HTML} written to {out}" in \
        " ".join(result.stderr.split())
    top = board.top(1)[0]
    assert "top 2 of" in result.stdout and top["model"] in result.stdout

    quiet = runner.invoke(app, ["leaderboard", str(out), "--top", "0"])
    assert quiet.exit_code == 0 and quiet.stdout == ""


def test_cli_errors_are_one_line(sweep, tmp_path):
    fails(["leaderboard", tmp_path / "nope"], "no sweep folder at")
    (tmp_path / "file").write_text("x")
    fails(["leaderboard", tmp_path / "file"], "is a file, not a sweep folder")
    (tmp_path / "empty").mkdir()
    line = fails(["leaderboard", tmp_path / "empty"], "no runs in")
    assert "ppp-audit sweep" in line
    fails(["leaderboard", sweep.dir, "--join", tmp_path / "missing.csv"], "does not exist")
    fails(["leaderboard", sweep.dir, "--private"], "need a push target")
    fails(["leaderboard", sweep.dir, "--push-to-hub", "not a repo id"], "invalid repo id")
    fails(["leaderboard", sweep.dir, "--top", "-1"], "--top must be 0 or more")

    only_failed = tmp_path / "failed-sweep"
    write_record(run_folder(only_failed, FAILING, SETTINGS), RunRecord(FAILING, SETTINGS, FAILED, reason="boom"))
    line = fails(["leaderboard", only_failed], "has a report to rank: 0 rows from 1 runs of 0 models; 1 failed")
    assert f"first: {FAILING}: boom" in line
    assert not (only_failed / LEADERBOARD_CSV).exists()


def test_leaderboard_needs_no_torch_and_an_offline_push_keeps_the_files(sweep, tmp_path):
    """A fresh process writes the leaderboard without torch or timm; offline, the push says where it is and how to
    push later."""
    out = _copy(sweep, tmp_path)
    proc = run_without_torch(["leaderboard", out, "--push-to-hub", "me/ppp-board"], env={"HF_HUB_OFFLINE": "1"},
                             heavy=("torch", "timm"))  # matplotlib draws the page's scatter
    assert "exit 1" in proc.stdout
    line = " ".join(proc.stderr.split())
    assert f"HF_HUB_OFFLINE is set: nothing was pushed; leaderboard saved at {out}" in line
    assert f"ppp-audit leaderboard {out} --push-to-hub me/ppp-board" in line
    assert (out / LEADERBOARD_PARQUET).is_file()


def test_missing_pandas_is_one_clear_line(sweep, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    line = fails(["leaderboard", _copy(sweep, tmp_path)], "need pandas and pyarrow")
    assert "pip install 'ppp-audit[leaderboard]'" in line


# ---- the Hub --------------------------------------------------------------------------------------------------------


def test_push_makes_a_dataset_that_datasets_loads(hub, sweep, tmp_path):  # noqa: F811 - the fixture
    import datasets
    from huggingface_hub import DatasetCard

    out = _copy(sweep, tmp_path)
    result = runner.invoke(app, ["leaderboard", str(out), "--push-to-hub", "me/ppp-board", "--top", "0"])
    assert result.exit_code == 0, result.output
    assert "pushed the leaderboard to" in result.stderr and "/datasets/me/ppp-board/tree/main" in result.stderr

    repo = hub.repo("me/ppp-board", "dataset")
    files = repo.files()
    for name in (LEADERBOARD_PARQUET, LEADERBOARD_CSV, LEADERBOARD_HTML):
        assert files[name] == (out / name).read_bytes()
    assert LEADERBOARD_PARQUET in repo.lfs_files()  # binary: through Git LFS, as on the Hub
    card = DatasetCard(files["README.md"].decode())
    assert card.data["configs"] == [{"config_name": "default",
                                     "data_files": [{"split": "train", "path": LEADERBOARD_PARQUET}]}]
    assert "ppp-audit" in card.data["tags"] and "leaderboard" in card.data["tags"]
    board = read_leaderboard(out)
    assert f"**{board.describe()}**" in card.text and 'load_dataset("me/ppp-board"' in card.text
    top = board.top(1)[0]
    assert f"| `{top['model']}` | random-init |" in card.text
    assert f"- `{FAILING}`: padding scheme 'reflect' cannot pad" in card.text
    assert json.dumps(result_settings(SETTINGS), sort_keys=True) in card.text  # the renderer named
    assert all(f"| `{column.name}` |" in card.text for column in COLUMNS)

    # What datasets.load_dataset("me/ppp-board") reads: the repo's files, resolved through the card's configs. A
    # decoy Parquet file beside them would be read too if the card did not name the data file.
    clone = tmp_path / "clone"
    for name, data in files.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_bytes(data)
    (clone / "decoy.parquet").write_bytes(files[LEADERBOARD_PARQUET])
    loaded = datasets.load_dataset(str(clone), split="train", cache_dir=str(tmp_path / "cache"))  # no stale cache
    assert loaded.info.builder_name == "parquet" and loaded.num_rows == len(board.rows)
    assert loaded.column_names == board.columns and loaded["model"] == [row["model"] for row in board.rows]
    assert TOKEN not in result.output


def test_second_push_keeps_the_card_text_and_says_unchanged(hub, sweep, tmp_path):  # noqa: F811 - the fixture
    from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi

    out = _copy(sweep, tmp_path)
    api = HfApi(endpoint=hub.url)
    api.create_repo("me/ppp-board", repo_type="dataset")
    card = "---\nlicense: mit\n---\n# My sweep\n\nNotes that must survive.\n"
    api.create_commit("me/ppp-board", [CommitOperationAdd("README.md", card.encode())], commit_message="card",
                      repo_type="dataset")
    for _ in range(2):
        result = runner.invoke(app, ["leaderboard", str(out), "--push-to-hub", "me/ppp-board", "--top", "0"])
        assert result.exit_code == 0, result.output
    assert "unchanged, already on the Hub" in result.stderr
    pushed = DatasetCard(hub.repo("me/ppp-board").files()["README.md"].decode())
    assert pushed.data["license"] == "mit" and "Notes that must survive." in pushed.text
    assert pushed.text.count("ppp-audit:leaderboard:begin") == 1


def test_push_failure_keeps_the_files_and_hides_the_token(hub, sweep, tmp_path, monkeypatch):  # noqa: F811
    out = _copy(sweep, tmp_path)
    wrong = "hf_wrongTokenForTheFakeHub987654321"
    monkeypatch.setenv("HF_TOKEN", wrong)
    result = runner.invoke(app, ["leaderboard", str(out), "--push-to-hub", "me/ppp-board", "--join", "x.csv"])
    assert result.exit_code == 2 and "does not exist" in result.stderr  # a bad --join fails before any request

    result = runner.invoke(app, ["leaderboard", str(out), "--push-to-hub", "me/ppp-board", "--revision", "dev"])
    assert result.exit_code == 1
    (line,) = [line for line in result.stderr.splitlines() if "ppp-audit: error:" in line]
    assert "push to me/ppp-board failed: authentication failed (HTTP 401" in line
    assert f"leaderboard saved at {out}" in line
    assert f"then run `ppp-audit leaderboard {out} --push-to-hub me/ppp-board --revision dev`" in line
    assert wrong not in result.output and TOKEN not in result.output
    assert (out / LEADERBOARD_PARQUET).is_file() and hub.repos == {}


def test_build_leaderboard_from_records_without_a_sweep_folder(sweep):
    """Records from anywhere (here: read from the sweep, then filtered) make the same rows."""
    records = [record for record in iter_records(sweep.dir) if record.model.startswith("res")]
    board = build_leaderboard(records)
    assert {row["model"] for row in board.rows} == {"resnet10t"} and board.runs == 1
    assert board.rows == [row for row in read_leaderboard(sweep.dir).rows if row["model"] == "resnet10t"]


def test_no_local_path_reaches_the_page_or_the_card(sweep):
    from dataclasses import replace

    from ppp_audit.leaderboard import leaderboard_html, render_leaderboard_card

    settings = {**SETTINGS, "images": "/home/me/private/photos", "weights": "file:/home/me/w/best.safetensors"}
    board = build_leaderboard([replace(record, settings=settings) for record in iter_records(sweep.dir)])
    page, card = leaderboard_html(board), render_leaderboard_card(board, "me/ppp-board")
    for text in (page, card):
        assert "/home/me" not in text and "photos" in text and "file:best.safetensors" in text


def test_the_doc_names_every_column():
    text = (Path(SOURCE) / "docs" / "leaderboard.md").read_text(encoding="utf-8")
    assert [column.name for column in COLUMNS if f"`{column.name}`" not in text] == []


@pytest.mark.parametrize("columns", ["80", "200"])
def test_help_reads_as_help(columns):
    result = runner.invoke(app, ["leaderboard", "--help"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout and "…" not in result.stdout  # flags take no value; no help cut short
    assert all(flag in result.stdout for flag in ("--join", "--top", "--push-to-hub", "--private", "--revision"))
