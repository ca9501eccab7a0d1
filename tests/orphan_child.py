"""A parent that starts one child the way a sweep does (spawned, ending with its parent), for the test that kills
the parent with SIGKILL: ``python orphan_child.py PID_FILE`` writes the child's pid, then waits to be killed."""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path


def linger(pid_file: str) -> None:
    from ppp_audit.sweep import _exit_with_parent

    _exit_with_parent()
    Path(pid_file).write_text(str(multiprocessing.current_process().pid))
    time.sleep(120)


if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=linger, args=(sys.argv[1],), daemon=True)
    child.start()
    time.sleep(120)
