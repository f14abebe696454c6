"""Where "save on the server" may write: a folder under the export root, and nowhere else.

A dashboard visitor types the folder name, so it is treated as untrusted: a relative name of
plain components, resolved (symlinks followed) to a path that must stay inside the root.
``..``, absolute paths, ``~`` and a symlink leading out of the root are refused. No torch here.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["ExportPathError", "export_folder"]


class ExportPathError(ValueError):
    """A folder name that would leave the export root; the message says what is allowed."""


def export_folder(root: str | os.PathLike[str], name: str) -> Path:
    """The folder ``root / name``, checked to lie inside ``root`` (resolved; not created).

    Parameters
    ----------
    root : path
        The export root (the owner's choice: ``psal dashboard --export-dir``).
    name : str
        A subfolder typed by the user; empty means the root itself.

    Raises
    ------
    ExportPathError
    """
    base = Path(root).expanduser().resolve()
    text = str(name).strip()
    allowed = f"give a folder name inside the export folder {base}, like 'run1' or 'shark/top10'"
    if not text:
        return base
    if "\x00" in text:
        raise ExportPathError(f"export folder {text!r}: contains a NUL character; {allowed}")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).root or PureWindowsPath(text).drive:
        raise ExportPathError(f"export folder {text!r}: absolute paths are not allowed; {allowed}")
    parts = PureWindowsPath(text).parts  # splits on / and \
    if any(p in ("..", "~") or p.startswith("~") for p in parts):
        raise ExportPathError(f"export folder {text!r}: '..' and '~' are not allowed; {allowed}")
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise ExportPathError(f"export folder {text!r}: a symbolic link leads out of the export folder; {allowed}")
    return target
