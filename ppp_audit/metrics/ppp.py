"""PPP statistics (docs/metrics.md): pure functions and a streaming accumulator.

The accumulator keeps float64 running sums per element (memory O(C*h*w), independent of N). Sums of the padded-minus-
reference differences ``Δ`` and of the padded features ``A`` are kept per *jackknife group* (sample ``i`` goes to group
``i mod K``), so confidence intervals come from delete-a-group jackknife replicates without storing samples. All state
is sums, so two accumulators merge by adding their state (and ranks all-reduce it). The one exception is the *mist*
snapshots (the maps after the first 1, 10 and 100 images, :data:`MIST_COUNTS`): ``h × w`` maps taken as the images
arrive, which stay each accumulator's own.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..report import (
    CHANNEL_FRACTIONS, TOP_CHANNELS, BorderProfile, ChannelShares, LayerStats, MistSnapshots, top_count,
)

SIDES = ("top", "bottom", "left", "right")
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 19: 2.093, 24: 2.064, 29: 2.045}
"""Two-sided 95 % Student-t quantiles by degrees of freedom (jackknife CIs use K - 1)."""
NOISE_FLOOR_Z = 2.0
"""A ring of the extent profile counts as signal when its debiased energy exceeds this many jackknife SEs."""
MIST_COUNTS = (1, 10, 100)
"""Image counts at which the mist layer's maps are snapshotted (those below N; the N point comes from the sums)."""
MIST_STRIDE = 16
"""The stride of the default mist layer (the paper's teaser stage); without one, the middle tapped layer."""
TOP_MAPS = 4
"""How many of the strongest channels keep their map ``P_c`` in the report (``channel_shares.top_maps``)."""
TOP_MAP_CELLS = 32
"""The largest side of a stored channel map: larger maps are block-averaged down to it."""
TOP_MAP_DIGITS = 4
"""Significant digits of the stored channel maps (they are drawn, not computed with)."""
CUMULATIVE_POINTS = 24
"""Most points of a layer's sorted channel-energy curve (``channel_shares.cumulative``)."""
SIDE_DOMINANCE = 2.0
"""A channel's pattern lies along one side when that side's band energy exceeds this many times every other side's."""



def t_quantile_975(dof: int) -> float:
    """95 % two-sided Student-t quantile; tabulated values, the nearest smaller tabulated dof otherwise."""
    if dof <= 0:
        return math.nan
    return _T975[max(k for k in _T975 if k <= dof)] if dof < 30 else 1.96


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions (on per-element means/variances)
# ---------------------------------------------------------------------------------------------------------------------


def debiased_energy(mean: Tensor, var: Tensor, n: int | float, dims: tuple[int, ...] | None = None) -> Tensor:
    """``mean(mean²) − mean(var)/n``: the energy of the true mean, with the finite-``n`` noise energy removed."""
    if dims is None:
        return (mean.square().mean() - var.mean() / n)
    return mean.square().mean(dims) - var.mean(dims) / n


def ppp_strength(delta_mean: Tensor, delta_var: Tensor, mist_var: Tensor, n: int) -> float:
    """``SNR = RMS(P) / RMS(σ)`` with ``RMS(P)²`` debiased for finite ``n`` (clamped at 0)."""
    energy = debiased_energy(delta_mean, delta_var, n).clamp_min(0.0)
    return float(energy.sqrt() / mist_var.mean().sqrt().clamp_min(1e-300))


def channel_rms_map(delta_mean: Tensor, delta_var: Tensor, n: int) -> Tensor:
    """The picture users see: per-position channel-RMS of ``P`` (debiased, clamped at 0), shape (h, w)."""
    return debiased_energy(delta_mean, delta_var, n, dims=(0,)).clamp_min(0.0).sqrt()


def border_rings(height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Distances of every position to the borders, in feature pixels.

    Returns:
        ``rings`` (h, w): distance to the nearest border; ``side_distance`` (4, h, w): distance to the top, bottom,
        left and right border; ``side_band`` (4, h, w): the positions each side's profile uses — the middle half of
        the map along that side, up to the centre line — so a corner, which is near two sides, counts for neither
        and a signal along one side does not leak into the profiles of its neighbours.
    """
    y = torch.arange(height).view(-1, 1).expand(height, width)
    x = torch.arange(width).view(1, -1).expand(height, width)
    dist = torch.stack([y, height - 1 - y, x, width - 1 - x])
    rows_mid = (y >= height // 4) & (y < math.ceil(3 * height / 4))
    cols_mid = (x >= width // 4) & (x < math.ceil(3 * width / 4))
    band = torch.stack([cols_mid & (2 * y < height), cols_mid & (2 * y >= height - 1),
                        rows_mid & (2 * x < width), rows_mid & (2 * x >= width - 1)])
    return dist.min(0).values, dist, band


def ring_means(values: Tensor, rings: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``values[..., h, w]`` over each ring (restricted to ``mask``); NaN for empty rings."""
    num_rings = int(rings.max()) + 1
    weights = torch.nn.functional.one_hot(rings.flatten(), num_rings).to(values.dtype)  # (h*w, R)
    if mask is not None:
        weights = weights * mask.flatten().to(values.dtype)[:, None]
    counts = weights.sum(0)
    sums = values.flatten(-2) @ weights
    return sums / counts


def extent_from_profile(energy: Tensor, standard_error: Tensor, ring_px: float, z: float = NOISE_FLOOR_Z) -> float:
    """Distance from the border (input px) up to which the profile stays above its noise floor (contiguous): the outer
    edge of the last ring of the run, ``(k* + 1) · ring_px``, at most the centre of the profile's farthest ring,
    ``(K − 0.5) · ring_px`` for ``K`` rings. No position of the map lies farther from the border than that (≤ S/2),
    so a pattern over the whole map reaches exactly there, not past it."""
    above = (energy > z * standard_error) & torch.isfinite(energy)
    run = 0
    for flag in above.tolist():
        if not flag:
            break
        run += 1
    return min(run, len(above) - 0.5) * ring_px if run else 0.0


def convergence_sizes(groups: int) -> list[int]:
    """How many jackknife groups each convergence point uses: the powers of two below ``groups``, then ``groups``
    (1, 2, 4, 8 for 8 groups: N/8, N/4, N/2 and N images)."""
    sizes = [1 << k for k in range(groups.bit_length()) if 1 << k < groups]
    return sizes + [groups]


def convergence_curve(group_sums: Tensor, counts: Tensor,
                      strength: Callable[[Tensor, int], float]) -> list[tuple[int, float | None]]:
    """A strength measured on nested subsets of the images: the first 1, 2, 4, ..., K jackknife groups.

    Args:
        group_sums: Per-group sums of the estimator's samples, shape (K, ...); sample ``i`` is in group ``i mod K``,
            so the first ``k`` groups hold about ``k/K`` of the images.
        counts: Images per group, shape (K,).
        strength: ``(mean over the subset, its image count) -> strength``, the estimator the layer's full strength
            uses (its noise variances come from all N images: they estimate the same per-image variance, better).

    Returns:
        ``[(n_images, strength), ...]`` by strictly growing ``n`` (subsets that add only empty groups are merged into
        the larger one); the strength is ``None`` for a subset of fewer than 2 images. The last point uses every
        group, so it is the layer's strength.
    """
    points = []
    for k in convergence_sizes(group_sums.shape[0]):
        n_k = int(counts[:k].sum())
        if points and points[-1][0] == n_k:  # fewer images than groups: the later groups are empty
            points.pop()
        points.append((n_k, strength(group_sums[:k].sum(0) / n_k, n_k) if n_k >= 2 else None))
    return points


def mist_maps(mean_a: Tensor, mean_delta: Tensor | None) -> tuple[Tensor, Tensor]:
    """The two maps of a mist snapshot, from means over the first ``k`` images (each ``(C, h, w)``).

    Args:
        mean_a: Mean padded features ``A``.
        mean_delta: Mean ``Δ = A − B``; ``None`` for the mean-feature estimator (no reference).

    Returns:
        ``(mean_feature, ppp)``, each ``(h, w)``: the channel average of ``mean_a``, and the per-position channel-RMS
        of ``mean_delta`` (or of ``mean_a`` less its per-channel spatial mean), raw: not debiased, since one image has
        no variance to debias with.
    """
    pattern = mean_a - mean_a.mean(dim=(-2, -1), keepdim=True) if mean_delta is None else mean_delta
    return mean_a.mean(0), pattern.square().mean(0).sqrt()


def choose_mist_layer(names: Sequence[str], strides: Sequence[float], requested: str | None = None) -> str:
    """The tapped layer whose mist snapshots the report keeps: ``requested``, else the one at stride
    :data:`MIST_STRIDE`, else the middle one (the later of two).

    Raises:
        ConfigError: ``requested`` is not one of ``names`` (the message lists them).
    """
    if requested is not None:
        if requested not in names:
            raise ConfigError(f"--mist-layer '{requested}' is not a tapped layer",
                              f"pick one of {', '.join(names)}")
        return requested
    at_stride = [name for name, stride in zip(names, strides) if stride == MIST_STRIDE]
    return at_stride[0] if at_stride else names[len(names) // 2]


VARIANCE_RESOLUTION = 1e-6
"""The smallest variance, relative to the mean square, that the float32 batch sums resolve (below it
:func:`leave_out_mean_var` gives a jackknife replicate's variance as unresolved)."""


def leave_out_mean_var(group_sums: Tensor, group_total_sq: Tensor, counts: Tensor, used: Tensor, *,
                       unresolved: float = 0.0) -> Tensor:
    """Per leave-a-group-out replicate (one per group ``used``, i.e. holding samples), the variance over samples
    averaged over positions, ``(Σ x² − Σ_positions (Σ x)² / n') / ((n' − 1) P)`` over the ``n'`` samples left in:
    from the per-group sums ``(K, *shape)``, the per-group totals of squares over all ``P`` positions ``(K,)`` and
    the per-group sample counts ``(K,)``. A variance below :data:`VARIANCE_RESOLUTION` of the mean square is the
    float32 batch sums' rounding, not a measurement: it is given as ``unresolved`` (0 for a noise term, which is then
    negligible; NaN for a mist, which then cannot scale anything: the interval becomes unbounded, ``_ci``)."""
    left = counts.sum() - counts[used]
    sums = group_sums.sum(0) - group_sums[used]
    squares = group_total_sq.sum() - group_total_sq[used]
    variance = (squares - sums.square().flatten(1).sum(1) / left) / ((left - 1) * group_sums[0].numel())
    resolution = VARIANCE_RESOLUTION * squares / (left * group_sums[0].numel())
    return torch.where(variance > resolution, variance, variance.new_tensor(unresolved))


def jackknife(estimates: Tensor, full: Tensor) -> Tensor:
    """Delete-a-group jackknife standard error from per-group leave-out estimates (first dim = groups)."""
    k = estimates.shape[0]
    if k < 2:
        return torch.full_like(full, math.nan)
    return ((k - 1) / k * (estimates - estimates.mean(0)).square().sum(0)).sqrt()


# ---------------------------------------------------------------------------------------------------------------------
# Channels: which carry the pattern (padding-aware neurons)
# ---------------------------------------------------------------------------------------------------------------------


def channel_energies(mean: Tensor, var: Tensor, n: int | float | Tensor) -> Tensor:
    """Debiased pattern energy per channel, ``mean_positions(P_c²) − mean_positions(Var_c) / n`` (not clamped).

    Args:
        mean: The pattern ``P``, (C, h, w), or one per jackknife replicate, (K, C, h, w).
        var: Per-element variance of one sample, (C, h, w).
        n: Images behind ``mean``; for replicates a tensor (K,).

    Returns:
        (C,) or (K, C). Their mean over channels is the layer's debiased energy (:func:`debiased_energy`).
    """
    noise = var.mean((-2, -1))
    if isinstance(n, Tensor):
        noise = noise / n.to(noise).view(-1, 1)
    else:
        noise = noise / n
    return mean.square().mean((-2, -1)) - noise


def top_share(energies: Tensor, count: int, total: Tensor | None = None) -> Tensor:
    """Share of ``total`` (default ``Σ energies``, over the last dim) in the ``count`` largest energies."""
    return energies.topk(count, dim=-1).values.sum(-1) / (energies.sum(-1) if total is None else total)


def channel_side(band_energy: Tensor, dominance: float = SIDE_DOMINANCE) -> str:
    """Where a channel's pattern lies: the side (:data:`SIDES`) whose band energy exceeds ``dominance`` times every
    other side's, else ``"ring"``.

    Args:
        band_energy: (4,) the channel's mean debiased energy over each side's band (:func:`border_rings`).
    """
    values = torch.nan_to_num(band_energy.double(), nan=0.0).clamp_min(0.0)
    best = int(values.argmax())
    others = torch.cat([values[:best], values[best + 1:]])
    return SIDES[best] if bool(values[best] > dominance * others.max()) else "ring"


def block_mean(maps: Tensor, cells: int) -> Tensor:
    """``maps`` (k, h, w) block-averaged so that neither side exceeds ``cells`` (blocks at the far edges may be
    partial: each is the mean of what it covers); maps within ``cells`` pass unchanged."""
    factor = math.ceil(max(maps.shape[-2:]) / cells)
    if factor <= 1:
        return maps
    pool = torch.nn.functional.avg_pool2d
    sums = pool(maps, factor, ceil_mode=True, divisor_override=1)
    return sums / pool(torch.ones_like(maps[:1]), factor, ceil_mode=True, divisor_override=1)


def cumulative_points(channels: int, points: int = CUMULATIVE_POINTS) -> list[int]:
    """Channel counts ``k`` for the sorted energy curve: up to ``points`` from 1 to ``channels``, evenly in log k."""
    ks = torch.logspace(0.0, math.log10(channels), points, dtype=torch.float64).round().long().unique()
    return sorted({*ks.tolist(), channels})


def crossfit_cumulative(first: Tensor, second: Tensor) -> Tensor:
    """Cross-fitted share of the energy in the strongest ``k`` channels, ``k = 1 .. C`` (last dim).

    Each half of the images ranks the channels for the other: the share is ``(Σ_{top k of first} second_c +
    Σ_{top k of second} first_c) / (Σ first + Σ second)``. Every energy is unbiased for a fixed channel, and the
    channels are chosen on images that do not measure them, so the noise of the chosen channels does not read as
    concentration (as it would when one estimate both ranks and measures: the winner's curse).

    Args:
        first: Debiased channel energies from one half of the images, (..., C).
        second: The same from the other half.
    """
    by_first = second.gather(-1, first.argsort(-1, descending=True)).cumsum(-1)
    by_second = first.gather(-1, second.argsort(-1, descending=True)).cumsum(-1)
    return (by_first + by_second) / (first.sum(-1, keepdim=True) + second.sum(-1, keepdim=True))


def channel_shares(group_sums: Tensor, counts: Tensor, var: Tensor, top: int = TOP_CHANNELS) -> ChannelShares:
    """Which channels carry a layer's pattern (docs/metrics.md#channels-padding-aware-neurons), from its jackknife
    group sums.

    Channel ``c``'s energy ``e_c`` is :func:`channel_energies` of all N images. The top-k shares and the sorted energy
    curve are cross-fitted (:func:`crossfit_cumulative`, the even and the odd groups ranking for each other); the
    ``top`` list ranks channels by ``e_c`` and gives each its own share ``e_c / Σ e``, whose denominator is the
    layer's debiased energy (times C) that the strength uses, so the noise of channels that carry no pattern neither
    counts as energy nor dilutes the share of those that do. The effective number of channels is
    ``(Σ e)² / Σ e²`` with both squares debiased by their jackknife variances. Every interval is the delete-a-group
    jackknife's, each statistic recomputed on the leave-one-group-out replicates; shares are clamped to [0, 1], the
    effective number to [1, C].

    The shares are reported only when the layer's debiased energy is significantly above 0 (the lower end of its
    95 % jackknife interval above 0) and at least 4 groups hold images; otherwise the ranking would be the noise's,
    and :meth:`ChannelShares.none` is returned.

    Args:
        group_sums: Per-group sums of the samples of the pattern, (K, C, h, w), of the groups that hold images: of
            ``Δ``, or for the mean-feature estimator of ``A`` less its per-channel spatial mean.
        counts: Images per group, (K,), all positive.
        var: The per-element variance of one sample (``Var Δ``; the shrunk ``Var A`` for the mean-feature
            estimator), (C, h, w).
        top: How many of the strongest channels to list.
    """
    groups, channels, height, width = group_sums.shape
    counts = counts.to(group_sums)
    n = float(counts.sum())
    whole = group_sums.sum(0)
    mean = whole / n
    rep_n = n - counts
    energy = channel_energies(mean, var, n)
    rep_energy = channel_energies((whole - group_sums) / rep_n.view(-1, 1, 1, 1), var, rep_n)
    total, rep_total = energy.sum(), rep_energy.sum(-1)
    total_var = jackknife(rep_total, total).square()
    if groups < 4 or not bool(total > t_quantile_975(groups - 1) * total_var.sqrt()):
        return ChannelShares.none()

    # The two halves (even and odd groups), and each replicate's: leaving group g out changes g's half only.
    parity = torch.arange(groups, device=group_sums.device) % 2
    half_sums = torch.stack([group_sums[parity == h].sum(0) for h in (0, 1)])
    half_n = torch.stack([counts[parity == h].sum() for h in (0, 1)])
    halves = channel_energies(half_sums / half_n.view(-1, 1, 1, 1), var, half_n)  # (2, C)
    left = half_n[parity] - counts
    changed = channel_energies((half_sums[parity] - group_sums) / left.view(-1, 1, 1, 1), var, left)  # (K, C)
    rep_halves = [torch.where((parity == h).view(-1, 1), changed, halves[h].expand(groups, -1)) for h in (0, 1)]
    if not bool(halves.sum() > 0):
        return ChannelShares.none()
    curve = crossfit_cumulative(halves[0], halves[1]).clamp(0.0, 1.0)
    rep_curve = crossfit_cumulative(*rep_halves).clamp(0.0, 1.0)

    channel_var = jackknife(rep_energy, energy).square().sum()
    inflate = n / rep_n  # a replicate of fewer images has the larger noise

    def effective(e: Tensor, scale: Tensor | float) -> Tensor:
        square_of_sum = e.sum(-1).square() - scale * total_var
        sum_of_squares = (e.square().sum(-1) - scale * channel_var).clamp_min(1e-300)
        return (square_of_sum / sum_of_squares).clamp(1.0, float(channels))

    counts_k = {key: top_count(channels, fraction) for key, fraction in CHANNEL_FRACTIONS.items()}
    shares = {key: float(curve[k - 1]) for key, k in counts_k.items()}
    order = torch.argsort(energy, descending=True)
    listed = [c for c in order[:top].tolist() if energy[c] > 0]
    _, _, band = border_rings(height, width)
    band = band.to(mean)
    positions = mean[listed].square() - var[listed] / n  # debiased energy per position of each listed channel
    band_energy = (positions[:, None] * band).sum((-2, -1)) / band.sum((-2, -1)).clamp_min(1.0)
    own = (energy / total).clamp(0.0, 1.0)
    rep_own = (rep_energy / rep_total.view(-1, 1)).clamp(0.0, 1.0)
    estimate = float(effective(energy, 1.0))
    return ChannelShares(
        energy_share=shares,
        energy_share_ci={key: _bounded_ci(shares[key], rep_curve[:, k - 1], 1.0) for key, k in counts_k.items()},
        effective_channels=estimate,
        effective_channels_ci=_bounded_ci(estimate, effective(rep_energy, inflate), float(channels), low=1.0),
        top=[(c, float(own[c]), channel_side(side)) for c, side in zip(listed, band_energy)],
        top_ci=[_bounded_ci(float(own[c]), rep_own[:, c], 1.0) for c in listed],
        top_maps=_rounded(block_mean(mean[listed[:TOP_MAPS]], TOP_MAP_CELLS)) if listed else [],
        cumulative=[(k, float(curve[k - 1])) for k in cumulative_points(channels)],
    )


def _rounded(maps: Tensor, digits: int = TOP_MAP_DIGITS) -> list[list[list[float]]]:
    """``maps`` as nested lists of numbers rounded to ``digits`` significant digits (what a figure needs, in fewer
    bytes of JSON)."""
    return [[[float(f"{value:.{digits}g}") for value in row] for row in image] for image in maps.tolist()]


def _bounded_ci(estimate: float, replicates: Tensor, high: float, low: float = 0.0) -> tuple[float, float]:
    """:func:`_ci` clamped to ``[low, high]`` (a share to [0, 1], a number of channels to [1, C])."""
    start, end = _ci(estimate, replicates)
    return max(start, low), min(end, high)


# ---------------------------------------------------------------------------------------------------------------------
# Streaming accumulator
# ---------------------------------------------------------------------------------------------------------------------


def batch_moments(a: Tensor, b: Tensor | None, group: Tensor | int, groups: int) -> dict[str, Tensor]:
    """One batch's addition to :class:`PPPAccumulator`'s sums (float32: one pass per reduction, no float64 copies of
    the features; only the running sums are float64, which is where precision over large N is needed).

    A pure function of its inputs, so that it can be compiled (``torch.compile`` fuses its reductions: see
    :func:`compiled_moments`).

    Args:
        a: Padded features (B, C, h, w), any float dtype.
        b: Their padding-free reference, or ``None`` (mean-feature estimator only).
        group: Each sample's jackknife group (B,), on ``a``'s device; or, for samples in consecutive order (group of
            row ``r`` = ``(group + r) % groups``), the first row's group as an int, which sums the groups as a
            reshape instead of a scatter when ``groups`` divides the batch.
        groups: Number of groups.

    Returns:
        ``sum_a`` and, with a reference, ``sum_delta`` and ``sum_b`` per group (groups, C, h, w); ``sq_a`` and
        ``sq_delta`` and ``sq_b`` over the batch (C, h, w); and per group the totals over every position of the
        squares (``total_sq_a``, ``total_sq_delta``, ``total_sq_b``: (groups,), float64), which the jackknife
        replicates' variances need (:data:`SCALAR_SUMS`).
    """
    a = a.float()
    square_a = a.square()
    moments = {"sum_a": grouped_sum(a, group, groups), "sq_a": square_a.sum(0),
               "total_sq_a": grouped_sum(square_a.flatten(1).sum(1, dtype=torch.float64), group, groups)}
    if b is not None:
        b = b.float()
        delta = a - b
        square_d, square_b = delta.square(), b.square()
        moments.update(sum_delta=grouped_sum(delta, group, groups), sq_delta=square_d.sum(0),
                       sum_b=grouped_sum(b, group, groups), sq_b=square_b.sum(0),
                       total_sq_delta=grouped_sum(square_d.flatten(1).sum(1, dtype=torch.float64), group, groups),
                       total_sq_b=grouped_sum(square_b.flatten(1).sum(1, dtype=torch.float64), group, groups))
    return moments


def grouped_sum(x: Tensor, group: Tensor | int, groups: int) -> Tensor:
    """Sums of ``x``'s rows by group, ``(groups, *x.shape[1:])`` (``group`` as in :func:`batch_moments`).

    Consecutive rows whose count ``groups`` divides are summed as ``x.view(B / groups, groups, ...).sum(0)`` rolled
    to the first row's group: one pass, no zero-filled target, no atomic adds on a GPU.
    """
    if isinstance(group, int):
        if x.shape[0] % groups == 0:
            phases = x.reshape(x.shape[0] // groups, groups, *x.shape[1:]).sum(0)  # phase p: group (group + p) % G
            shift = group % groups
            return torch.roll(phases, shifts=shift, dims=0) if shift else phases  # a roll by 0 would copy
        group = (torch.arange(x.shape[0], device=x.device) + group) % groups
    return torch.zeros(groups, *x.shape[1:], device=x.device, dtype=x.dtype).index_add_(0, group, x)


GROUPED_SUMS = ("sum_a", "sum_delta", "sum_b")
"""The sums :func:`batch_moments` keeps per jackknife group (groups, C, h, w); the others are (C, h, w), or
:data:`SCALAR_SUMS`."""
SCALAR_SUMS = ("total_sq_a", "total_sq_delta", "total_sq_b")
"""Per jackknife group, the sums of squares over every position (groups,), float64: with the grouped sums they give
each leave-a-group-out replicate its own variances (the mist ``σ`` and the debiasing term), so that the interval
carries their sampling noise too. They join the float64 sums at once (a channel block's part is added to them)."""
PENDING_ROWS = 64
"""Rows whose per-group sums (:data:`GROUPED_SUMS`, float32 per batch) :class:`PPPAccumulator` adds up in float32
before they join its float64 sums: those are (K, C, h, w), so adding every batch to them in float64 moved more
memory than the batch's own reductions (a float32 sum of 64 rows, 8 per group, loses nothing a float64 total of
many batches needs)."""
CPU_BLOCK_BYTES = 4 * 2**20
"""On a CPU the reductions run over blocks of channels of about this many bytes of a batch's features (:func:
`channel_blocks`), so that their temporaries stay in cache: a resnet50 batch's statistics took 0.16 s in whole
tensors and 0.11 s in 4 MB blocks on this project's machine."""


def channel_blocks(features: Tensor) -> list[slice]:
    """The channel ranges a batch of ``features`` (B, C, h, w) is reduced in: blocks of about
    :data:`CPU_BLOCK_BYTES` on a CPU, all channels at once on a GPU (whose kernels want large tensors). Every
    statistic is per element and sums over the batch only, so the blocks give the same sums as one pass."""
    channels = features.shape[1]
    if features.device.type != "cpu":
        return [slice(0, channels)]
    per_channel = features[:, :1].numel() * features.element_size()
    step = max(1, CPU_BLOCK_BYTES // max(per_channel, 1))
    return [slice(start, min(start + step, channels)) for start in range(0, channels, step)]


def compiled_moments(backend: str) -> Callable[..., dict[str, Tensor]]:
    """:func:`batch_moments` compiled with ``torch.compile`` (what ``--compile BACKEND`` uses for the statistics):
    on a GPU, inductor fuses its reductions into a few kernels instead of about ten passes over each feature map."""
    return torch.compile(batch_moments, backend=backend)


def _consecutive(indices: Tensor) -> bool:
    """Whether host-side ``indices`` run consecutively (a device tensor is not read: that would wait for the device)."""
    if indices.device.type != "cpu":
        return False
    return bool((indices[1:] - indices[:-1] == 1).all())  # one index (no differences) is consecutive


def _on_device(indices: Tensor, device: torch.device) -> Tensor:
    """``indices`` on ``device`` without making the host wait for the device (pinned memory, an asynchronous copy)."""
    if device.type == "cuda" and indices.device.type == "cpu":
        return indices.pin_memory().to(device, non_blocking=True)
    return indices.to(device)


class PPPAccumulator:
    """Streams padded features ``A`` and padding-free references ``B`` of one layer into running float64 sums.

    Args:
        groups: Jackknife groups ``K`` for confidence intervals.
        with_reference: Whether ``B`` is given (Δ estimator); if not, only the mean-feature estimator is available.
        mist_counts: Image counts at which to snapshot the mist maps (:func:`mist_maps` of the first ``k`` images in
            arrival order); ``()`` takes none, and ``compute()`` then leaves ``mist`` out.
        moments: The batch reductions (default :func:`batch_moments`; :func:`compiled_moments` is the same function
            compiled).
        top_channels: How many of the layer's strongest channels ``compute()`` lists in ``channel_shares.top``
            (``--top-channels``).
    """

    def __init__(self, groups: int = 8, with_reference: bool = True,
                 mist_counts: Sequence[int] = MIST_COUNTS, moments: Callable[..., dict[str, Tensor]] | None = None,
                 top_channels: int = TOP_CHANNELS) -> None:
        if groups < 2:
            raise ValueError("groups must be >= 2 for a confidence interval")
        if any(k < 1 for k in mist_counts):
            raise ValueError(f"mist counts must be positive (got {tuple(mist_counts)})")
        self.groups = groups
        self.with_reference = with_reference
        self.mist_counts = tuple(sorted(set(mist_counts)))
        self._sums: dict[str, Tensor] = {}
        self._pending: dict[str, Tensor] = {}  # per-group sums of the last batches, float32 (PENDING_ROWS)
        self._pending_rows = 0
        self.snapshots: dict[int, tuple[Tensor, Tensor]] = {}
        """Mist maps ``(mean_feature, ppp)`` by image count, on the device (float64)."""
        self.arrived = 0
        self.moments = moments or batch_moments
        self.top_channels = top_channels

    @property
    def state(self) -> dict[str, Tensor]:
        """The running float64 sums by name (empty before the first batch), the pending per-group sums added."""
        self._flush()
        return self._sums

    @state.setter
    def state(self, sums: dict[str, Tensor]) -> None:
        self._sums = sums
        self._new_pending()

    @property
    def n(self) -> int:
        return int(self._sums["count"].sum()) if self._sums else 0

    def reserve(self, shape: Sequence[int], device: torch.device | str) -> "PPPAccumulator":
        """Allocate the sums for maps of ``shape`` (C, h, w) on ``device`` now rather than at the first batch: a
        loop that reserves every accumulator before its first pass allocates its sums before the passes' own
        memory, which the later passes then reuse (allocated after the first pass, the sums take that memory and the
        second pass asks the system for fresh pages: 0.2 s of page faults for resnet50 at batch 16 on CPU)."""
        if not self._sums:
            self._init(torch.empty(0, *shape, device=device))
        return self

    def _init(self, like: Tensor) -> None:
        shape, kw = tuple(like.shape[1:]), dict(dtype=torch.float64, device=like.device)
        self._sums = {
            "count": torch.zeros(self.groups, **kw),
            "sum_a": torch.zeros(self.groups, *shape, **kw),
            "sq_a": torch.zeros(shape, **kw),
            "total_sq_a": torch.zeros(self.groups, **kw),
        }
        if self.with_reference:
            self._sums.update(
                sum_delta=torch.zeros(self.groups, *shape, **kw),
                sq_delta=torch.zeros(shape, **kw),
                sum_b=torch.zeros(self.groups, *shape, **kw),
                sq_b=torch.zeros(shape, **kw),
                total_sq_delta=torch.zeros(self.groups, **kw),
                total_sq_b=torch.zeros(self.groups, **kw),
            )
        self._new_pending()

    def _new_pending(self) -> None:
        """Empty pending per-group sums beside :attr:`state`'s (float32, as :func:`batch_moments`' sums are,
        compiled or not: they gather there for up to :data:`PENDING_ROWS` rows)."""
        self._pending = {key: torch.zeros(sums.shape, dtype=torch.float32, device=sums.device)
                         for key, sums in self._sums.items() if key in GROUPED_SUMS}
        self._pending_rows = 0

    @torch.no_grad()
    def update(self, a: Tensor, b: Tensor | None = None, indices: Tensor | None = None) -> None:
        """Add a batch: ``a`` = features of the padded crops (B, C, h, w); ``b`` = their padding-free reference.

        Args:
            a: Padded features.
            b: Padding-free reference features (required when ``with_reference``).
            indices: Global sample indices, which fix each sample's jackknife group; by default samples are numbered
                in arrival order. Passing them makes sharded runs (one accumulator per rank) sum to exactly the
                single-process state.
        """
        if self.with_reference and (b is None or b.shape != a.shape):
            raise ValueError(
                f"reference shape {None if b is None else tuple(b.shape)} != feature shape {tuple(a.shape)}")
        if not self._sums or (not self.arrived and self._sums["sq_a"].shape != a.shape[1:]):  # reserved otherwise
            self.state = {}
            self._init(a)
        if indices is None:
            indices = torch.arange(a.shape[0]) + self.arrived
        # Consecutive indices (the usual batch; known on the host when they are there): the groups are a reshape,
        # and the group of each row is made on the device. Copying host indices there the plain way would wait for
        # the device (a pageable host-to-GPU copy synchronises the stream) on every update of every layer.
        if _consecutive(indices):
            grouping: Tensor | int = int(indices[0]) % self.groups  # the first row's group (batch_moments)
            group = (torch.arange(a.shape[0], device=a.device) + grouping) % self.groups
        else:
            group = grouping = _on_device(indices, a.device) % self.groups
        self._snapshot(a, b)  # before the batch joins the sums: a count may fall inside it
        self.arrived += a.shape[0]
        st = self._sums
        st["count"].index_add_(0, group, torch.ones_like(group, dtype=torch.float64))
        a, b = a.detach(), b.detach() if self.with_reference else None
        # A compiled graph takes whole tensors (blocks of other shapes would recompile it).
        for channels in channel_blocks(a) if self.moments is batch_moments else [slice(None)]:
            for key, value in self.moments(a[:, channels], None if b is None else b[:, channels], grouping,
                                           self.groups).items():
                if key in GROUPED_SUMS:
                    self._pending[key][:, channels].add_(value)
                elif key in SCALAR_SUMS:
                    st[key].add_(value)
                else:
                    st[key][channels].add_(value)
        self._pending_rows += a.shape[0]
        if self._pending_rows >= PENDING_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Add the pending per-group sums to the float64 ones (in channel blocks: no float64 copy of the whole)."""
        if not self._pending_rows:
            return
        with torch.inference_mode():  # sums made in the measuring loop's inference mode change only inside one
            for key, pending in self._pending.items():
                for channels in channel_blocks(pending):
                    self._sums[key][:, channels].add_(pending[:, channels])
                pending.zero_()
        self._pending_rows = 0

    def _snapshot(self, a: Tensor, b: Tensor | None) -> None:
        """Take the mist snapshots whose count this batch reaches: the sums so far plus the batch's first rows.

        Whether a count is reached is known on the host (``arrived``), so the loop never waits for the device.
        """
        first, last = self.arrived, self.arrived + a.shape[0]
        for k in (k for k in self.mist_counts if first < k <= last):
            rows = k - first
            sum_a = self.state["sum_a"].sum(0) + a[:rows].sum(0, dtype=torch.float64)  # (state: flushed)
            sum_delta = None
            if self.with_reference:
                delta = a[:rows].float() - b[:rows].float()
                sum_delta = self.state["sum_delta"].sum(0) + delta.sum(0, dtype=torch.float64)
            self.snapshots[k] = mist_maps(sum_a / k, None if sum_delta is None else sum_delta / k)

    def finite_sums(self) -> Tensor:
        """Whether the sums of squares so far are finite, as a 0-d bool tensor on their device (no host sync): a
        NaN/inf in any feature or reference added makes its square's sum so. The auditor reads it once after the
        first batch (one sync for every layer), so that a broken model fails in seconds, not after the loop."""
        check = all_finite(self._sums["sq_a"])  # never pending
        return check & all_finite(self._sums["sq_b"]) if self.with_reference else check

    def is_finite(self) -> bool:
        """False when any NaN/inf reached the sums (checked once at the end, not per batch: no host syncs; the
        auditor also checks the first batch's, see :meth:`finite_sums`)."""
        return all(bool(all_finite(t)) for t in self.state.values())

    def all_reduce_(self) -> "PPPAccumulator":
        """Sum the state over the ranks of the default ``torch.distributed`` process group (the mist snapshots stay
        each rank's own: see :meth:`merge_`)."""
        import torch.distributed as dist

        for key in sorted(self.state):
            dist.all_reduce(self.state[key])
        return self

    def merge_(self, other: "PPPAccumulator") -> "PPPAccumulator":
        """Add another accumulator's state (e.g. from another process); groups stay aligned by construction.

        The mist snapshots are not sums and stay this accumulator's own (``other``'s only when this one has none):
        after a merge, as after :meth:`all_reduce_` (each rank keeps its own; rank 0 writes the report), they show the
        first images one process saw, and only the N point covers every image.
        """
        if not self.snapshots:
            self.snapshots = dict(other.snapshots)
        if not self.state:
            self.state = {k: v.clone() for k, v in other.state.items()}
        else:
            for key, value in other.state.items():
                self.state[key].add_(value.to(self.state[key].device))
        return self

    @torch.no_grad()
    def compute(self, stride_px: float, receptive_radius_px: float | None = None) -> LayerStats:
        """Finalise: strengths with jackknife CIs, extent profiles, the PPP map, the channel shares.

        Args:
            stride_px: Input pixels per feature pixel (crop size / feature size).
            receptive_radius_px: If known, positions farther than this from the crop border are checked for ``Δ≈0``.

        Returns:
            The statistics; when NaN/inf reached the sums, only the layer's shape, ``n`` and stride, marked
            ``non_finite`` (a number computed from them would be NaN or meaningless).
        """
        st = self.state
        if not st:
            raise ValueError("no samples were accumulated")
        n = self.n
        _, channels, height, width = st["sum_a"].shape
        if not self.is_finite():  # before the count check: a scheme stopped after its first batch may have one
            return LayerStats(n=n, stride_px=stride_px, channels=channels, height=height, width=width, strength=None,
                              strength_ci=None, relative_energy=None, mean_feature_strength=None,
                              mean_feature_ci=None, profile=None, non_finite=True)
        if n < 2:
            raise ValueError("need at least 2 samples for a variance")
        counts = st["count"]
        used = counts > 0
        counts_g = counts[used]

        def mean_var(total: Tensor, sq: Tensor) -> tuple[Tensor, Tensor]:
            mean = total / n
            return mean, ((sq - total.square() / n) / (n - 1)).clamp_min(0.0)

        def leave_out_means(group_sums: Tensor) -> Tensor:
            total = group_sums.sum(0)
            return (total - group_sums[used]) / (n - counts_g).view(-1, 1, 1, 1)

        # Mean-feature estimator: P' = mean(A) - its per-channel spatial mean.
        sum_a = st["sum_a"]
        mean_a, var_a = mean_var(sum_a.sum(0), st["sq_a"])
        shrink = 1.0 - 1.0 / (height * width)  # removing the spatial mean also removes that share of the noise
        def mf_strength(mean: Tensor, n_eff: Tensor | float, noise: Tensor = var_a.mean()) -> Tensor:
            centred = mean - mean.mean(dim=(-2, -1), keepdim=True)
            energy = centred.square().flatten(-3).mean(-1) - shrink * noise / n_eff
            return energy.clamp_min(0.0).sqrt() / noise.sqrt().clamp_min(1e-300)

        mf = float(mf_strength(mean_a, n))
        # each replicate with its own noise and mist, as the Δ strength's below
        mf_ci = _ci(mf, mf_strength(leave_out_means(sum_a), n - counts_g,
                                    leave_out_mean_var(sum_a, st["total_sq_a"], counts, used, unresolved=math.nan)))

        stats = LayerStats(
            n=n, stride_px=stride_px, channels=channels, height=height, width=width, strength=None,
            strength_ci=None, relative_energy=None, mean_feature_strength=mf,
            mean_feature_ci=mf_ci, profile=None,
            mean_feature_convergence=convergence_curve(sum_a, counts, lambda mean, n_k: float(mf_strength(mean, n_k))),
            mist=self._mist(mean_a, n),
        )
        if not self.with_reference:
            # Without a reference the picture, and the strength, are the mean-feature pattern P' (with its
            # dataset-position bias); the report's ``estimator`` says so.
            stats.strength, stats.strength_ci = stats.mean_feature_strength, stats.mean_feature_ci
            stats.convergence = stats.mean_feature_convergence
            centred = mean_a - mean_a.mean(dim=(-2, -1), keepdim=True)
            noise = shrink * var_a
            reps = leave_out_means(sum_a)
            reps = reps - reps.mean(dim=(-2, -1), keepdim=True)
            centred_sums = sum_a[used] - sum_a[used].mean(dim=(-2, -1), keepdim=True)
            stats.channel_shares = channel_shares(centred_sums, counts_g, noise, top=self.top_channels)
            stats.ppp_map = channel_rms_map(centred, noise, n).float().tolist()
            self._profiles(stats, debiased_energy(centred, noise, n, dims=(0,)),
                           reps.square().mean(1) - noise.mean(0) / (n - counts_g).view(-1, 1, 1), stride_px)
            return stats

        mean_d, var_d = mean_var(st["sum_delta"].sum(0), st["sq_delta"])
        mean_b, var_b = mean_var(st["sum_b"].sum(0), st["sq_b"])
        reps_d = leave_out_means(st["sum_delta"])
        n_reps = (n - counts_g)

        # The strength of each leave-a-group-out replicate, for its jackknife CI: its own pattern, and its own mist
        # and noise (the mist's sampling noise is most of the strength's where the images' contrast varies).
        rep_energy = reps_d.square().flatten(1).mean(1) - leave_out_mean_var(
            st["sum_delta"], st["total_sq_delta"], counts, used) / n_reps
        rep_mist = leave_out_mean_var(st["sum_b"], st["total_sq_b"], counts, used, unresolved=math.nan).sqrt()
        stats.strength = ppp_strength(mean_d, var_d, var_b, n)
        stats.convergence = convergence_curve(st["sum_delta"], counts,
                                              lambda mean, n_k: ppp_strength(mean, var_d, var_b, n_k))
        stats.strength_ci = _ci(stats.strength, rep_energy.clamp_min(0.0).sqrt() / rep_mist)
        energy = debiased_energy(mean_d, var_d, n)
        stats.relative_energy = float(energy.clamp_min(0.0).sqrt() / (st["sq_b"].mean() / n).sqrt().clamp_min(1e-300))
        stats.channel_shares = channel_shares(st["sum_delta"][used], counts_g, var_d, top=self.top_channels)

        # Per-position energy, full and per jackknife replicate, then profiles by ring and side.
        pos_energy = debiased_energy(mean_d, var_d, n, dims=(0,))
        rep_pos = reps_d.square().mean(1) - var_d.mean(0) / n_reps.view(-1, 1, 1)
        stats.ppp_map = channel_rms_map(mean_d, var_d, n).float().tolist()
        rings = self._profiles(stats, pos_energy, rep_pos, stride_px)

        if receptive_radius_px is not None:
            centre_dist = (rings.to(torch.float64) + 0.5) * stride_px
            interior = centre_dist > receptive_radius_px
            if bool(interior.any()):
                sq_d = (st["sq_delta"] / n).mean(0)[interior].mean()
                sq_b = (st["sq_b"] / n).mean(0)[interior].mean()
                stats.interior_delta_rel = float(sq_d.sqrt() / sq_b.sqrt().clamp_min(1e-300))
        return stats

    def _mist(self, mean_a: Tensor, n: int) -> MistSnapshots | None:
        """The snapshots below ``n`` images plus the maps of all ``n`` (from the sums); ``None`` without counts."""
        if not self.mist_counts:
            return None
        mean_delta = self.state["sum_delta"].sum(0) / n if self.with_reference else None
        points = [(k, maps) for k, maps in sorted(self.snapshots.items()) if k < n]
        points.append((n, mist_maps(mean_a, mean_delta)))
        return MistSnapshots(counts=[k for k, _ in points],
                             mean_feature=[feature.float().tolist() for _, (feature, _) in points],
                             ppp=[ppp.float().tolist() for _, (_, ppp) in points])

    @staticmethod
    def _profiles(stats: LayerStats, pos_energy: Tensor, rep_pos: Tensor, stride_px: float) -> Tensor:
        """Fill the extent profiles (overall and per side) from per-position energies and their jackknife
        replicates; returns the ring distances."""
        rings, side_distance, side_band = border_rings(stats.height, stats.width)
        stats.profile = _profile(pos_energy, rep_pos, rings, None, stride_px)
        stats.side_profiles = {
            side: _profile(pos_energy, rep_pos, side_distance[i], side_band[i], stride_px)
            for i, side in enumerate(SIDES)
        }
        return rings


def all_finite(x: Tensor) -> Tensor:
    """Whether ``x`` holds no NaN/inf, as a 0-d bool tensor on its device: its float64 sum is finite exactly then (a
    NaN or an inf reaches the sum, +inf and -inf make NaN, and no float32/16 values, nor float64 sums of their
    squares, overflow it), read in one pass with no mask the size of ``x``."""
    return torch.isfinite(x.sum(dtype=torch.float64))


def _ci(estimate: float, replicates: Tensor) -> tuple[float, float]:
    se = jackknife(replicates, replicates.new_tensor(estimate))
    half = t_quantile_975(replicates.shape[0] - 1) * float(se)
    if not math.isfinite(half):  # a replicate whose mist the sums cannot resolve: no upper bound can be given
        return 0.0, math.inf
    return max(estimate - half, 0.0), estimate + half


def _profile(pos_energy: Tensor, rep_pos: Tensor, rings: Tensor, mask: Tensor | None, ring_px: float) -> BorderProfile:
    energy = ring_means(pos_energy, rings, mask)
    reps = ring_means(rep_pos, rings, mask)
    se = jackknife(reps, energy)
    valid = torch.isfinite(energy)
    floor = (NOISE_FLOOR_Z * se).clamp_min(0.0).sqrt()
    return BorderProfile(
        distance_px=[(k + 0.5) * ring_px for k in range(int(valid.sum()))],
        rms=energy[valid].clamp_min(0.0).sqrt().tolist(),
        noise_floor=floor[valid].tolist(),
        extent_px=extent_from_profile(energy[valid], se[valid], ring_px),
    )
