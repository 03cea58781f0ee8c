"""UTF-8 bytes each token id contributes to decoded text, for bits per byte."""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
from transformers import PreTrainedTokenizerBase

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-unicode map, inverted (char -> byte), for byte-level BPE tokenizers."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in str(backend.decoder)


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """int64 array [len(tokenizer)]: UTF-8 bytes each token id adds to decoded text.

    SentencePiece-style pieces: "▁" counts as one byte (a space), a byte-fallback piece <0xNN>
    counts 1, every other character its UTF-8 length. Special and control tokens (bos, eos, unk,
    pad, added special tokens) count 0. Byte-level BPE vocabularies (GPT-2 style) count one byte
    per alphabet character. The dummy-prefix space SentencePiece puts before a text's first word
    is counted, so a document of n bytes is measured as n + 1: negligible against documents of
    hundreds of bytes, and the same for every tokenizer of this family.
    """
    n = len(tokenizer)
    out = np.zeros(n, dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    for tok_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            special.add(int(tok_id))
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    alphabet = _byte_level_alphabet() if _is_byte_level(tokenizer) else None
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            continue
        if alphabet is not None:
            out[i] = sum(1 for ch in piece if ch in alphabet) or len(piece.encode("utf-8"))
        elif _BYTE_PIECE.match(piece):
            out[i] = 1
        else:
            out[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
    return out
