"""How often the 95 % CI covers the strength, for the box stack of ``tests/test_margin.py`` (docs/metrics.md,
"Confidence intervals").

    python benchmarks/ci_coverage.py [--seeds 40] [--num-images 32]

The "true" strength of each reference is measured once on 1024 images (seed 999); then ``--seeds`` audits of N
images each (seeds 0, 1, ...) give their intervals, and the share that covers it is printed per reference (canvas
and window). An honest 95 % interval covers it about 95 % of the time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_margin import INFO, BoxStack  # noqa: E402

from ppp_audit.config import AuditConfig  # noqa: E402
from ppp_audit.engine import audit  # noqa: E402


def strength(seed: int, num_images: int, reference: str) -> tuple[float, tuple[float, float]]:
    config = AuditConfig(model="box", num_images=num_images, batch_size=32, input_size=32, layers=["blocks"],
                         device="cpu", seed=seed, reference=reference)
    (layer,) = audit(config, model=BoxStack().eval(), info=INFO).scheme("native").layers
    return layer.stats.strength, tuple(layer.stats.strength_ci)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--num-images", "-n", type=int, default=32)
    args = parser.parse_args()
    for reference in ("canvas", "window"):
        truth, _ = strength(999, 1024, reference)
        covered = sum(low <= truth <= high
                      for _, (low, high) in (strength(seed, args.num_images, reference) for seed in range(args.seeds)))
        print(f"{reference}: strength {truth:.4f} on 1024 images; covered by {covered} of {args.seeds} "
              f"intervals at N={args.num_images} ({100 * covered / args.seeds:.0f} %)")


if __name__ == "__main__":
    main()
