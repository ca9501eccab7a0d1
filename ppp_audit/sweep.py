"""``ppp-audit sweep``: audit many models with one set of settings, resumably, each in its own process, sharded.

Names expand as timm's ``list_models`` does (wildcards, pretrained tags). Each model runs in a fresh process (spawned,
so a crash, an out-of-memory kill or a hang takes only that model) under a time limit, and leaves a run folder
(:mod:`ppp_audit.runs`): its report, and ``run.json`` saying done or failed (with the one-line reason), written last.
A re-run skips the runs that are there (failed ones too, unless ``retry_failed``); ``force`` redoes them. On CUDA out
of memory a model is tried again with half the batch, down to 1, as timm's ``validate.py --retry`` does.

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
from .errors import PPPAuditError
from .progress import ProgressReporter, progress_bar
from .report import REPORT_JSON
from .runs import DONE, FAILED, RUN_JSON, RunRecord, read_record, run_folder, write_record

OUT_OF_MEMORY = "oom"
"""What a run reports on CUDA out of memory: the sweep tries the model again with half the batch."""
DEFAULT_TIMEOUT_S = 1800.0
"""Seconds one model may take before it is stopped and recorded as failed."""
_DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                          "TORCHELASTIC_RUN_ID")
"""What torchrun sets for its processes; a sweep's audits must not read them (LOCAL_RANK stays: it picks the GPU)."""
_RANK_VARIABLES = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"),
                   ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"))


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
    """Names in a text file, one per line; blank lines and ``#`` comments are ignored.

    Raises:
        PPPAuditError: The file cannot be read.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise PPPAuditError(f"cannot read --model-list '{path}': {exc.strerror or exc}",
                            "pass a text file with one model name or pattern per line") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def sweep_rank() -> tuple[int, int]:
    """This process's share of a sweep, ``(rank, world)``, from the first rank variables set (``(0, 1)`` if none).

    Raises:
        PPPAuditError: The variables are not integers with ``0 <= rank < world``.
    """
    for rank_name, world_name in _RANK_VARIABLES:
        if rank_name in os.environ and (world_name in os.environ or rank_name == "RANK"):
            try:
                rank, world = int(os.environ[rank_name]), int(os.environ.get(world_name, "1"))
            except ValueError:
                raise PPPAuditError(f"{rank_name}={os.environ[rank_name]!r} / {world_name}="
                                    f"{os.environ.get(world_name)!r} are not integers",
                                    "set them to the process's rank and the number of processes") from None
            if rank_name == "SLURM_ARRAY_TASK_ID" and "SLURM_ARRAY_TASK_MIN" in os.environ:
                rank -= int(os.environ["SLURM_ARRAY_TASK_MIN"])  # arrays may start at 1
            if not 0 <= rank < world:
                raise PPPAuditError(f"{rank_name}={rank} is not below {world_name}={world}",
                                    "ranks run from 0 to the number of processes - 1")
            return rank, world
    return 0, 1


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


def _run_child(config: AuditConfig, folder: str, pages: bool, results: "multiprocessing.Queue") -> None:
    """In a fresh process: audit, save the report (and its page), and say how it went on ``results``."""
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
        lines = str(exc).strip().splitlines()
        what = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
        results.put((FAILED, f"unexpected error ({what}); the trace is in error.txt"))


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
        interrupted: Set when Ctrl-C stopped the sweep (the model in progress is not recorded).
    """

    models: list[str]
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False


def sweep_settings(config: AuditConfig) -> dict[str, Any]:
    """The settings a sweep shares between its models (the config without its model), as hashed into run folders."""
    settings = dataclasses.asdict(config)
    settings.pop("model")
    return settings


def run_sweep(models: Sequence[str], settings: dict[str, Any], out: str | Path, *, rank: int = 0, world: int = 1,
              skip_existing: bool = True, retry_failed: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
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
        skip_existing: Skip models whose run is already recorded (``False``: redo them all).
        retry_failed: With ``skip_existing``, still redo the models recorded as failed.
        timeout_s: Seconds one model may take.
        pages: Write each report's figures and page beside it.
        progress: The sweep's progress (models done / failed / left, time per model, time left).
        on_model: Called with each model's record as it is written.
        audit_runner: Runs one audit (tests replace it); :func:`audit_in_process` by default.

    Returns:
        The :class:`SweepSummary`; on Ctrl-C, ``interrupted`` is set and the summary covers the models finished.
    """
    mine = shard(models, rank, world)
    summary = SweepSummary(models=mine)
    todo = []
    for model in mine:
        record = read_record(run_folder(out, model, settings)) if skip_existing else None
        if record is not None and (record.status == DONE or not retry_failed):
            summary.skipped.append(model)
        else:
            todo.append(model)
    with progress_bar(progress) as bar:
        bar.phase(f"sweeping {len(todo)} models", total=len(todo))
        try:
            for k, model in enumerate(todo):
                bar.update(description=f"{model} · {len(summary.done)} done, {len(summary.failed)} failed, "
                                       f"{len(todo) - k} left")
                record = _audit_model(model, settings, Path(out), rank, timeout_s, pages, audit_runner)
                (summary.done.append(model) if record.status == DONE else
                 summary.failed.__setitem__(model, record.reason or ""))
                if on_model is not None:
                    on_model(record)
                bar.update(advance=1)
        except KeyboardInterrupt:
            summary.interrupted = True
    return summary


def _audit_model(model: str, settings: dict[str, Any], out: Path, rank: int, timeout_s: float, pages: bool,
                 audit_runner: Callable[..., tuple[str, str | None]]) -> RunRecord:
    """Audit one model into its run folder (halving the batch on CUDA out of memory) and write its record."""
    folder = run_folder(out, model, settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_JSON).unlink(missing_ok=True)  # unfinished until the new record is written
    family, params = model_family(model), parameter_count(model)
    batch = int(settings.get("batch_size", 16))
    started = time.perf_counter()
    attempts = 0
    while True:
        attempts += 1
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


__all__ = ["DEFAULT_TIMEOUT_S", "SweepSummary", "audit_in_process", "expand_models", "model_family",
           "parameter_count", "read_model_list", "run_sweep", "shard", "sweep_rank", "sweep_settings"]
