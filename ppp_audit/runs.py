"""The run folders of a sweep (docs/leaderboard.md): one per model and settings, written by ``ppp-audit sweep`` and
read by ``ppp-audit leaderboard``. Torch-free.

Layout::

    DIR/runs/<model>/<settings-hash>/run.json      # always: the model, settings, status, reason, seconds, ...
    DIR/runs/<model>/<settings-hash>/report.json   # a finished audit (with report.html and figures/ unless --no-pages)

``<model>`` is the timm name with characters a folder name cannot hold replaced (:func:`model_slug`);
``<settings-hash>`` is the first 12 hex digits of the SHA-256 of the settings as sorted JSON (:func:`settings_hash`),
so the same model audited with other settings gets its own folder, and a re-run with the same ones finds its result.
``run.json`` is written last, after the report, and atomically: a run folder without it is unfinished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .report import REPORT_JSON

RUNS = "runs"
RUN_JSON = "run.json"
DONE = "done"
FAILED = "failed"
STATUSES = (DONE, FAILED)


def settings_hash(settings: dict[str, Any]) -> str:
    """The first 12 hex digits of the SHA-256 of ``settings`` as sorted, compact JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def model_slug(model: str) -> str:
    """A folder name for a model name (``hf-hub:org/name`` -> ``hf-hub_org_name``); timm names pass unchanged."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model)


@dataclass
class RunRecord:
    """What one model's run of a sweep left in ``run.json``.

    Attributes:
        model: The model name as audited (``resnet18.a1_in1k``).
        settings: The audit settings shared by the sweep (hashed into the folder name).
        status: ``done`` (a report.json beside it) or ``failed``.
        reason: Why it failed, one line (``None`` when done).
        seconds: Wall seconds of the run.
        family: The timm module that defines the architecture (``resnet``), or ``None``.
        params: Parameter count, or ``None`` when unknown.
        rank: The sweep rank that ran it.
        finished: UTC time the run ended (ISO 8601).
        attempts: How many times it was tried (a CUDA out-of-memory retry with a smaller batch counts).
    """

    model: str
    settings: dict[str, Any]
    status: str
    reason: str | None = None
    seconds: float | None = None
    family: str | None = None
    params: int | None = None
    rank: int = 0
    finished: str | None = None
    attempts: int = 1
    folder: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"run status must be one of {STATUSES} (got {self.status!r})")

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)

    @property
    def report_path(self) -> Path | None:
        """The run's report.json, when it finished and was read from a folder."""
        return self.folder / REPORT_JSON if self.folder is not None and self.status == DONE else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("folder")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: Path | None = None) -> "RunRecord":
        known = {f.name for f in dataclasses.fields(cls)} - {"folder"}
        return cls(**{k: v for k, v in data.items() if k in known}, folder=folder)


def run_folder(out: str | Path, model: str, settings: dict[str, Any]) -> Path:
    """Where the run of ``model`` with ``settings`` lives under the sweep folder ``out``."""
    return Path(out) / RUNS / model_slug(model) / settings_hash(settings)


def write_record(folder: str | Path, record: RunRecord) -> Path:
    """Write ``run.json`` into ``folder`` atomically (a temporary file renamed over it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_JSON
    tmp = path.with_name(f".{RUN_JSON}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_record(folder: str | Path) -> RunRecord | None:
    """The record in ``folder``, or ``None`` when there is none (an unfinished run) or it cannot be read."""
    path = Path(folder) / RUN_JSON
    try:
        return RunRecord.from_dict(json.loads(path.read_text()), folder=Path(folder))
    except (OSError, ValueError, TypeError):
        return None


def iter_records(out: str | Path) -> Iterator[RunRecord]:
    """Every finished or failed run under the sweep folder ``out``, in folder order."""
    root = Path(out) / RUNS
    if not root.is_dir():
        return
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for folder in sorted(p for p in model_dir.iterdir() if p.is_dir()):
            record = read_record(folder)
            if record is not None:
                yield record


__all__ = ["DONE", "FAILED", "RUNS", "RUN_JSON", "RunRecord", "iter_records", "model_slug", "read_record",
           "run_folder", "settings_hash", "write_record"]
