"""SentencePiece BPE: training with Llama-2's settings, reading and checking model protos.

Llama-2's tokenizer is a SentencePiece BPE model with byte fallback, digits split into single
pieces, whitespace carried as the piece prefix "▁" (a dummy prefix before the first word), no
normalization (identity), extra whitespace kept, and the ids unk=0, bos=1, eos=2, no pad. Those
settings are :data:`LLAMA2_TRAINER_OPTIONS`; every tokenizer this project trains uses them.

Training reads sentences from memory (no temporary text file) and is deterministic: the
trainer sees every line in a fixed order (no sampling) and the SentencePiece random generator
is seeded anyway.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import time
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

NormalPiece = sp_pb2.ModelProto.SentencePiece

# Llama-2's trainer and normalizer settings (read from its tokenizer.model), minus the corpus-
# specific ones (input, vocab size, thread count, sampling).
LLAMA2_TRAINER_OPTIONS: dict = dict(
    model_type="bpe",
    character_coverage=0.99995,
    byte_fallback=True,
    split_digits=True,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    treat_whitespace_as_suffix=False,
    allow_whitespace_only_pieces=True,
    max_sentencepiece_length=16,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    vocabulary_output_piece_score=True,
)

# Lines handed to the trainer hold at most this many words. SentencePiece skips sentences longer
# than max_sentence_length bytes, and with split_by_whitespace=True a line break between words
# changes nothing in what BPE learns, so chunking documents loses no statistics.
WORDS_PER_LINE = 64
BUILTIN_NORMALIZERS = ("identity", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf")

# --------------------------------------------------------------------------- text
class TrainingText:
    """Training lines of one or more languages plus a fingerprint of their content."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.words: dict[str, int] = {}
        self._sha = hashlib.sha256()

    def add(self, lang: str, texts: Iterable[str], max_words: int | None = None) -> int:
        """Appends documents of one language, chunked into lines, up to max_words words."""
        self._sha.update(f"\x00lang={lang}\x00".encode())
        count = 0
        bar = tqdm(texts, desc=f"reading {lang} tokenizer text", unit=" docs", mininterval=2.0, leave=False, delay=1.0)
        for doc in bar:
            words = doc.split()
            if max_words is not None:
                words = words[: max(0, max_words - count)]
            for i in range(0, len(words), WORDS_PER_LINE):
                line = " ".join(words[i : i + WORDS_PER_LINE])
                self.lines.append(line)
                self._sha.update(line.encode("utf-8"))
                self._sha.update(b"\n")
            count += len(words)
            if max_words is not None and count >= max_words:
                break
        bar.close()
        self.words[lang] = self.words.get(lang, 0) + count
        return count

    @property
    def fingerprint(self) -> str:
        return self._sha.hexdigest()


# --------------------------------------------------------------------------- training
def train_bpe(
    lines: list[str], vocab_size: int, *, seed: int, hard_vocab_limit: bool = True, what: str = "BPE", **overrides
) -> sp_pb2.ModelProto:
    """Trains a SentencePiece BPE with Llama-2's settings (``overrides`` replace some) on ``lines``.

    Returns the model proto. Raises ValueError (with the largest size the text supports) when
    ``hard_vocab_limit`` is set and the text cannot support ``vocab_size`` pieces.
    """
    opts = {**LLAMA2_TRAINER_OPTIONS, **overrides}
    opts.update(
        vocab_size=int(vocab_size),
        hard_vocab_limit=hard_vocab_limit,
        num_threads=2,
        input_sentence_size=0,  # every line, in order: no sampling
        shuffle_input_sentence=False,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )
    spm.set_random_generator_seed(int(seed))
    writer = io.BytesIO()
    log.info("training %s: %d pieces on %d lines ...", what, vocab_size, len(lines))
    t0 = time.perf_counter()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=writer, **opts)
    except RuntimeError as e:
        m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", str(e))
        if m:
            raise ValueError(f"the training text supports at most {m.group(2)} pieces") from None
        m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if m:
            raise ValueError(f"below the {m.group(2)} characters and special pieces the training text needs; "
                             f"use at least {m.group(2)}") from None
        raise
    log.info("trained %s in %.1fs", what, time.perf_counter() - t0)
    return parse_model(writer.getvalue())


# --------------------------------------------------------------------------- protos
def parse_model(data: bytes, source: str = "<bytes>") -> sp_pb2.ModelProto:
    """Parses a serialized SentencePiece model; ValueError when it is not one."""
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError; a text file may raise others
        raise ValueError(f"{source} is not a SentencePiece model ({type(e).__name__})") from None
    if len(proto.pieces) == 0:
        raise ValueError(f"{source} is not a SentencePiece model (no pieces)")
    try:  # the processor validates what the parser accepts (ids, duplicate pieces, ...)
        spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    except Exception as e:
        raise ValueError(f"{source} is not a loadable SentencePiece model: {str(e).splitlines()[0]}") from None
    return proto


def read_model(path: Path) -> sp_pb2.ModelProto:
    return parse_model(Path(path).read_bytes(), str(path))


def processor(proto: sp_pb2.ModelProto) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def has_byte_fallback(proto: sp_pb2.ModelProto) -> bool:
    return proto.trainer_spec.byte_fallback and sum(p.type == NormalPiece.BYTE for p in proto.pieces) == 256


def is_bpe(proto: sp_pb2.ModelProto) -> bool:
    return proto.trainer_spec.model_type == sp_pb2.TrainerSpec.BPE


def model_sha256(proto: sp_pb2.ModelProto) -> str:
    return hashlib.sha256(proto.SerializeToString()).hexdigest()


def trainer_overrides_like(proto: sp_pb2.ModelProto) -> dict:
    """Trainer options that make a new model segment text the way ``proto`` does.

    Used to train the Arabic pieces for an expansion with the base model's own pre-tokenization
    and normalization settings. A normalizer that is not one of SentencePiece's built-in rules
    cannot be passed to the trainer; identity is used then (see expand.py for what that means).
    """
    t, n = proto.trainer_spec, proto.normalizer_spec
    name = n.name if n.name in BUILTIN_NORMALIZERS else "identity"
    return dict(
        split_digits=t.split_digits,
        split_by_unicode_script=t.split_by_unicode_script,
        split_by_whitespace=t.split_by_whitespace,
        split_by_number=t.split_by_number,
        treat_whitespace_as_suffix=t.treat_whitespace_as_suffix,
        allow_whitespace_only_pieces=t.allow_whitespace_only_pieces,
        max_sentencepiece_length=t.max_sentencepiece_length or 16,
        normalization_rule_name=name,
        add_dummy_prefix=n.add_dummy_prefix,
        remove_extra_whitespaces=n.remove_extra_whitespaces,
    )

