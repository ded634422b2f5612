"""One writer per run folder and per cache (job arrays resubmitted while the first attempt still
runs, two users pointing at one cache).

``with FolderLock(folder, "run folder"):`` holds an exclusive POSIX record lock (``fcntl.lockf``;
on NFS it goes through the server's lock manager) on ``.<folder name>.lock`` beside the folder,
which names the holder (host, PID, start time, command). A second process is refused at once with
a :class:`FolderLocked` error naming all that, or waits with ``wait=True`` (``--wait``). The
kernel drops the lock of a process that dies, however it dies, so a killed holder's folder is
taken over at once; an NFS server drops the lock of a node that is gone when its lease expires
(about 90 s with NFSv4). The lock file sits beside the folder, not in it, so emptying or
replacing the folder never loses it. Re-entering a lock this process holds is allowed (nested).
Where the filesystem has no locks (``ENOLCK``), a warning says so and the work goes on unlocked.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from .io import DataError

try:
    import fcntl
except ImportError:  # Windows: no POSIX record locks
    fcntl = None

_HELD: dict = {}  # lock file -> [fd, depth]


class FolderLocked(DataError):
    """Another process writes the folder."""


def lock_file(folder) -> Path:
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def holder(folder) -> dict:
    """What the lock file says about its holder ({} if unreadable)."""
    try:
        return json.loads(lock_file(folder).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


class FolderLock:
    def __init__(self, folder, what: str = "folder", wait: bool = False, poll: float = 1.0):
        self.folder, self.what, self.wait, self.poll = Path(folder), what, wait, poll
        self.path = lock_file(folder)

    def __enter__(self):
        key = str(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            return self
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        told = False
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    warnings.warn(f"{self.path}: this filesystem has no locks ({e.strerror}); "
                                  f"nothing stops a second process writing {self.folder}",
                                  RuntimeWarning, stacklevel=2)
                    return self
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise
                if not self.wait:
                    os.close(fd)
                    raise FolderLocked(self._message()) from None
                if not told:
                    print(f"waiting for {self._who()} to finish with {self.folder}", flush=True)
                    told = True
                time.sleep(self.poll)
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = [fd, 1]
        return self

    def __exit__(self, *exc):
        entry = _HELD.get(str(self.path))
        if entry is None:
            return False
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[str(self.path)]
            os.ftruncate(entry[0], 0)
            fcntl.lockf(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])
        return False

    def _who(self) -> str:
        h = holder(self.folder)
        if not h:
            return "another process"
        return f"process {h.get('pid')} on {h.get('host')} (since {h.get('started')}: {h.get('command')})"

    def _message(self) -> str:
        return (f"the {self.what} {self.folder} is being written by {self._who()}. Wait for it to "
                "finish (or stop it) and run again, or pass --wait (wait=True) to wait for it; "
                "a holder that died releases the lock by itself")
