"""Who may use the dashboard, and the files it writes for itself.

A dashboard drives a model on its owner's machine: it uploads files, exports them and spends the
CPU. So, as Jupyter's own server does:

- every page, API and kernel request needs a random **token** (:func:`new_token`), printed in the
  URL; Voila gets it through the ``JUPYTER_TOKEN`` environment variable (another local user can
  read a process's command line in ``ps``, not its environment);
- only **loopback Host headers** are accepted (jupyter_server's ``allow_remote_access=False``), which
  defeats DNS rebinding; ``allow_remote=True`` serves every interface, still with the token;
- Voila's file route ``/voila/files/`` serves nothing (the explorer never needs it);
- the log and Voila's configuration are written into a **private per-run folder** (mode 0700,
  see :func:`run_dir`), each file created with ``O_EXCL | O_NOFOLLOW``: a symlink planted by
  another user is never followed.

This module imports neither torch nor Voila.
"""
from __future__ import annotations

import json
import os
import secrets
import stat
import tempfile
from pathlib import Path

__all__ = [
    "DEFAULT_UPLOAD_LIMIT",
    "IDENTITY_PROVIDER",
    "PrivateFileError",
    "new_token",
    "open_private",
    "private_root",
    "run_dir",
    "voila_config",
    "websocket_limit",
]

#: Largest upload the explorer accepts by default (bytes); ``psal dashboard --upload-limit MB``.
DEFAULT_UPLOAD_LIMIT = 20 * 1000 * 1000

#: jupyter_server identity provider that answers 403 (not a login form) without the token.
IDENTITY_PROVIDER = "psal_widgets.dashboard_auth.TokenOnlyIdentityProvider"


class PrivateFileError(PermissionError):
    """A private folder or file cannot be made safely (someone else owns it, or it is a symlink)."""


def new_token() -> str:
    """A fresh random token for the dashboard URL (256 bits, URL-safe, as Jupyter's)."""
    return secrets.token_urlsafe(32)


def _check_private_dir(path: Path) -> None:
    """Refuse a folder that is a symlink, not ours, or open to others; tighten our own."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PrivateFileError(f"{path} is not a plain folder (a symbolic link?); remove it and start again")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise PrivateFileError(f"{path} belongs to another user; remove it or set XDG_CACHE_HOME to a folder of yours")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def private_root() -> Path:
    """``$XDG_CACHE_HOME/psal_widgets/run`` (default ``~/.cache``), created with mode 0700.

    In the user's home, not the shared temporary folder, and checked after creation: it must be
    a real folder owned by this user (a symlink or another user's folder is refused).
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = base / "psal_widgets" / "run"
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    _check_private_dir(root)
    return root


def run_dir(port: int) -> Path:
    """A new private folder for one dashboard run (``dashboard-PORT-XXXX``, mode 0700, unique)."""
    # mkdtemp: a fresh name made with mkdir (fails rather than reuse anything that exists).
    return Path(tempfile.mkdtemp(prefix=f"dashboard-{int(port)}-", dir=private_root()))


def open_private(path: str | os.PathLike[str], *, exclusive: bool = True) -> int:
    """Open ``path`` for writing (mode 0600) without following a symlink; returns the descriptor.

    ``exclusive=True`` (files of :func:`run_dir`): the file must not exist (``O_EXCL``).
    ``exclusive=False`` (a path the caller chose): an existing regular file is truncated, but a
    symlink at ``path`` is refused (``O_NOFOLLOW``), so it cannot redirect the write elsewhere.
    """
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    try:
        return os.open(os.fspath(path), flags, 0o600)
    except FileExistsError as err:
        raise PrivateFileError(f"{path} exists already; refusing to reuse it") from err
    except OSError as err:
        if Path(path).is_symlink():
            raise PrivateFileError(f"{path} is a symbolic link; refusing to write through it") from err
        raise


def websocket_limit(upload_limit: int) -> int:
    """Largest websocket message Voila accepts (tornado's default is 10 MiB).

    An upload arrives as one message holding the whole file: the limit must let a file just over
    the upload limit through so that the explorer can refuse it with a message; past this bound
    tornado closes the connection itself, so the server's memory stays bounded.
    """
    return max(10 * 1024 * 1024, 2 * int(upload_limit) + 1024 * 1024)


def voila_config(*, allow_remote: bool, upload_limit: int) -> str:
    """Voila's configuration file (JSON) for the security settings that have no safe command-line form.

    traitlets passes ``--Voila.tornado_settings=key=value`` values as strings (``"False"`` is
    true), so the tornado settings go into a file read with ``--Voila.config_file_paths``.
    """
    config = {
        "Voila": {
            "tornado_settings": {
                # jupyter_server's Host check: loopback IPs and "localhost" only.
                "allow_remote_access": bool(allow_remote),
                "local_hostnames": ["localhost"],
                "websocket_max_message_size": websocket_limit(upload_limit),
            },
        },
        # /voila/files/ serves images of the notebook's folder without any authentication.
        "VoilaConfiguration": {"file_allowlist": []},
    }
    return json.dumps(config, indent=1) + "\n"
