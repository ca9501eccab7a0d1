"""The whole audit pipeline against the two-forward limit, in one run (docs/performance.md, "GPU").

An audit of one padding needs, per image, a forward pass of the crop and one of the window (and one of a second, smaller
window when a layer's reference stays partial). The *two-forward limit* is the images/s of those bare passes on the
same inputs, precision and memory format. This script measures, one after the other in the same process:

    (a) the bare forwards (the limit);
    (b) the audit with its windows already on the device (preloaded);
    (c) the audit with the built-in images made on the device (``--images-on device``: the torch renderer);
    (d) the audit of a folder of JPEG files decoded on the device (written first, from the built-in images);

and prints images/s, the fraction of the limit each reaches (wall time of the measuring loop, synchronised), the share
of the loop the statistics take (accumulator updates alone, on one batch's features), the rate of the built-in
renderer alone (windows/s), and peak GPU memory.

    python benchmarks/pipeline.py --model resnet50 --precision bf16 --batch-size 256 --num-images 2048 --device cuda
    python benchmarks/pipeline.py --model resnet10t --input-size 64 --batch-size 4 --num-images 8 --device cpu  # smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench_audit import PreloadedSource, bare_forward_seconds, peak_mib, reset_peak, sync


def write_jpegs(folder: Path, count: int, side: int, device: torch.device, seed: int = 0) -> None:
    """``count`` JPEG files of ``side`` px, from the built-in images rendered on ``device`` (quality 90, as photos are
    usually saved)."""
    from PIL import Image

    from ppp_audit.device_images import render_dead_leaves

    for start in range(0, count, 32):
        batch = render_dead_leaves(seed, range(start, min(start + 32, count)), side, device=device).cpu()
        for k, image in enumerate((batch * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()):
            Image.fromarray(image).save(folder / f"{start + k:06d}.jpg", quality=90)


def statistics_seconds(auditor, windows: torch.Tensor, repeats: int) -> float:
    """Seconds of the accumulator updates of one batch (crop and window features already computed), per batch."""
    from ppp_audit.auditor import BatchStep
    from ppp_audit.metrics import PPPAccumulator

    device = auditor.device
    with torch.inference_mode():  # the audit's own step: crop features and their padding-free reference blocks
        features = BatchStep(auditor, auditor.state, auditor.partial())(windows, "native")
    pairs = list(zip(features.crop, features.reference))
    accumulators = [PPPAccumulator(auditor.config.groups) for _ in pairs]
    indices = torch.arange(windows.shape[0])

    def run() -> None:
        for acc, (a, b) in zip(accumulators, pairs):
            acc.update(a, b, indices)

    run()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    sync(device)
    return (time.perf_counter() - start) / repeats


def run(args: argparse.Namespace) -> dict:
    from ppp_audit.auditor import Auditor, resolve_device
    from ppp_audit.engine import AuditConfig, audit
    from ppp_audit.models import build_model

    device = resolve_device(args.device)
    model, info = build_model(args.model, pretrained=False, device=device)
    common = dict(model=args.model, pretrained=False, batch_size=args.batch_size, device=str(device),
                  precision=args.precision, input_size=args.input_size, margin=args.margin, images_on="device",
                  reference="window")  # the pipeline of a window per crop, against bare crop + window passes
    config = AuditConfig(num_images=args.num_images, **common)
    auditor = Auditor(config, model=model, info=info)
    model, size, margin, second, window = auditor.model, auditor.size, auditor.margin, auditor.second_margin, \
        auditor.window
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.to(memory_format=memory_format)
    source = auditor.image_source()
    batch = auditor.normalise(source.windows(range(args.batch_size), window, device))
    batch = batch.contiguous(memory_format=memory_format)
    inputs = [auditor.crop(batch), batch, *([auditor.second_window(batch)] if second else [])]

    rows: dict[str, dict] = {}
    reset_peak(device)
    bare_s = bare_forward_seconds(auditor.taps, inputs, args.repeats, device, args.precision)
    limit = args.batch_size / bare_s
    rows["a_bare_forwards"] = {"images_per_s": limit, "fraction_of_limit": 1.0, "peak_cuda_mib": peak_mib(device)}

    def audited(name: str, **kwargs) -> None:
        reset_peak(device)
        started = time.perf_counter()
        report = audit(AuditConfig(**{**common, "num_images": args.num_images, **kwargs.pop("config", {})}),
                       model=model, info=info, **kwargs)
        wall = time.perf_counter() - started
        per_s = report.data["num_images"] / report.timings["loop_s"]
        rows[name] = {"images_per_s": per_s, "fraction_of_limit": per_s / limit, "loop_s": report.timings["loop_s"],
                      "total_s": wall, "num_images": report.data["num_images"], "peak_cuda_mib": peak_mib(device)}

    sync(device)
    started = time.perf_counter()
    preloaded = PreloadedSource(source, args.num_images, window, device)
    sync(device)
    render_per_s = args.num_images / (time.perf_counter() - started)  # the built-in images alone, batches of 64
    audited("b_preloaded", source=preloaded)
    del preloaded
    audited("c_built_in_on_device")
    with tempfile.TemporaryDirectory() as folder:
        count = min(args.jpeg_images, args.num_images)
        started = time.perf_counter()
        write_jpegs(Path(folder), count, window + 8, device)  # measured at their own pixels (--photo-scale 1)
        written_s = time.perf_counter() - started
        audited("d_jpeg_folder_on_device", config={"images": folder, "num_images": count})
        rows["d_jpeg_folder_on_device"]["files_written_s"] = written_s
    stats_s = statistics_seconds(auditor, batch, args.repeats)
    return {"model": args.model, "device": str(device), "precision": args.precision, "batch_size": args.batch_size,
            "num_images": args.num_images, "input_size": size, "margin": margin, "second_margin": second,
            "passes": len(inputs), "limit_images_per_s": limit, "statistics_share": stats_s / bare_s,
            "renderer_images_per_s": render_per_s,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-images", type=int, default=2048)
    parser.add_argument("--jpeg-images", type=int, default=512, help="JPEG files written and audited for (d)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--margin", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the bare forwards and statistics")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--save", type=Path, default=None, help="also append the result as one JSON line to this file")
    args = parser.parse_args()
    result = run(args)
    if args.save:
        with args.save.open("a") as lines:
            lines.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']} on {result['device_name']} ({result['precision']}), S={result['input_size']} "
          f"m={result['margin']} second m={result['second_margin']} ({result['passes']} passes), "
          f"batch {result['batch_size']}, N={result['num_images']}")
    print(f"  two-forward limit {result['limit_images_per_s']:.1f} images/s; statistics "
          f"{100 * result['statistics_share']:.1f} % of the forward time; the renderer alone "
          f"{result['renderer_images_per_s']:.1f} windows/s")
    for name, row in result["rows"].items():
        memory = f", peak {row['peak_cuda_mib']:.0f} MiB" if row["peak_cuda_mib"] is not None else ""
        total = f", {row['total_s']:.1f} s in all for N={row['num_images']}" if "total_s" in row else ""
        print(f"  {name:26s} {row['images_per_s']:10.1f} images/s  {100 * row['fraction_of_limit']:5.1f} % of the "
              f"limit{memory}{total}")


if __name__ == "__main__":
    main()
