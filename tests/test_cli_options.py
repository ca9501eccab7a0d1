"""One table of options: every option of every command is a field of a config in ``ppp_audit.config``, with the
field's flags, help and default; the configs of the output, push, sweep, show and leaderboard options refuse bad
values themselves, and creating them imports no torch."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from cli_helpers import fails
from ppp_audit.cli import app
from ppp_audit.config import (AuditConfig, FinetuneConfig, LeaderboardConfig, OutputConfig, PushConfig, ShowConfig,
                              SweepConfig, cli_fields)
from ppp_audit.errors import ConfigError

COMMAND_CONFIGS: dict[str, tuple[type, ...]] = {
    "audit": (AuditConfig, OutputConfig, PushConfig, FinetuneConfig),
    "demo": (AuditConfig, OutputConfig),
    "sweep": (SweepConfig, AuditConfig),
    "show": (ShowConfig,),
    "push": (PushConfig,),
    "leaderboard": (LeaderboardConfig,),
    "paddings": (),
}
"""The configs each command's options come from."""
APP_OPTIONS = {"version", "debug", "install_completion", "show_completion"}
"""The app's own options (``ppp-audit --version``, ...): not settings of any command."""
MOVED = (OutputConfig, PushConfig, SweepConfig, ShowConfig, LeaderboardConfig)
"""The configs of the options that were once a second, hand-made table in the CLI."""


def _commands() -> dict:
    return typer.main.get_command(app).commands


def _options(command) -> list:
    # typer >= 0.25 carries its own click, so test the parameter's kind, not its class
    return [p for p in command.params if p.param_type_name == "option"]


def _field_for(name: str, config_classes: tuple[type, ...]) -> dataclasses.Field | None:
    for config_class in config_classes:
        for f in cli_fields(config_class):
            if (f.metadata["cli_name"] or f.name) == name:
                return f
    return None


def _spellings(f: dataclasses.Field) -> list[str]:
    """The command-line spellings a field declares (``--progress/--no-progress`` is two), default ``--field-name``."""
    flags = f.metadata["flags"] or (f"--{(f.metadata['cli_name'] or f.name).replace('_', '-')}",)
    return [spelling for flag in flags for spelling in flag.split("/")]


def test_every_command_is_mapped_to_its_configs():
    """A new command must say which configs its options come from (and so cannot bring a hand-made option)."""
    assert set(_commands()) == set(COMMAND_CONFIGS)


@pytest.mark.parametrize("name", sorted(COMMAND_CONFIGS))
def test_every_option_of_a_command_is_a_config_field(name):
    """Each option of the command is a CLI field of one of its configs, with that field's flags, help and default."""
    command = _commands()[name]
    for param in _options(command):
        f = _field_for(param.name, COMMAND_CONFIGS[name])
        assert f is not None, f"{name} {param.opts[0]} is no config field"
        assert [*param.opts, *param.secondary_opts] == _spellings(f), (name, param.name)
        assert param.help == f.metadata["help"], (name, param.name)
        assert param.metavar in (f.metadata["metavar"], ""), (name, param.name)  # "": a flag, once help was shown
        if f.metadata["cli_default"] is not dataclasses.MISSING:
            assert param.default == f.metadata["cli_default"], (name, param.name)
        elif f.default is not dataclasses.MISSING:
            assert param.default == f.default, (name, param.name)


def test_the_app_options_are_only_the_global_flags():
    assert {p.name for p in typer.main.get_command(app).params} == APP_OPTIONS


@pytest.mark.parametrize("config_class", MOVED)
def test_each_moved_config_is_offered_whole_by_some_command(config_class):
    """No field of the moved configs is left without its option (push's REPO_ID is the ``push_to_hub`` field)."""
    offered = {p.name for name, classes in COMMAND_CONFIGS.items() if config_class in classes
               for p in _options(_commands()[name])}
    assert {f.metadata["cli_name"] or f.name for f in cli_fields(config_class)} <= offered


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "1000"}, terminal_width=1000)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name,config_classes", [("audit", (OutputConfig, PushConfig)), ("demo", (OutputConfig,)),
                                                 ("sweep", (SweepConfig,)), ("show", (ShowConfig,)),
                                                 ("push", (PushConfig,)), ("leaderboard", (LeaderboardConfig,))])
def test_help_lists_the_moved_options_with_their_help(name, config_classes):
    text = _help(name)
    for config_class in config_classes:
        for f in cli_fields(config_class):
            if name == "push" and f.name == "push_to_hub":
                continue  # the REPO_ID argument of push
            assert _spellings(f)[0] in text, (name, f.name)
            assert f.metadata["help"] in text, (name, f.name)


def test_help_keeps_the_words_users_know():
    """Spot checks of the text itself, so that a field that lost its words would fail here."""
    audit, sweep = _help("audit"), _help("sweep")
    for words in ("--json", "Write the report as JSON to PATH, or '-' for stdout (JSON only).", "--push-to-hub",
                  "Dataset repo to push the report to (saved locally first).", "--no-progress", "--model-pr",
                  "BRANCH", "REPO_ID"):
        assert words in audit, words
    for words in ("--model-list", "--timeout", "SECONDS", "Time limit per model.", "--retry-failed", "--no-pages",
                  "The sweep folder (needed): one run folder per model and settings."):
        assert words in sweep, words


@pytest.mark.parametrize("make,message", [
    (lambda: OutputConfig(out=3), "OutputConfig.out must be a str or PathLike"),
    (lambda: OutputConfig(progress="yes"), "OutputConfig.progress must be a bool"),
    (lambda: OutputConfig(json_out=Path("r.json")), "OutputConfig.json_out must be a str"),
    (lambda: PushConfig(private=True), "need a push target"),
    (lambda: PushConfig(model_repo="me/model"), "need a push target"),
    (lambda: PushConfig(push_to_hub="not a repo!"), "invalid repo id 'not a repo!'"),
    (lambda: PushConfig(model_pr=True, model_repo="a//b"), "invalid repo id 'a//b'"),
    (lambda: PushConfig(model_pr="yes"), "PushConfig.model_pr must be a bool"),
    (lambda: SweepConfig(timeout=0), "--timeout must be a positive number of seconds (got 0)"),
    (lambda: SweepConfig(timeout=-1.5), "--timeout must be a positive number of seconds (got -1.5)"),
    (lambda: SweepConfig(timeout=math.nan), "--timeout must be a positive number of seconds (got nan)"),
    (lambda: SweepConfig(timeout=math.inf), "--timeout must be a positive number of seconds (got inf)"),
    (lambda: SweepConfig(timeout="60"), "SweepConfig.timeout must be a int or float"),
    (lambda: SweepConfig(timeout=True), "SweepConfig.timeout must be a int or float"),
    (lambda: SweepConfig(model_list="models.txt"), "SweepConfig.model_list must be a list or tuple"),
    (lambda: SweepConfig(model_list=[3]), "SweepConfig.model_list must be a list or tuple of paths"),
    (lambda: SweepConfig(force=1), "SweepConfig.force must be a bool"),
    (lambda: ShowConfig(embed=1), "ShowConfig.embed must be a bool"),
    (lambda: LeaderboardConfig(top=-1), "--top must be 0 or more (got -1)"),
    (lambda: LeaderboardConfig(top=2.5), "LeaderboardConfig.top must be a int"),
    (lambda: LeaderboardConfig(revision="dev"), "--private/--revision/--create-pr need a push target"),
    (lambda: LeaderboardConfig(push_to_hub="bad id!"), "invalid repo id 'bad id!'"),
])
def test_bad_values_are_refused_on_creation(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert message in info.value.message
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_good_values_are_kept_and_paths_become_paths():
    assert OutputConfig(out="r").out == Path("r") and OutputConfig().out is None
    sweep = SweepConfig(model_list=("a.txt", Path("b.txt")), out="s", timeout=5)
    assert sweep.model_list == [Path("a.txt"), Path("b.txt")] and sweep.out == Path("s") and sweep.timeout == 5
    assert ShowConfig(out="o").out == Path("o") and LeaderboardConfig(join="t.csv", top=0).join == Path("t.csv")
    assert PushConfig().push_options() is None
    assert PushConfig(push_to_hub="me/audits", private=True, revision="dev").push_options() == {
        "repo_id": "me/audits", "model_pr": False, "model_repo": None, "private": True, "revision": "dev",
        "create_pr": False}
    assert PushConfig(model_pr=True).push_options()["private"] is None  # not private: the Hub's default


@pytest.mark.parametrize("args,cause", [
    (["sweep", "test_resnet", "--out", "{tmp}/s", "--timeout", "nan"], "--timeout must be a positive number"),
    (["sweep", "test_resnet", "--out", "{tmp}/s", "--timeout", "-1"], "(got -1)"),
    (["leaderboard", "{tmp}", "--top", "-1"], "--top must be 0 or more"),
    (["leaderboard", "{tmp}", "--create-pr"], "--private/--revision/--create-pr need a push target"),
    (["leaderboard", "{tmp}", "--push-to-hub", "bad id!"], "invalid repo id 'bad id!'"),
    (["push", "{tmp}", "--revision", "dev"], "--model-repo/--private/--revision/--create-pr need a push target"),
    (["push", "{tmp}", "bad id!"], "invalid repo id 'bad id!'"),
    (["push", "{tmp}"], "nothing to push to"),
    (["resnet18", "--private"], "need a push target"),
    (["resnet18", "--model-pr", "--model-repo", "a//b"], "invalid repo id 'a//b'"),
])
def test_the_cli_refuses_them_in_one_line(tmp_path, args, cause):
    fails([arg.replace("{tmp}", str(tmp_path)) for arg in args], cause)
