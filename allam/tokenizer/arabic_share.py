"""Training text for the english8k base with a small Arabic share (``tokenizer.base_ar_share``),
so the toy English base, like Llama-2, holds Arabic letters and some Arabic pieces."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from allam.config import ConfigError


class WithArabicShare:
    """``texts(lang)`` whose English text carries Arabic documents: after each English document,
    Arabic documents (in source order) until the Arabic words reach ``share / (1 - share)`` of the
    English words read so far, i.e. ``share`` of all words. ``key(lang)`` (present when the
    wrapped texts have one) adds the share and the Arabic text's key, so the cache tells them apart."""

    def __init__(self, texts: Callable[[str], Iterable[str]], share: float):
        if not 0.0 <= share < 0.5:
            raise ConfigError(f"tokenizer.base_ar_share={share}: must be in [0, 0.5) (the base stays mostly English)")
        self.texts, self.share = texts, float(share)
        if hasattr(texts, "key"):
            self.key = self._key

    def __call__(self, lang: str) -> Iterator[str]:
        if lang != "en" or self.share == 0.0:
            yield from self.texts(lang)
            return
        arabic = iter(self.texts("ar"))
        ratio = self.share / (1.0 - self.share)
        en_words = ar_words = 0
        for doc in self.texts("en"):
            yield doc
            en_words += len(doc.split())
            while arabic is not None and ar_words < ratio * en_words:
                extra = next(arabic, None)
                if extra is None:
                    arabic = None
                    break
                yield extra
                ar_words += len(extra.split())

    def _key(self, lang: str) -> str:
        inner = self.texts.key(lang)
        if lang != "en" or self.share == 0.0:
            return inner
        return f"{inner}+ar{self.share}:{self.texts.key('ar')}"
