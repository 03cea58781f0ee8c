"""Vocabulary expansion: append Arabic BPE pieces to a SentencePiece BPE base (the ALLaM recipe).

An Arabic-only SentencePiece BPE is trained on the Arabic training text with the base model's own
pre-tokenization settings. Any other target language works the same way: "Arabic" below stands
for the targets' scripts (:func:`target_test`; allam.config.langs), whose text trains the model.
Its pieces are appended to the base ModelProto; base pieces keep their ids, scores and types, and
the normalizer is the base's.

Which pieces are appended (exactly ``num_new`` of them):
- only pieces that contain an Arabic-script character. English (or any text without Arabic
  script) can then never form a new piece, so its encodings are the base's token for token;
- none that the base already has;
- the Arabic model's single characters that the base lacks are always selected (every longer piece is
  merged from characters, and a character outside the vocabulary falls back to bytes, which
  never merge), and appended last, after the merged pieces, as SentencePiece's own trainer lays
  them out; the longer pieces are taken in the Arabic model's merge order, each kept only if it can
  be formed from two pieces already in the merged vocabulary (a piece whose only route ran
  through a skipped piece could never be produced);
- none that the merged model does not produce from the piece's own text. Forming from two pieces
  is necessary, not enough: the base's own merges of the target script outrank every new piece
  and can take a word down another path (a base holding ``▁ج`` and ``اب`` splits ``▁جابر`` as
  ``▁ج اب ر``, never reaching the new ``▁جا`` + ``بر``). Such pieces are dropped and the next
  candidates taken, until every appended piece encodes its own text (:func:`unproduced`); with an
  English-only base none is dropped, with the claims' 1%-Arabic base about 1.8% were.

Scores of the new pieces: SentencePiece BPE merges, at each step, the adjacent pair whose
concatenation has the highest score; the fast tokenizer that ``transformers`` converts the model
to ranks the same merges by piece id instead. New pieces therefore score below every base piece
and fall strictly with their id, in the Arabic model's merge order. Then (1) SentencePiece and the
converted tokenizer agree (score order = id order), (2) among themselves the new pieces merge in
the order BPE learned them, and (3) on Arabic text the base's own Arabic merges fire first and
the new ones build on top, the way appended merges extend a BPE merge list. Scores are spaced so
that they stay distinct in float32 (a tie would be broken by position, not by rank).

Limits: the base must be a SentencePiece BPE model (a Unigram base would need log-probability
scores; a tokenizer.json-only base such as a byte-level BPE has no ModelProto). A ``.model``
base whose text the Hugging Face conversion encodes differently (it applies no SentencePiece
normalizer: nmt_nfkc, remove_extra_whitespaces) is refused when it is wrapped, before any expansion.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from allam.config.langs import SCRIPTS, language
from allam.tokenizer.spm import NormalPiece

log = logging.getLogger(__name__)

# the selection's rules: part of an expanded tokenizer's cache key (2: pieces the merged model does
# not produce are dropped and replaced)
SELECTION_VERSION = 2

# Arabic, Arabic Supplement, Arabic Extended-B/-A, Presentation Forms-A/-B (the script's blocks)
ARABIC_RANGES = SCRIPTS["Arabic"].blocks


def is_arabic_char(ch: str) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in ARABIC_RANGES)


def has_arabic(text: str) -> bool:
    return any(is_arabic_char(ch) for ch in text)


def target_ranges(targets: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """The Unicode blocks of the targets' non-Latin scripts (for ("ar",): :data:`ARABIC_RANGES`)."""
    out: list[tuple[int, int]] = []
    for code in targets:
        for script in language(code).script_objs():
            if script.name != "Latin":
                out += [r for r in script.blocks if r not in out]
    return tuple(out)


@lru_cache(maxsize=None)
def target_test(targets: tuple[str, ...]) -> Callable[[str], bool]:
    """``has(text)``: whether ``text`` holds a character of the targets' scripts (see
    :func:`target_ranges`); ``has_arabic`` itself for ("ar",)."""
    ranges = target_ranges(targets)
    if ranges == ARABIC_RANGES:
        return has_arabic
    return lambda text: any(lo <= ord(ch) <= hi for ch in text for lo, hi in ranges)


@dataclass
class ExpansionStats:
    requested: int
    added: int = 0
    added_chars: int = 0
    arabic_model_pieces: int = 0
    already_in_base: int = 0
    without_arabic: int = 0
    unreachable: int = 0
    unproduced: int = 0  # formed from two pieces, yet not produced by the merged model (dropped)
    score_step: float = 1.0


def _score_step(start: float, count: int) -> float:
    """Smallest power-of-two step that keeps ``start - k * step`` distinct in float32."""
    step = 1.0
    while float(np.spacing(np.float32(abs(start) + (count + 1) * step))) * 2 > step:
        step *= 2
    return step


def select_pieces(base: sp_pb2.ModelProto, arabic: sp_pb2.ModelProto, num_new: int,
                  keep: Callable[[str], bool] = has_arabic,
                  exclude: frozenset[str] = frozenset()) -> tuple[list[str], ExpansionStats]:
    """The Arabic model's pieces to append to ``base``, in id order: merged pieces, then characters;
    ``keep(piece)``: whether a piece holds a target-script character; ``exclude``: longer pieces
    not to take (found not produced: :func:`unproduced`)."""
    stats = ExpansionStats(requested=num_new)
    vocab = {p.piece for p in base.pieces}
    ranked = sorted(
        ((i, p) for i, p in enumerate(arabic.pieces) if p.type == NormalPiece.NORMAL), key=lambda ip: (-ip[1].score, ip[0])
    )
    stats.arabic_model_pieces = len(ranked)
    chars, longer = [], []
    for _, p in ranked:
        s = p.piece
        if s in vocab:
            stats.already_in_base += 1
        elif not keep(s):
            stats.without_arabic += 1
        elif len(s) == 1:
            chars.append(s)
        else:
            longer.append(s)
    chars = chars[:num_new]  # most frequent first
    vocab.update(chars)
    picked: list[str] = []
    budget = num_new - len(chars)
    for s in longer:
        if len(picked) >= budget:
            break
        if s in exclude:
            stats.unproduced += 1
        elif any(s[:k] in vocab and s[k:] in vocab for k in range(1, len(s))):
            picked.append(s)
            vocab.add(s)
        else:
            stats.unreachable += 1
    stats.added_chars = len(chars)
    stats.added = len(picked) + len(chars)
    # merged pieces first, characters last: the layout SentencePiece's own BPE trainer writes
    return picked + chars, stats


def append_pieces(base: sp_pb2.ModelProto, pieces: list[str], stats: ExpansionStats) -> sp_pb2.ModelProto:
    """A copy of ``base`` with ``pieces`` appended, scored below every base piece, falling with id."""
    merged = sp_pb2.ModelProto()
    merged.CopyFrom(base)
    start = min(p.score for p in base.pieces)
    step = _score_step(start, len(pieces))
    stats.score_step = step
    for k, s in enumerate(pieces):
        new = merged.pieces.add()
        new.piece = s
        new.score = start - step * (k + 1)
        new.type = NormalPiece.NORMAL
    merged.trainer_spec.vocab_size = len(merged.pieces)
    return merged


def unproduced(merged: sp_pb2.ModelProto, first: int) -> set[str]:
    """The pieces from id ``first`` on that ``merged`` does not produce from their own text: each
    is encoded (normalization off: a piece is already normalized text, ``▁`` its spaces) and must
    come back as itself. A piece that fails can never be emitted: BPE's merges on a word depend
    on the word alone, and inside a longer word the same higher merges fire first."""
    import sentencepiece as spm

    check = sp_pb2.ModelProto()
    check.CopyFrom(merged)
    norm = check.normalizer_spec
    norm.name, norm.precompiled_charsmap = "identity", b""
    norm.add_dummy_prefix = norm.remove_extra_whitespaces = False
    sp = spm.SentencePieceProcessor(model_proto=check.SerializeToString())
    texts = [p.piece for p in check.pieces[first:]]
    return {text for i, (text, ids) in enumerate(zip(texts, sp.encode(texts)), first) if ids != [i]}


def expand(base: sp_pb2.ModelProto, arabic: sp_pb2.ModelProto, num_new: int,
           keep: Callable[[str], bool] = has_arabic) -> tuple[sp_pb2.ModelProto, ExpansionStats]:
    """Appends ``num_new`` Arabic pieces of ``arabic`` to ``base``, each produced by the result
    from its own text (pieces that are not are dropped and replaced, round after round: dropping
    one can strand another). ``stats.added`` may fall short when the Arabic model has too few
    usable pieces; the caller decides what that means."""
    dropped: set[str] = set()
    while True:
        pieces, stats = select_pieces(base, arabic, num_new, keep, frozenset(dropped))
        merged = append_pieces(base, pieces, stats)
        dead = unproduced(merged, len(base.pieces))
        if not dead:
            return merged, stats
        if dead & set(pieces[len(pieces) - stats.added_chars:]):  # a character is always produced
            raise RuntimeError(f"expansion: appended characters not produced by the merged model: {sorted(dead)[:5]}")
        dropped |= dead
