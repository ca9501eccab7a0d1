"""What ppp-audit may write where (torch-free): atomic writes, and the record of the files it wrote in a folder.

The one rule for every writer: **ppp-audit replaces or deletes only files it wrote.** A report folder (``--out DIR``,
``ppp-audit show --out DIR``) keeps the list of the files ppp-audit wrote there in :data:`WRITTEN_FILES`; a file of
the same name that is not on that list (``DIR/figures/fig1.png`` of a paper repository) is never touched: a figure or
page that would land on it is written beside it under a free name instead (:meth:`WrittenFiles.place`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

WRITTEN_FILES = ".ppp-audit-files.json"
"""In a report folder: the files ppp-audit wrote there (relative paths), the only ones it may replace or delete."""
_MARK = "ppp-audit"
"""What a free name adds before the suffix: ``figures/strength.ppp-audit.png``, then ``.ppp-audit-2.png``."""


def atomic_write(path: str | Path, content: str | bytes | Callable[[Path], object]) -> Path:
    """Write ``path`` through a temporary file beside it, then rename it into place: a failed write never leaves half
    a file where a good one was, and writers in several processes never share a temporary name.

    Args:
        path: The file to write (its folder is created).
        content: The text (written as UTF-8) or bytes, or a function that writes the temporary path it is given.

    Raises:
        OSError: The write or the rename failed (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_file():
            tmp.unlink()
        raise
    return path


@dataclass
class WrittenFiles:
    """The files ppp-audit wrote in one folder, read from and saved to ``folder /`` :data:`WRITTEN_FILES`.

    Names are relative to the folder, with ``/`` separators (``figures/strength.png``).

    Attributes:
        folder: The folder.
        files: The names ppp-audit wrote there.
        recorded: The folder had a list (``False`` for a new folder, or one written before ppp-audit kept lists: its
            readers add what they can prove is theirs, e.g. a readable ``report.json``).
    """

    folder: Path
    files: set[str] = field(default_factory=set)
    recorded: bool = False

    @classmethod
    def read(cls, folder: str | Path) -> "WrittenFiles":
        """The list of ``folder``; an unreadable list counts as an empty one (then nothing there is ppp-audit's)."""
        folder = Path(folder)
        record = folder / WRITTEN_FILES
        if not record.exists():
            return cls(folder)
        try:
            names = json.loads(record.read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError, AttributeError):
            names = []
        return cls(folder, {name for name in names if isinstance(name, str)}, recorded=True)

    def owns(self, name: str) -> bool:
        """Whether ppp-audit may replace or delete ``name``: it does not exist, or ppp-audit wrote it."""
        return name in self.files or not (self.folder / name).exists()

    def place(self, name: str) -> str:
        """Where a file meant for ``name`` goes: ``name`` itself if ppp-audit may write it, else the first free name
        ``STEM.ppp-audit.SUFFIX``, ``STEM.ppp-audit-2.SUFFIX``, ... beside it."""
        wanted = PurePosixPath(name)
        candidate, k = name, 1
        while not self.owns(candidate):
            mark = _MARK if k == 1 else f"{_MARK}-{k}"
            candidate = str(wanted.with_name(f"{wanted.stem}.{mark}{wanted.suffix}"))
            k += 1
        return candidate

    def save(self) -> Path:
        """Write the list into the folder (atomically)."""
        text = json.dumps({"about": "the files ppp-audit wrote in this folder: the only ones it replaces or deletes",
                           "files": sorted(self.files)}, indent=1)
        self.recorded = True
        return atomic_write(self.folder / WRITTEN_FILES, text + "\n")


__all__ = ["WRITTEN_FILES", "WrittenFiles", "atomic_write"]
