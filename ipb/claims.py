"""One process at a time trains a trial: a lock per trial hash beside its checkpoints.

    python sweeps/study.py & python sweeps/study.py     # the second waits, then skips

Two identical sweeps started at once on one tracking store both find a trial unfinished at
their start; without a claim both trained it (two FINISHED runs of one hash, two registry
versions, and the report averaged the fold twice). `ipb.train.fit` holds `claim` for the life
of a trial: an exclusive `flock` on `<train.storage>/claims/<trial hash>.lock`. The kernel drops
the lock when its process dies, even by kill -9, so a crashed trial never blocks its re-run,
and a run left RUNNING by a dead process is known to be stale by whoever holds the lock. A
sweep waits for the holder (then finds the trial FINISHED and skips it); `ipb train` says who
holds it. On object storage (s3://, gs://) there is no lock to take: there the finished-trial
check at a sweep's start and the report's one-run-per-hash rule are the guards (see
cluster/README.md). No Ray, no MLflow.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Callable, Iterator


class TrialClaimed(ValueError):
    """Another live process holds this trial's claim."""


def lock_path(storage: str, key: str) -> Path | None:
    """Where the claim of `key` lives under train.storage, or None on object storage."""
    if "://" in storage and not storage.startswith("file://"):
        return None
    return Path(storage.removeprefix("file://")).expanduser() / "claims" / f"{key}.lock"


@contextlib.contextmanager
def claim(storage: str, key: str, *, wait: bool = False,
          log: Callable[[str], None] = lambda s: None,
          doing: str = "trains this trial") -> Iterator[Path | None]:
    """Hold the claim of trial `key` for the `with` block; yields the lock file (None on
    object storage: no claim). Held by another process: wait for it when `wait` (a sweep),
    else raise TrialClaimed naming the holder. `doing` says what the holder does, in the
    waiting line (the SYNTHETIC data set's cache is claimed the same way, ipb.inputs)."""
    path = lock_path(storage, key)
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            if not wait:
                raise TrialClaimed(f"this trial is being trained now by {holder} (lock {path});"
                                   " wait for it, or stop that process") from None
            log(f"waiting for {holder}, which {doing} now (lock {path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
