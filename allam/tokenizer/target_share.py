"""Training text for the english8k base with a small share of other languages' words
(``tokenizer.base_ar_share``, or ``tokenizer.base_mix`` for any language), so the toy English
base, like Llama-2, holds their letters and some of their pieces."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping

from allam.config import ConfigError


class WithTargetShare:
    """``texts(lang)`` whose English text carries documents of other languages: after each English
    document, documents of each language (in source order) until its words reach
    ``share / (1 - total share)`` of the English words read so far, i.e. ``share`` of all words.
    ``key(lang)`` (present when the wrapped texts have one) adds each share and that language's text
    key, so the cache tells them apart (``{ar: s}`` keys as the Arabic-only version always has)."""

    def __init__(self, texts: Callable[[str], Iterable[str]], shares: Mapping[str, float], key: str = "tokenizer.base_mix"):
        from allam.config.rules import base_shares

        base_shares(shares, key)  # the rule validate() checks before a run starts
        self.shares = {str(c): float(s) for c, s in shares.items() if float(s) > 0}
        total = sum(self.shares.values())
        self.key_name = key
        self.texts, self.total = texts, total
        if hasattr(texts, "key"):
            self.key = self._key

    def __call__(self, lang: str) -> Iterator[str]:
        if lang != "en" or not self.shares:
            yield from self.texts(lang)
            return
        others = {c: iter(self.texts(c)) for c in self.shares}
        words = dict.fromkeys(self.shares, 0)
        en_words = 0
        for doc in self.texts("en"):
            yield doc
            en_words += len(doc.split())
            for code, share in self.shares.items():
                ratio = share / (1.0 - self.total)
                while others[code] is not None and words[code] < ratio * en_words:
                    extra = next(others[code], None)
                    if extra is None:
                        others[code] = None
                        break
                    yield extra
                    words[code] += len(extra.split())
        empty = [c for c, n in words.items() if n == 0 and en_words]
        if empty:
            from allam.config.langs import lang_name

            name = self.key_name + ("" if self.key_name.endswith("base_ar_share") else f".{empty[0]}")
            raise ConfigError(f"{name}={self.shares[empty[0]]}: the configured sources have no {lang_name(empty[0])} "
                              f"text to put in the English base's tokenizer text")

    def _key(self, lang: str) -> str:
        inner = self.texts.key(lang)
        if lang != "en" or not self.shares:
            return inner
        return inner + "".join(f"+{c}{s}:{self.texts.key(c)}" for c, s in self.shares.items())
