"""Write a file so that a reader (or a restart) sees the old content or the new, never a torn file."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

# The errors that mean "no room": a 507 to the client, not a 500.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def out_of_space(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`.

    Raises OSError (disk full, read-only) with `path` untouched and no temp file left behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
