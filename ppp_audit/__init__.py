"""ppp-audit: measure the Position-information Pattern from Padding (PPP) in any timm CNN.

Heavy modules (torch, timm) load lazily, so ``import ppp_audit`` is cheap and the pytest plugin imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "padding": "ppp_audit.paddings",
    "patch_padding": "ppp_audit.paddings",
    "get_padding": "ppp_audit.paddings",
    "list_paddings": "ppp_audit.paddings",
    "register_padding": "ppp_audit.paddings",
    "PaddingScheme": "ppp_audit.paddings",
    "PatchSummary": "ppp_audit.paddings",
    "AuditConfig": "ppp_audit.engine",
    "audit": "ppp_audit.engine",
    "FinetuneConfig": "ppp_audit.finetune",
    "finetune_audit": "ppp_audit.finetune",
    "Report": "ppp_audit.report",
    "PPPAuditError": "ppp_audit.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ppp_audit' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
