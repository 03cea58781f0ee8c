"""Reading the documents of one configured source. Where its files are and the fingerprint of its
content are :mod:`allam.data.source_files`.

A source is a `data.sources.<name>` entry (:class:`allam.config.SourceConfig`). Loaders:

- ``demo``: a shipped demo corpus (``path`` names it: tafsir_ar, hadith_ar, bible_ar, hadith_en,
  bible_en, bible_<code> for another language's Bible; see :mod:`allam.data.demo`).
- ``text``: UTF-8 text files, one document per non-empty line (the Hugging Face ``text`` loader's
  convention). ``path`` is a file, a folder (every ``*.txt`` in it) or a glob.
- ``jsonl``: one JSON object per line; the document is ``text_field`` (default ``text``).
- ``parquet``: a column ``text_field`` of one or more parquet files.
- ``hf``: a Hugging Face ``datasets`` dataset by hub name or local path (a folder written by
  ``save_to_disk`` or any folder/file ``load_dataset`` reads), split ``split`` (default train).

Hold-out rule: validation text is whole units. Demo corpora carry their own units (surah, hadith
book, Bible book; a unit whose number is a multiple of 20 is validation; fixed, as the evaluation
tasks are built from those books). File and ``hf`` sources are cut into chapters of
``CHAPTER_DOCS`` (50) consecutive documents, numbered from 0 in reading order, and a fraction
``f`` of them is validation (the source's ``val_fraction``, by default ``data.val_fraction``,
0.05): chapter ``c`` is validation when ``floor((c + k) f) > floor((c + k - 1) f)`` with
``k = ceil(1/f) - 1``, which spreads them evenly and makes the second chapter the first held out
(at 0.05: ``c % 20 == 1``, the second of every twenty). It is decided while streaming; any source
of more than 50 documents has validation text while a source of one chapter still trains. With
``val_max_bytes`` (a language's ``data.val_cap_bytes`` shared equally among its file and hf
sources) a chapter is held out only while the source's held-out raw bytes are below the cap, so
the hold-out passes the cap by less than one chapter; later chapters train.

Translated sources with ``data.parallel_pairs=true`` emit each *training* document as an aligned
pair "English original, blank line, translation" in one sequence (demo: verse/hadith
aligned pairs from :func:`allam.data.demo.parallel_pairs`; other loaders: ``pair_field``).
Validation documents are never paired, so per-language validation stays monolingual. A paired
sequence counts toward its source's (language, translated) stream in the blend, English half included.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from allam.config import ConfigError, source_defaults
from allam.data import demo
from allam.data.source_files import dataset_bytes, hf_dataset, resolve_files, say_skipped, unreadable

from allam.data.holdout import (  # noqa: E402,F401  (re-exported: callers import them from here)
    CHAPTER_DOCS, HOLD_OUT_RULE, SAMPLE_BLOCKS, SAMPLE_BYTES, VAL_EVERY, _fraction, chapter_is_val, file_identity,
    hold_out_rule)

_SURROGATE = re.compile("[\ud800-\udfff]")  # only a JSON escape can put one in a str; UTF-8 never decodes to one


@dataclass(frozen=True)
class Span:
    """A part of one file a reader reads: bytes [start, end) (end None: to the end), starting at a
    line boundary; ``first_line`` is the number of lines before ``start`` (for line numbers in messages)."""

    path: Path
    start: int = 0
    end: Optional[int] = None
    first_line: int = 0


@dataclass(frozen=True)
class Rows:
    """A part of an ``hf`` source a reader reads: rows [start, end) of its dataset split."""

    start: int
    end: int


@dataclass
class Piece:
    """One task's share of a source (:mod:`allam.data.engine`): its spans, in reading order, the
    source-wide index of its first document, and the last held-out chapter the plan allows
    (None: no cap), so a piece read alone splits its documents as reading the whole source would."""

    spans: list
    first_doc: int = 0
    last_val: Optional[int] = None


@dataclass
class RawDoc:
    """One document as read, before cleaning, with its split under the hold-out rule."""

    text: str
    unit: int  # demo: book/chapter/surah; files: chapter number
    pair: Optional[str] = None  # original (English) text of a translated training document (parallel_pairs)
    split: str = "train"


def source_values(src: Any) -> dict:
    """Every SourceConfig field of one source as plain values (a choice as its string), absent (or
    None) fields at their defaults; ``src`` is a validated DictConfig or a dict. The functions
    below read fields directly (``src["loader"]``): they take a source after validate() or this."""
    given = {k: v for k, v in src.items() if v is not None}  # None: the default
    return {k: str(v) if isinstance(v, str) else v for k, v in {**source_defaults(), **given}.items()}


class BadUtf8(Exception):
    """Raised inside readers; turned into a ConfigError naming the source."""

    def __init__(self, path: str, offset: int):
        super().__init__(f"{path} is not valid UTF-8 at byte offset {offset}")
        self.path, self.offset = path, offset


class AtLine(ConfigError):
    """A one-line error about line `line` of file `path`; ``template`` is the message with ``{line}``
    in place of the number (a task reading part of a file learns the line's number in the file later)."""

    def __init__(self, template: str, path: Any, line: int):
        super().__init__(template.replace("{line}", str(line)))
        self.template, self.path, self.line = template, str(path), line


class Unreadable(Exception):
    """Raised inside readers for a file that cannot be opened or read; turned into one line naming the source."""

    def __init__(self, path: Path, exc: OSError):
        super().__init__(str(exc))
        self.path, self.exc = path, exc


# --------------------------------------------------------------------------- readers
def _lines(span, skip_bad: bool, bad: list[int], read: Optional[list[int]] = None) -> Iterator[str]:
    """Decoded lines of a file (a Path) or of a :class:`Span` of one; a non-UTF-8 line raises
    BadUtf8 with its byte offset, or is skipped and counted in bad[0] when skip_bad; a file the
    system will not read raises Unreadable. read[0] (when given) counts the bytes read."""
    span = span if isinstance(span, Span) else Span(Path(span))
    try:
        yield from _decoded(span, skip_bad, bad, read)
    except OSError as e:
        raise Unreadable(span.path, e) from None


def _decoded(span: Span, skip_bad: bool, bad: list[int], read: Optional[list[int]]) -> Iterator[str]:
    offset, end = span.start, span.end
    with open(span.path, "rb") as fh:
        if offset:
            fh.seek(offset)
        for raw in fh:
            if end is not None and offset >= end:
                break
            if read is not None:
                read[0] += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if not skip_bad:
                    raise BadUtf8(str(span.path), offset + e.start) from None
                bad[0] += 1
                offset += len(raw)
                continue
            offset += len(raw)
            yield line


def _chaptered(texts: Iterator[tuple[str, Optional[str]]], src: Any, piece: Optional[Piece] = None) -> Iterator[RawDoc]:
    """Documents with their splits. Reading a whole source, the cap is applied while streaming; a
    :class:`Piece` carries where it starts and the last held-out chapter its plan allows."""
    fraction, cap = _fraction(src.get("val_fraction")), src.get("val_max_bytes")
    first = piece.first_doc if piece is not None else 0
    held, split = 0, "train"
    for i, (text, pair) in enumerate(texts, first):
        chapter = i // CHAPTER_DOCS
        if i % CHAPTER_DOCS == 0 or i == first:  # a chapter is held out whole, or not at all
            if piece is not None:
                allowed = cap is None or (piece.last_val is not None and chapter <= piece.last_val)
            else:
                allowed = cap is None or held < cap
            split = "val" if chapter_is_val(chapter, fraction) and allowed else "train"
        if split == "val":
            held += len(text.encode("utf-8"))
        yield RawDoc(text, chapter, pair if split == "train" else None, split)


def _read_text(files: list, skip_bad: bool, bad: list[int], read=None) -> Iterator[tuple[str, Optional[str]]]:
    for f in files:
        for line in _lines(f, skip_bad, bad, read):
            line = line.strip()
            if line:
                yield line, None


def json_rows(name: str, f, skip_bad: bool, bad: list[int], read: Optional[list[int]] = None,
              bad_json: Optional[list] = None):
    """(line number, parsed row) of every non-blank line of the JSONL file `f` (a Path or a
    :class:`Span`); a line that is not JSON is one line of error naming `name`, the file and the
    line, or, when `bad_json` is a list, skipped with its (file, line) appended there."""
    span = f if isinstance(f, Span) else Span(Path(f))
    f = span.path
    for lineno, line in enumerate(_lines(span, skip_bad, bad, read), span.first_line + 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            if bad_json is not None:
                bad_json.append((str(f), lineno))
                continue
            raise AtLine(f"data.sources.{name}: {f} line {{line}} is not valid JSON ({e.msg}); "
                         f"data.sources.{name}.skip_bad_json=true skips and counts such lines", f, lineno) from None


def _read_jsonl(name: str, files: list, field: str, pair_field: Optional[str], skip_bad: bool, bad: list[int],
                read=None, bad_json=None):
    for span in files:
        f = span.path if isinstance(span, Span) else span
        for lineno, row in json_rows(name, span, skip_bad, bad, read, bad_json):
            if not isinstance(row, dict) or field not in row:
                raise AtLine(f"data.sources.{name}.text_field={field}: missing in {f} line {{line}}", f, lineno)
            text = row[field]
            if text is None:
                continue
            text = str(text)
            pair = str(row[pair_field]) if pair_field and row.get(pair_field) is not None else None
            bad_char = _SURROGATE.search(text) or (_SURROGATE.search(pair) if pair else None)
            if bad_char:  # a JSON escape such as "\ud800" decodes to a character no UTF-8 text can hold
                if skip_bad:
                    bad[0] += 1
                    continue
                raise AtLine(
                    f"data.sources.{name}: {f} line {{line}} has a lone surrogate (\\u{ord(bad_char.group()):04x}), "
                    f"which is not Unicode text (set data.sources.{name}.skip_bad_utf8=true to skip such documents)",
                    f, lineno)
            yield text, pair


def _read_parquet(name: str, files: list[Path], field: str, pair_field: Optional[str], skip_bad: bool, bad: list[int],
                  read=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = [field] + ([pair_field] if pair_field else [])
    for f in files:
        f = f.path if isinstance(f, Span) else f  # parquet pieces are whole files
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"data.sources.{name}.path={f}: not a readable parquet file ({first})") from None
        names = pf.schema_arrow.names
        for c in cols:
            if c not in names:
                raise ConfigError(f"data.sources.{name}.text_field={c}: no such column in {f} (columns: {', '.join(names)})")
        offset = 0
        start, size, rows = (read[0] if read is not None else 0), f.stat().st_size, max(pf.metadata.num_rows, 1)
        for batch in pf.iter_batches(columns=cols, batch_size=4096):
            if read is not None:  # the file's bytes in proportion to its rows read
                read[0] = start + size * min(offset + batch.num_rows, rows) // rows
            arrays, broken = [], set()  # rows with a cell that is not UTF-8: skipped whole (as a JSONL line)
            for c in cols:
                col = batch.column(c)
                if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                    vals = []
                    for j, v in enumerate(col.to_pylist()):
                        try:
                            vals.append(None if v is None else v.decode("utf-8"))
                        except UnicodeDecodeError as e:
                            if not skip_bad:
                                raise BadUtf8(f"{f} (row {offset + j}, column {c})", e.start) from None
                            broken.add(j)
                            vals.append(None)
                    arrays.append(vals)
                else:
                    arrays.append(col.to_pylist())
            offset += batch.num_rows
            bad[0] += len(broken)
            texts = arrays[0]
            pairs = arrays[1] if pair_field else [None] * len(texts)
            for j, (t, p) in enumerate(zip(texts, pairs)):
                if t is not None and j not in broken:
                    yield str(t), (str(p) if p is not None else None)


def _read_hf(name: str, src: Any, field: str, pair_field: Optional[str], read: Optional[list[int]] = None,
             spans: Optional[list] = None):
    """(text, pair) of the dataset's rows in order, or of the :class:`Rows` in `spans`; rows whose
    text is None are skipped. read[0] advances by the Arrow files' bytes in proportion to the rows read."""
    ds = hf_dataset(name, src)
    cols = ds.column_names
    for c in [field] + ([pair_field] if pair_field else []):
        if c not in cols:
            raise ConfigError(f"data.sources.{name}.text_field={c}: no such column (columns: {', '.join(cols)})")
    n, total = len(ds), dataset_bytes(ds) or 0
    for part in spans if spans is not None else [Rows(0, n)]:
        rows = ds if (part.start, part.end) == (0, n) else ds.select(range(part.start, part.end))
        at = part.start
        for batch in rows.iter(batch_size=1024):
            texts = batch[field]
            if read is not None and n:  # telescoping, so a source's pieces add up to its total
                read[0] += total * (at + len(texts)) // n - total * at // n
            at += len(texts)
            pairs = batch[pair_field] if pair_field else [None] * len(texts)
            for t, p in zip(texts, pairs):
                if t is not None:
                    yield str(t), (str(p) if p is not None else None)


def _demo_docs(name: str, key: str, pairs: bool) -> Iterator[RawDoc]:
    if pairs and demo.DEMO_KIND.get(key) == "translated":
        collection, lang = key.rsplit("_", 1)
        for doc in demo.demo_documents(key, "val"):
            yield RawDoc(doc.text, doc.unit, None, "val")
        for en, ar, doc in demo.parallel_pairs(collection, "train", lang):
            yield RawDoc(ar, doc.unit, en, "train")
        return
    for doc in demo.demo_documents(key):
        yield RawDoc(doc.text, doc.unit, None, doc.split)


def read_documents(name: str, src: Any, parallel_pairs: bool, bad: list[int],
                   read: Optional[list[int]] = None, bad_json: Optional[list] = None,
                   piece: Optional[Piece] = None) -> Iterator[RawDoc]:
    """Documents of a source in a fixed order. bad[0] counts skipped non-UTF-8 lines/rows; read[0]
    (when given) the bytes of the source's files read so far (:func:`allam.data.source_files.source_bytes` is their total);
    with the source's ``skip_bad_json``, `bad_json` collects the (file, line) of JSONL lines skipped.
    With `piece`, only that part of a file or hf source (:class:`Piece`), split as in the whole source.

    Raises ConfigError (one line) for a missing file, an unknown demo source, bad UTF-8
    (file and byte offset) or a lone surrogate escape in a JSONL line (file and line) unless the
    source sets skip_bad_utf8 (then such documents are skipped and counted in bad[0]).
    """
    loader = src["loader"]
    pairs = parallel_pairs and src["kind"] == "translated"
    if loader == "demo":
        key = src["path"] or name
        if key not in demo.DEMO_SOURCES:
            raise ConfigError(f"data.sources.{name}.path={key}: unknown demo source; allowed: {', '.join(sorted(demo.DEMO_SOURCES))}")
        return _demo_docs(name, key, pairs)
    texts = read_texts(name, src, parallel_pairs, bad, read, bad_json, piece.spans if piece is not None else None)
    return _guard(name, src, _chaptered(texts, src, piece))


def read_texts(name: str, src: Any, parallel_pairs: bool, bad: list[int], read: Optional[list[int]] = None,
               bad_json: Optional[list] = None, spans: Optional[list] = None) -> Iterator[tuple[str, Optional[str]]]:
    """(text, English original or None) of every document of a file or hf source, in reading order,
    before the hold-out rule; `spans` (:class:`Span`, or :class:`Rows` for hf) limits it to those parts."""
    loader = src["loader"]
    skip = bool(src["skip_bad_utf8"])
    field = src["text_field"]
    pairs = parallel_pairs and src["kind"] == "translated"
    pair_field = src["pair_field"] if pairs else None
    if pairs and not pair_field:
        raise ConfigError(
            f"data.sources.{name}.pair_field=None: data.parallel_pairs=true needs the field holding the English original"
        )
    if loader == "hf":
        return _guard(name, src, _read_hf(name, src, field, pair_field, read, spans))
    if spans is None:
        files = resolve_files(name, src)
        say_skipped(name, src, files)
    else:
        files = spans
    if loader == "text":
        gen = _read_text(files, skip, bad, read)
    elif loader == "jsonl":
        gen = _read_jsonl(name, files, field, pair_field, skip, bad, read, bad_json if src.get("skip_bad_json") else None)
    elif loader == "parquet":
        gen = _read_parquet(name, files, field, pair_field, skip, bad, read)
    else:
        raise ConfigError(f"data.sources.{name}.loader={loader}: allowed: demo, text, jsonl, parquet, hf")
    return _guard(name, src, gen)


def _guard(name: str, src: Any, docs: Iterator) -> Iterator:
    try:
        yield from docs
    except BadUtf8 as e:
        raise ConfigError(
            f"data.sources.{name}: {e} (set data.sources.{name}.skip_bad_utf8=true to skip such documents)"
        ) from None
    except Unreadable as e:
        raise unreadable(name, e.path, e.exc) from None
