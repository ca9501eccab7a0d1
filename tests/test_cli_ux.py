"""What a timm / CLI user expects: help that reads as help, completion, --version, progress in a terminal and in a log,
whole tables when piped, and a report page that says what it is. Tiny models (resnet10t at 64 px) or none."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import ppp_audit
import ppp_audit.progress as progress_module
from ppp_audit.cli import app
from ppp_audit.progress import ProgressReporter, progress_bar
from ppp_audit.report import Report

runner = CliRunner()
TINY = ["resnet10t", "--no-pretrained", "--input-size", "64", "--margin", "32", "-b", "1", "--device", "cpu"]
COMMANDS = ([], ["audit"], ["demo"], ["show"], ["push"], ["paddings"], ["sweep"], ["leaderboard"])


# ---- help, version, completion -------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", ["80", "200"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ppp-audit")
def test_help_shows_flags_without_a_value_type(command, columns):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    assert "--help" in result.stdout
    assert "<bool>" not in result.stdout  # a flag takes no value
    assert "…" not in result.stdout  # no help text cut short


def test_flag_rows_name_no_type_and_options_keep_theirs():
    text = runner.invoke(app, ["audit", "--help"], env={"COLUMNS": "200"}).stdout
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│ --")}
    assert rows["--include-pools"].split()[2] == "Schemes"  # straight from the flag to its help
    assert rows["--num-images"].split()[3] == "<int>"
    assert rows["--padding"].split()[3] == "SCHEME"


def test_bare_command_prints_help_and_exits_0():
    result = runner.invoke(app, [])
    assert result.exit_code == 0, result.output
    assert "Commands" in result.stdout and "audit" in result.stdout and "paddings" in result.stdout


def test_padding_help_lists_the_registered_schemes():
    from ppp_audit.paddings import list_paddings

    text = " ".join(runner.invoke(app, ["audit", "--help"], env={"COLUMNS": "200"}).stdout.replace("│", " ").split())
    names = [info.name for info in list_paddings()]
    assert {"reflect", "replicate", "circular", "zeros"} <= set(names)
    assert f"Registered: {', '.join(names)}" in text


def test_padding_help_survives_a_broken_registry(monkeypatch):
    import ppp_audit.paddings

    def broken():
        raise RuntimeError("plugin exploded")

    monkeypatch.setattr(ppp_audit.paddings, "list_paddings", broken)
    result = runner.invoke(app, ["audit", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Schemes: see ppp-audit paddings" in result.stdout and "exploded" not in result.output


def test_importing_the_cli_stays_cheap():
    code = ("import sys, ppp_audit.cli; "
            "print(sorted(m for m in ('torch', 'timm', 'ppp_audit.paddings', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("args", [["--version"], ["--debug", "--version"]])
def test_version(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ppp-audit {ppp_audit.__version__}"


def test_shell_completion_is_offered_and_completes_commands_and_schemes():
    assert "--install-completion" in runner.invoke(app, ["--help"]).stdout

    def complete(words: str) -> list[str]:
        env = {"_PPP_AUDIT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
        result = runner.invoke(app, [], prog_name="ppp-audit", env=env)
        assert result.exit_code == 0, result.output
        return result.stdout.split()

    assert complete("ppp-audit pad") == ["paddings"]
    assert complete("ppp-audit resnet50 -p re") == ["reflect", "replicate"]  # through the default command
    assert complete("ppp-audit audit resnet50 --padding circ") == ["circular"]


def test_default_command_after_a_global_flag(monkeypatch):
    monkeypatch.setenv("PPP_AUDIT_DEBUG", "0")  # --debug sets it for the process; restored after the test
    result = runner.invoke(app, ["--debug", *TINY, "--margin", "48", "-n", "2"])
    assert result.exit_code == 2, result.output  # reached `audit`: its own check of the margin answered
    assert "not a multiple of the model's largest stride 32" in result.stderr


# ---- progress ------------------------------------------------------------------------------------------------------


def _plain(**kwargs) -> tuple[ProgressReporter, io.StringIO]:
    stream = io.StringIO()
    return ProgressReporter(True, live=False, stream=stream, **kwargs), stream


def test_plain_lines_name_each_phase_then_heartbeat():
    reporter, stream = _plain(quiet_s=0, heartbeat_s=0)
    with reporter:
        reporter.phase("building model resnet10t")
        reporter.phase("measuring native on 4 images", total=4)
        for _ in range(4):
            reporter.update(advance=1)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert all(line.startswith("ppp-audit: 0:0") for line in lines), lines
    assert lines[0].endswith("building model resnet10t")
    assert lines[1].endswith("measuring native on 4 images (0/4)")
    assert [line.split(": ", 2)[2].split(",")[0] for line in lines[2:]] == ["1/4", "2/4", "3/4", "4/4"]
    assert lines[-1].endswith("about 0:00 left")


def test_plain_heartbeat_waits_its_interval_and_short_runs_stay_quiet():
    reporter, stream = _plain(quiet_s=0, heartbeat_s=3600)
    reporter.phase("fitting geometry")
    reporter.phase("measuring", total=10)
    for _ in range(10):
        reporter.update(advance=1)
    assert [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()] == ["fitting geometry",
                                                                                 "measuring (0/10)"]
    quiet, stream = _plain(quiet_s=3600, heartbeat_s=0)
    quiet.phase("building model")
    quiet.update(advance=1)
    assert stream.getvalue() == ""


def test_plain_line_of_a_phase_announced_late_says_where_it_is(monkeypatch):
    ticks = [0.0, 0.0, 0.0, 10.0]  # created, phase started, phase line due?, update line due?
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: ticks.pop(0) if len(ticks) > 1 else ticks[0])
    reporter, stream = _plain(quiet_s=5, heartbeat_s=30)  # started at 0; quiet for 5 s
    reporter.phase("measuring", total=4)  # at 0: too early for a line
    reporter.update(advance=2)  # at 10: the first line, with the count so far
    assert stream.getvalue() == "ppp-audit: 0:10 measuring: 2/4, about 0:10 left\n"


def test_disabled_and_other_ranks_print_nothing(monkeypatch):
    stream = io.StringIO()
    off = ProgressReporter(False, live=False, stream=stream, quiet_s=0)
    off.phase("x")
    off.update(advance=1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    rank1 = ProgressReporter(True, live=False, stream=stream, quiet_s=0)
    rank1.phase("y")
    assert stream.getvalue() == "" and not rank1.enabled


def test_live_display_is_shared_by_nested_steps():
    reporter = ProgressReporter(True, live=True)
    with reporter:
        display = reporter._display
        assert display is not None
        reporter.phase("building model", None)
        with progress_bar(reporter) as inner:  # a step given the run's reporter reuses its display
            assert inner is reporter and reporter._display is display
            inner.phase("measuring", total=2)
            inner.update(advance=2, description="measuring native")
        assert reporter._display is display
        task = display.tasks[-1]
        assert (task.description, task.completed, task.total) == ("measuring native", 2, 2)
        assert len(display.tasks) == 1  # one line: the current phase
    assert reporter._display is None
    assert progress_bar(False).enabled is False and progress_bar(True) is not progress_bar(True)


@pytest.fixture(scope="module")
def logged_audit(tmp_path_factory):
    """A 3-scheme audit through the CLI with stderr not a terminal, quiet period and heartbeat at 0."""
    out = tmp_path_factory.mktemp("logged") / "report.json"
    patch = pytest.MonkeyPatch()
    patch.setattr(progress_module, "QUIET_S", 0.0)
    patch.setattr(progress_module, "HEARTBEAT_S", 0.0)
    try:
        result = runner.invoke(app, [*TINY, "-n", "3", "-p", "reflect", "-p", "circular", "--json", str(out)])
    finally:
        patch.undo()
    assert result.exit_code == 0, result.output
    return result, out


def test_log_gets_one_line_per_phase_and_a_heartbeat(logged_audit):
    result, _ = logged_audit
    err = result.stderr
    assert "\r" not in err
    lines = [line for line in err.splitlines() if not line.startswith("report saved")]
    assert all(line.startswith("ppp-audit: ") for line in lines), lines
    phases = [line.split(" ", 2)[2] for line in lines]
    for phase in ("building model resnet10t", "finding padding sites", "fitting geometry", "probing padding sites",
                  "measuring receptive fields", "preparing images",
                  "measuring native, reflect, circular on 3 images (0/3)"):
        assert phase in phases, (phase, phases)
    assert phases.index("fitting geometry") < phases.index("probing padding sites")
    beats = [p for p in phases if p.startswith("measuring native, reflect, circular on 3 images: ")]
    assert [b.split(": ")[1].split(",")[0] for b in beats][-1] == "3/3" and len(beats) >= 3


def test_no_progress_silences_it_and_short_runs_log_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(progress_module, "QUIET_S", 0.0)
    silenced = runner.invoke(app, [*TINY, "-n", "2", "--no-progress", "--json", str(tmp_path / "a.json")])
    assert silenced.exit_code == 0, silenced.output
    assert not [line for line in silenced.stderr.splitlines() if line.startswith("ppp-audit: ")], silenced.stderr
    monkeypatch.setattr(progress_module, "QUIET_S", 3600.0)
    quiet = runner.invoke(app, [*TINY, "-n", "2", "--json", str(tmp_path / "b.json")])
    assert quiet.exit_code == 0, quiet.output
    assert not [line for line in quiet.stderr.splitlines() if line.startswith("ppp-audit: ")], quiet.stderr
    assert Report.load(tmp_path / "b.json").data["num_images"] == 2


# ---- piped tables --------------------------------------------------------------------------------------------------


def _whole_table(text: str, report: Report) -> None:
    """Every header and number on one line each: the header row names every scheme's column, each layer row holds
    every scheme's strength and CI, and nothing is cut."""
    lines = text.splitlines()
    assert not [line for line in lines if "…" in line and ("│" in line or "┃" in line)]
    header = next(line for line in lines if "layer" in line and "stride" in line)
    assert header.count("strength ± 95% CI") == len(report.results), header
    for i, layer in enumerate(report.results[0].layers):
        row = next(line for line in lines if line.startswith(f"│ {layer.name} "))
        assert row.count("±") == len(report.results), row


def test_piped_tables_print_at_full_width(logged_audit):
    result, out = logged_audit
    report = Report.load(out)
    _whole_table(result.stdout, report)  # the audit's own output, captured (not a terminal)
    shown = runner.invoke(app, ["show", str(out), "--no-figures"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    _whole_table(shown.stdout, report)
    assert max(len(line) for line in shown.stdout.splitlines()) > 80  # wider than the 80 columns it used to be cut to


def test_full_width_keeps_a_terminal_and_restores_the_console():
    from rich.console import Console
    from rich.table import Table

    from ppp_audit.render import full_width

    table = Table("a long column header", "another long column header", "and a third long one")
    table.add_row("1.234567 ± 0.001", "2.345678 ± 0.002", "3.456789 ± 0.003")
    piped = Console(file=io.StringIO(), width=40)
    with full_width(piped, [table]):
        piped.print(table)
    assert piped.width == 40
    assert "a long column header" in piped.file.getvalue() and "…" not in piped.file.getvalue()
    terminal = Console(file=io.StringIO(), width=40, force_terminal=True, color_system=None)
    with full_width(terminal, [table]):
        terminal.print(table)
    assert max(len(line) for line in terminal.file.getvalue().splitlines()) <= 40


# ---- the report page -----------------------------------------------------------------------------------------------


def test_page_says_where_its_figures_are_and_what_native_did(logged_audit, tmp_path):
    from ppp_audit.render import write_outputs

    _, out = logged_audit
    report = Report.load(out)
    page = write_outputs(report, tmp_path / "linked").html.read_text()
    assert "figures in figures/ next to this page" in page and "--embed" in page
    assert "figures loaded" in page and "images loaded" not in page
    native = report.results[0].patch["num_patched"]
    assert native > 0
    assert f"native: {native} padding sites (native, unchanged)" in page
    assert f"native: {native} padding sites patched" not in page
    reflect = report.results[1].patch["num_patched"]
    assert f"reflect: {reflect} padding sites patched" in page
    embedded = write_outputs(report, tmp_path / "embedded", embed=True).html.read_text()
    assert "figures embedded: this file stands alone" in embedded and "figures in figures/" not in embedded


def test_patch_line_counts():
    from ppp_audit.render.html import patch_line

    assert patch_line("native", {"num_patched": 1, "unpatched": []}) == (
        "native: 1 padding site (native, unchanged), 0 that the schemes leave as they are")
    assert patch_line("reflect", {"patched": [{}, {}], "unpatched": [{}]}) == (
        "reflect: 2 padding sites patched, 1 not patched")


def test_no_self_contained_claim_left():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "ppp_audit").rglob("*.py"))]
    assert [str(p) for p in texts if "self-contained" in p.read_text(encoding="utf-8")] == []
