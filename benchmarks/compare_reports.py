"""Compare the per-layer PPP strengths of audits of the same model and images run elsewhere (another device or
precision) against a reference report; exit 1 when any differs by more than its tolerance.

    python benchmarks/compare_reports.py cpu.json cuda.json:1e-3 cuda_bf16.json:0.1

Each OTHER is ``PATH[:RTOL]`` (default ``--rtol``). The difference is relative to the reference strength, floored at
``--floor`` so that layers with (near) zero PPP compare in absolute terms.
"""

from __future__ import annotations

import argparse
import sys


def max_relative_difference(reference, other, floor: float) -> tuple[float, list[tuple[str, str, float, float]]]:
    """The largest ``|other - reference| / max(reference, floor)`` over schemes and layers, and the rows compared."""
    rows = []
    worst = 0.0
    images = [{k: v for k, v in report.data.items() if k != "images_on"} for report in (reference, other)]
    if images[0] != images[1]:  # where they were made may differ; what was made may not
        raise ValueError(f"the reports measured different images: {images[0]} and {images[1]}")
    if [r.scheme for r in reference.results] != [r.scheme for r in other.results]:
        raise ValueError("the reports audit different padding schemes")
    for ref_result, other_result in zip(reference.results, other.results):
        if [layer.name for layer in ref_result.layers] != [layer.name for layer in other_result.layers]:
            raise ValueError(f"the reports tap different layers under '{ref_result.scheme}'")
        for ref_layer, other_layer in zip(ref_result.layers, other_result.layers):
            ref, value = ref_layer.stats.strength, other_layer.stats.strength
            if ref is None or value is None:  # too few images for a strength: both must say so
                worst = max(worst, 0.0 if ref is value else float("inf"))
            else:
                worst = max(worst, abs(value - ref) / max(abs(ref), floor))
            rows.append((ref_result.scheme, ref_layer.name, ref, value))
    return worst, rows


def main(argv: list[str] | None = None) -> int:
    from ppp_audit.report import Report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", help="report JSON (e.g. the CPU fp32 audit)")
    parser.add_argument("others", nargs="+", metavar="OTHER[:RTOL]")
    parser.add_argument("--rtol", type=float, default=1e-3)
    parser.add_argument("--floor", type=float, default=1e-3)
    args = parser.parse_args(argv)

    reference = Report.load(args.reference)
    failed = False
    for spec in args.others:
        path, _, rtol = spec.partition(":")
        tolerance = float(rtol) if rtol else args.rtol
        other = Report.load(path)
        worst, rows = max_relative_difference(reference, other, args.floor)
        label = f"{other.device} {other.precision}"
        print(f"{label} vs {reference.device} {reference.precision} ({path}):")
        for scheme, layer, ref, value in rows:
            print(f"  {scheme:10s} {layer:12s} {ref} -> {value}" if ref is None or value is None
                  else f"  {scheme:10s} {layer:12s} {ref:.5f} -> {value:.5f}")
        verdict = "ok" if worst <= tolerance else "FAIL"
        print(f"  max relative difference {worst:.2e} (tolerance {tolerance:g}): {verdict}")
        failed |= worst > tolerance
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
