"""The run folders of a sweep (docs/leaderboard.md): one per model and settings, written by ``ppp-audit sweep`` and
read by ``ppp-audit leaderboard``. Torch-free.

Layout::

    DIR/runs/<model>/<settings-hash>/run.json      # always: the model, settings, status, reason, seconds, ...
    DIR/runs/<model>/<settings-hash>/report.json   # a finished audit (with report.html and figures/ unless --no-pages)

``<model>`` is the timm name with characters a folder name cannot hold replaced (:func:`model_slug`);
``<settings-hash>`` is the first 12 hex digits of the SHA-256 of the *result* settings as sorted JSON
(:func:`settings_hash`): those that can change a number (SPEC §3.5; :func:`result_settings`), not the device, batch
size or workers, which ``run.json`` records as ``run_settings``. So the same model audited with other settings gets its
own folder, and a re-run with the same ones, at any ``-b`` or ``--workers``, finds its result. A run recorded before
the hash left those out (#27) lies in the folder of the hash of all its settings; it is read, and counts, all the
same (:func:`recorded_runs`). ``run.json`` is written last, after the report, and atomically: a run folder without it
is unfinished.

Run folders are read through one tolerant reader, :func:`read_record` (and :func:`iter_records` for a whole sweep): a
``run.json`` that is truncated, hand-edited to other types or values, or not a file at all gives an
:class:`UnreadableRun` with the reason in one line instead of a :class:`RunRecord`, never an exception, so that one
damaged run is listed (by the leaderboard) or redone (by the sweep) and the others are read as usual.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

from .config import RENDERER, RUN_SETTINGS
from .errors import PPPAuditError, one_line
from .files import atomic_write
from .report import REPORT_JSON, check_fields

RUNS = "runs"
RUN_JSON = "run.json"
CLAIM = ".claim.json"
"""In a run folder while a sweep process audits it: which process (:class:`RunClaim`)."""
DONE = "done"
FAILED = "failed"
STATUSES = (DONE, FAILED)
UNREADABLE = "unreadable"
"""The status of an :class:`UnreadableRun` (never written: a record says done or failed)."""


def result_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """What makes a result what it is (SPEC §3.5): ``settings`` (a sweep's, or a record's) without those that change
    only how an audit runs (:data:`~ppp_audit.config.RUN_SETTINGS`: device, batch size, workers, ...), and for the
    built-in images the renderer that draws them (``renderer``, :data:`~ppp_audit.config.RENDERER` unless given)."""
    result = {key: value for key, value in settings.items() if key not in RUN_SETTINGS}
    if result.get("images") is None:
        result.setdefault("renderer", RENDERER)
    return result


def settings_hash(settings: dict[str, Any]) -> str:
    """The first 12 hex digits of the SHA-256 of ``settings``' :func:`result_settings` as sorted, compact JSON: runs
    that differ only in how they ran share it."""
    return _digest(result_settings(settings))


def _digest(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def model_slug(model: str) -> str:
    """A folder name for a model name (``hf-hub:org/name`` -> ``hf-hub_org_name``); timm names pass unchanged."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model)


@dataclass
class RunRecord:
    """What one model's run of a sweep left in ``run.json``; each field is checked against its type (and ``status``
    against :data:`STATUSES`) when a record is made, as ``huggingface_hub``'s validated dataclasses do, so a record
    read back is one the leaderboard and the sweep can use.

    Attributes:
        model: The model name as audited (``resnet18.a1_in1k``).
        settings: The result settings shared by the sweep (:func:`result_settings`, hashed into the folder name);
            run settings given here move to ``run_settings``.
        status: ``done`` (a report.json beside it) or ``failed``.
        reason: Why it failed, one line (``None`` when done).
        seconds: Wall seconds of the run.
        family: The timm module that defines the architecture (``resnet``), or ``None``.
        params: Parameter count, or ``None`` when unknown.
        rank: The sweep rank that ran it.
        finished: UTC time the run ended (ISO 8601).
        attempts: How many times it was tried (a CUDA out-of-memory retry with a smaller batch counts).
        run_settings: How it ran (:data:`~ppp_audit.config.RUN_SETTINGS`: device, batch size, workers, ...):
            recorded, never hashed.
        written_hash: The hash of the settings as ``run.json`` holds them, when read from one: the folder's name
            for a run recorded before the hash left the run settings out (#27).
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
    run_settings: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = field(default=None, compare=False, repr=False)
    written_hash: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Raises:
            TypeError: A field is not of its type (the message names it: ``params must be an integer or null``).
            ValueError: ``status`` is neither ``done`` nor ``failed``.
        """
        check_fields(type(self), self.to_dict(), RUN_JSON)
        if self.status not in STATUSES:
            raise ValueError(f"status must be {' or '.join(map(repr, STATUSES))} (got {self.status!r})")
        ran = {key: value for key, value in self.settings.items() if key in RUN_SETTINGS}
        self.settings, self.run_settings = result_settings(self.settings), {**ran, **self.run_settings}

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)

    @property
    def in_its_folder(self) -> bool:
        """Whether the record lies in the folder its settings name (or, recorded before #27, the folder of the hash of
        all its settings), not copied by hand into another run's folder; ``True`` when read from no folder."""
        return self.folder is None or self.folder.name in (self.settings_hash, self.written_hash)

    @property
    def report_path(self) -> Path | None:
        """The run's report.json, when it finished and was read from a folder."""
        return self.folder / REPORT_JSON if self.folder is not None and self.status == DONE else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("folder")
        data.pop("written_hash")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: Path | None = None) -> "RunRecord":
        """The record a ``run.json`` holds (fields it does not know are ignored).

        Raises:
            TypeError: ``data`` is no object, or a field is missing or not of its type.
            ValueError: ``status`` is neither ``done`` nor ``failed``.
        """
        check_fields(cls, data, RUN_JSON)  # a missing field is named, not left to the constructor's message
        known = {f.name for f in dataclasses.fields(cls)} - {"folder", "written_hash"}
        values = {k: v for k, v in data.items() if k in known}
        if "run_settings" not in data:  # recorded before #27: which renderer made the built-in images is in the report
            values["settings"] = _named_renderer(data["settings"], folder)
        return cls(**values, folder=folder, written_hash=_digest(data["settings"]))


def _named_renderer(settings: dict[str, Any], folder: Path | None) -> dict[str, Any]:
    """The settings of a run recorded before #27, with the renderer of its built-in images named: the report's
    ``data.renderer``, or ``numpy`` (which wrote none; a CPU audit with ``--images-on auto`` or ``host`` used it). Those
    pictures are not today's, so such a run is another result, and a sweep redoes it."""
    if settings.get("images") is not None or "renderer" in settings:
        return settings
    try:
        named = json.loads((folder / REPORT_JSON).read_text(encoding="utf-8"))["data"].get("renderer", "numpy")
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        named = None  # no readable report (a failed run): its pictures are unknown, so not taken for today's
    return {**settings, "renderer": named if isinstance(named, str) else "numpy"}


@dataclass(frozen=True)
class UnreadableRun:
    """A run folder whose ``run.json`` cannot be used: what :func:`read_record` gives instead of a
    :class:`RunRecord`.

    Attributes:
        folder: The run folder.
        reason: Why, in one line (``run.json is not valid JSON (Expecting value, line 3)``).
        model: The model its record names when that much can be read, else the folder's name (the model's slug).
    """

    folder: Path
    reason: str
    model: str
    status: ClassVar[str] = UNREADABLE

    @property
    def settings_hash(self) -> str:
        """The folder's name (``runs/MODEL/HASH``)."""
        return self.folder.name


def run_folder(out: str | Path, model: str, settings: dict[str, Any]) -> Path:
    """Where the run of ``model`` with ``settings`` lives under the sweep folder ``out``."""
    return Path(out) / RUNS / model_slug(model) / settings_hash(settings)


def write_record(folder: str | Path, record: RunRecord) -> Path:
    """Write ``run.json`` into ``folder`` atomically (a temporary file renamed over it)."""
    return atomic_write(Path(folder) / RUN_JSON, json.dumps(record.to_dict(), indent=1, default=str) + "\n")


@dataclass(frozen=True)
class RunClaim:
    """A sweep process's claim on one run folder (``CLAIM``, made atomically): sweeps that share a folder, started
    together or by hand, split its models instead of each auditing all of them.

    A claim is stale, and is taken over, when the process that made it is gone (same machine) or when it has not
    been refreshed for ``stale_after_s`` (a claim from another machine of a shared disk).
    """

    path: Path

    @classmethod
    def take(cls, folder: str | Path, *, stale_after_s: float) -> "RunClaim | None":
        """Claim ``folder`` for this process; ``None`` if another live sweep holds it."""
        path = Path(folder) / CLAIM
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
        for _ in range(2):
            try:
                handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not _stale(path, stale_after_s):
                    return None
                path.unlink(missing_ok=True)  # a dead sweep's claim: taken over (O_EXCL settles a race for it)
                continue
            with os.fdopen(handle, "w") as file:
                file.write(mine)
            return cls(path)
        return None

    def refresh(self) -> None:
        """Mark the claim as still held (before each attempt, so that it is never older than one time limit)."""
        os.utime(self.path)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _stale(path: Path, stale_after_s: float) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > stale_after_s:
        return True
    try:
        claim = json.loads(path.read_text())
    except (OSError, ValueError):  # being written this instant (or damaged: then its age decides)
        return False
    pid = claim.get("pid") if isinstance(claim, dict) and claim.get("host") == socket.gethostname() else None
    if not isinstance(pid, int) or pid <= 0:
        return False  # another machine's: only its age tells
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def read_record(folder: str | Path) -> RunRecord | UnreadableRun | None:
    """The record in the run folder ``folder``; never raises.

    Returns:
        Its :class:`RunRecord`; an :class:`UnreadableRun` with the reason when its ``run.json`` cannot be used (not
        JSON, not a record, a field missing or of another type, a status other than done or failed, a folder or a
        named pipe in its place); ``None`` when it has none (the run is unfinished, or there is no such folder).
    """
    folder = Path(folder)
    path = folder / RUN_JSON
    slug = folder.parent.name
    if not os.path.lexists(path):
        return None
    if path.is_dir():
        return UnreadableRun(folder, f"{RUN_JSON} is a folder, not a file", slug)
    if not path.is_file():  # a named pipe would block the read; a dangling link has nothing to read
        return UnreadableRun(folder, f"{RUN_JSON} is not a regular file", slug)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:  # truncated, or edited into something else
        return UnreadableRun(folder, f"{RUN_JSON} is not valid JSON ({exc.msg}, line {exc.lineno})", slug)
    except UnicodeDecodeError:
        return UnreadableRun(folder, f"{RUN_JSON} is not UTF-8 text", slug)
    except OSError as exc:
        return UnreadableRun(folder, f"cannot read {RUN_JSON} ({exc.strerror or exc})", slug)
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, nesting Python cannot follow
        return UnreadableRun(folder, f"{RUN_JSON} is not valid JSON ({str(exc).split(':')[0] or type(exc).__name__})",
                             slug)
    try:
        return RunRecord.from_dict(data, folder=folder)
    except (TypeError, ValueError, RecursionError) as exc:
        text = one_line(exc)
        if not isinstance(data, dict):
            return UnreadableRun(folder, text, slug)
        named = data.get("model")
        return UnreadableRun(folder, f"{RUN_JSON} is not a run record (bad or missing field: {text})",
                             named if isinstance(named, str) and named else slug)


def recorded_runs(out: str | Path, model: str, settings: dict[str, Any]) -> list[RunRecord]:
    """The records of ``model`` with the result settings of ``settings`` under the sweep folder ``out``, in any of the
    model's run folders (one recorded under the older hash of all its settings too); never raises. A record that cannot
    be read, or of another model or settings copied by hand into a run's folder, is left out."""
    model_dir = Path(out) / RUNS / model_slug(model)
    folders = _subfolders(model_dir) if model_dir.is_dir() else []
    key = settings_hash(settings)
    records = [read_record(folder) for folder in folders if isinstance(folder, Path)]
    return [record for record in records if isinstance(record, RunRecord) and record.model == model
            and record.settings_hash == key and record.in_its_folder]


def iter_records(out: str | Path) -> Iterator[RunRecord | UnreadableRun]:
    """Every run under the sweep folder ``out`` that ended, in folder order: a :class:`RunRecord` for each finished or
    failed run, an :class:`UnreadableRun` for each whose ``run.json`` cannot be used or whose folder cannot be listed
    (see :func:`read_record`). Unfinished runs (no ``run.json`` yet) are left out. Never raises."""
    root = Path(out) / RUNS
    if not root.is_dir():
        return
    for model_dir in _subfolders(root):
        if isinstance(model_dir, UnreadableRun):
            yield model_dir
            continue
        for folder in _subfolders(model_dir):
            record = read_record(folder) if isinstance(folder, Path) else folder
            if record is not None:
                yield record


def _subfolders(folder: Path) -> list[Path] | list[UnreadableRun]:
    """The folders in ``folder``, sorted; when it cannot be listed, one :class:`UnreadableRun` saying why."""
    try:
        return sorted(path for path in folder.iterdir() if path.is_dir())
    except OSError as exc:
        return [UnreadableRun(folder, f"cannot list the folder ({exc.strerror or exc})", folder.name)]


def clear_record(folder: str | Path) -> None:
    """Remove the ``run.json`` of a run about to be redone (it is unfinished until the new record is written), whatever
    took its place: a file, a link or a folder of that name. Nothing else in the run folder is touched.

    Raises:
        PPPAuditError: It cannot be removed (the message names the OS's reason).
    """
    path = Path(folder) / RUN_JSON
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise PPPAuditError(f"cannot replace '{path}' ({exc.strerror or exc})",
                            "make the sweep folder writable, or remove it by hand") from None


def check_sweep_folder(out: str | Path, folders: Iterable[Path] = (), *, writable: bool = True) -> Path:
    """Check, before a sweep's first model (or before a leaderboard reads the runs), that no file takes the place of
    ``out/runs`` or of the run folders ``folders`` (or the model folders above them), and with ``writable`` that
    ``out/runs``, if it is there, can be written.

    Args:
        out: The sweep folder.
        folders: Run folders the sweep will write (:func:`run_folder`).
        writable: Also check that ``out/runs`` can be written.

    Raises:
        PPPAuditError: One line naming the path that is a file (or is not writable) and what to do.
    """
    root = Path(out) / RUNS
    fix = "move it out of the way, or pass another --out folder"
    if root.exists() and not root.is_dir():
        raise PPPAuditError(f"'{root}' is a file, not the folder of the sweep's runs", fix)
    for folder in folders:
        for path in (folder.parent, folder):
            if path.exists() and not path.is_dir():
                raise PPPAuditError(f"'{path}' is a file, not the folder of a run", fix)
    if writable and root.is_dir() and not os.access(root, os.W_OK | os.X_OK):
        raise PPPAuditError(f"'{root}' cannot be written (permission denied)", "pass a writable --out folder")
    return root


__all__ = ["CLAIM", "DONE", "FAILED", "RUNS", "RUN_JSON", "UNREADABLE", "RunClaim", "RunRecord", "UnreadableRun",
           "check_sweep_folder", "clear_record", "iter_records", "model_slug", "read_record", "recorded_runs",
           "result_settings", "run_folder", "settings_hash", "write_record"]
