"""ALLaM's vocabulary expansion for byte-level BPE bases (:mod:`allam.tokenizer.bytelevel`).

Expansion (:func:`expand`), the procedure that keeps a byte-level base intact:
1. the Arabic training text is normalized and pre-tokenized by the base itself, and each
   distinct pre-token that holds an Arabic letter is segmented by the base's own BPE;
2. BPE training continues on those segmentations: each step merges the most frequent adjacent
   pair (ties: the lower ids), the choice a BPE trainer would make next, counted over word
   frequencies, until ``num_new`` new tokens exist or no pair occurs twice;
3. only pairs whose result holds an Arabic lead byte (0xD8-0xDB: U+0600-U+06FF in UTF-8) are
   candidates, so a merge never fires on text without Arabic letters: English (and every text
   without Arabic script after the base's normalizer) encodes token for token as before;
4. the merges are appended after the base's last merge rank; new tokens get the ids after the
   base's highest id, so base and special-token ids keep their meaning. Every special token is
   written into the model's vocabulary at its own id (``tokenizers`` renumbers an added token
   that the model does not know when the file is loaded).

Other target languages: "Arabic lead byte" generalizes to the targets' byte prefixes
(allam.config.langs.byte_prefixes: every byte but the last of each character of their scripts'
core blocks; one byte for Arabic, two for a three-byte script such as Devanagari or Hangul). A
prefix starts with a UTF-8 lead byte, which never occurs inside another character, so bytes
holding a prefix are the start of a character of one of the 64-code-point runs it leads. A merge
``(a, b)`` is a candidate only when ``a + b`` holds a whole prefix (in either side or across the
join): it can then fire only on text holding such a character (:class:`TargetBytes`).
"""
from __future__ import annotations

import heapq
import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

from allam.tokenizer.bytelevel import _merges, is_byte_level, pin_specials, to_alphabet

# bytes 0xD8-0xDB lead every UTF-8 character of U+0600-U+06FF (the Arabic block); in the
# byte-to-unicode alphabet of byte-level BPE they are these four characters
ARABIC_LEAD_CHARS = frozenset(chr(b) for b in range(0xD8, 0xDC))
ARABIC = ("ar",)


# --------------------------------------------------------------------------- target bytes
class TargetBytes:
    """The targets' byte prefixes and the tests expansion keys on (see the module docstring).

    ``prefixes`` are in the byte-to-unicode alphabet (for Arabic: :data:`ARABIC_LEAD_CHARS`);
    ``chars`` are the characters whose UTF-8 starts with one of them, so text (not byte pieces)
    is tested with one set lookup per character."""

    def __init__(self, prefixes: Iterable[bytes]):
        raw = frozenset(prefixes)
        if not raw:
            raise ValueError("no byte prefixes (a Latin-script target has none)")
        self.prefixes = frozenset(to_alphabet(p) for p in raw)
        self.lengths = sorted({len(p) for p in self.prefixes})
        self.width = self.lengths[-1]
        self.singles = frozenset(p for p in self.prefixes if len(p) == 1)
        chars = set()
        for p in raw:  # a prefix leads the 64 characters that differ in their last byte only
            for last in range(0x80, 0xC0):
                try:
                    chars.add((p + bytes([last])).decode("utf-8"))
                except UnicodeDecodeError:  # e.g. a surrogate's encoding
                    pass
        self.chars = frozenset(chars)
        self._held: dict[str, bool] = {}

    def holds(self, symbol: str) -> bool:
        """Whether the byte piece ``symbol`` (in the alphabet) holds a whole prefix; cached."""
        held = self._held.get(symbol)
        if held is None:
            held = not self.singles.isdisjoint(symbol) or any(
                symbol[i : i + n] in self.prefixes for n in self.lengths if n > 1 for i in range(len(symbol) - n + 1))
            self._held[symbol] = held
        return held

    def pair_holds(self, a: str, b: str) -> bool:
        """Whether ``a + b`` holds a whole prefix: in a side, or across the join."""
        if self.holds(a) or self.holds(b):
            return True
        k = self.width - 1
        return k > 0 and self.holds(a[-k:] + b[:k])

    def in_text(self, text: str) -> bool:
        """Whether ``text`` holds a character that starts with a prefix."""
        return not self.chars.isdisjoint(text)


@lru_cache(maxsize=None)
def target_bytes(targets: tuple[str, ...] = ARABIC) -> TargetBytes:
    from allam.config.langs import byte_prefixes

    return TargetBytes(byte_prefixes(tuple(targets)))


# --------------------------------------------------------------------------- expansion
@dataclass
class ByteLevelStats:
    requested: int
    added: int = 0
    merges: int = 0  # appended merges (a merge may produce a token the base already has)
    arabic_words: int = 0  # distinct Arabic pre-tokens seen
    arabic_occurrences: int = 0
    stopped_at_count: int = 0  # frequency of the last merge
    first_new_id: int = 0
    notes: list[str] = field(default_factory=list)


def target_pretokens(tokenizer, texts: Iterable[str], targets: Sequence[str] = ARABIC) -> Counter:
    """Pre-tokens (in the byte alphabet) that hold a prefix of the targets, with their counts, as
    the base tokenizer's own normalizer and pre-tokenizer cut ``texts``."""
    tb = target_bytes(tuple(targets))
    norm, pre = tokenizer.normalizer, tokenizer.pre_tokenizer
    counts: Counter = Counter()
    for text in texts:
        if norm is not None:
            text = norm.normalize_str(text)
        if tb.in_text(text):
            counts.update(p for p, _ in pre.pre_tokenize_str(text) if tb.holds(p))
    return counts


def arabic_pretokens(tokenizer, texts: Iterable[str]) -> Counter:
    """Pre-tokens that hold an Arabic letter (:func:`target_pretokens` for Arabic)."""
    return target_pretokens(tokenizer, texts, ARABIC)


def continue_bpe(words: list[tuple[list[str], int]], ids: dict[str, int], known_pairs: set, num_new: int,
                 first_id: int, min_count: int = 2, targets: Sequence[str] = ARABIC
                 ) -> tuple[list[tuple[str, str]], dict[str, int], int]:
    """BPE training continued from the segmentations ``words`` (symbols, count), merging only
    pairs that hold a prefix of the targets (an Arabic lead byte). Returns the merges in order,
    the new tokens' ids, and the count of the last merge."""
    holds = target_bytes(tuple(targets)).pair_holds
    ids = dict(ids)
    symbols = [list(w) for w, _ in words]
    freq = [c for _, c in words]
    counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}

    def allowed(a: str, b: str) -> bool:
        return holds(a, b) and (a, b) not in known_pairs

    def pairs_of(seq: list[str]):
        return [(seq[i], seq[i + 1]) for i in range(len(seq) - 1) if allowed(seq[i], seq[i + 1])]

    for k, seq in enumerate(symbols):
        for p in pairs_of(seq):
            counts[p] += freq[k]
            where.setdefault(p, set()).add(k)
    heap = [(-c, ids[a], ids[b], a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    new: dict[str, int] = {}
    last = 0
    while heap and len(new) < num_new:
        negc, _, _, a, b = heapq.heappop(heap)
        c = counts.get((a, b), 0)
        if c != -negc:  # stale entry: re-queue with its current count
            if c > 0:
                heapq.heappush(heap, (-c, ids[a], ids[b], a, b))
            continue
        if c < min_count:
            break
        merged = a + b
        if merged not in ids:
            ids[merged] = new[merged] = first_id + len(new)
        merges.append((a, b))
        known_pairs.add((a, b))
        last = c
        touched: Counter = Counter()
        for k in where.pop((a, b), ()):
            seq = symbols[k]
            for p in pairs_of(seq):
                touched[p] -= freq[k]
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            symbols[k] = out
            for p in pairs_of(out):
                touched[p] += freq[k]
                where.setdefault(p, set()).add(k)
        counts.pop((a, b), None)
        for p, d in touched.items():
            if p == (a, b) or d == 0:
                continue
            counts[p] += d
            if counts[p] <= 0:
                counts.pop(p)
            elif d > 0:
                heapq.heappush(heap, (-counts[p], ids[p[0]], ids[p[1]], p[0], p[1]))
    return merges, new, last


def expand(base_json: str, arabic_texts: Iterable[str], num_new: int,
           targets: Sequence[str] = ARABIC) -> tuple[str, ByteLevelStats]:
    """The base tokenizer.json with up to ``num_new`` tokens of the targets (Arabic) and their
    merges appended (see the module docstring). ``stats.added`` may fall short when the text runs
    out of repeated pairs."""
    from tokenizers import Tokenizer

    spec = pin_specials(json.loads(base_json))
    if not is_byte_level(spec):
        raise ValueError("not a byte-level BPE tokenizer.json (model BPE with a ByteLevel pre-tokenizer)")
    base = Tokenizer.from_str(json.dumps(spec))
    vocab: dict[str, int] = spec["model"]["vocab"]
    top = max(vocab.values())
    if sorted(vocab.values()) != list(range(top + 1)):
        raise ValueError(f"the base's ids are not 0..{top} without gaps; new ids could not follow them")
    stats = ByteLevelStats(requested=num_new, first_new_id=top + 1)
    counts = target_pretokens(base, arabic_texts, targets)
    stats.arabic_words, stats.arabic_occurrences = len(counts), sum(counts.values())
    model = base.model
    words = [([t.value for t in model.tokenize(w)], c) for w, c in counts.most_common()]
    old_merges = _merges(spec)
    merges, new, last = continue_bpe(words, vocab, set(old_merges), num_new, top + 1, targets=targets)
    stats.added, stats.merges, stats.stopped_at_count = len(new), len(merges), last
    vocab.update(new)
    as_lists = isinstance(spec["model"]["merges"][0], list) if spec["model"].get("merges") else True
    spec["model"]["merges"] = [list(m) if as_lists else " ".join(m) for m in old_merges + merges]
    return json.dumps(spec, ensure_ascii=False), stats


def check_expansion(base_json: str, expanded_json: str, english: Iterable[str], arabic: Iterable[str],
                    targets: Sequence[str] = ARABIC) -> dict:
    """Checks an expansion: base ids (special tokens included) unchanged, every English text
    without characters of the targets (Arabic letters) after the base's normalizer encoded token
    for token as the base does, target (``arabic``) and English text decoded back to the
    (normalized) text. Returns counts; raises RuntimeError naming the first failure."""
    from tokenizers import Tokenizer

    a, b = Tokenizer.from_str(base_json), Tokenizer.from_str(expanded_json)
    va, vb = a.get_vocab(with_added_tokens=True), b.get_vocab(with_added_tokens=True)
    moved = [t for t, i in va.items() if vb.get(t) != i]
    if moved:
        raise RuntimeError(f"{len(moved)} base tokens changed id, e.g. {moved[:3]}")
    english, arabic = list(english), list(arabic)
    # a normalizer such as NFKC can turn symbols in English text (U+FDFA) into Arabic letters: such
    # a text holds Arabic after normalization, and the new merges may rightly apply to it
    norm = a.normalizer.normalize_str if a.normalizer is not None else (lambda t: t)
    tb = target_bytes(tuple(targets))
    arabic_after_norm = [tb.in_text(norm(t)) for t in english]
    with_arabic = [t for t, has in zip(english, arabic_after_norm) if has]
    english = [t for t, has in zip(english, arabic_after_norm) if not has]
    ea = a.encode_batch(english, add_special_tokens=False)
    eb = b.encode_batch(english, add_special_tokens=False)
    for text, x, y in zip(english, ea, eb):
        if x.ids != y.ids:
            raise RuntimeError(f"English text encodes differently after expansion: {text[:60]!r}")
    for text, enc in zip(arabic + english[:200], b.encode_batch(arabic + english[:200], add_special_tokens=False)):
        norm = b.normalizer.normalize_str(text) if b.normalizer is not None else text
        if b.decode(enc.ids, skip_special_tokens=False) != norm:
            raise RuntimeError(f"decode(encode(x)) != x for {text[:60]!r}")
    what = "arabic" if tuple(targets) == ARABIC else "target"
    return {"english_docs_identical": len(english), f"english_docs_with_{what}_letters": len(with_arabic),
            "round_trips": len(arabic) + min(200, len(english))}
