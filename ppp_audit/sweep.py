"""``ppp-audit sweep``: audit many models with one set of settings, resumably, each in its own process, sharded.

Names expand as timm's ``list_models`` does (wildcards, pretrained tags). Each model runs in a fresh process (spawned,
so a crash, an out-of-memory kill or a hang takes only that model) under a time limit, and leaves a run folder
(:mod:`ppp_audit.runs`): its report, and ``run.json`` saying done or failed (with the one-line reason), written last.
A re-run skips the runs that are there (failed ones too, unless ``retry_failed``), whatever it changes of how they
run (batch size, workers, device: no part of a result's settings, SPEC §3.5); ``force`` redoes them. On CUDA out of
memory a model is tried again with half the batch, down to 1, as timm's ``validate.py --retry`` does.

Several processes share the models by the standard rank variables (``RANK``/``WORLD_SIZE`` from ``torchrun``,
``SLURM_PROCID``/``SLURM_NTASKS``, or ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``): rank ``r`` of ``w`` takes
every ``w``-th model from the ``r``-th, all writing into the same folder; there is no scheduler of our own.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import multiprocessing
import os
import queue
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import AuditConfig
from .errors import PPPAuditError, describe_error
from .progress import ProgressReporter, progress_bar
from .report import REPORT_JSON
from .runs import (DONE, FAILED, RunClaim, RunRecord, check_sweep_folder, clear_record, recorded_runs, run_folder,
                   write_record)

OUT_OF_MEMORY = "oom"
"""What a run reports on CUDA out of memory: the sweep tries the model again with half the batch."""
DEFAULT_TIMEOUT_S = 1800.0
"""Seconds one model may take before it is stopped and recorded as failed."""
CLAIM_GRACE_S = 120.0
"""A run folder's claim is stale once it is this much older than the time limit of one attempt (a claim is refreshed
before each attempt): the sweep that made it is gone."""
_DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                          "TORCHELASTIC_RUN_ID")
"""What torchrun sets for its processes; a sweep's audits must not read them (LOCAL_RANK stays: it picks the GPU)."""


# -- which models -----------------------------------------------------------------------------------------------------


def expand_models(names: Sequence[str], *, pretrained: bool = True) -> list[str]:
    """The models ``names`` stand for, in order, without repeats: a wildcard pattern expands with
    ``timm.list_models(pattern, pretrained=pretrained)`` (with pretrained tags, as timm lists them); any other name
    (``resnet18``, ``resnet18.a1_in1k``, ``hf-hub:...``, ``local-dir:...``) is taken as it is once timm knows it.

    Raises:
        PPPAuditError: A pattern matches nothing or a name is unknown (naming the closest models), or nothing is
            left at all.
    """
    import timm

    models: list[str] = []
    for name in names:
        if any(ch in name for ch in "*?["):
            found = timm.list_models(name, pretrained=pretrained)
            if not found:
                raise PPPAuditError(f"no timm model{' with pretrained weights' if pretrained else ''} matches "
                                    f"'{name}'", _closest_hint(name, pretrained))
            models += found
        elif name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(name):
            models.append(name)
        else:
            raise PPPAuditError(f"unknown timm model '{name}'", _closest_hint(name, pretrained))
    if not models:
        raise PPPAuditError("no models to sweep", "name models or patterns, e.g. 'resnet*', or pass --model-list FILE")
    return list(dict.fromkeys(models))


def _closest_hint(name: str, pretrained: bool) -> str:
    import timm

    candidates = timm.list_models(pretrained=pretrained) or timm.list_models()
    stem = name.strip("*?[]") or name
    close = difflib.get_close_matches(stem, candidates, n=3, cutoff=0.5)
    close += [c for c in candidates if stem and fnmatch.fnmatch(c, f"*{stem}*")][:3 - len(close)]
    close = list(dict.fromkeys(close))
    if close:
        return f"closest: {', '.join(close)}"
    return "list them with `python -c \"import timm; print(timm.list_models())\"`"


def read_model_list(path: str | Path) -> list[str]:
    """Names in a UTF-8 text file, one per line; blank lines and ``#`` comments are ignored.

    Raises:
        PPPAuditError: The file cannot be read, or is not UTF-8.
    """
    try:
        # utf-8-sig: editors on Windows save a byte-order mark, which would otherwise stick to the first name
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise PPPAuditError(f"cannot read --model-list '{path}': {exc.strerror or exc}",
                            "pass a text file with one model name or pattern per line") from None
    except UnicodeDecodeError as exc:
        raise PPPAuditError(f"--model-list '{path}' is not UTF-8 text (byte {exc.start}: "
                            f"{exc.object[exc.start:exc.start + 1]!r})", "save it as UTF-8") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def shard(models: Sequence[str], rank: int, world: int) -> list[str]:
    """The models of rank ``rank`` of ``world``: every ``world``-th from the ``rank``-th (disjoint, covering all)."""
    return list(models[rank::world])


def parameter_count(name: str) -> int | None:
    """Parameters of ``name`` built on the meta device (no memory, no weights); ``None`` if it cannot be built."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name.split(".", 1)[0], pretrained=False)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - a model that cannot even be built is reported by its run
        return None


@functools.lru_cache(maxsize=1)
def _modules_by_model() -> dict[str, str]:
    import timm

    return {name: module for module in timm.list_modules() for name in timm.list_models(module=module)}


def model_family(name: str) -> str | None:
    """The timm module that defines ``name``'s architecture (``resnet`` for ``resnet18.a1_in1k``), or ``None``."""
    return _modules_by_model().get(name.split(".", 1)[0])


# -- one model --------------------------------------------------------------------------------------------------------


def check_shared_settings(config: AuditConfig) -> None:
    """What every model of a sweep would fail on alike, checked once before the first model rather than recorded as
    each one's failure: the padding schemes and the image folder or dataset.

    Raises:
        PPPAuditError: A scheme is unknown, or the images cannot be found or hold none.
    """
    from .images import image_source
    from .paddings import get_padding

    for name in config.paddings:
        get_padding(name)
    if config.images:
        image_source(config.images, split=config.images_split)


def _exit_with_parent() -> None:
    """End this (child) process as soon as its parent is gone, whatever killed the parent (``SIGKILL`` included):
    a sweep that is stopped leaves no audit running on its own."""
    import threading
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_child(config: AuditConfig, folder: str, pages: bool, results: "multiprocessing.Queue") -> None:
    """In a fresh process: audit, save the report (and its page), and say how it went on ``results``."""
    _exit_with_parent()
    for name in _DISTRIBUTED_VARIABLES:  # one model's audit runs in one process, whatever shares the sweep
        os.environ.pop(name, None)
    try:
        from .engine import audit

        report = audit(config, progress=False)
        report.save(Path(folder) / REPORT_JSON)
        if pages:
            from .render import write_outputs

            write_outputs(report, folder, overwrite=True)
        results.put((DONE, None))
    except PPPAuditError as exc:
        results.put((FAILED, f"{exc.message}" + (f" — {exc.hint}" if exc.hint else "")))
    except KeyboardInterrupt:  # the sweep's Ctrl-C reaches its children too: the sweep stops and records nothing
        return
    except BaseException as exc:  # noqa: BLE001 - every failure is one model's, recorded with its reason
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            results.put((OUT_OF_MEMORY, "CUDA out of memory"))
            return
        (Path(folder) / "error.txt").write_text(traceback.format_exc())
        results.put((FAILED, f"unexpected error ({describe_error(exc)}); the trace is in error.txt"))


def audit_in_process(config: AuditConfig, folder: Path, *, timeout_s: float, pages: bool) -> tuple[str, str | None]:
    """Run one audit in a spawned process under a time limit: ``(DONE, None)``, ``(FAILED, reason)`` or
    ``(OUT_OF_MEMORY, reason)``. The caller's Ctrl-C stops the child and reaches the caller."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_run_child, args=(config, str(folder), pages, results), daemon=True)
    child.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return results.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if not child.is_alive():
                    code = child.exitcode
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    return FAILED, f"the process died ({how}; out of memory?)"
                if time.monotonic() >= deadline:
                    return FAILED, f"over the time limit of {timeout_s:g} s"
    finally:
        if child.is_alive():
            child.terminate()
            child.join(5)
            if child.is_alive():
                child.kill()
        child.join(1)


# -- the sweep --------------------------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """What a sweep (this rank's share) did.

    Attributes:
        models: The models of this rank, in order.
        done: Models audited now.
        failed: Models that failed now, with their reasons.
        skipped: Models whose run was already there (done, or failed and not retried).
        claimed: Models another sweep process was auditing (its claim on the run folder was live).
        interrupted: Set when Ctrl-C stopped the sweep (the model in progress is not recorded).
    """

    models: list[str]
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    claimed: list[str] = field(default_factory=list)
    interrupted: bool = False


def sweep_settings(config: AuditConfig) -> dict[str, Any]:
    """The settings a sweep shares between its models (the config without its model); run folders are named by the
    hash of their result part (:func:`ppp_audit.runs.settings_hash`)."""
    settings = dataclasses.asdict(config)
    settings.pop("model")
    return settings


def run_sweep(models: Sequence[str], settings: dict[str, Any], out: str | Path, *, rank: int = 0, world: int = 1,
              force: bool = False, retry_failed: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
              pages: bool = True, progress: bool | ProgressReporter = False,
              on_model: Callable[[RunRecord], None] | None = None,
              audit_runner: Callable[..., tuple[str, str | None]] = audit_in_process) -> SweepSummary:
    """Audit this rank's share of ``models`` with ``settings``, one run folder each under ``out``.

    Args:
        models: All the sweep's models (every rank gets the same list and takes its share).
        settings: :func:`sweep_settings` of the shared config.
        out: The sweep folder.
        rank: This process's rank.
        world: The number of processes sharing the models.
        force: Redo every model, recorded or not (by default a model whose run with the same result settings is
            recorded is skipped).
        retry_failed: Redo the models recorded as failed (and not done).
        timeout_s: Seconds one model may take.
        pages: Write each report's figures and page beside it.
        progress: The sweep's progress (models done / failed / left, time per model, time left).
        on_model: Called with each model's record as it is written.
        audit_runner: Runs one audit (tests replace it); :func:`audit_in_process` by default.

    Returns:
        The :class:`SweepSummary`; on Ctrl-C, ``interrupted`` is set and the summary covers the models finished.
    """
    mine = shard(models, rank, world)
    # A file where the runs go is the user's to move: refused before the first model, not found after it.
    check_sweep_folder(out, [run_folder(out, model, settings) for model in mine])
    summary = SweepSummary(models=mine)
    todo = []
    def finished(model: str) -> bool:
        return not force and _finished(model, out, settings, retry_failed)

    for model in mine:
        (summary.skipped if finished(model) else todo).append(model)
    with progress_bar(progress) as bar:
        bar.phase(f"sweeping {len(todo)} models", total=len(todo))
        try:
            for k, model in enumerate(todo):
                bar.update(description=f"{model} · {len(summary.done)} done, {len(summary.failed)} failed, "
                                       f"{len(todo) - k} left")
                claim = RunClaim.take(run_folder(out, model, settings), stale_after_s=timeout_s + CLAIM_GRACE_S)
                if claim is None:
                    summary.claimed.append(model)
                elif finished(model):  # finished by another sweep since the folder was read
                    claim.release()
                    summary.skipped.append(model)
                else:
                    try:
                        record = _audit_model(model, settings, Path(out), rank, timeout_s, pages, audit_runner, claim)
                    finally:
                        claim.release()
                    (summary.done.append(model) if record.status == DONE else
                     summary.failed.__setitem__(model, record.reason or ""))
                    if on_model is not None:
                        on_model(record)
                bar.update(advance=1)
        except KeyboardInterrupt:
            summary.interrupted = True
    return summary


def _finished(model: str, out: str | Path, settings: dict[str, Any], retry_failed: bool) -> bool:
    """Whether the sweep folder ``out`` holds ``model``'s result with the result settings of ``settings``: a readable
    record of them (:func:`~ppp_audit.runs.recorded_runs`, one recorded under the older hash too), done (or failed,
    unless ``retry_failed``). A record that cannot be read, or of another model or settings (edited or moved by
    hand), is no result: the model is redone, which replaces only its own run folder's files."""
    records = recorded_runs(out, model, settings)
    return any(record.status == DONE for record in records) or (bool(records) and not retry_failed)


def _audit_model(model: str, settings: dict[str, Any], out: Path, rank: int, timeout_s: float, pages: bool,
                 audit_runner: Callable[..., tuple[str, str | None]], claim: RunClaim) -> RunRecord:
    """Audit one model into its run folder (halving the batch on CUDA out of memory) and write its record."""
    folder = run_folder(out, model, settings)
    folder.mkdir(parents=True, exist_ok=True)
    clear_record(folder)  # unfinished until the new record is written
    family, params = model_family(model), parameter_count(model)
    batch = int(settings.get("batch_size", 16))
    started = time.perf_counter()
    attempts = 0
    while True:
        attempts += 1
        claim.refresh()
        config = AuditConfig(model=model, **{**settings, "batch_size": batch})
        status, reason = audit_runner(config, folder, timeout_s=timeout_s, pages=pages)
        if status != OUT_OF_MEMORY:
            break
        if batch == 1:
            status, reason = FAILED, "CUDA out of memory with batch size 1"
            break
        batch = max(1, batch // 2)
    record = RunRecord(model=model, settings=settings, status=status, reason=None if status == DONE else reason,
                       seconds=time.perf_counter() - started, family=family, params=params, rank=rank,
                       finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), attempts=attempts)
    write_record(folder, record)
    return record


__all__ = ["DEFAULT_TIMEOUT_S", "SweepSummary", "audit_in_process", "check_shared_settings", "expand_models",
           "model_family",
           "parameter_count", "read_model_list", "run_sweep", "shard", "sweep_settings"]
