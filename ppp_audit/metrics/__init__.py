"""Statistics: PPP (docs/metrics.md) as pure functions plus a streaming accumulator."""

from .ppp import (
    SIDES,
    BorderProfile,
    LayerStats,
    PPPAccumulator,
    border_rings,
    channel_rms_map,
    convergence_curve,
    convergence_sizes,
    debiased_energy,
    extent_from_profile,
    finite_layers,
    jackknife,
    ppp_strength,
    ring_means,
)

__all__ = [
    "SIDES",
    "BorderProfile",
    "LayerStats",
    "PPPAccumulator",
    "border_rings",
    "channel_rms_map",
    "convergence_curve",
    "convergence_sizes",
    "debiased_energy",
    "extent_from_profile",
    "finite_layers",
    "jackknife",
    "ppp_strength",
    "ring_means",
]
