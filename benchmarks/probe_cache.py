"""Cost of the receptive-field probe (``receptive.influence_profiles``) without and with its on-disk cache, in a fresh
cache folder: twice without the cache, with a cold cache (probe, key and store), then cached calls.
docs/performance.md quotes it.

    python benchmarks/probe_cache.py                                   # resnet50, S=224: the 672 px probe
    python benchmarks/probe_cache.py --model resnet10t --input-size 64  # a smoke run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--input-size", type=int, default=224, help="crop size S; the probe window is S + 2*S")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ["PPP_AUDIT_CACHE"] = tempfile.mkdtemp(prefix="ppp-audit-probe-cache-")  # before ppp_audit reads it

    import torch

    from ppp_audit.context import ContextMatcher
    from ppp_audit.models import FeatureTaps, build_model
    from ppp_audit.receptive import influence_profiles
    from ppp_audit.receptive_cache import weights_digest

    torch.manual_seed(0)
    model, _ = build_model(args.model, pretrained=False, device=args.device)
    taps, context = FeatureTaps(model), ContextMatcher(model)
    window = 3 * args.input_size  # bench_audit's: S + 2 * cap with cap = S
    _ = taps.names  # settled before the timings, as in an audit
    started = time.perf_counter()
    weights_digest(model)
    print(f"{args.model}: weights digest {time.perf_counter() - started:.3f} s")
    results = {}
    # the first probe of a process also pays its first passes at the window's size (allocations, kernel choice)
    for label, cache in (("no cache, first in the process", False), ("no cache, again", False),
                         ("cold cache", True), ("cached", True), ("cached again", True)):
        started = time.perf_counter()
        results[label] = influence_profiles(taps, window, args.device, context=context, cache=cache)
        print(f"{args.model}, probe window {window} px, {label}: {time.perf_counter() - started:.3f} s "
              f"({results[label].obtained})")
    same = list(results["cached"]) == list(results["no cache, again"])
    print("cached profiles equal the probed ones" if same else "cached profiles DIFFER from the probed ones")


if __name__ == "__main__":
    main()
