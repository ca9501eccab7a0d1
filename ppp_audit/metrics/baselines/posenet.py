"""PosENet probe (Islam et al., ICLR 2020; docs/baselines.md): can a tiny read-out predict position maps from frozen
features?

The model is frozen. Its tapped feature maps are resized to a common ``grid × grid`` (area averaging to shrink,
bilinear to grow), concatenated, and standardised per channel with training-set statistics (a fixed affine map, so it
only conditions the optimisation: a conv on standardised inputs is a conv on the raw inputs with other weights). A
read-out ``Conv2d(C, T, 3, padding=0) → BatchNorm2d(T) → sigmoid`` predicts ``T`` fixed position maps at once; each
output channel has its own weights, so this is ``T`` independent read-outs trained on the same batches with MSE. It has
no padding, so any position it reads comes from the features. Scores: Spearman rank correlation (SPC) and mean absolute
error (MAE) per image between the prediction and the target, averaged over held-out images, and on constant black,
white and uniform-noise inputs.

Features are computed once per image and cached in memory; training then touches only the cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...baseline_options import PosENetConfig  # torch-free, so that configs are checked without torch

TARGETS = ("horizontal", "vertical", "gaussian", "horizontal_stripes", "vertical_stripes")
"""Position maps: gradients left→right and top→bottom, a centred gaussian, stripes running horizontally (varying
with y) and vertically (varying with x)."""
CONSTANT_INPUTS = ("black", "white", "noise")

Extract = Callable[[Tensor], Sequence[Tensor]]


def position_targets(size: int, *, sigma: float = 0.25, cycles: float = 2.0) -> Tensor:
    """The five target maps on a ``size × size`` grid of cell centres, values in [0, 1], shape (5, size, size).

    Args:
        size: Grid size.
        sigma: Gaussian width, as a fraction of the image side.
        cycles: Periods of the stripe patterns across the image.
    """
    u = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = u.view(-1, 1).expand(size, size), u.view(1, -1).expand(size, size)
    gaussian = torch.exp(-((x - 0.5).square() + (y - 0.5).square()) / (2 * sigma**2))
    stripes = lambda t: 0.5 - 0.5 * torch.cos(2 * math.pi * cycles * t)  # noqa: E731
    return torch.stack([x, y, gaussian, stripes(y), stripes(x)])


def rankdata(values: Tensor) -> Tensor:
    """Ranks (1-based, float64) along the last dimension; ties get the average of their ranks."""
    flat = values.reshape(-1, values.shape[-1])
    out = torch.empty(flat.shape, dtype=torch.float64, device=values.device)
    for row, v in zip(out, flat):
        _, inverse, counts = torch.unique(v, sorted=True, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).to(torch.float64)
        row.copy_((ends - (counts.to(torch.float64) - 1) / 2)[inverse])
    return out.reshape(values.shape)


def spearman(pred: Tensor, target: Tensor, tol: float = 0.0) -> Tensor:
    """Spearman rank correlation along the last dimension (ties averaged); 0 where either side is constant.

    A constant prediction carries no ordering, so it scores 0 rather than being undefined. Rows of ``pred`` whose range
    is at most ``tol`` count as constant, so float rounding in a flat map is not ranked as if it were a pattern.
    """
    target = target.expand_as(pred)
    rp, rt = rankdata(pred), rankdata(target)
    rp, rt = rp - rp.mean(-1, keepdim=True), rt - rt.mean(-1, keepdim=True)
    denom = (rp.square().sum(-1) * rt.square().sum(-1)).sqrt()
    flat = (pred.amax(-1) - pred.amin(-1) <= tol) | (denom == 0)
    return torch.where(flat, torch.zeros_like(denom), (rp * rt).sum(-1) / denom.clamp_min(1e-300))


def resize_to_grid(feature: Tensor, grid: int) -> Tensor:
    """Resize a (N, C, h, w) map to ``grid × grid``: area averaging where it shrinks, bilinear where it grows."""
    if feature.shape[-2:] == (grid, grid):
        return feature
    if feature.shape[-2] >= grid and feature.shape[-1] >= grid:
        return F.adaptive_avg_pool2d(feature, grid)
    return F.interpolate(feature, size=(grid, grid), mode="bilinear", align_corners=False)


def stack_features(features: Sequence[Tensor], grid: int) -> Tensor:
    """Multi-level features resized to a common grid and concatenated along channels."""
    return torch.cat([resize_to_grid(f.float(), grid) for f in features], dim=1)


def conv3x3_valid(x_last: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv2d(x, weight, bias)`` with no padding, for channels-last input (N, H, W, C); returns (N, T, H', W').

    Computed as one matrix product to ``k·k·T`` channels and ``k·k`` shifted sums: the same numbers as the conv, but
    much faster on CPUs, whose conv kernels are slow for the few output channels a read-out has.
    """
    n, h, w, c = x_last.shape
    t, _, kh, kw = weight.shape
    taps = (x_last.reshape(-1, c) @ weight.permute(1, 2, 3, 0).reshape(c, kh * kw * t)).view(n, h, w, kh, kw, t)
    out = sum(taps[:, i:i + h - kh + 1, j:j + w - kw + 1, i, j] for i in range(kh) for j in range(kw))
    out = out.permute(0, 3, 1, 2)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


class PosENetReadout(nn.Module):
    """Padding-free read-out: fixed per-channel standardisation, ``Conv2d(C, T, 3, padding=0)``, BatchNorm, sigmoid.

    Output maps are ``grid − 2`` wide: the valid positions of the 3×3 kernel. The conv runs as :func:`conv3x3_valid`.
    """

    def __init__(self, channels: int, num_targets: int, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("feature_mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("feature_std", std.view(1, -1, 1, 1).clone())
        self.conv = nn.Conv2d(channels, num_targets, 3, padding=0)
        self.norm = nn.BatchNorm2d(num_targets)

    def standardize(self, features: Tensor) -> Tensor:
        """(N, C, H, W) features -> standardised, channels-last (N, H, W, C) contiguous: the input of :meth:`head`."""
        return ((features - self.feature_mean) / self.feature_std).permute(0, 2, 3, 1).contiguous()

    def head(self, standardized: Tensor) -> Tensor:
        return torch.sigmoid(self.norm(conv3x3_valid(standardized, self.conv.weight, self.conv.bias)))

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.standardize(features))


def crop_targets(targets: Tensor) -> Tensor:
    """The targets at the read-out's output positions (the grid without its outermost ring)."""
    return targets[..., 1:-1, 1:-1]


def train_readout(features: Tensor, targets: Tensor, *, steps: int, lr: float, batch_size: int,
                  seed: int = 0) -> tuple[PosENetReadout, float]:
    """Fit a :class:`PosENetReadout` with Adam and MSE on cached features.

    Args:
        features: (N, C, grid, grid) cached features of the training images.
        targets: (T, grid, grid) position maps (the same for every image).
        steps: Optimiser steps.
        lr: Adam learning rate.
        batch_size: Images per step (sampled without replacement, reshuffled each epoch).
        seed: Seed of the initialisation and the sampling.

    Returns:
        The read-out in eval mode, and the training loss of the last 10 % of steps.
    """
    generator = torch.Generator().manual_seed(seed)
    mean, std = features.mean(dim=(0, 2, 3)), features.std(dim=(0, 2, 3))
    std = torch.where(std > 1e-6 * std.max().clamp_min(1e-30), std, torch.ones_like(std))
    with torch.random.fork_rng():  # a seeded init that leaves the caller's RNG streams alone
        torch.manual_seed(seed)
        readout = PosENetReadout(features.shape[1], targets.shape[0], mean, std).to(features.device)
    optimizer = torch.optim.Adam(readout.parameters(), lr=lr)
    with torch.no_grad():
        standardized = readout.standardize(features)  # once: training then only runs the head
    goal = crop_targets(targets).unsqueeze(0).to(features.device)
    batch_size = min(batch_size, features.shape[0])
    order, cursor, tail = torch.randperm(features.shape[0], generator=generator), 0, []
    readout.train()
    with torch.enable_grad():
        for step in range(steps):
            if cursor + batch_size > len(order):
                order, cursor = torch.randperm(features.shape[0], generator=generator), 0
            batch = standardized[order[cursor:cursor + batch_size].to(features.device)]
            cursor += batch_size
            loss = F.mse_loss(readout.head(batch), goal.expand(batch.shape[0], -1, -1, -1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= steps - max(1, steps // 10):
                tail.append(float(loss.detach()))
    return readout.eval(), sum(tail) / len(tail)


FLAT_TOLERANCE = 1e-5
"""A prediction map whose range is at most this (float32 rounding of a constant map) has no ranking: SPC 0."""


@torch.no_grad()
def score_readout(readout: PosENetReadout, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image SPC and MAE of the read-out's predictions, each of shape (N, T)."""
    pred = readout(features).flatten(2).double()
    goal = crop_targets(targets).flatten(1).to(pred)
    return spearman(pred, goal.unsqueeze(0), tol=FLAT_TOLERANCE), (pred - goal).abs().mean(-1)


@dataclass
class PosENetResult:
    """Scores per target: held-out images and constant inputs (``{input: {target: {"spc", "mae"}}}``)."""

    grid: int
    channels: int
    num_train: int
    num_test: int
    steps: int
    lr: float
    train_loss: float
    scores: dict[str, dict[str, dict[str, float]]]
    seconds: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(TARGETS))

    @property
    def mean_spc(self) -> float:
        """Held-out SPC averaged over the targets."""
        held_out = self.scores["held_out"]
        return sum(v["spc"] for v in held_out.values()) / len(held_out)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_spc": self.mean_spc}


@torch.no_grad()
def extract_stacked(extract: Extract, images: Tensor, grid: int, batch_size: int,
                    normalize: Callable[[Tensor], Tensor] | None = None, device: torch.device | str = "cpu") -> Tensor:
    """Cached multi-level features of ``images`` (N, 3, S, S in [0, 1]): (N, C, grid, grid) float32 on ``device``."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        out.append(stack_features(extract(normalize(x) if normalize else x), grid))
    return torch.cat(out)


def constant_images(size: int, num_noise: int, seed: int) -> dict[str, Tensor]:
    """Black, white (one image each) and ``num_noise`` uniform-noise images, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "black": torch.zeros(1, 3, size, size),
        "white": torch.ones(1, 3, size, size),
        "noise": torch.rand(num_noise, 3, size, size, generator=generator),
    }


def posenet_probe(extract: Extract, train_images: Tensor, test_images: Tensor, *, config: PosENetConfig | None = None,
                  normalize: Callable[[Tensor], Tensor] | None = None,
                  device: torch.device | str = "cpu") -> PosENetResult:
    """Train the read-out on ``train_images`` and score it on ``test_images`` and constant inputs.

    Args:
        extract: Frozen feature extractor: image batch -> list of (N, C, h, w) maps (e.g. a ``FeatureTaps``).
        train_images: (N, 3, S, S) images in [0, 1].
        test_images: Held-out images, same size.
        config: Budget and settings.
        normalize: Applied to every image batch before ``extract`` (the model's mean/std).
        device: Where features are computed and the read-out trained.
    """
    config = config or PosENetConfig()
    started = time.perf_counter()
    size = train_images.shape[-1]
    grid = config.grid or max(8, size // 16)
    targets = position_targets(grid)

    def features(images: Tensor) -> Tensor:
        return extract_stacked(extract, images, grid, config.batch_size, normalize, device)

    train = features(train_images)
    readout, train_loss = train_readout(train, targets, steps=config.steps, lr=config.lr,
                                        batch_size=config.batch_size, seed=config.seed)
    inputs = {"held_out": test_images, **constant_images(size, config.num_noise, config.seed)}
    scores = {}
    for label, images in inputs.items():
        spc, mae = score_readout(readout, features(images), targets)
        scores[label] = {name: {"spc": float(spc[:, t].mean()), "mae": float(mae[:, t].mean())}
                         for t, name in enumerate(TARGETS)}
    return PosENetResult(grid=grid, channels=train.shape[1], num_train=train.shape[0], num_test=test_images.shape[0],
                         steps=config.steps, lr=config.lr, train_loss=train_loss, scores=scores,
                         seconds=time.perf_counter() - started)
