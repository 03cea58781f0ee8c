"""Checkpoints that are complete or absent: atomic writes, verification, the newest valid one.

- A single-file checkpoint is written to a temporary name in its own folder (so the rename never
  crosses filesystems), flushed and fsynced, then renamed over the destination: the previous file
  stays whole until the new one is.
- A sharded checkpoint (a torch.distributed.checkpoint folder, one file per rank) is written into a
  temporary sibling folder; once every rank is done, global rank 0 adds a completion marker
  (``COMPLETE``), fsyncs, and swaps it in (the previous folder is kept aside until the swap is done).
- :func:`verify` says why a path is not a usable checkpoint; :func:`newest_valid` picks the newest
  usable one in a folder, naming the ones it passes over.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

log = logging.getLogger("allam")

MARKER = "COMPLETE"
TMP = ".tmp-"  # prefix of a checkpoint still being written
OLD = ".old-"  # prefix of a sharded checkpoint being replaced


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to `path` through a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP}{path.name}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def disk_full(exc: OSError, path: Path) -> Exception:
    """The one-line failure for a checkpoint write that ran out of space (the write was undone; the
    checkpoints written before are whole)."""
    from allam.config import RunFailed

    folder = Path(path).parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1024**3:.2f} GiB free"
    except OSError:
        free = "free space unknown"
    return RunFailed(f"checkpoint {path}: {os.strerror(exc.errno)} ({free} in {folder}); the earlier checkpoints "
                     "are complete; free space (or point hydra.run.dir at a larger disk) and run the same command again")


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic, fsynced writes; a full disk fails the run with
    one line (:func:`disk_full`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported")
        try:
            atomic_torch_save(checkpoint, Path(path))
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise disk_full(exc, Path(path)) from None
            raise


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """FSDP2 (ModelParallelStrategy) whose sharded checkpoint folders appear complete or not at all."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Optional[Any] = None) -> None:
        final = Path(self.broadcast(str(filepath)))
        tmp = final.parent / f"{TMP}{final.name}"
        if self.global_rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)  # a write that died before completing
            final.parent.mkdir(parents=True, exist_ok=True)
        self.barrier()
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
        except OSError as exc:  # every rank writes to the same filesystem: each fails alike
            if exc.errno in NO_SPACE:
                raise disk_full(exc, final) from None
            raise
        self.barrier()
        if self.global_rank == 0:
            marker = tmp / MARKER
            with open(marker, "w") as f:
                f.write("ok\n")
                f.flush()
                os.fsync(f.fileno())
            for p in tmp.iterdir():
                if p.is_file():
                    _fsync_one(p)
            _fsync_dir(tmp)
            old = final.parent / f"{OLD}{final.name}"
            if final.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.replace(final, old)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            if old.exists():
                shutil.rmtree(old)
        self.barrier()

    def remove_checkpoint(self, filepath) -> None:
        if self.global_rank == 0:
            path = Path(filepath)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def _fsync_one(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading
def read_meta(path: Path) -> dict:
    """The non-tensor part of a checkpoint (loops, callbacks, datamodule, allam's record), loaded
    with weights_only=True (tensors and plain types only: never arbitrary objects)."""
    path = Path(path)
    if path.is_dir():
        return torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")}


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Hugging Face parameter name -> shape, for the model tensors of a checkpoint."""
    from allam.model.export import PREFIX, dcp_tensor_keys

    path = Path(path)
    if path.is_dir():
        return {k: tuple(s) for k, (s, _) in dcp_tensor_keys(path).items()}
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = ckpt.get("state_dict", {})
    return {k[len(PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(PREFIX)}


def inspect(path: Path) -> tuple[Optional[str], int]:
    """(why `path` is not a complete checkpoint of an allam run, or None; its global step), reading
    its metadata once."""
    path = Path(path)
    if not path.exists():
        return "no such file or folder", -1
    try:
        if path.is_dir():
            if not (path / ".metadata").exists():
                return "a folder that is not a sharded checkpoint (no .metadata)", -1
            if not (path / MARKER).exists():
                return "an incomplete sharded checkpoint (no COMPLETE marker)", -1
            meta = read_meta(path)
        else:
            if path.stat().st_size == 0:
                return "an empty file", -1
            meta = read_meta(path)
            if not tensor_shapes(path):
                return "a checkpoint without allam model weights", -1
    except Exception as exc:  # truncated zip, foreign pickle, unreadable file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"unreadable ({first[:160]})", -1
    if "loops" not in meta or "global_step" not in meta:
        return "not a Lightning training checkpoint", -1
    return None, int(meta["global_step"])


def verify(path: Path) -> Optional[str]:
    """None when `path` is a complete checkpoint of an allam run; else why it is not (one phrase)."""
    return inspect(path)[0]


def candidates(folder: Path) -> list[Path]:
    """Checkpoints in `folder` (files and sharded folders), unfinished writes excluded (a sharded
    folder set aside while its successor was swapped in is included)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(".ckpt") and not p.name.startswith(TMP))


def newest_valid(folder: Path) -> tuple[Optional[Path], list[str]]:
    """The usable checkpoint of the highest step in `folder` (last.ckpt preferred on a tie), and
    a line for each checkpoint passed over because it failed verification."""
    skipped, good = [], []
    for p in candidates(folder):
        why, step = inspect(p)
        if why:
            skipped.append(f"{p}: {why}")
        else:
            good.append((step, p.name == "last.ckpt", p))
    if not good:
        return None, skipped
    good.sort(key=lambda t: (t[0], t[1]))
    return good[-1][2], skipped


def clean_partial_writes(folder: Path) -> list[Path]:
    """Remove what checkpoint writes cut off mid-way left in `folder` (a temporary file named after
    the writing process's pid, a temporary sharded folder without its ``COMPLETE`` marker); returns
    what was removed. A temporary sharded folder that is complete but was never swapped in (killed
    between the two renames) is moved into place instead. Only the holder of the run directory's
    lock may call this: it is what guarantees that no other process is writing here."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        if not p.name.startswith(TMP):
            continue
        final = folder / p.name[len(TMP):]
        if p.is_dir() and (p / MARKER).exists() and not final.exists():
            os.replace(p, final)  # a finished sharded write whose swap was cut off
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        removed.append(p)
    if removed:
        _fsync_dir(folder)
    return removed
