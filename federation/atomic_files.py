"""Writing files so that a reader never sees one half-written."""

from __future__ import annotations

import os
from pathlib import Path


def write_files(files: list[tuple[Path, bytes, int]]) -> None:
    """Write every file under a temporary name, then rename each into place in order; on a
    failure before the renames remove what was written. Modes are set at creation (a key is
    never readable by others). Rename the file that refers to the others last."""
    temporary: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            temporary.append((tmp, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, path in temporary:
            os.replace(tmp, path)
    except OSError:
        for tmp, _ in temporary:
            tmp.unlink(missing_ok=True)
        raise
