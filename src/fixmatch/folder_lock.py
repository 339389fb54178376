"""One training process per run folder.

Two processes resuming the same folder (a rerun or a scheduler's requeue while the old
job still runs) would both append to metrics.jsonl and overwrite each other's
checkpoints. The folder itself is locked with flock(2): the lock needs no file in the
folder (a completed run's folder stays byte for byte as it was) and the kernel drops it
when its process dies, even by SIGKILL, so it never goes stale.
"""

import os
from pathlib import Path
from typing import Optional

from fixmatch.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no lock, as before
    fcntl = None


class FolderLock:
    """An exclusive lock on `folder` held by this process until `release()`.

    Raises:
        UserError: from `acquire()` when another process holds the folder.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        """Take the lock without waiting; does nothing where flock is missing or unsupported
        (the run then trains unlocked) or when this object already holds it.

        Returns:
            This lock, so that `FolderLock(folder).acquire()` can be kept in one line.

        Raises:
            UserError: when another process holds the folder.
        """
        if fcntl is None or self._fd is not None:
            return self
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"another process is training in {self.folder} right now; wait for it "
                            "to finish (or stop it: it saves a checkpoint) and rerun, or use another "
                            "hydra.run.dir") from None
        except OSError:
            os.close(fd)  # a filesystem without flock (some network mounts): train unlocked
            return self
        self._fd = fd
        _HELD.add(fd)
        return self

    def release(self) -> None:
        """Drop the lock if this object holds it; safe to call more than once."""
        if self._fd is not None:
            _HELD.discard(self._fd)
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


# Descriptors of the folders this process holds. A forked child (a DataLoader worker)
# inherits them, and flock's lock lives while any descriptor of it is open: a worker
# outliving a killed trainer for a few seconds would hold the folder, so a rerun (and the
# results command) would take the killed run for a running one. Children close their copies.
_HELD = set()


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def is_held(folder: Path) -> Optional[bool]:
    """Whether a process holds `folder` (is training there) right now.

    Args:
        folder: a run folder.

    Returns:
        True when a process holds it (this one included), False when it is free, None
        where that cannot be told (no flock here, or on that filesystem, or the folder
        cannot be opened).
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # drops the lock if this probe took it
    return False
