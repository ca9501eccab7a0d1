"""Coverage of the timm zoo: does every architecture get a PPP number or a one-line reason, never a traceback?

One architecture per timm model module (the one with the fewest parameters, counted on the meta device), or the
models a pattern / list names; each audited in its own process, exactly as a user types it:

    ppp-audit MODEL --no-pretrained -p reflect -n N -b N --device cpu --json OUT

with a per-model time limit. Every run becomes one JSONL row (model, module, parameters, outcome, reason, seconds,
estimator, strengths), and a summary table is printed:

* ``measured (delta)`` — the padding-free reference ran (the window fits the model);
* ``measured (mean-feature)`` — the labelled fallback for models that accept one input size only;
* ``refused`` — exit 2 with a one-line reason (e.g. a pure transformer has no padding, with or without ``-p``);
* ``failed`` — exit 1, one line ("unexpected error ...");
* ``traceback`` — a raw traceback reached the user (the bug class this benchmark exists to find);
* ``timeout`` — over the time limit.

Usage:
    python benchmarks/zoo_coverage.py --out coverage.jsonl                   # one per timm module (~12 min to pick)
    python benchmarks/zoo_coverage.py --model-list benchmarks/zoo_modules.txt --out coverage.jsonl  # the same, listed
    python benchmarks/zoo_coverage.py --pattern 'resnet*' --pattern 'vit_small*' --out some.jsonl
    python benchmarks/zoo_coverage.py --model-list names.txt --timeout 300 --out list.jsonl
    python benchmarks/zoo_coverage.py --model-list benchmarks/zoo_modules.txt --rerun timeout --timeout 300 \
        --out coverage.jsonl                                              # the slow ones again, with more time

A benchmark, not a test: the full sweep takes tens of minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from ppp_audit.sweep import parameter_count

OUTCOMES = ("measured (delta)", "measured (mean-feature)", "refused", "failed", "traceback", "timeout")


def smallest_per_module() -> list[tuple[str, str, int | None]]:
    """``(module, model, parameters)``: the smallest model of every timm model module (test models excluded)."""
    import timm

    chosen = []
    for module in sorted(timm.list_modules()):
        names = [n for n in timm.list_models(module=module) if not n.startswith("test_")]
        if not names:
            continue
        counted = [(parameter_count(n), n) for n in names]
        known = [(c, n) for c, n in counted if c is not None]
        count, name = min(known) if known else (None, names[0])
        chosen.append((module, name, count))
    return chosen


def named_models(patterns: list[str], files: list[str]) -> list[tuple[str, str, int | None]]:
    """``(module, model, parameters)`` of the models the patterns and list files name, in order."""
    import timm

    names: list[str] = []
    for pattern in patterns:
        names += timm.list_models(pattern)
    for file in files:
        names += [line.strip() for line in Path(file).read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
    module_of = {name: module for module in timm.list_modules() for name in timm.list_models(module=module)}
    return [(module_of.get(name.split(".")[0], "?"), name, parameter_count(name)) for name in dict.fromkeys(names)]


def classify(rc: int | None, stderr: str, report: dict | None) -> tuple[str, str]:
    """(outcome, one-line reason) of one run."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if rc is None:
        return "timeout", "over the time limit"
    if "Traceback" in stderr or "│" in stderr:
        return "traceback", last[:300]
    if rc == 0 and report is not None:
        estimator = report.get("estimator", "delta")
        return f"measured ({estimator})", ""
    reason = next((line for line in lines if line.startswith("ppp-audit: error:")), last)
    return ("refused" if rc == 2 else "failed"), reason[:300]


def audit_one(name: str, num_images: int, timeout: float, scheme: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="ppp-cov-") as tmp:
        out = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "ppp_audit", name, "--no-pretrained", "-p", scheme, "-n", str(num_images),
                   "-b", str(num_images), "--device", "cpu", "--json", str(out), "--no-progress"]
        started = time.perf_counter()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
            rc, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stderr = None, (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        seconds = time.perf_counter() - started
        report = json.loads(out.read_text()) if rc == 0 and out.is_file() else None
    outcome, reason = classify(rc, stderr, report)
    row = {"model": name, "outcome": outcome, "reason": reason, "seconds": round(seconds, 1), "exit_code": rc}
    if report is not None:
        row["estimator"] = report.get("estimator")
        row["input_size"], row["margin"] = report.get("input_size"), report.get("margin")
        row["geometry"] = report.get("geometry")
        for result in report["results"]:
            row[f"{result['scheme']}_last_strength"] = result.get("last_strength")
    return row


def latest_rows(path: Path) -> dict[str, dict]:
    """The newest row of each model in a JSONL file, in the order the models first appear."""
    rows: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["model"]] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pattern", action="append", default=[], help="timm name pattern (repeatable)")
    parser.add_argument("--model-list", action="append", default=[], help="file with one model name per line")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model")
    parser.add_argument("--padding", default="reflect")
    parser.add_argument("--out", required=True, help="JSONL file (appended; models already in it are skipped)")
    parser.add_argument("--rerun", action="append", default=[], choices=OUTCOMES, metavar="OUTCOME",
                        help="run again the models whose row has this outcome, e.g. 'timeout' with a longer --timeout "
                             "on a quieter machine (repeatable); the newest row of a model counts")
    args = parser.parse_args()

    models = (named_models(args.pattern, args.model_list) if args.pattern or args.model_list
              else smallest_per_module())
    out = Path(args.out)
    done = set()
    if out.is_file():
        done = {model for model, row in latest_rows(out).items() if row["outcome"] not in args.rerun}
    print(f"{len(models)} models ({len(done)} already in {out})", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with out.open("a") as sink:
        for module, name, params in models:
            if name in done:
                continue
            row = {"module": module, "params": params, **audit_one(name, args.num_images, args.timeout, args.padding)}
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(f"{row['outcome']:<24} {name:<40} {row['seconds']:>6.1f}s  {row['reason'][:110]}", file=sys.stderr,
                  flush=True)
    rows = list(latest_rows(out).values())
    counts = Counter(row["outcome"] for row in rows)
    print(f"\n{len(rows)} models, {time.perf_counter() - started:.0f} s this run")
    print("| outcome | count | examples |\n| --- | --- | --- |")
    for outcome in OUTCOMES:
        examples = ", ".join(row["model"] for row in rows if row["outcome"] == outcome)
        print(f"| {outcome} | {counts.get(outcome, 0)} | {examples} |")


if __name__ == "__main__":
    main()
