"""Files only their owner may read: configs (they hold the cluster secret), the root token,
and everything a node writes (its store, audit log, backups, daemon log and PID file).

One place decides how such a file or directory is made, so that none is ever readable by
others, even for a moment, whatever the umask: files are created 0600 and directories 0700,
never widened later; `tighten` narrows what an earlier version (or a umask of 022) left
readable by others.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700


def write_private(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> Path:
    """Write `text` to `path`, mode 0600.

    `overwrite`: under a temporary name, then renamed over `path`, so a reader never sees half
    a file. Otherwise `path` must not exist (FileExistsError), and is created in one step."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    written = target.with_name(target.name + ".tmp") if overwrite else target
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(written, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # a file left by an earlier run keeps its mode through O_TRUNC
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    if overwrite:
        written.replace(target)
    return target


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """`os.open(path, flags | O_CREAT)` of a file that is, and stays, mode 0600."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
    except OSError:
        os.close(fd)
        raise
    return fd


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Make `path` (and missing parents) a directory only its owner can enter, mode 0700.
    An existing one is narrowed to 0700 if others (or the group) may read it."""
    directory = Path(path)
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) & 0o077:
        os.chmod(directory, DIR_MODE)
    return directory


def tighten(path: str | os.PathLike[str]) -> int:
    """Narrow every directory under `path` (itself included) to 0700 and every file to 0600
    where the group or others had any access; returns how many were changed (symbolic links
    are not followed). For data an earlier version, or a umask of 022, left open."""
    root = Path(path)
    changed = 0
    if not root.is_dir() or root.is_symlink():
        return 0
    for current, dirs, files in os.walk(root):
        entries = [(current, DIR_MODE)] + [(os.path.join(current, f), FILE_MODE) for f in files]
        for name, mode in entries:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode) or not stat.S_IMODE(st.st_mode) & 0o077:
                continue
            os.chmod(name, stat.S_IMODE(st.st_mode) & mode)
            changed += 1
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(current, d))]
    return changed


def secure_dir(path: str | os.PathLike[str], what: str) -> Path:
    """`private_dir`, then `tighten` what is in it, saying so in one log line if it had to."""
    directory = Path(path)
    changed = tighten(directory)  # the directory itself first (0 if it does not exist)
    private_dir(directory)
    if changed:
        log.warning(
            "%s %s: %d files or directories were readable by other users; now 0600/0700",
            what,
            directory,
            changed,
        )
    return directory
