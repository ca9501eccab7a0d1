"""F-Conv location test (Kayhan & van Gemert, CVPR 2020; docs/baselines.md): is absolute location linearly decodable?

Content (a ``c × c`` image crop) is pasted into the top-left or the bottom-right quadrant of a black ``2c × 2c``
canvas, which is then surrounded by a black border of ``b`` pixels: the content is ``b`` pixels from its nearest
canvas edges either way. Global average pools of the tapped feature maps, concatenated, feed a logistic regression
(L2-regularised, features standardised with training statistics) trained on some images and tested on others.

``c`` is a multiple of the model's largest stride, so the two placements differ by a shift the whole network is
equivariant to: a model that cannot see the canvas edge from the content (receptive field plus border effects smaller
than ``b``) produces the same pooled features for both placements and sits exactly at chance.

Pooled features get a little noise (relative size ``resolution``, default 1e-4) so that float32 rounding, which
differs deterministically between the two placements, cannot be decoded (see :func:`dither`).

Decision rule: location is *decodable* at border ``b`` when the test accuracy beats chance in a one-sided exact
binomial test at level ``alpha / len(borders)`` (Bonferroni over the sweep), treating the ``2 · num_test`` test
canvases as independent trials. The reported *largest decodable border* is the largest swept ``b`` that passes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...baseline_options import LocationConfig  # torch-free, so that configs are checked without torch

Extract = Callable[[Tensor], Sequence[Tensor]]
CORNERS = ("top_left", "bottom_right")


def paste(content: Tensor, border: int, corner: str) -> Tensor:
    """Put (N, 3, c, c) content into one quadrant of a black (N, 3, 2c + 2b, 2c + 2b) canvas, ``b`` from its edges."""
    n, channels, size, _ = content.shape
    canvas = content.new_zeros(n, channels, 2 * size + 2 * border, 2 * size + 2 * border)
    start = border if corner == "top_left" else border + size
    canvas[..., start:start + size, start:start + size] = content
    return canvas


@torch.no_grad()
def pooled_features(extract: Extract, images: Tensor, batch_size: int,
                    normalize: Callable[[Tensor], Tensor] | None = None, device: torch.device | str = "cpu") -> Tensor:
    """Global average pool of every tapped map, concatenated: (N, sum of channels), float64 on the CPU."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        maps = extract(normalize(x) if normalize else x)
        out.append(torch.cat([m.float().mean(dim=(-2, -1)) for m in maps], dim=1).double().cpu())
    return torch.cat(out)


@dataclass
class LogisticProbe:
    """A fitted binary logistic regression on standardised features."""

    mean: Tensor
    scale: Tensor
    weight: Tensor
    bias: Tensor

    def logits(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, x: Tensor) -> Tensor:
        return (self.logits(x) > 0).long()


def fit_logistic(x: Tensor, y: Tensor, *, l2: float = 1e-2, max_iter: int = 200) -> LogisticProbe:
    """L2-regularised logistic regression (mean BCE + ``l2·|w|²``), fitted by L-BFGS in float64.

    Features are standardised with the training mean and std (scale 1 for a constant feature).
    """
    x, y = x.double(), y.double()
    mean, std = x.mean(0), x.std(0)
    scale = torch.where(std > 0, std, torch.ones_like(std))
    z = (x - mean) / scale
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ weight + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LogisticProbe(mean=mean, scale=scale, weight=weight.detach(), bias=bias.detach())


def dither(train: Tensor, test: Tensor, resolution: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Add independent noise ``N(0, (resolution · RMS_k)²)`` to feature ``k`` of every sample (RMS over ``train``).

    Float32 sums over a canvas round differently depending on where the content sits (about 1e-7 of a feature's size),
    and those differences are deterministic per placement, so the paired design (each image on both corners) would
    decode them. Noise far above that level and far below any meaningful signal makes the probe blind to rounding.
    """
    if resolution <= 0:
        return train, test
    generator = torch.Generator().manual_seed(seed)
    scale = resolution * train.square().mean(0).sqrt()
    noise = lambda x: scale * torch.randn(x.shape, generator=generator, dtype=x.dtype)  # noqa: E731
    return train + noise(train), test + noise(test)


def binomial_sf(successes: int, trials: int, p: float = 0.5) -> float:
    """``P(X >= successes)`` for ``X ~ Binomial(trials, p)`` (exact)."""
    return sum(math.comb(trials, k) * p**k * (1 - p) ** (trials - k) for k in range(successes, trials + 1))


def min_decodable_accuracy(trials: int, alpha: float) -> float:
    """Smallest accuracy whose one-sided binomial p-value against chance (0.5) is below ``alpha``."""
    for k in range(trials + 1):
        if binomial_sf(k, trials) < alpha:
            return k / trials
    return math.inf


@dataclass
class LocationResult:
    """Accuracy against border width, and the largest border at which location is still decodable."""

    content: int
    borders: list[int]
    accuracy: list[float]
    p_value: list[float]
    decodable: list[bool]
    num_train: int
    num_test: int
    alpha: float
    threshold_accuracy: float | None  # None: too few test images for any accuracy to count as decodable
    seconds: float = 0.0
    canvas: list[int] = field(default_factory=list)

    @property
    def largest_decodable_border(self) -> int | None:
        passed = [b for b, ok in zip(self.borders, self.decodable) if ok]
        return max(passed) if passed else None

    @property
    def decodable_at_all_borders(self) -> bool:
        return all(self.decodable)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "largest_decodable_border": self.largest_decodable_border,
                "decodable_at_all_borders": self.decodable_at_all_borders,
                "rule": "one-sided exact binomial test vs 0.5, level alpha / len(borders)"}


def location_test(extract: Extract, train_content: Tensor, test_content: Tensor, *,
                  config: LocationConfig | None = None, normalize: Callable[[Tensor], Tensor] | None = None,
                  device: torch.device | str = "cpu") -> LocationResult:
    """Sweep the border, fit a probe per border on the training content, score it on the test content.

    Args:
        extract: Frozen feature extractor: image batch -> list of (N, C, h, w) maps.
        train_content: (N, 3, c, c) crops in [0, 1].
        test_content: Held-out crops, same size.
        config: Borders, budget, decision level.
        normalize: Applied to every canvas batch before ``extract``; the canvas is black (0) before it.
        device: Where features are computed.
    """
    config = config or LocationConfig()
    started = time.perf_counter()
    trials = 2 * test_content.shape[0]
    level = config.alpha / len(config.borders)
    threshold = min_decodable_accuracy(trials, level)

    def dataset(content: Tensor, border: int) -> tuple[Tensor, Tensor]:
        feats = [pooled_features(extract, paste(content, border, corner), config.batch_size, normalize, device)
                 for corner in CORNERS]
        labels = torch.cat([torch.full((content.shape[0],), i, dtype=torch.long) for i in range(len(CORNERS))])
        return torch.cat(feats), labels

    accuracy, p_values = [], []
    for border in config.borders:
        x_train, y_train = dataset(train_content, border)
        x_test, y_test = dataset(test_content, border)
        x_train, x_test = dither(x_train, x_test, config.resolution, config.seed)
        probe = fit_logistic(x_train, y_train, l2=config.l2)
        correct = int((probe.predict(x_test) == y_test).sum())
        accuracy.append(correct / trials)
        p_values.append(binomial_sf(correct, trials))
    size = train_content.shape[-1]
    return LocationResult(
        content=size, borders=list(config.borders), accuracy=accuracy, p_value=p_values,
        decodable=[p < level for p in p_values], num_train=train_content.shape[0], num_test=test_content.shape[0],
        alpha=config.alpha, threshold_accuracy=threshold if math.isfinite(threshold) else None,
        seconds=time.perf_counter() - started,
        canvas=[2 * size + 2 * b for b in config.borders],
    )
