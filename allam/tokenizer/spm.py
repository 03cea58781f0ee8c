"""SentencePiece BPE: training with Llama-2's settings, reading and checking model protos.

Llama-2's tokenizer is a SentencePiece BPE model with byte fallback, digits split into single
pieces, whitespace carried as the piece prefix "▁" (a dummy prefix before the first word), no
normalization (identity), extra whitespace kept, and the ids unk=0, bos=1, eos=2, no pad. Those
settings are :data:`LLAMA2_TRAINER_OPTIONS`; every tokenizer this project trains uses them.

Training reads sentences from memory (no temporary text file) and is deterministic: the
trainer sees every line of :class:`TrainingText`'s seeded, bounded sample in reading order (no
sampling of its own) and the SentencePiece random generator is seeded anyway.
"""
from __future__ import annotations

import hashlib
import heapq
import io
import logging
import random
import re
import time
from pathlib import Path
from typing import Iterable, Iterator

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
# SentencePiece also skips, silently, a line longer than max_sentence_length (64 KiB). A chunk of a
# script written without spaces (Japanese, Chinese, Thai) can be longer: it becomes several lines
# of at most MAX_LINE_BYTES (a longer run cut between characters) that share the chunk's place in
# the sample. A chunk within the limit is one line, as it always was.
MAX_LINE_BYTES = 1 << 16


def _lines(words: list[str]) -> Iterator[list[str]]:
    """One document's training text, a chunk of WORDS_PER_LINE words at a time: each chunk as its
    lines (one, unless it holds more than MAX_LINE_BYTES bytes)."""
    for i in range(0, len(words), WORDS_PER_LINE):
        chunk = words[i : i + WORDS_PER_LINE]
        if sum(len(w.encode("utf-8")) + 1 for w in chunk) - 1 <= MAX_LINE_BYTES:
            yield [" ".join(chunk)]
            continue
        lines, line, size = [], [], -1
        for word in chunk:
            for part in _cut(word):
                n = len(part.encode("utf-8")) + 1
                if line and size + n > MAX_LINE_BYTES:
                    lines.append(" ".join(line))
                    line, size = [], -1
                line.append(part)
                size += n
        lines.append(" ".join(line))
        yield lines


def _cut(word: str) -> Iterator[str]:
    """`word` in pieces of at most MAX_LINE_BYTES UTF-8 bytes, cut between characters."""
    if len(word.encode("utf-8")) <= MAX_LINE_BYTES:
        yield word
        return
    part: list[str] = []
    size = 0
    for ch in word:
        n = len(ch.encode("utf-8"))
        if size + n > MAX_LINE_BYTES:
            yield "".join(part)
            part, size = [], 0
        part.append(ch)
        size += n
    if part:
        yield "".join(part)


BUILTIN_NORMALIZERS = ("identity", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf")

# --------------------------------------------------------------------------- text
class TrainingText:
    """Training lines of one or more languages plus a fingerprint of their content.

    A language's lines are a bounded, seeded sample of its whole text, read in one stream: each
    line (a chunk of up to :data:`WORDS_PER_LINE` words and :data:`MAX_LINE_BYTES` bytes of a document) draws a random key, and the
    lines of the smallest keys are kept while their words fit in ``max_words`` (a heap of at most
    that many words: memory does not grow with the corpus). Kept lines stay in reading order. Text
    of fewer words than the cap is kept whole, in order; ``max_words=None`` keeps everything."""

    def __init__(self, seed: int = 0) -> None:
        self.lines: list[str] = []
        self.words: dict[str, int] = {}  # words kept per language
        self.seen: dict[str, int] = {}  # words read per language
        self.seed = seed
        self._sha = hashlib.sha256()

    def add(self, lang: str, texts: Iterable[str], max_words: int | None = None) -> int:
        """Appends a sample of at most max_words words of one language's documents (see the class); returns the words kept."""
        self._sha.update(f"\x00lang={lang}\x00".encode())
        rng = random.Random(f"{self.seed}:{lang}")
        heap: list[tuple[float, int, str, int]] = []  # (-key, index, line, words): the largest key on top
        kept = seen = index = 0
        bar = tqdm(texts, desc=f"reading {lang} tokenizer text", unit=" docs", mininterval=2.0, leave=False, delay=1.0)
        for doc in bar:
            words = doc.split()
            seen += len(words)
            for i, lines in enumerate(_lines(words)):
                n = len(words[i * WORDS_PER_LINE : (i + 1) * WORDS_PER_LINE])
                key = rng.random()
                index += 1
                if max_words is not None and kept + n > max_words and heap and -heap[0][0] < key:
                    continue  # a full sample whose largest key is below this one's keeps its lines
                heapq.heappush(heap, (-key, index, "\n".join(lines), n))
                kept += n
                while max_words is not None and kept > max_words:
                    kept -= heapq.heappop(heap)[3]
        bar.close()
        for _, _, chunk, _ in sorted(heap, key=lambda e: e[1]):
            for line in chunk.split("\n"):  # several lines only for a chunk over MAX_LINE_BYTES
                self.lines.append(line)
                self._sha.update(line.encode("utf-8"))
                self._sha.update(b"\n")
        self.words[lang] = self.words.get(lang, 0) + kept
        self.seen[lang] = self.seen.get(lang, 0) + seen
        if kept < seen:
            log.info("tokenizer text %s: a seeded sample of %s of %s words (tokenizer.training_words)", lang, f"{kept:,}", f"{seen:,}")
        return kept

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
    cannot be passed to the trainer; identity is used then (such a base is refused before this
    when its Hugging Face conversion encodes differently: see expand.py).
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

