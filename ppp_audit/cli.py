"""The ``ppp-audit`` command line (typer + rich).

``ppp-audit MODEL [options]`` audits a model (the ``audit`` command is the default, so ``ppp-audit resnet50 --padding
reflect`` works as written); ``ppp-audit demo`` runs the offline default; ``ppp-audit paddings`` lists schemes;
``ppp-audit push`` sends a saved report to the Hugging Face Hub.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from .errors import PPPAuditError


class _AuditByDefault(TyperGroup):
    """Routes ``ppp-audit MODEL ...`` to the ``audit`` command when MODEL is not a command name."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["audit", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_AuditByDefault,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Audit a CNN (any timm model) for the Position-information Pattern from Padding (PPP).\n\n"
    "Usage: ppp-audit MODEL [--padding SCHEME]...   (e.g. ppp-audit resnet50 --padding reflect)",
)


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


def _fail(message: str, code: int) -> typer.Exit:
    """One line on stderr, then exit non-zero."""
    _stderr().print(f"[bold red]ppp-audit: error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _run_audit(config, json_out: Optional[str], out: Optional[Path], progress: Optional[bool],
               push: Optional[dict] = None, finetune=None, **audit_kwargs) -> None:
    from rich.console import Console

    from .engine import audit
    from .errors import AuditInterrupted
    from .render import REPORT_JSON, print_report

    show_progress = sys.stderr.isatty() if progress is None else progress
    try:
        if finetune is None:
            report = audit(config, progress=show_progress, **audit_kwargs)
        else:
            from .finetune import finetune_audit

            report = finetune_audit(config, finetune, progress=show_progress, **audit_kwargs)
    except AuditInterrupted as stopped:
        if stopped.report is None:
            raise
        saved = _save_interrupted(stopped.report, json_out, out)
        raise _fail(f"interrupted: {stopped.report.interrupted}. Report saved to {saved} "
                    f"(`ppp-audit show {saved}` renders it)", 130) from None
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 writes and prints the (all-reduced) report
        return
    if out is None and push:
        from .hub import default_report_dir

        out = default_report_dir(report)
    # The report reaches the disk before anything else can fail.
    saved = None
    if out is not None:
        saved = report.save(Path(out) / REPORT_JSON)
        _stderr().print(f"report saved to {saved}", highlight=False, soft_wrap=True)
    if json_out == "-":
        sys.stdout.write(report.to_json() + "\n")
    else:
        if json_out:
            report.save(json_out)
            _stderr().print(f"report saved to {json_out}", highlight=False)
        print_report(Console(), report)
    if out is not None:
        _write_outputs(report, Path(out), overwrite=True, source=saved)
    if push:
        _push(out, **push)


def _save_interrupted(report, json_out: Optional[str], out: Optional[Path]) -> Path:
    """Where the report of an interrupted audit goes: ``--out``, else the ``--json`` file, else the default folder."""
    from .render import REPORT_JSON

    if out is not None:
        return report.save(Path(out) / REPORT_JSON)
    if json_out and json_out != "-":
        return report.save(json_out)
    from .hub import default_report_dir

    return report.save(default_report_dir(report) / REPORT_JSON)


def _push(report_dir: Path, **options) -> None:
    """Push a saved report folder; progress and links go to stderr so stdout keeps only the table or JSON."""
    from .hub import push_report

    if not sys.stderr.isatty():  # logs and CI: upload bars would leave half lines next to our messages
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    result = push_report(report_dir, **options)
    if result.repo_id:
        done = "pushed" if result.changed else "unchanged, already on the Hub:"
        _stderr().print(f"{done} {result.path_in_repo} to {result.url}", highlight=False, soft_wrap=True)
    if result.model_repo_id:
        opened = (f"opened a pull request on {result.model_repo_id}: {result.model_pr_url}" if result.model_pr_url
                  else f"the model card of {result.model_repo_id} already carries these scores: no pull request")
        _stderr().print(opened, highlight=False, soft_wrap=True)


def _push_options(repo_id: Optional[str], model_pr: bool, model_repo: Optional[str], private: bool,
                  revision: Optional[str], create_pr: bool) -> Optional[dict]:
    """The push settings, checked before an audit runs so a typo fails in a second, not after the audit."""
    if repo_id is None and not model_pr:
        if model_repo or private or revision or create_pr:
            raise PPPAuditError("--model-repo/--private/--revision/--create-pr need a push target",
                                "add --push-to-hub REPO_ID and/or --model-pr")
        return None
    from .hub import check_repo_ids

    check_repo_ids(repo_id, model_repo)
    return {"repo_id": repo_id, "model_pr": model_pr, "model_repo": model_repo, "private": private or None,
            "revision": revision, "create_pr": create_pr}


def _write_outputs(report, out: Path, **kwargs) -> None:
    """PNG figures and report.html next to report.json; one line on stderr saying what was written."""
    from .errors import ReportFileError
    from .render import write_outputs

    try:
        outputs = write_outputs(report, out, **kwargs)
    except OSError as exc:
        raise ReportFileError(
            f"could not write figures to '{out}': {exc.strerror or exc}",
            "the report JSON is saved; pick a writable folder with `ppp-audit show REPORT --out DIR`",
        ) from None
    written = outputs.written
    if written:
        drawn = sum(1 for f in outputs.figures if f.written)
        page = f" and {outputs.html.name}" if outputs.html_written else ""
        _stderr().print(f"{drawn} figure{'' if drawn == 1 else 's'}{page} written to {outputs.out_dir}",
                        highlight=False)
    else:
        _stderr().print(f"figures and page already in {outputs.out_dir} (--overwrite redraws them)", highlight=False)


def _guarded(func):
    """Turn known errors and Ctrl-C into one line and a non-zero exit."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PPPAuditError as exc:
            raise _fail(f"{exc.message}" + (f" — {exc.hint}" if exc.hint else ""), exc.exit_code) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None

    return wrapper


JsonOpt = Annotated[
    Optional[str], typer.Option("--json", help="Write the report as JSON to PATH, or '-' for stdout (JSON only).")
]
OutOpt = Annotated[
    Optional[Path], typer.Option("--out", help="Folder to write report.json, PNG figures and report.html into.")
]
NumImagesOpt = Annotated[int, typer.Option("--num-images", "-n", help="Windows to average over (N).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Windows per forward pass.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:K.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the built-in images.")]
_FT = "Fine-tuning (after the padding swap)"
ProgressOpt = Annotated[
    Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar on stderr (default: if a terminal).")
]
ModelPrOpt = Annotated[
    bool, typer.Option("--model-pr", help="Open a pull request on the model's repo adding the scores to its card.")
]
ModelRepoOpt = Annotated[
    Optional[str], typer.Option(help="Model repo for --model-pr (default: where the audited weights came from).")
]
PrivateOpt = Annotated[bool, typer.Option("--private", help="Create the dataset repo private.")]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Branch of the dataset repo to push to (default: main).")]
CreatePrOpt = Annotated[bool, typer.Option("--create-pr", help="Open a pull request on the dataset repo instead.")]


@app.command("audit")
@_guarded
def audit_command(
    model: Annotated[str, typer.Argument(help="timm model name (name.tag), local-dir:DIR or hf-hub:ID.")],
    padding: Annotated[
        list[str], typer.Option("--padding", "-p", help="Scheme to compare with the native padding (repeatable).")
    ] = [],  # noqa: B006 - typer needs a literal default
    weights: Annotated[
        Optional[Path], typer.Option(help="Weights file (.safetensors or torch checkpoint) instead of the Hub.")
    ] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="Load pretrained weights.")] = True,
    images: Annotated[Optional[str], typer.Option(
        metavar="DIR|hfds/NAME",
        help="Image folder (recursive), or hfds/NAME\\[#CONFIG]: a Hugging Face dataset, by Hub id or local folder "
        "(needs pip install 'ppp-audit\\[hf]'; a local folder named hfds is ./hfds/...). Default: built-in dead-leaves "
        "images.",
    )] = None,
    images_split: Annotated[str, typer.Option(
        help="Split of an hfds/ dataset (datasets syntax: validation, train[:256]).",
    )] = "train",
    num_images: NumImagesOpt = 64,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    input_size: Annotated[Optional[int], typer.Option(help="Crop size S (default: the model's).")] = None,
    margin: Annotated[Optional[int], typer.Option(help="Context m around the crop (default: 2x max stride).")] = None,
    layers: Annotated[
        Optional[str], typer.Option(help="Comma-separated module names to tap instead of stages.")
    ] = None,
    precision: Annotated[
        str, typer.Option(help="fp32, or bf16/fp16 autocast (for GPUs; CPUs run it too, fp16 slowly).")
    ] = "fp32",
    workers: Annotated[int, typer.Option(help="DataLoader workers for image loading.")] = 0,
    compile_backend: Annotated[Optional[str], typer.Option(
        "--compile", help="torch.compile the feature passes with this backend (e.g. inductor); pays off for large N.",
    )] = None,
    include_pools: Annotated[
        bool, typer.Option("--include-pools", help="Schemes also replace pool padding (max-pool -inf, avg-pool zeros).")
    ] = False,
    baselines: Annotated[
        Optional[str], typer.Option(help="Comma-separated baselines on the same images: posenet,fconv,uneven.")
    ] = None,
    baseline_option: Annotated[
        list[str], typer.Option("--baseline-option", help="Baseline setting NAME.FIELD=VALUE, e.g. posenet.steps=500, "
                                "fconv.borders=0,32,128 (repeatable).")
    ] = [],  # noqa: B006 - typer needs a literal default
    json_out: JsonOpt = None,
    out: OutOpt = None,
    progress: ProgressOpt = None,
    push_to_hub: Annotated[
        Optional[str], typer.Option(help="Dataset repo to push the report to (saved locally first).")
    ] = None,
    model_pr: ModelPrOpt = False,
    model_repo: ModelRepoOpt = None,
    private: PrivateOpt = False,
    revision: RevisionOpt = None,
    create_pr: CreatePrOpt = False,
    finetune_steps: Annotated[int, typer.Option(
        help="Fine-tune this many steps after each --padding swap, then measure again (0: no fine-tuning).",
        rich_help_panel=_FT)] = 0,
    labels: Annotated[Optional[str], typer.Option(
        help="'folder': cross-entropy on the class folders of --images DIR; 'dataset': on the class-label column of "
        "--images hfds/NAME. Default: distil the original model.",
        rich_help_panel=_FT)] = None,
    distill_loss: Annotated[str, typer.Option(
        help="kl (softened logits, x T^2) or mse (logits).", rich_help_panel=_FT)] = "kl",
    temperature: Annotated[float, typer.Option(help="Temperature T of the kl loss.", rich_help_panel=_FT)] = 1.0,
    optimizer: Annotated[
        str, typer.Option(help="adamw, sgd, or another timm optimiser.", rich_help_panel=_FT)
    ] = "adamw",
    lr: Annotated[float, typer.Option(help="Learning rate (constant).", rich_help_panel=_FT)] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.", rich_help_panel=_FT)] = 0.0,
    finetune_batch_size: Annotated[int, typer.Option(help="Training crops per step.", rich_help_panel=_FT)] = 16,
    bn: Annotated[str, typer.Option(
        help="frozen (BatchNorm statistics fixed) or train (updated from the batches).", rich_help_panel=_FT,
    )] = "frozen",
    measure_every: Annotated[int, typer.Option(
        help="Also measure PPP every N steps (a formation curve); 0: before and after only.", rich_help_panel=_FT,
    )] = 0,
    train_images: Annotated[Optional[int], typer.Option(
        help="Training pool size (default: fresh built-in images each step / all non-held-out folder images).",
        rich_help_panel=_FT)] = None,
    save_weights: Annotated[Optional[Path], typer.Option(
        help="Save each fine-tuned model as timm safetensors in DIR/SCHEME.", rich_help_panel=_FT)] = None,
) -> None:
    """Measure PPP of MODEL with its native padding and each --padding scheme, side by side.

    With --finetune-steps K: after each swap, fine-tune K steps and measure again (does training rebuild PPP?).
    """
    from .engine import AuditConfig
    from .metrics.baselines import parse_baseline_options

    push = _push_options(push_to_hub, model_pr, model_repo, private, revision, create_pr)
    config = AuditConfig(
        model=model, paddings=list(padding), pretrained=pretrained, weights=str(weights) if weights else None,
        images=images or None, images_split=images_split, num_images=num_images, batch_size=batch_size, device=device,
        seed=seed, input_size=input_size, margin=margin,
        layers=[name.strip() for name in layers.split(",") if name.strip()] if layers else None,
        precision=precision, workers=workers, include_pools=include_pools, compile=compile_backend,
        baselines=[name for name in (baselines or "").split(",") if name.strip()],
        baseline_options=parse_baseline_options(baseline_option),
    )
    finetune = None
    if finetune_steps:
        from .finetune import FinetuneConfig

        finetune = FinetuneConfig(
            steps=finetune_steps, lr=lr, optimizer=optimizer, batch_size=finetune_batch_size,
            weight_decay=weight_decay, bn=bn, labels=labels, distill_loss=distill_loss, temperature=temperature,
            measure_every=measure_every, train_images=train_images,
            save_weights=str(save_weights) if save_weights else None,
        )
    elif labels or save_weights or measure_every:
        raise PPPAuditError("--labels, --measure-every and --save-weights need fine-tuning", "add --finetune-steps K")
    _run_audit(config, json_out, out, progress, push, finetune=finetune)


@app.command("demo")
@_guarded
def demo_command(
    num_images: NumImagesOpt = 64,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    json_out: JsonOpt = None,
    out: OutOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Offline default: ImageNet EfficientNet-Lite0 (weights from PyPI), native zeros vs reflect, built-in images."""
    from .engine import AuditConfig
    from .models import LITE0_ARCH, lite0_weights_from_pypi

    config = AuditConfig(
        model=LITE0_ARCH, paddings=["reflect"], weights=str(lite0_weights_from_pypi()), num_images=num_images,
        batch_size=batch_size, device=device, seed=seed,
    )
    _run_audit(config, json_out, out, progress)


@app.command("show")
@_guarded
def show_command(
    report_path: Annotated[Path, typer.Argument(metavar="REPORT", help="A folder written by --out, or a report JSON.")],
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Folder for figures and report.html (default: the report's folder).")
    ] = None,
    figures: Annotated[
        bool, typer.Option("--figures/--no-figures", help="Write missing figures and report.html.")
    ] = True,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redraw figures and the page even if they exist.")
    ] = False,
    embed: Annotated[
        bool, typer.Option("--embed", help="Embed the images in report.html (one file to share).")
    ] = False,
) -> None:
    """Re-render a saved report: the table and terminal heatmap, and any figures or page that are missing.

    A folder (or its report.json) gets its figures and report.html in place; another JSON file, e.g. from --json
    results.json, gets a sibling folder named after it (results/).
    """
    from rich.console import Console

    from .render import print_report
    from .report import REPORT_JSON, Report, report_file

    json_path = report_file(report_path)
    report = Report.load(json_path)
    print_report(Console(), report)
    if figures:
        # A folder's report.json renders into that folder; any other JSON file into a sibling folder of its name.
        default = json_path.parent if json_path.name == REPORT_JSON else json_path.with_suffix("")
        _write_outputs(report, out if out is not None else default, overwrite=overwrite, embed=embed, source=json_path)


@app.command("push")
@_guarded
def push_command(
    report_dir: Annotated[Path, typer.Argument(help="A saved report folder (holding report.json) or the file.")],
    repo_id: Annotated[
        Optional[str], typer.Argument(help="Dataset repo collecting reports (created if missing).")
    ] = None,
    model_pr: ModelPrOpt = False,
    model_repo: ModelRepoOpt = None,
    private: PrivateOpt = False,
    revision: RevisionOpt = None,
    create_pr: CreatePrOpt = False,
) -> None:
    """Push a saved report (JSON, figures, an updated index card) to the Hub; optionally open a model-repo PR."""
    push = _push_options(repo_id, model_pr, model_repo, private, revision, create_pr)
    if push is None:
        raise PPPAuditError("nothing to push to", "pass a dataset REPO_ID and/or --model-pr")
    _push(report_dir, **push)


@app.command("paddings")
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
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
