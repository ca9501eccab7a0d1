"""The audit (docs/metrics.md): measure PPP of a model with its native padding and with each requested scheme.

:func:`audit` drives an :class:`~ppp_audit.auditor.Auditor`: measure every scheme on the same windows, run the
baselines on the same images, and assemble the :class:`~ppp_audit.report.Report`. Fine-tuning
(:func:`ppp_audit.finetune.finetune_audit`) drives the same auditor.
"""

from __future__ import annotations

import time

import torch.nn as nn

from .auditor import Auditor, resolve_device
from .config import NATIVE, PRECISIONS, AuditConfig
from .errors import AuditInterrupted
from .geometry import largest_stride
from .images import ImageSource
from .models import ModelInfo
from .progress import ProgressReporter, progress_bar
from .report import Report
from .runtime import host_memory_kept


def audit(config: AuditConfig, *, model: nn.Module | None = None, info: ModelInfo | None = None,
          progress: bool | ProgressReporter = False, source: ImageSource | None = None) -> Report:
    """Run the audit described by ``config`` and return its :class:`Report`.

    Args:
        config: The audit settings.
        model: An already built model (its ``info`` too); otherwise built from ``config``.
        info: The :class:`ModelInfo` of ``model``.
        progress: Name each phase on stderr, live on a terminal, in plain lines in a log (docs/architecture.md);
            a :class:`~ppp_audit.progress.ProgressReporter` to report on the caller's.
        source: Images to measure on instead of the ones ``config`` names.

    Raises:
        AuditInterrupted: Ctrl-C; its ``report`` holds what was measured (marked ``interrupted``), or ``None``.
    """
    started = time.perf_counter()
    # Set-up probes and the statistics' finishing are host work on large tensors too (runtime.host_memory_kept).
    with progress_bar(progress) as bar, host_memory_kept(resolve_device(config.device)):
        auditor = Auditor(config, model=model, info=info, progress=bar)
        measurement = auditor.measure(source, progress=bar)
        baselines = auditor.baselines(measurement, progress=bar)
        report = auditor.report(measurement, started=started, baselines=baselines.results,
                                baselines_s=baselines.seconds, interrupted=baselines.interrupted)
    if report.interrupted:
        raise AuditInterrupted(report)
    return report


__all__ = ["AuditConfig", "NATIVE", "PRECISIONS", "audit", "largest_stride", "resolve_device"]
