"""How the environment configures the Hugging Face Hub, read the way ``huggingface_hub`` reads it. Torch-free."""

from __future__ import annotations

import os

_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})
"""``huggingface_hub.constants.ENV_VARS_TRUE_VALUES``: the values that switch a boolean variable on (any case)."""


def is_offline() -> bool:
    """Whether Hub access is switched off: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is 1/ON/YES/TRUE.

    ``huggingface_hub`` reads the variables once, when it is imported (``constants.is_offline_mode()``); they are read
    here again as well, so that setting one later in the same process (a notebook, a test) counts too.
    """
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if flag.upper() in _TRUE_VALUES:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of timm and ppp-audit, but not needed to read a variable
        return False
    return bool(constants.is_offline_mode())
