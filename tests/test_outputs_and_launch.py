"""Issue #29, classes 1 and 2: no writer replaces or deletes a file ppp-audit did not write, and the rank variables
are read once, before any work, for the audit and the sweep alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import fails, runner
from ppp_audit.cli import app
from ppp_audit.errors import ConfigError
from ppp_audit.files import WRITTEN_FILES, WrittenFiles, atomic_write
from ppp_audit.launch import env_flag, process_rank, sweep_share
from ppp_audit.report import REPORT_HTML, REPORT_JSON, Report

TINY = ["resnet10t", "--no-pretrained", "--input-size", "64", "--margin", "32", "-n", "2", "-b", "2", "--device", "cpu",
        "--no-progress"]
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID",
                  "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")


def _theirs(folder: Path, *names: str) -> dict[str, str]:
    """Files of the user's in ``folder``, with their content."""
    files = {}
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"the user's {name}")
        files[name] = f"the user's {name}"
    return files


def _unchanged(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / name).is_file() and (folder / name).read_text() == text for name, text in files.items())


# -- class 1: one output-folder rule for every writer ------------------------------------------------------------


def test_an_out_folder_of_the_user_keeps_every_file_ppp_audit_did_not_write(tmp_path):
    """A project folder whose figures/ holds a file of the very name the audit draws (strength.png), others beside
    it, and a page of its own: nothing of theirs is replaced, on the first run or on --overwrite with fewer figures."""
    out = tmp_path / "paper"
    mine = _theirs(out, "figures/strength.png", "figures/teaser.png", "figures/results.pdf", REPORT_HTML, "notes.md")
    first = runner.invoke(app, [*TINY, "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert _unchanged(out, mine)
    assert (out / "figures" / "strength.ppp-audit.png").is_file()
    page = (out / "report.ppp-audit.html").read_text()
    assert "figures/strength.ppp-audit.png" in page and 'src="figures/strength.png"' not in page
    assert "kept files ppp-audit did not write: figures/strength.png (drawn as figures/strength.ppp-audit.png)" in \
        first.stderr
    drawn = set(WrittenFiles.read(out).files)
    assert REPORT_JSON in drawn and not drawn & set(mine)

    again = runner.invoke(app, [*TINY, "--out", str(out), "--overwrite", "--layers", "layer3"])
    assert again.exit_code == 0, again.output
    assert _unchanged(out, mine), "--overwrite replaced or deleted a file ppp-audit did not write"
    maps = sorted(p.name for p in (out / "figures").glob("ppp_map_*.png"))
    assert maps == ["ppp_map_00_layer3.png"], "figures of the earlier audit were left beside the new page"


def test_a_report_json_ppp_audit_did_not_write_is_never_replaced(tmp_path):
    out = tmp_path / "data"
    mine = _theirs(out, REPORT_JSON)
    for extra in ([], ["--overwrite"]):
        fails([*TINY, "--out", out, *extra], f"holds a {REPORT_JSON} that ppp-audit did not write")
    assert _unchanged(out, mine)


def test_json_onto_an_earlier_audit_s_report_is_refused_as_out_is(tmp_path, monkeypatch):
    out = tmp_path / "earlier"
    assert runner.invoke(app, [*TINY, "--out", str(out)]).exit_code == 0
    earlier = (out / REPORT_JSON).read_text()
    other = tmp_path / "table.json"
    other.write_text('{"mine": true}')
    measured = []
    monkeypatch.setattr("ppp_audit.engine.audit", lambda *a, **k: measured.append(1))
    fails([*TINY, "--json", out / REPORT_JSON], "already holds the report of an earlier audit (resnet10t, native")
    fails([*TINY, "--json", other], "already exists and is not a ppp-audit report")
    assert not measured, "the audit ran before its outputs were checked"
    assert (out / REPORT_JSON).read_text() == earlier and other.read_text() == '{"mine": true}'
    monkeypatch.undo()
    replaced = runner.invoke(app, [*TINY, "--json", str(other), "--overwrite", "--layers", "layer4"])
    assert replaced.exit_code == 0, replaced.output
    assert [layer.name for layer in Report.load(other).results[0].layers] == ["layer4"]


def test_show_into_a_folder_of_the_user_keeps_their_files(tmp_path):
    source = tmp_path / "audit"
    assert runner.invoke(app, [*TINY, "--out", str(source)]).exit_code == 0
    target = tmp_path / "slides"
    mine = _theirs(target, "figures/mist.png", "figures/convergence.png")
    shown = runner.invoke(app, ["show", str(source / REPORT_JSON), "--out", str(target), "--overwrite"])
    assert shown.exit_code == 0, shown.output
    assert _unchanged(target, mine)
    assert (target / "figures" / "mist.ppp-audit.png").is_file()


def test_a_folder_from_before_the_list_is_still_the_audit_s_own(tmp_path):
    """A report folder written before ppp-audit kept its list: the report there and what it draws are ppp-audit's,
    so --overwrite still replaces them; a file of the user's beside them is kept."""
    out = tmp_path / "old"
    assert runner.invoke(app, [*TINY, "--out", str(out)]).exit_code == 0
    (out / WRITTEN_FILES).unlink()
    mine = _theirs(out, "figures/fig1.png")
    again = runner.invoke(app, [*TINY, "--out", str(out), "--overwrite", "--layers", "layer2"])
    assert again.exit_code == 0, again.output
    assert _unchanged(out, mine)
    assert sorted(p.name for p in (out / "figures").glob("ppp_map_*.png")) == ["ppp_map_00_layer2.png"]
    assert not list(out.rglob("*.ppp-audit.*")), "the old audit's own files were taken for the user's"


def test_a_push_sends_only_the_files_ppp_audit_wrote(tmp_path):
    from ppp_audit.hub import _report_files

    out = tmp_path / "project"
    mine = _theirs(out, "notes.md", "figures/fig1.png", "data/train.csv")
    assert runner.invoke(app, [*TINY, "--out", str(out)]).exit_code == 0
    pushed = {path.relative_to(out).as_posix() for path in _report_files(out)}
    assert REPORT_JSON in pushed and REPORT_HTML in pushed and not pushed & set(mine)
    assert WRITTEN_FILES not in pushed


def test_free_names_and_atomic_writes(tmp_path):
    own = WrittenFiles.read(tmp_path)
    assert not own.recorded and own.place("figures/a.png") == "figures/a.png"
    _theirs(tmp_path, "figures/a.png", "figures/a.ppp-audit.png")
    assert own.place("figures/a.png") == "figures/a.ppp-audit-2.png"
    own.files.add("figures/a.ppp-audit-2.png")
    own.save()
    assert WrittenFiles.read(tmp_path).files == {"figures/a.ppp-audit-2.png"}
    (tmp_path / WRITTEN_FILES).write_text("[not json")  # a damaged list: nothing there counts as ppp-audit's
    assert WrittenFiles.read(tmp_path).files == set()

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    target = tmp_path / "kept.txt"
    target.write_text("good")
    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "good" and sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []


# -- class 2: the rank variables, checked before any work --------------------------------------------------------


@pytest.fixture
def clean_ranks(monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("env", "cause"), [
    ({"RANK": "3"}, "RANK=3 is set but WORLD_SIZE is not"),
    ({"RANK": "one"}, "RANK='one' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be 1 or more"),
    ({"WORLD_SIZE": "3"}, "WORLD_SIZE=3 is set but RANK is not"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1 must be 0 or more"),
    ({"LOCAL_RANK": "gpu0"}, "LOCAL_RANK='gpu0' is not an integer"),
])
def test_an_audit_refuses_rank_variables_before_it_runs(clean_ranks, tmp_path, env, cause):
    measured = []
    clean_ranks.setattr("ppp_audit.engine.audit", lambda *a, **k: measured.append(1))
    for name, value in env.items():
        clean_ranks.setenv(name, value)
    fails([*TINY, "--out", tmp_path / "out"], cause)
    assert not measured and not (tmp_path / "out").exists()


def test_a_sweep_refuses_rank_variables_before_the_first_model(clean_ranks, tmp_path):
    clean_ranks.setenv("SLURM_ARRAY_TASK_ID", "2")
    clean_ranks.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    clean_ranks.setenv("SLURM_ARRAY_TASK_MIN", "first")
    fails(["sweep", "resnet10t", "--no-pretrained", "--out", tmp_path / "sweep"], "SLURM_ARRAY_TASK_MIN='first'")
    assert not (tmp_path / "sweep" / "runs").exists()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, (0, 1)), ({"RANK": "0"}, (0, 1)), ({"WORLD_SIZE": "1"}, (0, 1)), ({"RANK": "3", "WORLD_SIZE": "4"}, (3, 4)),
    ({"RANK": " 1 ", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2)),
])
def test_meant_rank_variables_are_read(env, expected):
    assert process_rank(env) == expected


def test_the_sweep_reads_the_first_set_of_rank_variables():
    assert sweep_share({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "RANK": "0", "WORLD_SIZE": "1"}) == (0, 1)
    assert sweep_share({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)
    assert sweep_share({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "3"}) == \
        (2, 3)
    with pytest.raises(ConfigError, match="SLURM_NTASKS=0 must be 1 or more"):
        sweep_share({"SLURM_PROCID": "0", "SLURM_NTASKS": "0"})


@pytest.mark.parametrize(("value", "on"), [("1", True), ("yes", True), ("TRUE", True), ("", False), ("0", False),
                                           ("false", False), ("No", False), (" off ", False)])
def test_one_truthiness_rule_for_switches(value, on):
    assert env_flag("X", {"X": value}) is on and env_flag("X", {}) is False


def test_the_record_of_written_files_is_plain_json(tmp_path):
    assert runner.invoke(app, [*TINY, "--out", str(tmp_path)]).exit_code == 0
    record = json.loads((tmp_path / WRITTEN_FILES).read_text())
    assert all((tmp_path / name).is_file() for name in record["files"])


# -- class 7: lines that say what is true --------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "cause"), [
    (["resnet10t", "-b", "many"], "Invalid value for '--batch-size' / '-b'"),
    (["resnet10t", "--paddding", "reflect"], "No such option: --paddding"),
    (["show", "--frobnicate"], "No such option: --frobnicate"),
    (["leaderboard"], "Missing argument 'DIR'"),
    (["resnet10t", "--seed"], "'--seed' requires an argument"),
])
def test_usage_errors_are_one_line(args, cause):
    fails(args, cause)


def test_a_sweep_into_a_single_audit_s_folder_says_what_to_do(tmp_path):
    assert runner.invoke(app, [*TINY, "--out", str(tmp_path)]).exit_code == 0
    line = fails(["sweep", "resnet10t", "--no-pretrained", "--out", tmp_path], "already holds the report of an earlier")
    assert "--overwrite" not in line and "choose another folder for the sweep" in line


def test_fine_tuning_options_without_fine_tuning_are_refused_not_ignored():
    fails(["resnet10t", "--no-pretrained", "--weight-decay", "inf"], "--weight-decay needs fine-tuning")
    fails(["resnet10t", "--no-pretrained", "--temperature", "2", "--lr", "0.1"], "need fine-tuning")
