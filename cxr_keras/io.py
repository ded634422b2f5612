"""Atomic, durable file writing and the package's error type for bad input.

Nothing the package writes is ever left half written: every writer goes through
:func:`atomic_path`, which hands out a temporary name in the destination folder and
renames it over the destination only when the block finished without an error. The rename alone
survives a killed process, not a power loss (the file's data may still be in the page cache when
the rename reaches the disk), so the file is flushed (``fsync``) before the rename and its folder
after it. ``durable=False`` skips the flushes for files that can be made again (phantom images).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file, row, column or argument at fault."""


class MissingExtra(DataError, ImportError):
    """An optional feature whose ``pip`` extra is not installed; the message names the extra."""


def require_extra(feature: str, extra: str, modules) -> None:
    """Raise :class:`MissingExtra` naming ``pip install "cxr-keras[extra]"`` when one of
    ``modules`` cannot be imported."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"{feature} needs {', '.join(missing)}: "
                           f"pip install \"cxr-keras[{extra}]\"")


NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # disk full, file too large, quota


def fsync_path(path) -> None:
    """Flush a file's data, or a folder's entries (POSIX; a no-op for folders elsewhere), to disk."""
    path = Path(path)
    if path.is_dir() and os.name != "posix":
        return
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(dest, suffix=None, durable: bool = True):
    """Yield a temporary path beside ``dest``; rename it to ``dest`` on success.

    ``suffix`` defaults to the destination's own suffix so that libraries that pick a
    format from the file name (OpenCV, NumPy, matplotlib) still see the right one. A full disk
    (or a file size limit) raises an ``OSError`` that names ``dest``; the temporary file is removed.
    ``durable``: flush the file before the rename and the folder after it (module docstring).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{dest.name}.", suffix=suffix if suffix is not None else dest.suffix,
        dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp creates 0600; give the file the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            if durable:
                fsync_path(tmp)
        os.replace(tmp, dest)
        if durable:
            fsync_path(dest.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in NO_SPACE:
            raise OSError(e.errno, f"{os.strerror(e.errno)} while writing {dest}; nothing was "
                                   f"written there (a previous {dest.name} is unchanged)") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(dest, text: str) -> Path:
    """Write ``text`` to ``dest`` atomically (UTF-8, no newline translation)."""
    with atomic_path(dest) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return Path(dest)


def write_json(dest, obj) -> Path:
    """Write ``obj`` as indented JSON to ``dest`` atomically."""
    return write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_bytes(dest, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
