"""Writing folders of results so that nothing half-written is ever read, and two writers never mix.

Shared by the profile index (:mod:`psal_widgets.index`) and the statistics writer
(:mod:`psal_widgets.store`, ``psal stats``):

- :func:`partial_dir` / :func:`swap_into_place`: a folder is built in a hidden temporary folder
  beside its target and renamed into place when complete;
- :func:`write_text_atomic`: a small file (metadata, a checkpoint's progress) replaced in one step;
- :func:`file_records` / :func:`check_files`: the size and sha256 of every data file, recorded in
  the metadata and checked by readers;
- :func:`exclusive_lock`: a lock file per target, so a second writer of the same folder stops with
  a clear message. The lock is an ``flock`` on the file, which the kernel drops when its process
  dies: the lock of a killed run (its pid no longer alive) is taken over without a word. Forked
  children (DataLoader workers) close their copy of the lock at fork: an ``flock`` lives as long
  as any process holds the file open, so an orphaned worker of a killed run would otherwise keep
  the folder locked for seconds after its parent died.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "LockedError",
    "check_files",
    "exclusive_lock",
    "file_records",
    "partial_dir",
    "sha256_file",
    "swap_into_place",
    "temp_dir_beside",
    "write_text_atomic",
]


class LockedError(ValueError):
    """Another live process is writing the same folder; the message says which and what to do."""


# File descriptors of the locks this process holds. A forked child closes its copies at once, so
# the lock stays with the process that took it and dies with it.
_HELD_LOCK_FDS: set[int] = set()


def _close_held_locks_in_child() -> None:
    for fd in _HELD_LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 4 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` by ``text`` in one step (a reader sees the old or the new file, never a mix)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def partial_dir(target: str | os.PathLike[str]) -> Path:
    """The hidden folder where ``target`` is built (``.NAME.partial`` beside it); it survives a
    crash so that the same command can resume from it."""
    t = Path(target)
    return t.parent / f".{t.name}.partial"


def temp_dir_beside(target: str | os.PathLike[str]) -> Path:
    """A new, empty, uniquely named hidden folder beside ``target`` (same file system, so that
    :func:`swap_into_place` is a rename)."""
    t = Path(target)
    t.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{t.name}.", suffix=".tmp", dir=t.parent))


def swap_into_place(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename the complete folder ``tmp`` to ``target``, replacing an older ``target``.

    The old folder is moved aside first and deleted only once the new one is in place, so at any
    instant ``target`` is either the complete old folder, the complete new one, or (for the time of
    one rename) absent; never a mix of both.
    """
    src, dst = Path(tmp), Path(target)
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.parent / f".{dst.name}.old"
    if old.exists():
        shutil.rmtree(old)
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def file_records(folder: str | os.PathLike[str], names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": hex}}`` of files in ``folder``, for the metadata."""
    f = Path(folder)
    return {name: {"bytes": (f / name).stat().st_size, "sha256": sha256_file(f / name)} for name in names}


def check_files(folder: str | os.PathLike[str], records: dict[str, dict[str, Any]], *, sha: bool = True) -> str | None:
    """What is wrong with the files of ``folder`` against their ``records``, or None.

    Parameters
    ----------
    folder : path
    records : dict
        As made by :func:`file_records`.
    sha : bool
        Also compare the sha256 (reads every byte); sizes are always compared.

    Returns
    -------
    str or None
        e.g. ``"stats.safetensors does not match its checksum"``.
    """
    f = Path(folder)
    for name, info in records.items():
        p = f / name
        if not p.is_file():
            return f"{name} is missing"
        size = p.stat().st_size
        if size != int(info["bytes"]):
            return f"{name} has {size} bytes, meta.json says {info['bytes']}"
        if sha and sha256_file(p) != info["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip() or 0)
        if pid:
            return f"process {pid}"
    return "another process"


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike[str], *, command: str) -> Iterator[Path]:
    """Hold the lock of ``target`` (``.NAME.lock`` beside it) while writing it.

    Parameters
    ----------
    target : path
        The folder about to be written.
    command : str
        The command that writes it, for the message (e.g. ``"psal stats"``).

    Raises
    ------
    LockedError
        A live process holds the lock. A lock file left by a process that died (killed, crashed)
        holds no lock any more and is simply taken over.
    """
    t = Path(target)
    path = t.parent / f".{t.name}.lock"
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; the temporary folder still protects readers
        yield path
        return
    t.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"another `{command}` ({_holder(path)}) is writing {t} right now (lock {path.name}); "
                "wait for it to finish, or choose another --out"
            ) from None
        # Our pid, for the message a second writer gets.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD_LOCK_FDS.add(fd)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _HELD_LOCK_FDS.discard(fd)
        os.close(fd)
