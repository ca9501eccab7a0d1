"""The one table of options: :class:`AuditConfig` (what to audit and how), :class:`FinetuneConfig` (fine-tuning), and
the options of the commands around an audit: :class:`OutputConfig` (where the report goes), :class:`PushConfig` (the
Hub), :class:`SweepConfig`, :class:`ShowConfig` and :class:`LeaderboardConfig`.

Every setting is declared once, here, as a dataclass field with its help text and command-line spelling in the field's
metadata (:func:`setting`). The CLI (:mod:`ppp_audit.cli`), :func:`ppp_audit.testing.measure` and the pytest options
(:mod:`ppp_audit.pytest_plugin`) are derived from these fields, so a new setting is added in one place and the
spellings cannot drift. Configs validate their values (types included) on creation.

Torch-free: importing this module, and creating a config, load neither torch nor timm (the pytest plugin builds its
options from it, the CLI checks its options before anything heavy loads). Baseline names and options are checked by
:mod:`ppp_audit.baseline_options`, optimiser names against :data:`OPTIMIZERS`. Only two things may import torch, and
only when asked for: ``compile`` (its backend is checked against torch's own list of ``torch.compile`` backends), and
installed third-party baselines (entry points), which looking up a baseline loads, with whatever they import. A repo
id given to :class:`PushConfig` or :class:`LeaderboardConfig` is checked by :func:`ppp_audit.hub.check_repo_ids`
(``huggingface_hub``'s validator, no torch).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .baseline_options import parse_baseline_options, validate_baselines
from .errors import ConfigError, ImageSourceError, PPPAuditError
from .report import MAX_TOP_CHANNELS, NATIVE, TOP_CHANNELS
PRECISIONS = ("fp32", "bf16", "fp16")
BN_MODES = ("frozen", "train")
DISTILL_LOSSES = ("kl", "mse")
LABEL_SOURCES = ("folder", "dataset")
IMAGES_ON = ("auto", "host", "device")
REFERENCES = ("auto", "canvas", "window")
"""How the padding-free reference is made (``--reference``; docs/metrics.md, "The canvas reference")."""
RENDERER = "torch"
"""The one renderer of the built-in dead-leaves images (``device_images.render_dead_leaves``), on every device and with
every ``images_on``, so that they are the same pictures everywhere (SPEC §3.5); the report's ``data.renderer``."""
MAX_SIDE = 4096
"""Largest crop size and margin (px): 4x timm's largest pretrained input size (1024 px). Beyond it a window would not
fit in any device's memory, so a larger value is a typo (failing later as a failed allocation)."""
MAX_BATCH = 4096
"""Largest batch (windows or training crops per pass): any device is busy long before it, and a bigger batch is a typo
that would fail as a failed allocation."""
MAX_IMAGES = 1_000_000
"""Largest N (and training pool): a few hundred windows already pin PPP down; a bigger N is a typo that would run for
days."""
MAX_STEPS = 1_000_000
"""Most fine-tuning steps: PPP forms (or not) within thousands; a bigger count is a typo that would run for days."""
OPTIMIZERS = (
    "adabelief", "adadelta", "adafactor", "adafactorbv", "adafactorbvc", "adagrad", "adahessian", "adam", "adamax",
    "adamc", "adamp", "adamuon", "adamw", "adamwlegacy", "adan", "adanw", "adopt", "adoptc", "adoptw", "bnbadam",
    "bnbadam8bit", "bnbadamw", "bnbadamw8bit", "bnbademamix", "bnbademamix8bit", "bnblion", "bnblion8bit", "bnbsgd",
    "bnbsgd8bit", "cadafactor", "cadafactorbv", "cadafactorbvc", "cadamc", "cadamp", "cadamw", "cadan", "cadanw",
    "cadopt", "cadoptc", "cadoptw", "clamb", "clambw", "claprop", "clion", "clionc", "cmars", "cnadamc", "cnadamw",
    "crmsproptf", "csgdc", "csgdp", "csgdw", "fusedadam", "fusedadamw", "fusedlamb", "fusednovograd", "fusedsgd",
    "kron", "kronc", "kronw", "lamb", "lambc", "lambcd", "lambcw", "lambw", "laprop", "lapropc", "larc", "lars",
    "lion", "lionc", "madgrad", "madgradw", "mars", "momentum", "muon", "nadam", "nadamc", "nadamlegacy", "nadamuon",
    "nadamw", "nesterov", "nesterovw", "nlarc", "nlars", "nmuon", "novograd", "novogradc", "novogradw", "radabelief",
    "radam", "radamlegacy", "radamw", "rmsprop", "rmsproptf", "rmsproptfc", "rmsproptfw", "sgd", "sgdc", "sgdp", "sgdw",
)
"""The optimiser names ``--optimizer`` accepts: those of ``timm.optim.list_optimizers()`` in timm 1.0.31, listed here so
that a config is checked without importing timm (which imports torch). Fine-tuning checks the name against the installed
timm before it starts (:func:`ppp_audit.finetune.check_optimizer`): an older timm may lack one of them;
``tests/test_one_way.py`` says when a newer timm has one this list lacks."""


def setting(default: Any = dataclasses.MISSING, *, help: str, flags: tuple[str, ...] = (), cli_name: str | None = None,
            metavar: str | None = None, panel: str | None = None, cli: bool = True, cli_type: Any = None,
            cli_default: Any = dataclasses.MISSING, parse: Callable[[Any], Any] | None = None,
            types: tuple[type, ...] | None = None, items: type | None = None,
            minimum: float | None = None, maximum: float | None = None, above: float | None = None,
            below: float | None = None, unit: str = "", hint: str | None = None, measured: bool = True,
            default_factory: Callable[[], Any] | None = None) -> Any:
    """A config field with what the CLI, the type check and the range check (:func:`check_ranges`) need.

    A number field's value must be finite and within its bounds; an upper bound is also said in the help text.

    Args:
        default: The Python default.
        help: One-line help, shown by ``--help`` and in docstrings.
        flags: Command-line spellings (default ``--field-name``).
        cli_name: Name of the CLI parameter when two configs share a field name (``finetune_batch_size``).
        metavar: Placeholder shown in ``--help``.
        panel: ``--help`` panel.
        cli: Whether the CLI offers it.
        cli_type: The type the CLI reads (default: the field's), e.g. ``str`` for a comma-separated list.
        cli_default: The CLI's default when it differs (``--finetune-steps 0`` means "no fine-tuning").
        parse: Turns the CLI value into the field value (e.g. splits commas).
        types: Accepted Python types of the value (checked on creation); ``None`` is always accepted for optional
            fields (default ``None``).
        items: For list fields, the type of each item.
        minimum: Smallest value allowed (inclusive).
        maximum: Largest value allowed (inclusive).
        above: The value must be greater than this (an exclusive lower bound).
        below: The value must be less than this (an exclusive upper bound).
        unit: Unit of the bounds in messages and help (``"px"``).
        hint: How to fix a value out of range (default: pass the default value).
        measured: Whether the setting can change the numbers an audit measures. ``False`` for how an audit runs
            (device, batch size, workers, ...): never part of a result's identity (sweep hashes, leaderboard rows;
            :data:`RUN_SETTINGS`).
        default_factory: For mutable defaults.
    """
    upper = next((f"{word} {_number(bound)}" for word, bound in (("at most", maximum), ("below", below))
                  if bound is not None), None)
    if upper is not None:  # the lower bounds are what anyone expects (positive sizes); the upper ones are not
        help = f"{help.rstrip('.')}; {upper}{' ' + unit if unit else ''}."
    metadata = {"help": help, "flags": flags, "cli_name": cli_name, "metavar": metavar, "panel": panel, "cli": cli,
                "cli_type": cli_type, "cli_default": cli_default, "parse": parse, "types": types, "items": items,
                "minimum": minimum, "maximum": maximum, "above": above, "below": below, "unit": unit, "hint": hint,
                "measured": measured}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _number(bound: float) -> str:
    """A bound as help and messages write it: ``2**64 - 1``, not ``18446744073709551615``."""
    if isinstance(bound, int) and bound >= 2**32 and bound & (bound + 1) == 0:
        return f"2**{bound.bit_length()} - 1"
    return str(bound)


def _comma_list(text: str | None) -> list[str] | None:
    """``"a, b,"`` -> ``["a", "b"]``; ``None`` (not given) -> ``None``. Text that names nothing (``" , "``) is an
    empty list, for the config to refuse: read as "not given" it would silently mean every layer."""
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def _bad(what: str, fix: str) -> None:
    raise ConfigError(what, fix)


def check_types(config: Any) -> None:
    """Refuse values of the wrong type with one line naming the setting, before any conversion can mangle them
    (a string given for a list would otherwise become a list of one-letter names)."""
    for f in dataclasses.fields(config):
        types, items = f.metadata.get("types"), f.metadata.get("items")
        value = getattr(config, f.name)
        if types is None or (value is None and f.default is None):
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if ok and items is not None:
            ok = all(isinstance(item, items) and not (isinstance(item, bool) and items is not bool) for item in value)
        if not ok:
            expected = " or ".join(t.__name__ for t in types) + (f" of {items.__name__}" if items else "")
            example = f"e.g. {f.name}=['{value}']" if isinstance(value, str) and list in types else \
                f"pass a {expected}"
            _bad(f"{type(config).__name__}.{f.name} must be a {expected} (got {type(value).__name__} {value!r})",
                 example)


def option_flag(f: dataclasses.Field) -> str:
    """How messages name a setting: its first command-line flag, or its field name where the CLI does not offer it."""
    if not f.metadata["cli"]:
        return f.name
    return (f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",))[0].split("/")[0]


def check_ranges(config: Any) -> None:
    """Refuse a number that is not finite or out of its field's bounds (:func:`setting`), with one line naming the
    setting and the bound it breaks. Every number is checked finite first, as comparisons cannot refuse NaN
    (``nan < 0`` is false): a NaN or inf, or a size beyond any window's, would otherwise reach the audit and fail late
    for a misleading reason (a NaN loss, a failed allocation). Call after :func:`check_types`."""
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        minimum, maximum, above, below = (meta.get(key) for key in ("minimum", "maximum", "above", "below"))
        unit = f" {meta['unit']}" if meta.get("unit") else ""
        checks = (("a finite number", not isinstance(value, float) or math.isfinite(value)),
                  (f"at least {_number(minimum)}{unit}", minimum is None or value >= minimum),
                  (f"above {_number(above)}{unit}", above is None or value > above),
                  (f"at most {_number(maximum)}{unit}", maximum is None or value <= maximum),
                  (f"below {_number(below)}{unit}", below is None or value < below))
        broken = next((bound for bound, ok in checks if not ok), None)
        if broken is not None:
            default = f.default if f.default is not dataclasses.MISSING else None
            hint = meta.get("hint") or (f"pass e.g. {option_flag(f)} {default}" if default is not None else
                                        "leave it out for the default")
            _bad(f"{option_flag(f)} must be {broken} (got {value})", hint)


def _check_compile_backend(backend: str) -> None:
    """Refuse a ``torch.compile`` backend torch does not have (imports torch's compiler: only when one is asked)."""
    from torch._dynamo import list_backends

    known = list_backends(exclude_tags=())
    if backend not in known:
        common = [name for name in ("inductor", "aot_eager", "eager", "cudagraphs") if name in known]
        _bad(f"--compile: unknown torch.compile backend '{backend}'",
             f"use one of {', '.join(common)} (all: torch._dynamo.list_backends()), or leave --compile out")


@dataclass
class AuditConfig:
    """What to audit and how. Validated on creation; every field with a CLI flag is listed by ``ppp-audit --help``.

    Args:
        model: timm model name (``name.tag``, ``local-dir:DIR`` or ``hf-hub:ID`` too).
        paddings: Schemes to compare against the model's native padding.
        pretrained: Load pretrained weights (ignored when ``weights`` is set).
        weights: A safetensors file or torch checkpoint.
        images: An image folder, or ``hfds/NAME[#CONFIG]`` for a Hugging Face dataset (a Hub id or a local dataset
            folder; needs the ``hf`` extra); ``None`` uses the built-in dead-leaves images.
        num_images: Windows to average over (N).
        batch_size: Windows per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:K``.
        seed: Seed of the built-in images, of the random sample of N from a larger folder or dataset, of a random-init
            model's weights, and of fine-tuning.
        input_size: Crop size S; default the model's pretrained input size.
        margin: Context m around the crop, a multiple of the largest stride; default chosen from the model's
            receptive fields (the smallest margin leaving at most ``margin_tolerance`` of each layer's input influence
            beyond it, up to ``m = S``; docs/metrics.md).
        match_context: Let the window pass take the statistics of global modules (squeeze-excitation, GRN, ...)
            over the crop's footprint, so that the reference does not see more content than the crop
            (docs/metrics.md); ``False`` to see what that changes.
        reference: How the padding-free reference is made: ``canvas`` (periodic built-in canvases holding many
            crops, one circular-padded pass each: :mod:`ppp_audit.canvas`; for photos, crops tiled inside each
            photo, one pass per photo's tile), ``window`` (a window of ``S + 2m`` per crop), or ``auto``: a canvas
            where it is exact (no global modules or position embeddings, every scheme keeps the maps' sizes, no
            ``margin`` for the built-in images) and holds every layer's reach, unless a complete window costs fewer
            pixels; photos are tiled wherever that is exact.
        margin_tolerance: Share of a layer's input influence (receptive-field gradient mass) allowed beyond the margin
            for its padding-free reference to count as full; sets the chosen margin and which layers are partial.
        layers: Module names to tap instead of the stages.
        groups: Jackknife groups for confidence intervals.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast (meant for GPUs; CPUs run it too, fp16 slowly).
        workers: DataLoader worker processes for image loading (host images only).
        images_on: Where images are made and decoded (docs/images.md, "On the device"): ``host`` (this process or
            ``workers`` processes: PIL, the built-in images one window at a time), ``device`` (tensor ops on
            ``device``: the built-in images in batches, JPEG decoding, windows kept there when they fit), or ``auto``:
            ``device`` when ``device`` is a GPU and the images are the built-in ones or a folder of JPEG files, else
            ``host``. Where, not what: the built-in images are the same pictures either way (:data:`RENDERER`).
        compile: A ``torch.compile`` backend (e.g. ``inductor``) for the feature passes; ``None``: eager. Each padding
            and input size compiles once (recompiles are cached), so it pays off for large N. Checked on creation
            against torch's list of backends: the one setting whose check imports torch.
        include_pools: Let the schemes also replace the padding of pools (max-pools pad with -inf, average pools
            with counted zeros); by default pools keep theirs and are listed as unpatched. Applies to everything the
            audit runs: measurement, baselines, fine-tuning, held-out predictions and saved models.
        baselines: Baselines to run on the same images (``posenet``, ``fconv``, ``uneven``; docs/baselines.md).
        baseline_options: Per-baseline settings, ``{"posenet": {"steps": 500}, "fconv": {"borders": (0, 64)}}``.
        photo_scale: The one scale of every photo of ``images`` (resized by it, antialiased; ``1``: its own pixels),
            whatever the model, its ``crop_pct`` and the margin: the crops' content does not change with them
            (docs/images.md). Recorded as the report's ``data.scale``.
        images_split: Split of an ``hfds/`` dataset (``datasets`` syntax: ``validation``, ``train[:256]``).
        strict_images: Fail on the first image that cannot be read (not an image, truncated, an unsupported mode);
            by default such images are skipped and the report counts and names them.
        mist_layer: The tapped layer whose mean feature and PPP maps after 1, 10, 100 and N images the report keeps
            (``figures/mist.png``); ``None``: the stride-16 layer, else the middle one. Checked against the taps.
        top_channels: How many of each layer's strongest channels the report lists (``channel_shares.top``;
            docs/metrics.md#channels-padding-aware-neurons).
    """

    model: str = setting(help="timm model name (name.tag), local-dir:DIR or hf-hub:ID.", metavar="MODEL", types=(str,))
    paddings: list[str] = setting(
        help="Scheme to compare with the native padding (repeatable).", flags=("--padding", "-p"), cli_name="padding",
        metavar="SCHEME",
        types=(list, tuple), items=str, default_factory=list)
    pretrained: bool = setting(True, help="Load pretrained weights.", flags=("--pretrained/--no-pretrained",),
                               types=(bool,))
    weights: str | None = setting(None, help="Weights file (.safetensors or torch checkpoint) instead of the Hub.",
                                  metavar="FILE", types=(str,), parse=lambda v: str(v) if v else None)
    images: str | None = setting(
        None, metavar="DIR|hfds/NAME", types=(str,), parse=lambda v: v or None,
        help="Image folder (recursive), or hfds/NAME\\[#CONFIG]: a Hugging Face dataset, by Hub id or local folder "
        "(needs pip install 'ppp-audit\\[hf]'; a local folder named hfds is ./hfds/...). Default: built-in dead-leaves "
        "images.")
    num_images: int = setting(64, help="Windows to average over (N).", flags=("--num-images", "-n"), types=(int,),
                              minimum=2, maximum=MAX_IMAGES,
                              hint="a variance needs two images, and a few hundred pin PPP down; e.g. -n 64")
    batch_size: int = setting(16, help="Windows per forward pass.", flags=("--batch-size", "-b"), types=(int,),
                              minimum=1, maximum=MAX_BATCH, measured=False)
    device: str = setting("auto", help="auto, cpu, cuda or cuda:K.", metavar="DEVICE", types=(str,), measured=False)
    seed: int = setting(0, help="Seed of the built-in images, the sample of N, random init and fine-tuning.",
                        types=(int,), minimum=0, maximum=2**64 - 1,
                        hint="seeds are unsigned 64-bit integers; pass e.g. --seed 0")
    # the model-specific lower bound of the crop (geometry.MIN_MAP_SIDE x the largest stride) is checked on the model
    input_size: int | None = setting(None, help="Crop size S (default: the model's).", types=(int,), minimum=1,
                                     maximum=MAX_SIDE, unit="px",
                                     hint="leave it out for the model's own size (timm's largest is 1024 px)")
    margin: int | None = setting(None, help="Context m around the crop (default: chosen from the receptive fields).",
                                 types=(int,), minimum=1, maximum=MAX_SIDE, unit="px",
                                 hint="leave it out to choose it from the receptive fields")
    reference: str = setting(
        "auto", metavar="KIND", types=(str,),
        help="Padding-free reference: canvas (many crops share one pass: periodic canvases of the built-in images, "
        "complete at about the price of one crop; tiles of photos), window (a window of S+2m per crop), or auto "
        "(canvas where it is exact, and complete for the built-in images; else window).")
    match_context: bool = setting(
        True, help="Pool squeeze-excitation and GRN statistics over the crop's footprint in the window pass.",
        cli=False, types=(bool,))
    margin_tolerance: float = setting(
        0.01, help="Share of a layer's receptive-field influence allowed beyond the margin.", cli=False,
        types=(int, float), above=0, below=1,
        hint="pass a share such as 0.01 (1 % of the influence beyond the margin)")
    layers: list[str] | None = setting(
        None, help="Comma-separated module names to tap instead of stages.", cli_type=Optional[str], parse=_comma_list,
        metavar="NAMES", types=(list, tuple), items=str)
    groups: int = setting(8, help="Jackknife groups for confidence intervals.", cli=False, types=(int,), minimum=2,
                          maximum=64, hint="use the default 8")  # each group keeps its own moments of every map
    precision: str = setting("fp32", metavar="PRECISION",
                             help="fp32, or bf16/fp16 autocast (for GPUs; CPUs run it too, fp16 slowly).",
                             types=(str,))
    workers: int = setting(0, help="DataLoader workers for image loading.", types=(int,), minimum=0, maximum=256,
                           hint="0 reads images in this process; e.g. --workers 4", measured=False)
    images_on: str = setting(
        "auto", metavar="WHERE", types=(str,), measured=False,
        help="Where images are made and decoded (the same pictures either way): host (this process or --workers: "
        "PIL, the built-in images one by one), device (tensor ops on --device: built-in images, JPEG), or auto (device "
        "on a GPU for built-in images and JPEG folders).")
    compile: str | None = setting(
        None, help="torch.compile the feature passes with this backend (e.g. inductor); pays off for large N.",
        metavar="BACKEND", types=(str,), measured=False)
    include_pools: bool = setting(
        False, help="Schemes also replace pool padding (max-pool -inf, avg-pool zeros).", flags=("--include-pools",),
        types=(bool,))
    baselines: list[str] = setting(
        help="Baselines on the same images, comma-separated: posenet, fconv, uneven.", metavar="NAMES",
        cli_type=Optional[str],
        cli_default=None, parse=lambda v: _comma_list(v) or [], types=(list, tuple), items=str, default_factory=list)
    baseline_options: dict[str, dict[str, Any]] = setting(
        help="Baseline setting NAME.FIELD=VALUE, e.g. posenet.steps=500 or fconv.borders=0,64 (repeatable).",
        metavar="SETTING", flags=("--baseline-option",), cli_name="baseline_option", cli_type=list[str], cli_default=[],
        parse=parse_baseline_options, types=(dict,), default_factory=dict)
    photo_scale: float = setting(
        1.0, help="Scale every photo of --images is measured at, the same for every model and margin (1: its own "
        "pixels; photos are never upscaled).", types=(int, float), above=0, maximum=1,
        hint="pass a factor such as 0.5 (photos at half their size), or leave it out for their own pixels")
    images_split: str = setting("train", help="Split of an hfds/ dataset (datasets syntax: validation, train[:256]).",
                                types=(str,))
    strict_images: bool = setting(
        False, help="Fail on the first unreadable image (default: skip it; the report counts and names them).",
        flags=("--strict-images",), types=(bool,), measured=False)
    mist_layer: str | None = setting(
        None, help="Layer shown after 1, 10, 100 and N images in figures/mist.png (default: the stride-16 one, else "
        "the middle one).", metavar="NAME", types=(str,), parse=lambda v: v or None)
    top_channels: int = setting(
        TOP_CHANNELS, help="Strongest channels listed per layer (in the report's channel shares).", metavar="K",
        types=(int,), minimum=1, maximum=MAX_TOP_CHANNELS, hint="e.g. --top-channels 8")

    def __post_init__(self) -> None:
        check_types(self)
        check_ranges(self)
        if self.precision not in PRECISIONS:
            _bad(f"unknown precision '{self.precision}'", f"use one of {', '.join(PRECISIONS)}")
        if not (self.device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", self.device)):
            _bad(f"unknown device '{self.device}'", "use auto, cpu, cuda or cuda:K")
        if self.reference not in REFERENCES:
            _bad(f"unknown --reference '{self.reference}'", f"use one of {', '.join(REFERENCES)}")
        if self.images_on not in IMAGES_ON:
            _bad(f"unknown --images-on '{self.images_on}'", f"use one of {', '.join(IMAGES_ON)}")
        if self.compile is not None:
            _check_compile_backend(self.compile)
        if not self.images_split.strip():
            _bad("--images-split is empty", "name a split of the dataset, e.g. train or validation")
        if parse_hfds(self.images) is None and self.images_split != "train":
            _bad("--images-split applies to Hugging Face datasets only",
                 "pass --images hfds/NAME, or drop --images-split")
        self.paddings = list(dict.fromkeys(self.paddings))
        if NATIVE in self.paddings:
            _bad(f"'{NATIVE}' is always measured", "list only schemes to compare against it")
        if self.layers is not None:
            self.layers = list(dict.fromkeys(self.layers))  # a layer named twice is measured once
            if not self.layers:
                _bad("--layers names no layer", "name modules to tap, comma-separated, or leave it out for the stages")
        self.baselines = list(self.baselines)
        if self.baselines or self.baseline_options:
            self.baselines = validate_baselines(self.baselines, self.baseline_options)

    @property
    def schemes(self) -> list[str]:
        """Every padding an audit measures: ``native`` first, then ``paddings``."""
        return [NATIVE, *self.paddings]


RUN_SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AuditConfig) if not f.metadata["measured"])
"""The settings that change how an audit runs, never what it measures (``measured=False``): device, batch size,
workers, compile, where images are made, strict images. A sweep records them in ``run.json`` but hashes only the
others (:func:`ppp_audit.runs.result_settings`), so a run at another ``-b`` or ``--workers`` is the same result."""


HFDS_PREFIX = "hfds/"
"""``--images hfds/NAME[#CONFIG]`` names a Hugging Face dataset, as timm's dataset factory spells it."""


def parse_hfds(images: str | None) -> tuple[str, str | None] | None:
    """``(NAME, CONFIG)`` of an ``hfds/NAME[#CONFIG]`` spec, ``None`` for anything else (a folder, or no images).

    The prefix is case-insensitive (as in timm); everything after it is passed to ``datasets.load_dataset`` as written,
    so ``hfds/...`` is always a dataset, never a folder: a local folder that is itself called ``hfds`` is reached as
    ``./hfds/...`` (a plain image folder) or ``hfds/./hfds/...`` (a dataset folder).
    """
    if not images or images[: len(HFDS_PREFIX)].lower() != HFDS_PREFIX:
        return None
    name, _, config = images[len(HFDS_PREFIX):].partition("#")
    if not name:
        raise ImageSourceError(
            f"--images {images} names no dataset",
            "pass hfds/NAME with NAME a Hub dataset id (hfds/beans, hfds/owner/name) or a local dataset folder",
        )
    return name, config or None


_FT = "Fine-tuning (after the padding swap)"


@dataclass
class FinetuneConfig:
    """How to fine-tune after the swap. Validated on creation; CLI flags are listed by ``ppp-audit --help``.

    Args:
        steps: Optimiser steps per scheme (``--finetune-steps``).
        lr: Learning rate, constant (``--lr``).
        optimizer: A timm optimiser name, e.g. ``adamw`` or ``sgd`` (Nesterov momentum) (``--optimizer``).
        batch_size: Training crops per step (``--finetune-batch-size``).
        weight_decay: Weight decay; timm exempts biases and norm weights (``--weight-decay``).
        momentum: Momentum of SGD-type optimisers.
        bn: ``frozen``: BatchNorm layers stay in eval mode (running statistics fixed, affine weights still train);
            ``train``: they update their statistics from the training batches (``--bn``).
        labels: ``None``: distil the original model (label-free); ``folder``: cross-entropy with the class-per-folder
            labels of an image folder; ``dataset``: with the class-label column of an ``hfds/`` dataset (``--labels``).
        distill_loss: ``kl``: KL divergence between temperature-softened distributions, times ``T²``; ``mse``: mean
            squared error between logits (``--distill-loss``).
        temperature: Softening temperature ``T`` of the ``kl`` loss (``--temperature``).
        measure_every: Measure PPP every this many steps for a formation curve; 0: only before and after
            (``--measure-every``).
        train_images: Size of the training pool, cycled in seeded shuffles; ``None``: fresh built-in images every step,
            or every non-held-out image of a folder (``--train-images``).
        save_weights: Folder to save each fine-tuned model in, as ``DIR/SCHEME`` (``--save-weights``).
        repair: Add the consistency term to the objective (docs/repair.md): the student's features of the padded crop
            at the repaired layers should equal the original model's features of the same positions computed from the
            whole window; with no ``--padding`` the model keeps its native padding (``--repair``).
        repair_weight: Weight λ of the consistency term (``--repair-weight``).
        repair_layers: Audited layers the consistency term covers; ``None``: every audited layer
            (``--repair-layers``).
        repair_compare: Also run a plain fine-tune with the same steps, optimiser, data and seed, and report it
            beside the repair (``--repair-compare``).
    """

    steps: int = setting(
        100, help="Fine-tune this many steps after each --padding swap, then measure again (0: no fine-tuning).",
        flags=("--finetune-steps",), cli_name="finetune_steps", cli_default=0, panel=_FT, types=(int,), minimum=1,
        maximum=MAX_STEPS)
    lr: float = setting(1e-4, help="Learning rate (constant).", panel=_FT, types=(int, float), minimum=0)
    optimizer: str = setting("adamw", help="adamw, sgd, or another timm optimiser.", panel=_FT, types=(str,))
    batch_size: int = setting(16, help="Training crops per step.", flags=("--finetune-batch-size",),
                              cli_name="finetune_batch_size", panel=_FT, types=(int,), minimum=1, maximum=MAX_BATCH)
    weight_decay: float = setting(0.0, help="Weight decay.", panel=_FT, types=(int, float), minimum=0,
                                  hint="leave it out for 0")
    momentum: float = setting(0.9, help="Momentum of SGD-type optimisers.", panel=_FT, types=(int, float), minimum=0,
                              below=1)  # at 1 and beyond, SGD's velocity never decays
    bn: str = setting("frozen", help="frozen (BatchNorm statistics fixed) or train (updated from the batches).",
                      panel=_FT, types=(str,))
    labels: str | None = setting(
        None, help="'folder': cross-entropy on the class folders of --images DIR; 'dataset': on the class-label column "
        "of --images hfds/NAME. Default: distil the original model.", panel=_FT, types=(str,))
    distill_loss: str = setting("kl", help="kl (softened logits, x T^2) or mse (logits).", panel=_FT, types=(str,))
    # the loss is multiplied by T^2: a huge T overflows to a NaN loss, which would blame the learning rate
    temperature: float = setting(1.0, help="Temperature T of the kl loss.", panel=_FT, types=(int, float), above=0,
                                 maximum=100, hint="use 1 for plain KL; distillation temperatures are 1 to 20")
    measure_every: int = setting(
        0, help="Also measure PPP every N steps (a formation curve); 0: before and after only.", panel=_FT,
        types=(int,), minimum=0, maximum=MAX_STEPS, hint="0 measures only before and after")
    train_images: int | None = setting(
        None, help="Training pool size (default: fresh built-in images each step / all non-held-out folder images).",
        panel=_FT, types=(int,), minimum=1, maximum=MAX_IMAGES, hint="leave it out for fresh images")
    save_weights: str | None = setting(
        None, help="Save each fine-tuned model as timm safetensors in DIR/SCHEME.", metavar="DIR", panel=_FT,
        types=(str,), parse=lambda v: str(v) if v else None)
    repair: bool = setting(
        False, help="Repair PPP: also train the padded crop's features to match the original model's features of the "
        "whole window (docs/repair.md); without --padding the native padding is kept.", flags=("--repair",),
        panel=_FT, types=(bool,))
    # 30: chosen from a measured sweep of λ ∈ {1, 3, 10, 30, 100} (docs/repair.md, "Choosing the defaults")
    repair_weight: float = setting(30.0, help="Weight λ of the repair's consistency term.", metavar="λ", panel=_FT,
                                   types=(int, float), minimum=0)
    repair_layers: list[str] | None = setting(
        None, help="Comma-separated audited layers the repair covers (default: all audited layers).",
        cli_type=Optional[str], parse=_comma_list, metavar="NAMES", panel=_FT, types=(list, tuple), items=str)
    repair_compare: bool = setting(
        False, help="With --repair, also run a plain fine-tune (same steps, optimiser, data, seed) to compare.",
        flags=("--repair-compare",), panel=_FT, types=(bool,))

    def __post_init__(self) -> None:
        check_types(self)
        check_ranges(self)
        if self.bn not in BN_MODES:
            _bad(f"unknown --bn mode '{self.bn}'", f"use one of {', '.join(BN_MODES)}")
        if self.labels is not None and self.labels not in LABEL_SOURCES:
            _bad(f"unknown --labels source '{self.labels}'",
                 "use --labels folder or --labels dataset, or leave it out to distil")
        if self.distill_loss not in DISTILL_LOSSES:
            _bad(f"unknown --distill-loss '{self.distill_loss}'", f"use one of {', '.join(DISTILL_LOSSES)}")
        if not self.repair and (self.repair_compare or self.repair_layers is not None):
            flag = "--repair-compare" if self.repair_compare else "--repair-layers"
            _bad(f"{flag} needs --repair", "add --repair, or leave it out")
        if self.repair_layers is not None:
            self.repair_layers = list(dict.fromkeys(self.repair_layers))
            if not self.repair_layers:
                _bad("--repair-layers names no layer", "name audited layers, or leave it out for all of them")
        if self.optimizer.lower() not in OPTIMIZERS:
            close = difflib.get_close_matches(self.optimizer.lower(), OPTIMIZERS, n=1)
            _bad(f"unknown optimizer '{self.optimizer}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                 "use adamw or sgd, or another timm optimiser listed in ppp_audit.config.OPTIMIZERS")
        self.optimizer = self.optimizer.lower()

    @property
    def objective(self) -> str:
        """``distill-kl``, ``distill-mse`` or ``cross-entropy``."""
        return "cross-entropy" if self.labels else f"distill-{self.distill_loss}"

    def settings(self) -> dict[str, Any]:
        """JSON-able settings for the report."""
        return {"objective": self.objective, **{k: v for k, v in dataclasses.asdict(self).items() if k != "steps"}}


def _as_path(value: str | os.PathLike | None) -> Path | None:
    """A path field's value as a :class:`~pathlib.Path` (``None`` stays ``None``)."""
    return None if value is None else Path(value)


def _check_repo_ids(*names: str | None) -> None:
    """Refuse a malformed Hub repo id (``None`` entries are skipped) as a :class:`ConfigError`, with
    :func:`ppp_audit.hub.check_repo_ids`'s line. Imports :mod:`ppp_audit.hub` (torch-free) and ``huggingface_hub``'s
    validator only when a repo is named."""
    if any(name is not None for name in names):
        from .hub import check_repo_ids

        try:
            check_repo_ids(*names)
        except PPPAuditError as exc:
            raise ConfigError(exc.message, exc.hint) from None


_PATH_TYPES = (str, os.PathLike)
_PUSH_TO = {
    "private": dict(default=False, help="Create the dataset repo private.", flags=("--private",), types=(bool,)),
    "revision": dict(default=None, help="Branch of the dataset repo to push to (default: main).", metavar="BRANCH",
                     types=(str,)),
    "create_pr": dict(default=False, help="Open a pull request on the dataset repo instead.", flags=("--create-pr",),
                      types=(bool,)),
}
"""How a dataset repo is pushed to, the same for a report (:class:`PushConfig`) and a leaderboard
(:class:`LeaderboardConfig`): each class declares its own fields from these."""


@dataclass
class OutputConfig:
    """Where a finished audit's report goes (``ppp-audit audit`` and ``demo``). Validated on creation; the paths
    themselves are checked before the audit runs (writable, no report to replace unless ``overwrite``).

    Args:
        json_out: Write the report as JSON to this file, or ``-`` for stdout (JSON only) (``--json``).
        out: Folder to write ``report.json``, the PNG figures and ``report.html`` into (``--out``).
        progress: Show each phase on stderr: live on a terminal; in a log, a line per phase and a heartbeat
            (``--progress/--no-progress``).
        overwrite: Replace the report already at ``out`` or ``json_out``, and the figures ppp-audit drew for it that
            the new one does not draw; files ppp-audit did not write are never replaced (``--overwrite``).
    """

    json_out: str | None = setting(None, help="Write the report as JSON to PATH, or '-' for stdout (JSON only).",
                                   flags=("--json",), metavar="PATH", types=(str,))
    out: Path | None = setting(None, help="Folder to write report.json, PNG figures and report.html into.",
                               flags=("--out",), metavar="DIR", types=_PATH_TYPES)
    progress: bool = setting(
        True, help="Show each phase on stderr: live on a terminal; in a log, a line per phase and a heartbeat "
        "(runs over a minute).", flags=("--progress/--no-progress",), types=(bool,))
    overwrite: bool = setting(
        False, help="Replace the report already at --out or --json (and the figures ppp-audit drew for it that the "
        "new one does not draw; files ppp-audit did not write are never replaced).", flags=("--overwrite",),
        types=(bool,))

    def __post_init__(self) -> None:
        check_types(self)
        self.out = _as_path(self.out)


@dataclass
class PushConfig:
    """Where a report is pushed on the Hugging Face Hub (``ppp-audit audit`` and ``push``). Validated on creation:
    the repo ids are checked, and dataset-repo settings without a target are refused.

    Args:
        push_to_hub: Dataset repo to push the report to, saved locally first (``--push-to-hub``; the ``REPO_ID``
            argument of ``ppp-audit push``).
        model_pr: Open a pull request on the model's repo adding the scores to its card (``--model-pr``).
        model_repo: Model repo for ``model_pr``; ``None``: where the audited weights came from (``--model-repo``).
        private: Create the dataset repo private (``--private``).
        revision: Branch of the dataset repo to push to; ``None``: main (``--revision``).
        create_pr: Open a pull request on the dataset repo instead of pushing to the branch (``--create-pr``).
    """

    push_to_hub: str | None = setting(None, help="Dataset repo to push the report to (saved locally first).",
                                      metavar="REPO_ID", types=(str,))
    model_pr: bool = setting(False, help="Open a pull request on the model's repo adding the scores to its card.",
                             flags=("--model-pr",), types=(bool,))
    model_repo: str | None = setting(None, help="Model repo for --model-pr (default: where the audited weights came "
                                     "from).", metavar="REPO_ID", types=(str,))
    private: bool = setting(**_PUSH_TO["private"])
    revision: str | None = setting(**_PUSH_TO["revision"])
    create_pr: bool = setting(**_PUSH_TO["create_pr"])

    def __post_init__(self) -> None:
        check_types(self)
        if not self.wanted:
            if self.model_repo or self.private or self.revision or self.create_pr:
                _bad("--model-repo/--private/--revision/--create-pr need a push target",
                     "add --push-to-hub REPO_ID and/or --model-pr")
            return
        _check_repo_ids(self.push_to_hub, self.model_repo)

    @property
    def wanted(self) -> bool:
        """Whether anything is to be pushed: a dataset repo, a model-repo pull request, or both."""
        return self.push_to_hub is not None or self.model_pr

    def push_options(self) -> dict[str, Any] | None:
        """The keyword arguments of :func:`ppp_audit.hub.push_report`; ``None`` when nothing is to be pushed."""
        if not self.wanted:
            return None
        return {"repo_id": self.push_to_hub, "model_pr": self.model_pr, "model_repo": self.model_repo,
                "private": self.private or None, "revision": self.revision, "create_pr": self.create_pr}


@dataclass
class SweepConfig:
    """How ``ppp-audit sweep`` runs its models (the audit settings they share are an :class:`AuditConfig`).
    Validated on creation.

    Args:
        model_list: Text files of model names or patterns, one per line (``--model-list``, repeatable).
        out: The sweep folder: one run folder per model and settings (``--out``; the command needs it).
        force: Redo every model, done or not; by default a model whose run with these settings is in ``out`` is
            skipped, whatever its run settings (``-b``, ``--workers``, ``--device``) (``--force``).
        retry_failed: Redo the models recorded as failed (``--retry-failed``).
        timeout: Time limit per model, in seconds; finite and positive (``--timeout``).
        pages: Write each model's figures and ``report.html`` (``--pages/--no-pages``).
        progress: Show the sweep's progress on stderr, a line per model when stderr is not a terminal
            (``--progress/--no-progress``).
    """

    model_list: list[Path] | None = setting(
        None, help="A text file of model names or patterns, one per line (repeatable).", flags=("--model-list",),
        metavar="FILE", types=(list, tuple))
    out: Path | None = setting(None, help="The sweep folder (needed): one run folder per model and settings.",
                               flags=("--out",), metavar="DIR", types=_PATH_TYPES)
    force: bool = setting(
        False, help="Redo every model, done or not (by default a model whose run with these settings is in DIR is "
        "skipped, whatever -b, --workers or --device).", flags=("--force",), types=(bool,))
    retry_failed: bool = setting(False, help="Redo the models recorded as failed.", flags=("--retry-failed",),
                                 types=(bool,))
    timeout: float = setting(1800.0, help="Time limit per model.", flags=("--timeout",), metavar="SECONDS",
                             types=(int, float))
    pages: bool = setting(True, help="Write each model's figures and report.html.", flags=("--pages/--no-pages",),
                          types=(bool,))
    progress: bool = setting(
        True, help="Show the sweep's progress on stderr (a line per model when stderr is not a terminal).",
        flags=("--progress/--no-progress",), types=(bool,))

    def __post_init__(self) -> None:
        check_types(self)
        if not 0 < self.timeout < math.inf:  # also false for nan; before check_ranges, which says less
            _bad(f"--timeout must be a positive number of seconds (got {self.timeout:g})",
                 "pass seconds per model, e.g. 600")
        check_ranges(self)
        if self.model_list is not None:
            if not all(isinstance(file, _PATH_TYPES) for file in self.model_list):
                _bad(f"SweepConfig.model_list must be a list or tuple of paths (got {self.model_list!r})",
                     "e.g. model_list=['models.txt']")
            self.model_list = [Path(file) for file in self.model_list]
        self.out = _as_path(self.out)


@dataclass
class ShowConfig:
    """How ``ppp-audit show`` re-renders a saved report. Validated on creation.

    Args:
        out: Folder for the figures and ``report.html``; ``None``: the report's folder (``--out``).
        figures: Write the missing figures and ``report.html`` (``--figures/--no-figures``).
        overwrite: Redraw the figures and the page even if they exist (``--overwrite``).
        embed: Also write ``report.embedded.html``, the page with its images inside (``--embed``).
    """

    out: Path | None = setting(None, help="Folder for figures and report.html (default: the report's folder).",
                               flags=("--out",), metavar="DIR", types=_PATH_TYPES)
    figures: bool = setting(True, help="Write missing figures and report.html.", flags=("--figures/--no-figures",),
                            types=(bool,))
    overwrite: bool = setting(False, help="Redraw figures and the page even if they exist.", flags=("--overwrite",),
                              types=(bool,))
    embed: bool = setting(
        False, help="Write report.embedded.html: the page with its images inside (one file to share); report.html "
        "stays as it is.", flags=("--embed",), types=(bool,))

    def __post_init__(self) -> None:
        check_types(self)
        self.out = _as_path(self.out)


@dataclass
class LeaderboardConfig:
    """How ``ppp-audit leaderboard`` ranks a sweep and where it pushes the table. Validated on creation.

    Args:
        join: A CSV with a ``model`` column (e.g. timm's ``results-imagenet.csv``) whose other columns are added by
            model name (``--join``).
        top: Rows of the terminal table; 0: none (``--top``).
        push_to_hub: Dataset repo to push the leaderboard and its card to, written locally first (``--push-to-hub``).
        private: Create the dataset repo private (``--private``).
        revision: Branch of the dataset repo to push to; ``None``: main (``--revision``).
        create_pr: Open a pull request on the dataset repo instead of pushing to the branch (``--create-pr``).
    """

    join: Path | None = setting(
        None, help="A CSV with a model column (e.g. timm's results-imagenet.csv): its other columns are added by model "
        "name.", flags=("--join",), metavar="FILE", types=_PATH_TYPES)
    top: int = setting(20, help="Rows of the terminal table (0: none).", flags=("--top",), metavar="N", types=(int,))
    push_to_hub: str | None = setting(
        None, help="Dataset repo to push the leaderboard and its card to (written locally first).", metavar="REPO_ID",
        types=(str,))
    private: bool = setting(**_PUSH_TO["private"])
    revision: str | None = setting(**_PUSH_TO["revision"])
    create_pr: bool = setting(**_PUSH_TO["create_pr"])

    def __post_init__(self) -> None:
        check_types(self)
        if self.push_to_hub is None and (self.private or self.revision or self.create_pr):
            _bad("--private/--revision/--create-pr need a push target", "add --push-to-hub REPO_ID")
        if self.top < 0:
            _bad(f"--top must be 0 or more (got {self.top})", "pass the number of rows to show, 0 for none")
        check_ranges(self)
        _check_repo_ids(self.push_to_hub)
        self.join = _as_path(self.join)


def cli_fields(config_class: type, *names: str) -> list[dataclasses.Field]:
    """The fields of ``config_class`` that the CLI offers (all of them, or those ``names``), in declaration order."""
    fields = [f for f in dataclasses.fields(config_class) if f.metadata.get("cli", True)]
    if names:
        by_name = {f.name: f for f in fields}
        return [by_name[name] for name in names]
    return fields


def config_from_options(config_class: type, options: dict[str, Any], **fixed: Any) -> Any:
    """A config built from keyword options named as its fields; an unknown name is one clear error, not a TypeError
    deep inside (used by :func:`ppp_audit.testing.measure` and the pytest plugin)."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        close = [difflib.get_close_matches(name, sorted(known), n=1) for name in unknown]
        hint = "; ".join(f"did you mean '{c[0]}'?" for c in close if c) or f"known: {', '.join(sorted(known))}"
        _bad(f"unknown setting {', '.join(map(repr, unknown))} for {config_class.__name__}", hint)
    return config_class(**{**options, **fixed})


__all__ = ["AuditConfig", "FinetuneConfig", "LeaderboardConfig", "OutputConfig", "PushConfig", "ShowConfig",
           "SweepConfig", "NATIVE", "PRECISIONS", "BN_MODES", "DISTILL_LOSSES", "LABEL_SOURCES",
           "HFDS_PREFIX", "MAX_BATCH", "MAX_IMAGES", "MAX_SIDE", "MAX_STEPS", "OPTIMIZERS", "check_ranges",
           "cli_fields", "config_from_options", "option_flag", "parse_hfds", "setting"]
