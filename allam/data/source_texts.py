"""The cleaned text of the configured sources that tokenizers learn from and are measured on
(:class:`SourceTexts`), read by :mod:`allam.data.sources`' readers and cleaned as the shards are."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator

from allam.data.source_files import content_fingerprint, reader_key
from allam.data.sources import read_documents, source_values


def source_texts(sources: Any, lang: str, split: str = "train", batch: int = 256) -> Iterator[str]:
    """Cleaned text of one split of every configured source in language `lang`.

    What tokenizers learn from (split "train") and are measured on (split "val"): the same
    documents, cleaning steps and hold-out rule as the token shards (exact duplicates are not
    dropped here), so a tokenizer never sees validation text.
    """
    from allam.data.cleaning import Cleaner

    for name, src in sources.items():
        src = source_values(src)
        if src["lang"] != lang:
            continue
        cleaner = Cleaner.from_source(src)
        pending: list[str] = []
        for doc in read_documents(name, src, parallel_pairs=False, bad=[0]):
            if doc.split != split:
                continue
            pending.append(doc.text)
            if len(pending) >= batch:
                yield from (t for t in cleaner.clean_batch(pending)[0] if t)
                pending = []
        if pending:
            yield from (t for t in cleaner.clean_batch(pending)[0] if t)


class SourceTexts:
    """``texts(lang)`` for tokenizer training, plus ``key(lang)``: a cheap fingerprint of that text
    (each source's content fingerprint and cleaning options), so a cached tokenizer is found
    without reading the corpus."""

    def __init__(self, sources: Any, split: str = "train"):
        self.sources, self.split = sources, split

    def __call__(self, lang: str) -> Iterator[str]:
        return source_texts(self.sources, lang, self.split)

    def key(self, lang: str) -> str:
        from allam.data.cleaning import Cleaner

        entries = []
        for name, src in self.sources.items():
            src = source_values(src)
            if src["lang"] == lang:
                cleaner = Cleaner.from_source(src)
                entries.append([name, content_fingerprint(name, src), reader_key(src), cleaner.options(), *([cleaner.rules()] if cleaner.rules() else [])])
        return hashlib.sha256(json.dumps([self.split, entries], sort_keys=True, default=str).encode()).hexdigest()
