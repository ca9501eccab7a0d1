"""Audit throughput vs bare forward throughput of the same model on the same inputs, in one run.

The audit needs, per image and per padding, one forward pass of the crop (S²) and one of the window ((S+2m)²) through
the tapped stages, and one of a second, smaller window when a layer's reference stays partial (docs/metrics.md).
The overhead factor is

    audit loop time / (forward passes the audit needs x bare forward time of those passes)

1.0 is ideal: the audit costs its forward passes and nothing else (image rendering, statistics, patching). The
receptive-field probe and model building are one-off costs, reported separately.

    python benchmarks/bench_audit.py --model resnet50 --batch-size 16 --num-images 64
    python benchmarks/bench_audit.py --model resnet50 --memory-scaling     # peak memory at N and 4N
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_forward_seconds(taps, inputs, repeats: int, device: torch.device, precision: str = "fp32") -> float:
    """Mean seconds of the passes one audit batch needs for one padding: each of ``inputs`` (crops, windows and the
    second windows, if any) through the taps, with the audit's own precision (autocast on CUDA)."""
    from ppp_audit.runtime import autocast, measuring

    with measuring(device, precision), autocast(device, precision):
        [taps(x) for x in inputs]  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            [taps(x) for x in inputs]
        sync(device)
    return (time.perf_counter() - start) / repeats


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (a GPU runs ahead of the host; timings must include them)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start counting peak GPU memory afresh (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """Peak GPU memory since :func:`reset_peak`, in MiB; ``None`` on the CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def passes_per_batch(report, labels: list[str], bare_s: float, crop_s: float) -> float:
    """Bare seconds of the passes one batch needs: the crop, window (and second window) passes of every padding,
    or, when the paddings share one window pass (``geometry.reference_shared``), a crop pass per padding and one of the
    rest."""
    if report.geometry.get("reference_shared"):
        return len(labels) * crop_s + (bare_s - crop_s)
    return len(labels) * bare_s


class PreloadedSource:
    """Windows made before the clock starts and kept on ``device``, so the factors measure the audit, not the image
    source (``windows`` hands out slices of them; ``window`` a host copy)."""

    def __init__(self, source, count: int, size: int, device: torch.device | str = "cpu") -> None:
        from ppp_audit.images import read_windows

        device = torch.device(device)
        self.stack = torch.cat([read_windows(source, range(i, min(i + 64, count)), size, device)
                                for i in range(0, count, 64)])
        self.description = {**source.describe(), "preloaded": count}

    def windows(self, indices, size: int, device: torch.device) -> torch.Tensor:
        return self.stack[torch.as_tensor(list(indices), device=self.stack.device)].to(device)

    def window(self, index: int, size: int) -> torch.Tensor:
        return self.stack[index].cpu()

    def available(self) -> int:
        return len(self.stack)

    def describe(self) -> dict:
        return self.description

    def fits(self, index: int, size: int) -> bool:
        return True


def run(args: argparse.Namespace) -> dict:
    from ppp_audit.auditor import Auditor, resolve_device
    from ppp_audit.engine import AuditConfig, audit
    from ppp_audit.images import DeadLeavesSource
    from ppp_audit.models import FeatureTaps, build_model

    device = resolve_device(args.device)
    model, info = build_model(args.model, pretrained=False, device=device)
    config = AuditConfig(model=args.model, pretrained=False, num_images=args.num_images, batch_size=args.batch_size,
                         device=str(device), paddings=args.paddings, workers=args.workers, precision=args.precision,
                         input_size=args.input_size, margin=args.margin, images_on=args.images_on)
    auditor = Auditor(config, model=model, info=info)  # the sizes and margins the audit runs at
    model, size, margin, second = auditor.model, auditor.size, auditor.margin, auditor.second_margin
    # The same inputs, memory format and precision as the audit's own passes.
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.to(memory_format=memory_format)
    source = DeadLeavesSource(scale=size)
    windows = torch.stack([source.window(i, size + 2 * margin) for i in range(args.batch_size)]).to(device)
    windows = windows.contiguous(memory_format=memory_format)
    inputs = [auditor.crop(windows), windows]
    if second:
        inputs.append(auditor.second_window(windows))
    taps = FeatureTaps(model)

    images = PreloadedSource(source, args.num_images, size + 2 * margin, device) if args.preload else None
    labels = ["native", *args.paddings]
    batches = -(-args.num_images // args.batch_size)
    reset_peak(device)
    crop_s = bare_forward_seconds(taps, inputs[:1], args.repeats, device, args.precision) if args.paddings else 0.0
    rounds = []
    for _ in range(args.rounds):
        # Bare forward measured right before and right after each audit, averaged: a machine whose speed drifts
        # (other load, clocks) then biases neither side; over several rounds the median round is reported.
        bare_before = bare_forward_seconds(taps, inputs, args.repeats, device, args.precision)
        report = audit(config, model=model, info=info, source=images)
        bare_after = bare_forward_seconds(taps, inputs, args.repeats, device, args.precision)
        bare_s = (bare_before + bare_after) / 2
        loop_s = sum(report.timings[f"{label}_s"] for label in labels)
        rounds.append((loop_s / (batches * passes_per_batch(report, labels, bare_s, crop_s)), bare_before, bare_after,
                       report, loop_s))
    factors = sorted(r[0] for r in rounds)
    _, bare_before, bare_after, report, loop_s = sorted(rounds, key=lambda r: r[0])[(len(rounds) - 1) // 2]
    bare_s = (bare_before + bare_after) / 2
    needed_s = batches * passes_per_batch(report, labels, bare_s, crop_s)
    return {
        "model": args.model,
        "device": str(device),
        "precision": args.precision,
        "input_size": size,
        "margin": margin,
        "second_margin": second,
        "batch_size": args.batch_size,
        "num_images": args.num_images,
        "preload": args.preload,
        "paddings": labels,
        "bare_forward_images_per_s": args.batch_size / bare_s,
        "bare_forward_drift": bare_after / bare_before,
        "audit_images_per_s": args.num_images * len(labels) / loop_s,
        "rounds": args.rounds,
        "overhead_factor_loop": loop_s / needed_s,
        "overhead_factor_loop_range": [factors[0], factors[-1]],
        "overhead_factor_wall": report.timings["loop_s"] / needed_s,
        "overhead_factor_total": report.timings["total_s"] / needed_s,
        "one_off_s": report.timings["total_s"] - loop_s,
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": peak_mib(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--paddings", nargs="*", default=[])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--input-size", type=int, default=None, help="crop size S (default: the model's)")
    parser.add_argument("--margin", type=int, default=None, help="margin m (default: chosen from the receptive fields)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--images-on", default="auto", choices=["auto", "host", "device"],
                        help="where the images are made (auto: on the device when it is a GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="bare forward passes timed before and after an audit")
    parser.add_argument("--rounds", type=int, default=1,
                        help="audits (each between two bare-forward timings); the median round is reported")
    parser.add_argument("--preload", action="store_true",
                        help="render the images before timing (the wall factor then excludes image production)")
    parser.add_argument("--memory-scaling", action="store_true", help="run at N and 4N in fresh processes")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    if args.memory_scaling:
        rows = []
        for n in (args.num_images, 4 * args.num_images):
            cmd = [sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
                   "--num-images", str(n), "--device", args.device, "--repeats", "1", "--json",
                   "--workers", str(args.workers), "--images-on", args.images_on,
                   "--precision", args.precision, *(["--paddings", *args.paddings] if args.paddings else []),
                   *(["--input-size", str(args.input_size)] if args.input_size else [])]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"benchmark run failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout))
        small, large = rows
        key = "peak_cuda_mib" if small["peak_cuda_mib"] is not None else "peak_rss_mib"
        print(f"{args.model} on {small['device']}: peak memory N={small['num_images']}: {small[key]:.0f} MiB, "
              f"N={large['num_images']}: {large[key]:.0f} MiB (ratio {large[key] / small[key]:.3f})")
        return

    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']} on {result['device']} ({result['precision']}), S={result['input_size']}, "
          f"batch {result['batch_size']}, N={result['num_images']}{' preloaded' if result['preload'] else ''}, "
          f"paddings {', '.join(result['paddings'])}")
    passes = "crop + window + second window" if result["second_margin"] else "crop + window"
    print(f"  S={result['input_size']} m={result['margin']} second m={result['second_margin']}")
    print(f"  bare forward ({passes} passes): {result['bare_forward_images_per_s']:.2f} images/s "
          f"(after/before the audit: {result['bare_forward_drift']:.2f})")
    print(f"  audit loop:                          {result['audit_images_per_s']:.2f} images x paddings / s")
    spread = (f"; rounds {result['overhead_factor_loop_range'][0]:.3f} to {result['overhead_factor_loop_range'][1]:.3f}"
              if result["rounds"] > 1 else "")
    print(f"  overhead factor (loop):  {result['overhead_factor_loop']:.3f}   (1.0 = forward passes only; host time of "
          f"the passes and statistics, a lower bound on CUDA where kernels run ahead{spread})")
    print(f"  overhead factor (wall):  {result['overhead_factor_wall']:.3f}   (the measuring loop's wall time, image "
          "loading included, synchronised on CUDA)")
    print(f"  overhead factor (total): {result['overhead_factor_total']:.3f}   (incl. {result['one_off_s']:.1f} s "
          "one-off: receptive-field probe, loader start)")
    print(f"  peak RSS {result['peak_rss_mib']:.0f} MiB" +
          (f", peak CUDA {result['peak_cuda_mib']:.0f} MiB" if result["peak_cuda_mib"] is not None else ""))


if __name__ == "__main__":
    main()
