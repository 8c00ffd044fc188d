"""One writer per folder: a lock file holding the owner's pid, host, start time and SLURM job.

Two runs writing into one run folder (or one data set, or one embedding folder) interleave their
files; the second is refused with a message naming the first. A lock left by a killed process is
stale and is taken over, with a warning: on the same host when its pid is gone (or now belongs to
a later process), on any host when it was left by this same SLURM job (a requeued job keeps its id;
SLURM requeues only after the first instance ended).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


class FolderLockedError(RuntimeError):
    """The folder is being written by another live process."""


def _process_start(pid: int) -> str | None:
    """The kernel's start tick of ``pid`` (tells a reused pid from the original), where /proc exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_rank_zero() -> bool:
    """True in the process that owns a job's folders: global rank 0 under torchrun, SLURM or
    Lightning's own launcher (which sets LOCAL_RANK in the processes it starts)."""
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK"))


class FolderLock:
    """An exclusive lock on a folder, held as ``lock_file`` (created with O_EXCL) while in use."""

    def __init__(self, lock_file: str | Path, what: str) -> None:
        self.path, self.what = Path(lock_file), what
        self.held = False

    def _record(self) -> dict:
        return {
            "pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        }  # fmt: skip

    def _stale(self, holder: dict) -> bool:
        job = holder.get("slurm_job_id")
        if job and job == os.environ.get("SLURM_JOB_ID"):
            return True
        if holder.get("host") != socket.gethostname():
            return False
        pid = int(holder.get("pid", -1))
        if pid == os.getpid() or not _alive(pid):
            return True
        start = _process_start(pid)
        return start is not None and holder.get("process_start") not in (None, start)

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    holder = {}
                just_made = not holder and time.time() - self.path.stat().st_mtime < 10
                if just_made or (holder and not self._stale(holder)):
                    raise FolderLockedError(
                        f"{self.what} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                        f"since {holder.get('started')}; wait for it to end, or remove {self.path} if "
                        f"that process is gone"
                    ) from None
                log.warning("removing a stale lock %s (%s)", self.path, holder or "unreadable")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            self.held = True
            return self
        raise FolderLockedError(f"{self.what}: could not take {self.path} (another process raced for it)")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
