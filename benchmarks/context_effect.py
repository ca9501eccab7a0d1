"""What matching global context changes: one model audited twice on the same images, with the window pass taking the
statistics of its squeeze-excitation / GRN modules over the crop's footprint (the default) and over the whole window
(``AuditConfig(match_context=False)``, as before schema 1.6).

    python benchmarks/context_effect.py --model efficientnet_b0 --num-images 16 --margin 64 --gate-gain 8

Prints one row per layer and scheme: the strength both ways, their ratio, and the receptive reach both ways (with
the statistics matched, the probe follows local paths; unmatched, every position reaches the whole window).
"""

from __future__ import annotations

import argparse
import copy

import torch

from ppp_audit.context import ContextMatcher
from ppp_audit.engine import AuditConfig, audit
from ppp_audit.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--padding", default="reflect")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--margin", type=int, default=None, help="one margin for both audits (default: chosen)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", default=None, help="image folder (default: the built-in dead leaves)")
    parser.add_argument("--pretrained", action="store_true", help="load pretrained weights (default random init)")
    parser.add_argument("--gate-gain", type=float, default=1.0,
                        help="scale the last layer of every matched module (random-init gates hardly depend on the "
                             "content; a gain makes them, as trained gates do)")
    args = parser.parse_args()
    model, info = build_model(args.model, pretrained=args.pretrained, device=torch.device("cpu"), seed=args.seed)
    with torch.no_grad():
        for name in ContextMatcher(model).matched:
            module = dict(model.named_modules())[name]
            last = getattr(module, "conv_expand", None) or getattr(module, "fc2", None) or getattr(module, "fc", None)
            if last is not None:
                last.weight.mul_(args.gate_gain)
    reports = {}
    for match in (True, False):
        config = AuditConfig(args.model, paddings=[args.padding], num_images=args.num_images, seed=args.seed,
                             input_size=args.input_size, margin=args.margin, pretrained=args.pretrained,
                             device="cpu", match_context=match, images=args.images)
        reports[match] = audit(config, model=copy.deepcopy(model), info=info)
    matched, whole = reports[True], reports[False]
    print(f"{args.model} ({'pretrained' if args.pretrained else 'random init'}, gate gain {args.gate_gain:g}), "
          f"N={args.num_images}, "
          f"S={matched.input_size}, m={matched.margin} (matched) / {whole.margin} (whole window)")
    print(f"{'scheme':<16}{'layer':<12}{'matched':>9}{'whole':>9}{'ratio':>7}{'reach m':>9}{'reach w':>9}  modules")
    for a, b in zip(matched.results, whole.results):
        for x, y in zip(a.layers, b.layers):
            ratio = y.stats.strength / x.stats.strength if x.stats.strength else float("nan")
            # matched modules are listed from the matched audit; the whole-window audit matches none
            print(f"{a.label:<16}{x.name:<12}{x.stats.strength:>9.3f}{y.stats.strength:>9.3f}{ratio:>7.2f}"
                  f"{x.receptive_radius_px:>9.0f}{y.receptive_radius_px:>9.0f}  {len(x.context_matched)} matched, "
                  f"{len(x.context_unmatched)} not")


if __name__ == "__main__":
    main()
