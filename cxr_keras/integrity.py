"""Checksums for the files a run resumes or evaluates from (checkpoints, epoch backups,
converted weights), so that a file that is not what was written is refused before it is used.

Each such file ``F`` gets ``F.sha256`` written after it. The old ``F.sha256`` is removed before
the new ``F`` is renamed into place, so whenever a process dies, a sidecar that exists belongs to
the ``F`` beside it; ``F`` without a sidecar was renamed complete (an earlier version of the
package, or a death between the two writes) and is trusted. A mismatch means ``F`` changed after
it was written: truncated by a crash on a filesystem that reorders writes, copied halfway, edited.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from .io import DataError, atomic_path, write_text

SUFFIX = ".sha256"


def sidecar(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def checksummed_path(dest, suffix=None):
    """:func:`~cxr_keras.io.atomic_path` (durable) whose file gets its checksum sidecar after it."""
    dest = Path(dest)
    with atomic_path(dest, suffix=suffix) as tmp:
        yield tmp
        digest = sha256_of(tmp)
        sidecar(dest).unlink(missing_ok=True)  # before the rename: never a stale sidecar
    write_text(sidecar(dest), f"{digest}  {dest.name}\n")


def verify(path) -> Path:
    """``path`` if it matches its sidecar (or has none); a DataError naming both otherwise."""
    path, side = Path(path), sidecar(path)
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    if not side.exists():
        return path
    want = side.read_text(encoding="utf-8").split()[:1]
    if not want or sha256_of(path) != want[0]:
        raise DataError(f"{path} does not match its checksum ({side}): the file changed after it "
                        "was written (truncated by a crash, copied in part or edited). It is not "
                        "used; rerun the stage that writes it (--force), or delete the sidecar to "
                        "trust the file as it is")
    return path
