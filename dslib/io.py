"""Atomic writes: the one way dslib writes a file that another process, or a crash, may see.

Whatever is written goes to a hidden temporary file in the target's folder and is renamed over
the target only when complete: ``os.replace`` is atomic on POSIX, so a reader finds the old
file or the new one, never half of one, and a killed writer leaves at worst a hidden
``.<name>.*.tmp`` file. ``durable=True`` also fsyncs the file and its folder, so that the
rename survives a power cut (checkpoints).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; what the block writes there replaces ``path``
    when the block ends without an error (the temporary file is removed otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = False) -> Path:
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, durable: bool = False) -> Path:
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text)
    return Path(path)


def jsonable(value: Any) -> Any:
    """Numpy/torch scalars and arrays as plain Python values (json.dump's ``default``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json_atomic(path: str | Path, data: Any, durable: bool = False) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=jsonable), durable)
