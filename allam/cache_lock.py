"""Building a cache folder once when many processes, on one host or many, share the cache.

The cache must be on a filesystem that every rank sees (a shared filesystem on a cluster) and
whose ``flock`` locks reach across hosts (NFSv4, Lustre and GPFS mounted with locking, or a local
disk for one host). Then one builder holds ``<folder>.lock`` while it checks and builds; the others
wait, say every minute which host and process they wait for, and stop with one line after
``data.cache_wait_s`` seconds. Where locks do not reach across hosts, several builders may build
the same folder at once, and the publication rule keeps that safe:

- each builder writes under a temporary name unique across hosts (host, process, random suffix);
- the first complete folder wins: renaming a folder onto a complete one fails, so a finished
  folder, which other ranks may already be reading, is never replaced or deleted by another
  builder; the later builder checks that its own result matches the winner's (a mismatch is an
  error naming both) and deletes its temporary folder;
- a damaged folder is moved aside under a unique name before the new one takes its place.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from allam.config import ConfigError

HOST = socket.gethostname()
WAIT_S = 6 * 3600.0  # data.cache_wait_s's default: longer than any one source's build on one node
SAY_EVERY_S = 60.0  # how often a waiter says what it waits for
wait_default = WAIT_S  # what `building` waits when not told: the run's data.cache_wait_s (set by the tasks)


def unique_name(path: Path, tag: str) -> Path:
    """A sibling of `path` named for this host and process, with a random suffix."""
    return path.parent / f"{path.name}.{tag}-{HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def _holder(fh) -> str:
    fh.seek(0)
    text = fh.read().strip()
    return text or "another process (it wrote no name)"


@contextlib.contextmanager
def building(path: Path, what: str, *, wait_s: Optional[float] = None, log: Callable[[str], None] = print,
             say_every_s: float = SAY_EVERY_S, poll_s: float = 0.5) -> Iterator[None]:
    """Holds ``<path>.lock`` while the caller checks and builds `path`. A waiter says whom it waits
    for (the holder writes its host, process and start time into the lock file) when the wait
    starts and every `say_every_s`, and raises ConfigError after `wait_s` seconds (default:
    :data:`wait_default`)."""
    wait_s = float(wait_default if wait_s is None else wait_s)
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        start = time.monotonic()
        said = None
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= wait_s:
                    raise ConfigError(
                        f"data.cache_wait_s={wait_s:g}: waited {waited:.0f} s for {_holder(fh)} to finish {what} "
                        f"({path}); if that process is gone, delete {lock} and run again, or raise data.cache_wait_s")
                if said is None or waited - said >= say_every_s:
                    log(f"cache: waiting for {_holder(fh)} to finish {what} ({path}): {waited:.0f} s so far, "
                        f"giving up after {wait_s:.0f} s (data.cache_wait_s)")
                    said = waited
                time.sleep(poll_s)
        try:
            fh.seek(0)
            fh.truncate()
            since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            fh.write(f"host {HOST} pid {os.getpid()} since {since}")
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)


def publish(tmp: Path, path: Path, *, complete: Callable[[Path], bool], same: Callable[[Path, Path], Optional[str]],
            what: str, log: Callable[[str], None] = print) -> bool:
    """Renames the finished temporary folder `tmp` to `path`; True when it took the place.

    When `path` already holds a complete folder (``complete(path)``; another builder finished
    first), that one is kept, ``same(tmp, path)`` must return None (else ConfigError with its
    reason) and `tmp` is deleted: False. A folder at `path` that is not complete is moved aside
    under a unique name and deleted."""
    for _ in range(3):
        try:
            os.replace(tmp, path)  # a directory onto a non-empty one fails: never replaces a finished folder
            return True
        except OSError:
            if not path.exists():
                continue  # moved away meanwhile: try again
        if complete(path):
            why = same(tmp, path)
            if why is not None:
                raise ConfigError(f"{what}: another builder published {path} first and its result differs from "
                                  f"this one's ({why}); the cache key should make them equal: report this")
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"cache: {what}: another builder finished {path.name} first; this build matches it and is dropped")
            return False
        aside = unique_name(path, "damaged")
        try:
            os.replace(path, aside)
        except OSError:
            continue  # another builder moved or replaced it first
        shutil.rmtree(aside, ignore_errors=True)
    raise ConfigError(f"{what}: could not publish {tmp} as {path} (it kept changing under this builder)")
