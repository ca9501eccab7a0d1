"""Baselines (docs/baselines.md), run on the same images as the PPP audit: the measures PPP is compared against.

* ``posenet`` — PosENet probe (:mod:`.posenet`): a padding-free 3×3 read-out trained on frozen multi-level features
  to predict position maps; Spearman correlation and MAE on held-out images and on constant inputs.
* ``fconv`` — F-Conv location test (:mod:`.location`): content pasted top-left vs bottom-right of a black canvas,
  borders swept; logistic-regression accuracy on pooled features, and the largest border still decodable.
* ``uneven`` — static uneven-padding check (:mod:`.uneven`): layers whose padding differs between opposite borders at
  the input size; needs no weights and no images.

Each module holds pure functions and a small trainer; :mod:`.runner` registers them in :data:`BASELINE_RUNNERS` and
runs them for the audit engine.
"""

from typing import Any

from ...baseline_options import (
    BASELINE_RUNNERS,
    BaselineRunner,
    baseline_config,
    parse_baseline_options,
    register_baseline,
    validate_baselines,
)
from . import runner
from .location import LocationConfig, LocationResult, binomial_sf, fit_logistic, location_test, paste
from .posenet import (
    TARGETS,
    PosENetConfig,
    PosENetReadout,
    PosENetResult,
    position_targets,
    posenet_probe,
    rankdata,
    spearman,
    stack_features,
)
from .runner import BaselineInputs, ImageBank, num_steps, run_baselines
from .uneven import LayerGeometry, UnevenResult, layer_geometry, uneven_layers, uneven_padding_check, used_padding


def __getattr__(name: str) -> Any:
    if name == "BASELINES":  # the registered names, computed on use (see runner.BASELINES)
        return runner.BASELINES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BASELINES",
    "BASELINE_RUNNERS",
    "TARGETS",
    "BaselineInputs",
    "BaselineRunner",
    "ImageBank",
    "LayerGeometry",
    "LocationConfig",
    "LocationResult",
    "PosENetConfig",
    "PosENetReadout",
    "PosENetResult",
    "UnevenResult",
    "baseline_config",
    "binomial_sf",
    "fit_logistic",
    "layer_geometry",
    "location_test",
    "num_steps",
    "parse_baseline_options",
    "paste",
    "position_targets",
    "posenet_probe",
    "rankdata",
    "register_baseline",
    "run_baselines",
    "spearman",
    "stack_features",
    "uneven_layers",
    "uneven_padding_check",
    "used_padding",
    "validate_baselines",
]
