"""Hand-edited or damaged files never cost a traceback, a wrong exit or another run (issue #29, SPEC §8).

Run folders are written here as ``ppp-audit sweep`` lays them out (ppp_audit/runs.py), with small reports made in
Python rather than real audits: a damaged ``run.json`` is listed by the leaderboard and redone by the sweep; a
damaged report is refused by ``ppp-audit show`` with one line naming the field; a join CSV whose names clash, whose
integers are huge or whose models repeat is joined or refused plainly.
"""

from __future__ import annotations

import html

import json
import os
from pathlib import Path

import pytest
from cli_helpers import fails, runner
from test_report import _report, _result
from test_sweep import FakeRunner, _settings

from ppp_audit.cli import app
from ppp_audit.leaderboard import LEADERBOARD_HTML, LEADERBOARD_PARQUET, read_join, read_leaderboard
from ppp_audit.report import NATIVE, REPORT_JSON, MistSnapshots, Report
from ppp_audit.runs import (
    DONE,
    FAILED,
    RUN_JSON,
    UNREADABLE,
    RunRecord,
    UnreadableRun,
    iter_records,
    read_record,
    run_folder,
    write_record,
)
from ppp_audit.sweep import run_sweep

SETTINGS = {"paddings": ["reflect"], "input_size": 32, "num_images": 8}
GOOD = ["resnet10t", "repvgg_a0"]


def _audit() -> Report:
    """A small report with a PPP map (2x2 layers) and mist snapshots on its first layer."""
    report = _report(_result(NATIVE, [0.5, 0.25]), _result("reflect", [0.1, 0.05]))
    for result in report.results:
        for layer in result.layers:
            layer.stats.ppp_map = [[0.1, 0.2], [0.3, 0.4]]
    report.results[0].layers[0].stats.mist = MistSnapshots(counts=[1, 8], mean_feature=[[[0.0, 1.0]] * 2] * 2,
                                                           ppp=[[[0.0, 1.0]] * 2] * 2)
    return report


def _done(out: Path, model: str) -> Path:
    folder = run_folder(out, model, SETTINGS)
    _audit().save(folder / REPORT_JSON)
    write_record(folder, RunRecord(model, SETTINGS, DONE, params=11_000_000, seconds=1.5, finished="2026-01-01"))
    return folder


def _damaged(out: Path, model: str, content: str | dict | list) -> Path:
    """A run folder whose run.json holds ``content`` (text as it is, anything else as JSON) beside a good report."""
    folder = _done(out, model)
    (folder / RUN_JSON).write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


def _record(**changes) -> dict:
    return {**RunRecord("m", SETTINGS, DONE).to_dict(), **changes}


# ---- the reader ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "reason"), [
    ('"x"', "run.json must be an object (got a string 'x')"),
    ("{}", "run.json is not a run record (bad or missing field: 'model')"),
    ('{"model": "m", "settings": {}, "sta', "run.json is not valid JSON (Unterminated string"),
    (_record(status=5), "(bad or missing field: status must be a string (got a number 5))"),
    (_record(status="running"), "(bad or missing field: status must be 'done' or 'failed' (got 'running'))"),
    (_record(params=[1, 2]), "(bad or missing field: params must be an integer or null (got a list))"),
    (_record(params=2 ** 64), "params must be an integer that fits in 64 bits (got a number 18446744073709551616)"),
    (_record(settings=[]), "settings must be an object (got a list)"),
    (_record(attempts="2"), "attempts must be an integer (got a string '2')"),
    (_record(seconds=True), "seconds must be a number or null (got a boolean True)"),
    ('{"params": ' + "9" * 5000 + "}", "run.json is not valid JSON (Exceeds the limit (4300 digits)"),
    ("[" * 100_000 + "]" * 100_000, "run.json is not valid JSON (maximum recursion depth exceeded"),
])
def test_a_damaged_record_is_unreadable_with_its_reason(tmp_path, content, reason):
    folder = _damaged(tmp_path, "resnet10t", content)
    entry = read_record(folder)
    assert isinstance(entry, UnreadableRun) and entry.status == UNREADABLE, entry
    assert reason in entry.reason and "\n" not in entry.reason
    assert entry.folder == folder and entry.settings_hash == folder.name
    assert entry.model == ("m" if isinstance(content, dict) else "resnet10t")  # the record's name when it has one


def test_what_takes_the_place_of_run_json_is_named_and_never_read(tmp_path):
    folder = run_folder(tmp_path, "resnet10t", SETTINGS)
    folder.mkdir(parents=True)
    assert read_record(folder) is None  # unfinished: not a run that ended
    os.mkfifo(folder / RUN_JSON)  # reading it would block for ever
    assert read_record(folder).reason == "run.json is not a regular file"
    (folder / RUN_JSON).unlink()
    (folder / RUN_JSON).write_bytes(b"\xff\xfe{}")
    assert read_record(folder).reason == "run.json is not UTF-8 text"
    (folder / RUN_JSON).unlink()
    (folder / RUN_JSON).symlink_to(tmp_path / "gone.json")
    assert read_record(folder).reason == "run.json is not a regular file"


def test_iter_records_yields_every_run_folder_and_never_stops(tmp_path):
    for model in GOOD:
        _done(tmp_path, model)
    _damaged(tmp_path, "ghostnet_050", "{}")
    (run_folder(tmp_path, "dla34", SETTINGS) / RUN_JSON).mkdir(parents=True)
    run_folder(tmp_path, "unfinished", SETTINGS).mkdir(parents=True)
    entries = {entry.model: entry for entry in iter_records(tmp_path)}
    assert sorted(entries) == sorted([*GOOD, "ghostnet_050", "dla34"])
    assert all(isinstance(entries[model], RunRecord) for model in GOOD)
    assert entries["dla34"].reason == "run.json is a folder, not a file"


def test_a_folder_that_cannot_be_listed_is_one_unreadable_entry(tmp_path, monkeypatch):
    _done(tmp_path, GOOD[0])
    locked = run_folder(tmp_path, GOOD[1], SETTINGS).parent
    locked.mkdir(parents=True)
    listed = Path.iterdir

    def iterdir(path: Path):  # as chmod 0 would, for any user (root lists every folder)
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return listed(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    entries = list(iter_records(tmp_path))
    assert [type(entry) for entry in entries] == [UnreadableRun, RunRecord]  # folder order: repvgg_a0 first
    assert entries[0].reason == "cannot list the folder (Permission denied)" and entries[0].model == GOOD[1]


def test_a_record_made_in_python_is_checked_too():
    with pytest.raises(TypeError, match="params must be an integer or null \\(got a string '11M'\\)"):
        RunRecord("m", SETTINGS, DONE, params="11M")
    with pytest.raises(ValueError, match="status must be 'done' or 'failed' \\(got 'ok'\\)"):
        RunRecord("m", SETTINGS, "ok")


# ---- the leaderboard -------------------------------------------------------------------------------------------------


def test_damaged_records_are_listed_on_the_board_not_lost(tmp_path):
    for model in GOOD:
        _done(tmp_path, model)
    _damaged(tmp_path, "ghostnet_050", '"x"')
    _damaged(tmp_path, "dla34", _record(model="dla34", status=5))
    _damaged(tmp_path, "mixnet_s", _record(model="mixnet_s", family=3))
    failed = run_folder(tmp_path, "convnext_atto", SETTINGS)
    write_record(failed, RunRecord("convnext_atto", SETTINGS, FAILED, reason="over the time limit\nof 60 s"))
    board = read_leaderboard(tmp_path)
    assert {row["model"] for row in board.rows} == set(GOOD)
    assert [(lost.model, lost.reason.split(" (bad")[0]) for lost in board.unreadable] == [
        ("dla34", "run.json is not a run record"), ("ghostnet_050", "run.json must be an object (got a string 'x')"),
        ("mixnet_s", "run.json is not a run record")]
    assert board.unreadable[0].path == run_folder(tmp_path, "dla34", SETTINGS).relative_to(tmp_path).as_posix()
    assert board.failed[0].reason == "over the time limit of 60 s"  # listed on one line
    assert board.describe().endswith("; 1 failed, 3 unreadable")

    result = runner.invoke(app, ["leaderboard", str(tmp_path)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "1 failed, 3 unreadable" in result.stderr and "Traceback" not in result.output
    assert "3 unreadable: dla34: run.json is not a run record (bad or missing field: status must be a string" in \
        result.stdout
    page = (tmp_path / LEADERBOARD_HTML).read_text()
    # the reason as text: escaped in the markup (jinja2 writes a quote as &#39;), whole once unescaped
    assert "Runs whose report cannot be used (3)" in page and "must be an object (got a string &#39;x&#39;)" in page
    assert "must be an object (got a string 'x')" in html.unescape(page)


def test_a_board_of_damaged_records_only_is_one_line(tmp_path):
    _damaged(tmp_path, "resnet10t", "{}")
    line = fails(["leaderboard", tmp_path], "has a report to rank: 0 rows from 1 runs of 0 models; 1 unreadable")
    assert "first: resnet10t: run.json is not a run record (bad or missing field: 'model')" in line


def test_a_file_in_place_of_the_runs_folder_is_named(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    fails(["leaderboard", tmp_path], f"'{tmp_path / 'runs'}' is a file, not the folder of the sweep's runs")


def test_a_report_whose_free_form_objects_are_odd_is_listed(tmp_path):
    _done(tmp_path, GOOD[0])
    folder = _done(tmp_path, GOOD[1])
    data = json.loads((folder / REPORT_JSON).read_text())
    data["data"].update(kind="folder", path=7)  # data_label reads it as a path
    (folder / REPORT_JSON).write_text(json.dumps(data))
    board = read_leaderboard(tmp_path)
    assert [row["model"] for row in board.rows] == [GOOD[0]] * 2
    assert board.unreadable[0].reason.startswith("its report cannot be ranked (TypeError: ")


# ---- --join ----------------------------------------------------------------------------------------------------------


def test_join_columns_named_like_board_columns_get_a_suffix_that_does_not_clash(tmp_path):
    import pandas

    for model in GOOD:
        _done(tmp_path, model)
    csv = tmp_path / "extra.csv"
    csv.write_text("model,margin,margin_join,s8,top1\nresnet10t,1,2,3,70.1\nrepvgg_a0,4,5,6,72.4\n")
    assert read_join(csv).columns == ["margin_join2", "margin_join", "s8_join", "top1"]
    result = runner.invoke(app, ["leaderboard", str(tmp_path), "--join", str(csv), "--top", "0"])
    assert result.exit_code == 0, result.output
    frame = pandas.read_parquet(tmp_path / LEADERBOARD_PARQUET)
    assert list(frame.columns[-4:]) == ["margin_join2", "margin_join", "s8_join", "top1"]
    assert list(frame["margin"]) == [16] * 4 and list(frame["margin_join2"]) == [4, 4, 1, 1]  # folder order


def test_join_integers_beyond_64_bits_are_kept_as_floats(tmp_path):
    import pandas

    _done(tmp_path, GOOD[0])
    csv = tmp_path / "extra.csv"
    csv.write_text(f"model,flops,count\nresnet10t,{-2 ** 70},12\n")
    table = read_join(csv)
    assert table.kinds == {"flops": "float", "count": "int"} and table.rows["resnet10t"]["flops"] == -2.0 ** 70
    assert runner.invoke(app, ["leaderboard", str(tmp_path), "--join", str(csv), "--top", "0"]).exit_code == 0
    assert pandas.read_parquet(tmp_path / LEADERBOARD_PARQUET)["flops"].tolist() == [-2.0 ** 70] * 2


@pytest.mark.parametrize(("text", "cause"), [
    ("model,top1\nresnet10t,70\nrepvgg_a0,72\nresnet10t,71\n", "has two rows for model 'resnet10t' (lines 2 and 4)"),
    ("model,top1,top1\nresnet10t,70,71\n", "has two columns named 'top1'"),
    ("model,model\nresnet10t,resnet10t\n", "has two columns named 'model'"),
])
def test_a_join_file_that_cannot_say_one_row_per_model_is_refused(tmp_path, text, cause):
    _done(tmp_path, GOOD[0])
    csv = tmp_path / "extra.csv"
    csv.write_text(text)
    fails(["leaderboard", tmp_path, "--join", csv], f"the file to join, '{csv}', {cause}")


def test_a_join_file_that_is_no_regular_file_is_named_so(tmp_path):
    _done(tmp_path, GOOD[0])
    fails(["leaderboard", tmp_path, "--join", "/dev/null"], "'/dev/null', is not a regular file (a named pipe, socket")


# ---- the sweep -------------------------------------------------------------------------------------------------------


def test_the_sweep_redoes_damaged_records_and_keeps_the_rest(tmp_path):
    settings = _settings()
    models = ["test_resnet", "test_efficientnet", "test_byobnet", "test_vit"]
    run_sweep(models, settings, tmp_path, audit_runner=FakeRunner())
    folders = {model: run_folder(tmp_path, model, settings) for model in models}
    (folders["test_resnet"] / RUN_JSON).write_text("{}")
    (folders["test_efficientnet"] / RUN_JSON).unlink()
    os.mkfifo(folders["test_efficientnet"] / RUN_JSON)
    moved = json.loads((folders["test_vit"] / RUN_JSON).read_text())
    (folders["test_byobnet"] / RUN_JSON).write_text(json.dumps(moved))  # another model's record, copied by hand
    (folders["test_resnet"] / "notes.txt").write_text("mine")
    again = FakeRunner()
    summary = run_sweep(models, settings, tmp_path, audit_runner=again)
    assert [model for model, _ in again.calls] == models[:3] and summary.skipped == ["test_vit"]
    assert all(isinstance(read_record(folder), RunRecord) for folder in folders.values())
    assert read_record(folders["test_byobnet"]).model == "test_byobnet"
    assert (folders["test_resnet"] / "notes.txt").read_text() == "mine"  # only run.json is replaced


def test_sweep_folder_damage_is_one_line_before_the_first_model(tmp_path):
    blocked = run_folder(tmp_path, "test_resnet", _settings()).parent
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    result = runner.invoke(app, ["sweep", "test_resnet", "--no-pretrained", "-p", "reflect", "-n", "2", "-b", "2",
                                 "--input-size", "64", "--device", "cpu", "--no-progress", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("ppp-audit: error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]] and f"'{blocked}' is a file, not the folder of a run" \
        in errors[0]
    assert "done" not in result.stderr and not list(iter_records(tmp_path))


def test_a_sweep_over_a_folder_in_place_of_run_json_redoes_it(tmp_path):
    settings = _settings()
    folder = run_folder(tmp_path, "test_resnet", settings)
    (folder / RUN_JSON / "inside").mkdir(parents=True)
    summary = run_sweep(["test_resnet"], settings, tmp_path, audit_runner=FakeRunner())
    assert summary.done == ["test_resnet"] and read_record(folder).status == DONE


# ---- ppp-audit show on damaged reports -------------------------------------------------------------------------------


def _layer(data: dict, k: int = 1) -> dict:
    return data["results"][0]["layers"][k]


@pytest.mark.parametrize(("change", "cause"), [
    (lambda d: _layer(d).update(ppp_map=[[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]),
     "results[0].layers[1].ppp_map must have size 2×2 (height × width; got 3×2)"),
    (lambda d: _layer(d).update(ppp_map=[[0.1], [0.2, 0.3]]),
     "results[0].layers[1].ppp_map must be rectangular (its item 1 has size 2, item 0 1)"),
    (lambda d: _layer(d).update(ppp_map=[[0.1, None], [0.2, 0.3]]),
     "results[0].layers[1].ppp_map[0][1] must be a number (got null)"),
    (lambda d: _layer(d).update(ppp_map=[[0.1, float("inf")], [0.2, 0.3]]),
     "results[0].layers[1].ppp_map[0][1] must be a finite number (got a number inf)"),
    (lambda d: _layer(d).update(stride_px=-8), "results[0].layers[1].stride_px must be above 0 (got a number -8)"),
    (lambda d: _layer(d).update(height=0), "results[0].layers[1].height must be at least 1 (got a number 0)"),
    (lambda d: _layer(d, 0)["mist"].update(counts=[8]),
     "results[0].layers[0].mist.mean_feature must have size 1×2×2 (counts × height × width; got 2×2×2)"),
    (lambda d: _layer(d)["profile"].update(rms=[]),
     "results[0].layers[1].profile.rms must have size 1 (distance_px; got empty)"),
    (lambda d: d["data"].update(num_images=-1), "data.num_images must be at least 0 (got a number -1)"),
    (lambda d: d.update(seed=2 ** 64), "seed must be an integer that fits in 64 bits"),
])
def test_show_refuses_a_damaged_report_with_one_line(tmp_path, change, cause):
    data = _audit().to_dict()
    change(data)
    file = tmp_path / REPORT_JSON
    file.write_text(json.dumps(data))
    line = fails(["show", file, "--no-figures"], f"'{file}' is not a ppp-audit report (bad or missing field: {cause}")
    assert "pass a report.json written by ppp-audit" in line


def test_show_renders_the_undamaged_report_and_names_an_unreadable_number(tmp_path):
    file = _audit().save(tmp_path / REPORT_JSON)
    assert runner.invoke(app, ["show", str(file), "--no-figures"]).exit_code == 0
    file.write_text(file.read_text().replace('"seed": 0', '"seed": ' + "7" * 5000))
    fails(["show", file, "--no-figures"], f"'{file}' is not valid JSON (Exceeds the limit (4300 digits)")
