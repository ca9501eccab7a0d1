"""Per-window cost of making and decoding images on the host, one thread: the dead-leaves renderer one window at a
time (``--images-on host``) and in a batch (``--images-on device`` on the CPU), and a JPEG read by the PIL path against
``torchvision.io`` (the device path, run on the CPU). docs/performance.md quotes it.

    python benchmarks/image_timing.py             # 32 windows each
    python benchmarks/image_timing.py --count 2   # a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def per_window_ms(make, count: int) -> float:
    make(1)  # warm-up: imports, caches
    started = time.perf_counter()
    make(count)
    return (time.perf_counter() - started) / count * 1e3


def main() -> None:
    from PIL import Image

    from ppp_audit.device_images import render_dead_leaves
    from ppp_audit.images import DeadLeavesSource, FolderSource

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=32, help="windows per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    for size, scale in ((352, 224), (608, 224)):
        source = DeadLeavesSource(scale=scale)
        alone_ms = per_window_ms(lambda n: [source.window(i, size) for i in range(n)], args.count)
        batch_ms = per_window_ms(lambda n: source.windows(range(n), size, cpu), args.count)
        print(f"dead leaves, {size} px window (scale {scale}): one at a time {alone_ms:.1f} ms, in a batch "
              f"{batch_ms:.1f} ms")
    with tempfile.TemporaryDirectory() as folder:
        pictures = (render_dead_leaves(1, range(args.count), 400) * 255).round().to(torch.uint8)
        for k, picture in enumerate(pictures.permute(0, 2, 3, 1).numpy()):
            Image.fromarray(picture).save(Path(folder) / f"{k:03d}.jpg", quality=90)
        photos = FolderSource(Path(folder), scale=0.925)  # 400 px -> 370 px
        pil_ms = per_window_ms(lambda n: [photos.window(i, 352) for i in range(n)], args.count)
        decode_ms = per_window_ms(lambda n: photos.windows(range(n), 352, cpu), args.count)
        print(f"a 400 px JPEG to a 352 px window: PIL path {pil_ms:.1f} ms, torchvision.io {decode_ms:.1f} ms")


if __name__ == "__main__":
    main()
