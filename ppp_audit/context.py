"""Global context: modules whose output at one position depends on the whole map, matched between the two passes.

Squeeze-excitation, efficient channel attention and ConvNeXt-V2's global response norm pool their input over the whole
map. The crop pass pools over the crop's ``S x S``; a plain window pass would pool over the window's ``(S + 2m)²`` of
content, so ``Δ`` would hold a context-size effect that is not padding, and every position would depend on every
pixel (the receptive-field probe would see the whole window at every stage). A :class:`ContextMatcher` makes the
reference compare like with like: the crop pass records each such module's input side, and the window pass pools
over the crop's footprint (the centred block of that side) instead of the whole map. A padding-free model then gives
``Δ = 0`` exactly, with or without squeeze-excitation; with padding, the gates of the crop pass still see the padded
border and differ from the window's, which is padding's effect and stays in ``Δ``.

The receptive-field probe (:mod:`ppp_audit.receptive`) runs with the pooled statistics detached
(:meth:`ContextMatcher.local_only`): the matched reference depends on the window's pixels only through the local
paths and through statistics of the footprint, so the local reach is what the margin has to cover.

Matching is a per-class forward in :data:`CONTEXT_MATCHES`, keyed by the class's qualified name (``module.Class``;
the timm classes are built in; a plugin registers more under the entry-point group ``ppp_audit.context_matches``).
A class that shares a matched class's short name but not its module (timm has two ``SEModule``) is not matched by
accident: it is listed as unmatched.
Modules known to pool globally without a matching forward (CBAM, gather-excite, global context, non-local attention,
ViT attention, ...) are listed as unmatched, per tapped layer, in the report.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch.nn as nn
from torch import Tensor

from .registry import Registry

ContextForward = Callable[[nn.Module, Tensor, "Pooling"], Tensor]
"""``(module, input, pooling) -> output``: the module's forward with its global statistics taken by ``pooling``."""

def _last_two(module: nn.Module) -> tuple[int, int]:
    return (-2, -1)


CONTEXT_MATCHES: Registry[ContextForward] = Registry(
    "global-context match", entry_point_group="ppp_audit.context_matches", metadata={"spatial_dims": _last_two})
"""Matching forwards by the qualified name of the class they replicate (``timm.layers.squeeze_excite.SEModule``; the
timm classes need not be imported here, and a subclass is not matched by accident); ``spatial_dims`` gives a
module's two spatial input dimensions."""

UNMATCHED_GLOBAL = frozenset({
    "ChannelAttn", "LightChannelAttn", "GatherExcite", "GlobalContext", "SplitAttn", "NonLocalAttn",
    "BatNonLocalAttn", "LambdaLayer", "BottleneckAttn", "Attention", "AttentionPoolLatent", "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d", "SelectAdaptivePool2d", "AdaptiveAvgMaxPool2d", "AdaptiveCatAvgMaxPool2d",
})
"""Class names of timm (and torch) modules that pool or attend over the whole map and have no matching forward: the
reference of the layers after them still holds the window's larger context, and the report says so."""


def register_context_match(*class_names: str, spatial_dims: Callable[[nn.Module], tuple[int, int]] = _last_two,
                           ) -> Callable[[ContextForward], ContextForward]:
    """Register a matching forward for modules of the named classes.

    Args:
        class_names: The classes this forward replicates, by qualified name (``module.Class``).
        spatial_dims: The input's two spatial dimensions for a module (default the last two).
    """
    def decorate(forward: ContextForward) -> ContextForward:
        for name in class_names:
            CONTEXT_MATCHES.add(name, forward, spatial_dims=spatial_dims)
        return forward
    return decorate


@dataclass(frozen=True)
class Pooling:
    """Where a global module takes its statistics: the centred ``height x width`` block of its input (``None``: the
    whole map), detached from the graph or not.

    Attributes:
        dims: The input's two spatial dimensions.
        height: Rows of the block, or ``None`` for the whole map.
        width: Columns of the block.
        detach: Cut the statistics from the autograd graph (the receptive-field probe follows local paths only).
    """

    dims: tuple[int, int]
    height: int | None = None
    width: int | None = None
    detach: bool = False

    def region(self, x: Tensor) -> Tensor:
        """The part of ``x`` the statistics are taken over."""
        if self.height is not None and self.width is not None:
            for dim, side in zip(self.dims, (self.height, self.width)):
                x = x.narrow(dim, (x.shape[dim] - side) // 2, side)
        return x

    def mean(self, x: Tensor, *, keepdim: bool = True) -> Tensor:
        """The spatial mean over the region."""
        return self._cut(self.region(x).mean(self.dims, keepdim=keepdim))

    def amax(self, x: Tensor) -> Tensor:
        """The spatial maximum over the region."""
        return self._cut(self.region(x).amax(self.dims, keepdim=True))

    def norm(self, x: Tensor) -> Tensor:
        """The spatial L2 norm over the region (a sum: the block has as many positions as the crop's map)."""
        return self._cut(self.region(x).norm(p=2, dim=self.dims, keepdim=True))

    def _cut(self, stats: Tensor) -> Tensor:
        return stats.detach() if self.detach else stats


# -- the timm classes -------------------------------------------------------------------------------------------------


@register_context_match("timm.models._efficientnet_blocks.SqueezeExcite")  # efficientnet, mobilenetv3, ...
def _squeeze_excite(module: nn.Module, x: Tensor, pool: Pooling) -> Tensor:
    x_se = module.conv_expand(module.act1(module.conv_reduce(pool.mean(x))))
    return x * module.gate(x_se)


def _squeeze(module: nn.Module, x: Tensor, pool: Pooling) -> Tensor:
    x_se = pool.mean(x)
    if getattr(module, "add_maxpool", False):
        x_se = 0.5 * x_se + 0.5 * pool.amax(x)
    return x_se


@register_context_match("timm.layers.squeeze_excite.SEModule")  # seresnext, regnety, nfnet, ...
def _se_module(module: nn.Module, x: Tensor, pool: Pooling) -> Tensor:
    x_se = module.fc2(module.act(module.bn(module.fc1(_squeeze(module, x, pool)))))
    return x * module.gate(x_se)


@register_context_match("timm.layers.squeeze_excite.EffectiveSEModule")  # vovnet's eSE
def _effective_se(module: nn.Module, x: Tensor, pool: Pooling) -> Tensor:
    return x * module.gate(module.fc(_squeeze(module, x, pool)))


@register_context_match("timm.layers.squeeze_excite.SqueezeExciteCl", spatial_dims=lambda module: (1, 2))
def _squeeze_excite_cl(module: nn.Module, x: Tensor, pool: Pooling) -> Tensor:
    x_se = module.fc2(module.act(module.fc1(pool.mean(x))))
    return x * module.gate(x_se)


@register_context_match("timm.layers.eca.EcaModule", "timm.layers.eca.CecaModule")  # ecaresnet, ...
def _eca(module: nn.Module, x: Tensor, pool: Pooling) -> Tensor:
    import torch.nn.functional as F

    y = pool.mean(x, keepdim=False).view(x.shape[0], 1, -1)
    if type(module).__name__ == "CecaModule":
        y = F.pad(y, (module.padding, module.padding), mode="circular")
        y = module.conv(y)
    else:
        y = module.conv(y)
        if module.conv2 is not None:
            y = module.conv2(module.act(y))
    return x * module.gate(y).view(x.shape[0], -1, 1, 1).expand_as(x)


@register_context_match("timm.layers.selective_kernel.SelectiveKernelAttn")  # sknet: attention over the paths
def _selective_kernel_attn(module: nn.Module, x: Tensor, pool: Pooling) -> Tensor:
    import torch

    y = module.fc_select(module.act(module.bn(module.fc_reduce(pool.mean(x.sum(1))))))
    batch, channels, height, width = y.shape
    return torch.softmax(y.view(batch, module.num_paths, channels // module.num_paths, height, width), dim=1)


def _grn_dims(module: nn.Module) -> tuple[int, int]:
    return tuple(module.spatial_dim)  # type: ignore[return-value]


@register_context_match("timm.layers.grn.GlobalResponseNorm", spatial_dims=_grn_dims)  # ConvNeXt-V2
def _global_response_norm(module: nn.Module, x: Tensor, pool: Pooling) -> Tensor:
    import torch

    x_g = pool.norm(x)
    x_n = x_g / (x_g.mean(dim=module.channel_dim, keepdim=True) + module.eps)
    return x + torch.addcmul(module.bias.view(module.wb_shape), module.weight.view(module.wb_shape), x * x_n)


@register_context_match("timm.models.senet.SEModule")  # legacy_seresnet, legacy_senet
def _senet_se_module(module: nn.Module, x: Tensor, pool: Pooling) -> Tensor:
    return x * module.sigmoid(module.fc2(module.relu(module.fc1(pool.mean(x)))))


# -- finding and matching them ---------------------------------------------------------------------------------------


def qualified_name(module: nn.Module) -> str:
    """``module.Class`` of a module's class: the key of :data:`CONTEXT_MATCHES`."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def is_matched(module: nn.Module) -> bool:
    """A registered matching forward replicates this module."""
    return qualified_name(module) in CONTEXT_MATCHES


def is_global(module: nn.Module) -> bool:
    """The module pools or attends over its whole input map (matched or not)."""
    if is_matched(module):
        return True
    name = type(module).__name__
    if name in {key.rsplit(".", 1)[-1] for key in CONTEXT_MATCHES.names()}:
        return True  # a class named as a matched one (timm has two SEModule): the same kind, its forward unknown
    if name in UNMATCHED_GLOBAL:
        size = getattr(module, "output_size", 1)  # an adaptive pool to a grid larger than 1x1 is local-ish
        return size in (1, (1, 1), None) or name not in ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d")
    return False


class ContextMatcher:
    """The global modules of one model, and the contexts that match their statistics between the two passes.

    Use :meth:`recording` around the crop pass and :meth:`matching` around the window pass of the same batch;
    :meth:`local_only` around a receptive-field probe. A model without global modules makes all three no-ops.

    Args:
        model: The model (its modules are found once, here).
        match: Match the registered modules; ``False`` leaves every global module unmatched (to see what matching
            changes: ``AuditConfig(match_context=False)``).
    """

    def __init__(self, model: nn.Module, match: bool = True) -> None:
        self.modules: dict[str, nn.Module] = {name: module for name, module in model.named_modules()
                                              if name and is_global(module)}
        # of nested global modules only the outermost counts (e.g. a CBAM, not its channel attention)
        self.modules = {name: module for name, module in self.modules.items()
                        if not any(name.startswith(outer + ".") for outer in self.modules)}
        self.matched = [name for name, module in self.modules.items() if match and is_matched(module)]
        self.unmatched = [name for name in self.modules if name not in self.matched]
        self._sides: dict[str, tuple[int, int]] = {}

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record each matched module's input side (the crop's footprint at its depth) during the crop pass."""
        if not self.matched:
            yield
            return

        def record(name: str, inputs: tuple) -> None:
            x = inputs[0]
            dims = _spatial_dims(self.modules[name])
            self._sides[name] = (int(x.shape[dims[0]]), int(x.shape[dims[1]]))

        handles = [self.modules[name].register_forward_pre_hook(lambda m, a, name=name: record(name, a))
                   for name in self.matched]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def matching(self) -> Iterator[None]:
        """Pool every matched module's statistics over the crop's footprint during the window pass.

        Modules the crop pass did not run (a head after the last tapped stage, skipped by ``forward_intermediates``)
        are left as they are: the window pass does not reach them either.
        """
        with self._replaced(lambda name, dims: Pooling(dims, *self._sides[name]), only=set(self._sides)):
            yield

    @contextlib.contextmanager
    def watching(self) -> Iterator[dict[str, Tensor]]:
        """The outputs of every global module during the block that carry a gradient, by name (filled as the
        forward pass runs): a gradient from a tapped layer back to one says the layer depends on that module."""
        seen: dict[str, Tensor] = {}

        def keep(name: str, output: object) -> None:
            if isinstance(output, Tensor) and output.requires_grad:
                seen[name] = output

        handles = [module.register_forward_hook(lambda m, a, out, name=name: keep(name, out))
                   for name, module in self.modules.items()]
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def local_only(self) -> Iterator[None]:
        """Detach every matched module's statistics (taken over the whole map) from the autograd graph."""
        with self._replaced(lambda name, dims: Pooling(dims, detach=True)):
            yield

    @contextlib.contextmanager
    def _replaced(self, pooling: Callable[[str, tuple[int, int]], Pooling],
                  only: set[str] | None = None) -> Iterator[None]:
        replaced = []
        try:
            for name in self.matched:
                if only is not None and name not in only:
                    continue
                module = self.modules[name]
                forward = CONTEXT_MATCHES.get(qualified_name(module))
                pool = pooling(name, _spatial_dims(module))
                # an instance attribute shadows the class's forward for this module only, until deleted
                module.forward = lambda x, module=module, forward=forward, pool=pool: forward(module, x, pool)
                replaced.append(module)
            yield
        finally:
            for module in replaced:
                del module.forward


def _spatial_dims(module: nn.Module) -> tuple[int, int]:
    return CONTEXT_MATCHES.entry(qualified_name(module)).metadata["spatial_dims"](module)


__all__ = ["CONTEXT_MATCHES", "UNMATCHED_GLOBAL", "ContextForward", "ContextMatcher", "Pooling", "is_global",
           "is_matched", "qualified_name", "register_context_match"]
