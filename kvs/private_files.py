"""Files only their owner may read: configs (they hold the cluster secret) and the root token.

One place decides how such a file is written, so that none is ever readable by others, even
for a moment, whatever the umask: it is created 0600, never widened later.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> Path:
    """Write `text` to `path`, mode 0600.

    `overwrite`: under a temporary name, then renamed over `path`, so a reader never sees half
    a file. Otherwise `path` must not exist (FileExistsError), and is created in one step."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    written = target.with_name(target.name + ".tmp") if overwrite else target
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(written, flags, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an earlier run keeps its mode through O_TRUNC
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    if overwrite:
        written.replace(target)
    return target
