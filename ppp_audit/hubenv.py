"""How the environment configures the Hugging Face Hub, read the way ``huggingface_hub`` reads it, and whether the Hub
answers. Torch-free."""

from __future__ import annotations

import os

HUB_PROBE_TIMEOUT = 3.0
"""Seconds :func:`hub_reachable` waits for an answer: a Hub that has not answered by then is treated as unreachable."""
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


def hub_reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether anything answers HTTP at ``endpoint`` within ``timeout`` seconds: one request, no retries.

    Any HTTP status counts as an answer (a mirror may have no page at its root); a refused connection, a failed name
    lookup, a TLS failure or silence does not. The request goes through ``huggingface_hub``'s own HTTP session, so
    proxies and certificates are those its downloads would use. Without this check a download retries for about a
    minute before it fails.

    Args:
        endpoint: The Hub's base URL, e.g. ``huggingface_hub.constants.ENDPOINT``.
        timeout: Seconds to wait for the connection and the answer.
    """
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=timeout)
    except Exception:  # noqa: BLE001 - whatever the HTTP client raises, nothing usable answered
        return False
    return True
