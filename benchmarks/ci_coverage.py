"""How often the 95 % CI covers the strength, for the box stack of ``tests/test_margin.py`` (docs/metrics.md,
"Confidence intervals").

    python benchmarks/ci_coverage.py [--seeds 40] [--num-images 32]

The "true" strength of each reference is measured once on 1024 images (seed 999); then ``--seeds`` audits of N
images each (seeds 0, 1, ...) give their intervals, and the share that covers it is printed per reference (canvas
and window). An honest 95 % interval covers it about 95 % of the time.

``photo``: a folder of 1200 photos of 128 px (dead leaves, each photo at its own contrast, so that the crops of one
photo are alike), crops tiled inside each (4 a photo at N = 32: the jackknife groups must be whole photos); the truth
is a window per crop on 1024 photos (seed 999).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_margin import INFO, BoxStack  # noqa: E402

from ppp_audit.config import AuditConfig  # noqa: E402
from ppp_audit.engine import audit  # noqa: E402


def photo_folder(folder: Path, count: int = 1200) -> Path:
    """``count`` PNG photos of 128 px: dead leaves at a contrast drawn per photo (0.3 to 1 about mid-grey)."""
    import torch
    from PIL import Image

    from ppp_audit.device_images import render_dead_leaves

    folder.mkdir(parents=True, exist_ok=True)
    contrast = torch.rand(count, generator=torch.Generator().manual_seed(7)) * 0.7 + 0.3
    for start in range(0, count, 100):
        pictures = render_dead_leaves(11, range(start, min(start + 100, count)), 128, scale=32)
        for k, picture in enumerate(pictures, start):
            picture = (0.5 + contrast[k] * (picture - 0.5)).clamp(0, 1)
            Image.fromarray((picture * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(
                folder / f"{k:04d}.png")
    return folder


def strength(seed: int, num_images: int, reference: str,
             images: str | None = None) -> tuple[float, tuple[float, float]]:
    config = AuditConfig(model="box", num_images=num_images, batch_size=32, input_size=32, layers=["blocks"],
                         device="cpu", seed=seed, reference=reference, images=images)
    (layer,) = audit(config, model=BoxStack().eval(), info=INFO).scheme("native").layers
    return layer.stats.strength, tuple(layer.stats.strength_ci)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--num-images", "-n", type=int, default=32)
    parser.add_argument("--photos-only", action="store_true", help="only the photo tiles")
    args = parser.parse_args()
    for reference in () if args.photos_only else ("canvas", "window"):
        truth, _ = strength(999, 1024, reference)
        covered = sum(low <= truth <= high
                      for _, (low, high) in (strength(seed, args.num_images, reference) for seed in range(args.seeds)))
        print(f"{reference}: strength {truth:.4f} on 1024 images; covered by {covered} of {args.seeds} "
              f"intervals at N={args.num_images} ({100 * covered / args.seeds:.0f} %)")
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        photos = str(photo_folder(Path(folder)))
        truth, _ = strength(999, 1024, "window", photos)  # one crop per photo: 1024 photos
        runs = [strength(seed, args.num_images, "auto", photos) for seed in range(args.seeds)]  # tiled, 4 a photo
        covered = sum(low <= truth <= high for _, (low, high) in runs)
        print(f"photo tiles: strength {truth:.4f} on 1024 photos (a window each); covered by {covered} of "
              f"{args.seeds} intervals at N={args.num_images} ({100 * covered / args.seeds:.0f} %)")


if __name__ == "__main__":
    main()
