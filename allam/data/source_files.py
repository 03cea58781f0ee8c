"""Where a configured source's data is, and what identifies it: its files (a file, a folder or a
glob), their total size, an ``hf`` source's dataset, and the content fingerprint that keys its
shard cache (:func:`content_fingerprint`: each file's name, size and a content sample, so a copy
at another path or a ``touch`` keeps it; see :func:`allam.data.holdout.file_identity`).

Reading the documents themselves is :mod:`allam.data.sources`.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from allam.config import ConfigError, source_fields
from allam.config import langs
from allam.data import arabic, demo
from allam.data.holdout import file_identity, hold_out_rule

_EXTENSIONS = {"text": (".txt",), "jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}


def resolve_files(name: str, src: Any) -> list[Path]:
    """The files of a file source, sorted; one-line ConfigError when there are none."""
    loader, path = src["loader"], src["path"]
    if not path:
        raise ConfigError(f"data.sources.{name}.path=None: loader={loader} needs a file, folder or glob")
    p = Path(os.path.expanduser(str(path)))
    if any(ch in str(path) for ch in "*?["):
        files = sorted(Path(f) for f in globlib.glob(os.path.expanduser(str(path)), recursive=True) if Path(f).is_file())
        if not files:
            raise ConfigError(f"data.sources.{name}.path={path}: the glob matches no file")
        return files
    if p.is_dir():
        exts = _EXTENSIONS.get(loader, ())
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(exts))
        if not files:
            raise ConfigError(f"data.sources.{name}.path={path}: folder has no {'/'.join(exts)} file")
        return files
    if not p.exists():
        raise ConfigError(f"data.sources.{name}.path={path}: no such file")
    return [p]


def reader_key(src: Any) -> dict:
    """What decides which text a source yields, besides its content: the reader's fields and the hold-out rule."""
    return {"reader": {k: src[k] for k in source_fields("reader")}, "hold_out": hold_out_rule(src)}


class SourceChanged(ConfigError):
    """A source's files changed while its shards were built (its :func:`content_fingerprint` then
    differs from the one its cache key holds): nothing is published."""


def content_fingerprint(name: str, src: Any) -> str:
    """A cheap hash that changes when the source's content changes: each file's name, size and
    content sample in reading order (:func:`file_identity`), for demo sources also the code of the
    demo, Arabic-text and language-table modules (the letter and mark tables), for hf the
    dataset's own fingerprint."""
    loader = src["loader"]
    if loader == "demo":
        key = src["path"] or name
        if key not in demo.DEMO_SOURCES:
            raise ConfigError(f"data.sources.{name}.path={key}: unknown demo source; allowed: {', '.join(sorted(demo.DEMO_SOURCES))}")
        files = [file_identity(demo.package_file(*spec)) for spec in demo.DEMO_FILES.get(key, [])]
        code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (demo, arabic, langs))).hexdigest()
        entry: Any = {"demo": key, "files": files, "code": code}
    elif loader == "hf":
        entry = {"hf": src["path"], "split": src["split"], "fp": hf_dataset(name, src)._fingerprint}
    else:
        entry = {"files": [_readable(name, p, file_identity) for p in resolve_files(name, src)]}
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def unreadable(name: str, path: Any, exc: OSError) -> ConfigError:
    """The one-line error for a file of source `name` that the operating system will not read."""
    return ConfigError(f"data.sources.{name}.path: cannot read {path} ({exc.strerror or type(exc).__name__}); "
                       "fix its permissions or remove it from the source's files")


def _readable(name: str, path: Path, fn):
    try:
        return fn(path)
    except OSError as e:
        raise unreadable(name, path, e) from None


def source_bytes(name: str, src: Any) -> Optional[int]:
    """The total size of a source's data (what read_documents' byte count reaches): a file source's
    files, an ``hf`` source's Arrow files (:func:`dataset_bytes`); None for demo sources and a
    dataset held only in memory."""
    if src["loader"] == "demo":
        return None
    if src["loader"] == "hf":
        return dataset_bytes(hf_dataset(name, src))
    return sum(p.stat().st_size for p in resolve_files(name, src))


def dataset_bytes(ds: Any) -> Optional[int]:
    """The size of the Arrow files a Hugging Face dataset reads (memory-mapped); None when it has
    none (a dataset made in memory)."""
    files = [f["filename"] for f in getattr(ds, "cache_files", None) or []]
    return sum(os.path.getsize(f) for f in files) if files else None


def say_skipped(name: str, src: Any, files: list[Path]) -> None:
    """A folder source reads only its loader's file types: one log line names the other files."""
    folder = Path(os.path.expanduser(str(src["path"])))
    if any(ch in str(src["path"]) for ch in "*?[") or not folder.is_dir():
        return
    read = set(files)
    others = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file() and f not in read)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        exts = "/".join(_EXTENSIONS.get(src["loader"], ()))
        logging.getLogger("allam").info("data: %s: skipped %d file(s) in %s that are not %s: %s",
                                        name, len(others), folder, exts, shown)


def hf_dataset(name: str, src: Any):
    """The Hugging Face dataset split of an ``hf`` source (a saved folder or anything ``load_dataset`` reads); one-line ConfigError when it cannot be opened."""
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise ConfigError(f"data.sources.{name}.loader=hf: needs the `datasets` package (pip install datasets)") from None
    path = src["path"]
    if not path:
        raise ConfigError(f"data.sources.{name}.path=None: loader=hf needs a dataset name or path")
    split = src["split"] or "train"
    p = Path(os.path.expanduser(str(path)))
    try:
        if p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ConfigError(f"data.sources.{name}.split={split}: not in {path} (splits: {', '.join(ds)})")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(str(path), split=split)
    except ConfigError:
        raise
    except FileNotFoundError as e:
        raise ConfigError(f"data.sources.{name}.path={path}: dataset not found ({e})") from None
    except Exception as e:  # datasets raises many types; keep the message to one line
        raise ConfigError(f"data.sources.{name}.path={path}: cannot load dataset ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return ds
