"""How this process was launched, read from the environment once and checked before any work (torch-free).

* :func:`process_rank`: this process's rank and the number of processes under ``torchrun`` (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``); an audit reads nothing else, so a Slurm job that runs one audit per task is one process each.
* :func:`sweep_share`: which share of a sweep's models this process takes, from the first set of rank variables
  (``RANK``/``WORLD_SIZE``, ``SLURM_PROCID``/``SLURM_NTASKS``, ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``).
* :func:`env_flag`: an on/off switch such as ``PPP_AUDIT_DEBUG`` (one truthiness rule for all of them).

A variable that is set but cannot be meant (``RANK=abc``, ``RANK=5 WORLD_SIZE=2``, ``RANK=1`` without
``WORLD_SIZE``) is bad input, found before the audit starts rather than after it (:class:`ConfigError`, exit 2).
"""

from __future__ import annotations

import os
from typing import Mapping

from .errors import ConfigError

_FALSE = ("", "0", "false", "no", "off")
_SWEEP_VARIABLES = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"),
                    ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"))
"""The rank variables a sweep reads, in order of precedence (torchrun, Slurm tasks, a Slurm array)."""
_HINT = "unset it, or launch with torchrun (which sets RANK, WORLD_SIZE and LOCAL_RANK together)"


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the switch ``name`` is on: set to anything but empty, ``0``, ``false``, ``no`` or ``off`` (any case)."""
    return (os.environ if environ is None else environ).get(name, "").strip().lower() not in _FALSE


def _integer(name: str, environ: Mapping[str, str], minimum: int, hint: str = _HINT) -> int | None:
    """The integer value of ``name`` (``None`` when unset).

    Raises:
        ConfigError: It is set to something that is not an integer ``>= minimum``.
    """
    text = environ.get(name)
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer", hint) from None
    if value < minimum:
        raise ConfigError(f"environment variable {name}={value} must be {minimum} or more", hint)
    return value


def _checked(rank_name: str, world_name: str, environ: Mapping[str, str]) -> tuple[int, int]:
    rank = _integer(rank_name, environ, 0)
    world = _integer(world_name, environ, 1)
    if rank is None:
        rank = 0
        if world is not None and world > 1:
            raise ConfigError(f"environment variable {world_name}={world} is set but {rank_name} is not", _HINT)
    if world is None:
        if rank != 0:
            raise ConfigError(f"environment variable {rank_name}={rank} is set but {world_name} is not", _HINT)
        world = 1
    if rank >= world:
        raise ConfigError(f"environment variable {rank_name}={rank} is not below {world_name}={world}",
                          "ranks run from 0 to the number of processes - 1")
    return rank, world


def process_rank(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's ``(rank, world)`` under ``torchrun``, ``(0, 1)`` for a plain run.

    Raises:
        ConfigError: ``RANK``, ``WORLD_SIZE`` or ``LOCAL_RANK`` is set to a value that cannot be meant.
    """
    environ = os.environ if environ is None else environ
    _integer("LOCAL_RANK", environ, 0)
    return _checked("RANK", "WORLD_SIZE", environ)


def local_rank(environ: Mapping[str, str] | None = None) -> int:
    """``LOCAL_RANK`` (which GPU of the machine this process uses), 0 when unset."""
    return _integer("LOCAL_RANK", os.environ if environ is None else environ, 0) or 0


def sweep_share(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's share of a sweep, ``(rank, world)``, from the first rank variables set (``(0, 1)`` if none).

    A Slurm array may number its tasks from ``SLURM_ARRAY_TASK_MIN`` (e.g. 1): the rank counts from there.

    Raises:
        ConfigError: The variables are not integers with ``0 <= rank < world``.
    """
    environ = os.environ if environ is None else environ
    for rank_name, world_name in _SWEEP_VARIABLES:
        if rank_name in environ and (world_name in environ or rank_name == "RANK"):
            if rank_name != "SLURM_ARRAY_TASK_ID":
                return _checked(rank_name, world_name, environ)
            first = _integer("SLURM_ARRAY_TASK_MIN", environ, 0, "set by Slurm for an array job; unset it") or 0
            shifted = {**environ, rank_name: str(_integer(rank_name, environ, first) - first)}
            return _checked(rank_name, world_name, shifted)
    return 0, 1


__all__ = ["env_flag", "local_rank", "process_rank", "sweep_share"]
