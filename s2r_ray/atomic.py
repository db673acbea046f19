"""The one way s2r writes a file that someone may read meanwhile (the study folder, the feature
cache): whole, to a temporary name beside it, fsynced, then renamed over it. A reader, a
concurrent study or a resumed one sees the old file or the new, never half of one, whenever the
writer is killed."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for any writer (to_parquet, savefig...) to write; when the
    block ends it replaces `path`, and if the block raises it is removed. The name is unique to
    this process and thread, and keeps the suffix for writers that read the format from it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{threading.get_ident()}"
    tmp = path.with_name(f".{path.stem}.{tag}.tmp{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name points at it
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
