"""Hugging Face tokenizer folders around SentencePiece models.

A folder holds ``tokenizer.model`` (the SentencePiece proto) and a ``tokenizer_config.json``
naming ``LlamaTokenizer`` (a model without byte fallback also gets a ``tokenizer.json``, see
:func:`_write_unk_backend`). ``transformers.AutoTokenizer.from_pretrained(folder)`` converts it to
a fast (Rust ``tokenizers``) BPE whose merges are ranked by piece id. (Constructing
``LlamaTokenizer(vocab_file=...)`` directly does not read the model in transformers 5.x; always
go through ``from_pretrained``.)

The conversion ranks merges by id while SentencePiece ranks them by score. The two agree when
scores fall as ids rise, which holds for every model this project writes (see expand.py).
Known differences, inherited from the Llama-2 / Mistral conversions and not specific to this
project: text that starts with whitespace (SentencePiece adds its dummy prefix anyway, the fast
tokenizer does not double it), and runs of spaces with models that score their whitespace-only
pieces -1e9 (Llama-2, Mistral). :func:`check_equal` verifies the equality on real text when a
folder is built.

``allam_tokenizer.json`` in the folder records what was built (name, fingerprint, options,
counts) and, under ``files``, the size and SHA-256 of every other file as written; ``transformers``
ignores it. A cached folder is checked against that record before use (:func:`is_complete`): a
damaged one (a file truncated, overwritten or missing, an unreadable record) is named in a warning
and removed, and the caller builds it again. Folders written before the record existed are
used unchecked.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from allam.tokenizer import spm as spm_util

META_FILE = "allam_tokenizer.json"
SP_FILE = "tokenizer.model"

log = logging.getLogger(__name__)


def tokenizer_config(proto) -> dict:
    t = proto.trainer_spec

    def piece(i: int) -> str | None:
        return proto.pieces[i].piece if 0 <= i < len(proto.pieces) else None

    return {
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": piece(t.unk_id),
        "bos_token": piece(t.bos_id),
        "eos_token": piece(t.eos_id),
        "pad_token": piece(t.pad_id),
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": bool(proto.normalizer_spec.add_dummy_prefix),
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
    }


def _write_atomically(folder: Path, fill, marker: str) -> Path:
    """Builds ``folder`` in a temp folder beside it (``fill(tmp)`` writes the files), then renames
    it into place: a finished folder or none. A folder another process finished first (its
    ``marker`` file present) is kept."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        os.chmod(tmp, 0o755)
        fill(tmp)
        _record_files(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / marker).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_meta(tmp: Path, meta: dict) -> None:
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def write_folder(proto, folder: Path, meta: dict) -> Path:
    """Writes tokenizer.model + configs into ``folder`` atomically (a finished folder or none)."""

    def fill(tmp: Path) -> None:
        (tmp / SP_FILE).write_bytes(proto.SerializeToString())
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(proto), indent=2) + "\n")
        _write_meta(tmp, meta)
        if not spm_util.has_byte_fallback(proto):
            _write_unk_backend(tmp, proto)

    return _write_atomically(folder, fill, SP_FILE)


TOKENIZER_FILES = (SP_FILE, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", META_FILE,
                   "chat_template.jinja")


def _write_unk_backend(folder: Path, proto) -> None:
    """For a model without byte fallback: a tokenizer.json whose BPE maps unknown characters to
    unk, as SentencePiece does. (LlamaTokenizer always builds its BPE with byte fallback and no
    unk token, so without byte pieces it silently drops unknown characters.) The config then names
    the generic fast tokenizer class, which loads tokenizer.json as written."""
    tok = load(folder, local_files_only=True)
    spec = json.loads(tok.backend_tokenizer.to_str())
    unk_id = proto.trainer_spec.unk_id
    spec["model"]["byte_fallback"] = False
    spec["model"]["unk_token"] = proto.pieces[unk_id].piece if unk_id >= 0 else None
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def copy_files(src: Path, out_dir: Path) -> list[str]:
    """Copies the tokenizer files of folder ``src`` into ``out_dir``; returns the names copied."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, out_dir / name)
            copied.append(name)
    return copied


def _file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _record_files(tmp: Path) -> None:
    """Adds the size and SHA-256 of every file of a finished folder to its build record."""
    meta_path = tmp / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["files"] = {p.name: _file_record(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != META_FILE}
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def damage(folder: Path) -> str | None:
    """Why a built folder cannot be used (a file missing, or not as its build record says), or None.
    A folder whose record has no ``files`` (written before records existed) is not checked."""
    folder = Path(folder)
    model = (folder / SP_FILE).is_file() or (folder / "tokenizer.json").is_file()
    for name, present in ((f"{SP_FILE} or tokenizer.json", model), (META_FILE, (folder / META_FILE).is_file()),
                          ("tokenizer_config.json", (folder / "tokenizer_config.json").is_file())):
        if not present:
            return f"{name} is missing"
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        files = meta.get("files", {}) if isinstance(meta, dict) else None
        if not isinstance(files, dict):
            raise ValueError("not a build record")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{META_FILE} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    for name, rec in sorted(files.items()):
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        got = _file_record(f)
        if got["bytes"] != rec.get("bytes"):
            return f"{name} has {got['bytes']:,} bytes, {rec.get('bytes'):,} when it was written"
        if got["sha256"] != rec.get("sha256"):
            return f"{name} does not match the SHA-256 recorded when it was written"
    return None


def build_once(folder: Path, what: str, build) -> bool:
    """Runs ``build()`` (which publishes `folder`) unless the folder is complete; True when it
    built. Processes sharing the cache take turns (:func:`allam.cache_lock.building`): one trains,
    the others wait, saying for whom, then find the folder complete and load it, so a tokenizer is
    trained once however many ranks ask for it at the same time."""
    from allam import cache_lock

    if is_complete(folder):
        return False
    with cache_lock.building(Path(folder), what, log=log.warning):
        if is_complete(folder):
            return False
        build()
        return True


def is_complete(folder: Path) -> bool:
    """A built, intact folder (:func:`damage`). A folder that exists but is damaged is named in a
    warning and removed (moved aside first, so no process loads half of it), so the caller builds
    it again; False then, and False when there is no folder."""
    folder = Path(folder)
    if not folder.exists():
        return False
    why = damage(folder)
    if why is None:
        return True
    log.warning("tokenizer cache %s is damaged (%s); building it again", folder, why)
    from allam import cache_lock

    aside = cache_lock.unique_name(folder.parent / f".{folder.name}", "damaged")
    try:
        os.replace(folder, aside)
    except OSError:  # another process moved it first
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return False


def write_json_folder(tokenizer_json: str, config: dict, folder: Path, meta: dict) -> Path:
    """Writes a tokenizer.json-only folder (a byte-level BPE) atomically: tokenizer.json, a
    tokenizer_config.json naming the generic fast tokenizer class, and the build record."""

    def fill(tmp: Path) -> None:
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        conf = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                "model_max_length": 1_000_000_000, **config}
        (tmp / "tokenizer_config.json").write_text(json.dumps(conf, indent=2, ensure_ascii=False) + "\n")
        _write_meta(tmp, meta)

    return _write_atomically(folder, fill, "tokenizer.json")


def read_meta(folder: Path) -> dict:
    p = Path(folder) / META_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def load(folder_or_id: str | Path, *, local_files_only: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer on a folder or hub id: fast tokenizer only, never remote code."""
    return AutoTokenizer.from_pretrained(
        str(folder_or_id), use_fast=True, trust_remote_code=False, local_files_only=local_files_only
    )


def proto_from_tokenizer(tokenizer: PreTrainedTokenizerBase):
    """Rebuilds a SentencePiece BPE ModelProto from a Llama-style fast tokenizer, or None.

    For a folder that ships only tokenizer.json (e.g. what ``save_pretrained`` writes): the BPE
    model must use "▁" as the space marker (Metaspace pre-tokenizer, or the legacy Prepend +
    Replace normalizer) and no other normalization. Pieces keep their ids; a piece's score is
    minus the rank of the first merge that produces it, so SentencePiece's highest-score-first
    order is the fast tokenizer's merge order; unmerged pieces (characters) score below all.
    The caller must check the result against the tokenizer on real text (check_equal).
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model, norm, pre = spec.get("model") or {}, spec.get("normalizer"), spec.get("pre_tokenizer")
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        return None
    norm_types = [n.get("type") for n in (norm.get("normalizers", [norm]) if norm else [])]
    metaspace = bool(pre) and pre.get("type") == "Metaspace" and pre.get("replacement") == "\u2581"
    legacy = not pre and norm_types and set(norm_types) <= {"Prepend", "Replace"}
    if not (metaspace and not norm_types) and not legacy:
        return None
    dummy_prefix = legacy or pre.get("prepend_scheme", "always") != "never"
    vocab = dict(model["vocab"])
    plain_added = set(plain_added_tokens(tokenizer))  # matched whole: USER_DEFINED pieces
    for added in spec.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    pieces = sorted(vocab, key=vocab.get)
    if [vocab[p] for p in pieces] != list(range(len(pieces))):
        return None
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges", [])]
    score: dict[str, float] = {}
    for rank, (a, b) in enumerate(merges):
        score.setdefault(a + b, -float(rank))
    special = {str(t): i for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids)}
    proto = sp_pb2.ModelProto()
    T = sp_pb2.ModelProto.SentencePiece
    n_bytes = 0
    for i, piece in enumerate(pieces):
        p = proto.pieces.add()
        p.piece = piece
        if piece == tokenizer.unk_token:
            p.type, p.score = T.UNKNOWN, 0.0
        elif piece in special:
            p.type, p.score = T.CONTROL, 0.0
        elif piece in plain_added:
            p.type, p.score = T.USER_DEFINED, 0.0
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            p.type, p.score = T.BYTE, 0.0
            n_bytes += 1
        else:
            p.type, p.score = T.NORMAL, score.get(piece, -float(len(merges) + i))
    t, n = proto.trainer_spec, proto.normalizer_spec
    t.model_type = sp_pb2.TrainerSpec.BPE
    t.vocab_size = len(pieces)
    t.byte_fallback = bool(model.get("byte_fallback")) and n_bytes == 256
    t.split_digits = True
    t.max_sentencepiece_length = 16
    t.allow_whitespace_only_pieces = True
    t.unk_id = -1 if tokenizer.unk_token_id is None else tokenizer.unk_token_id
    t.bos_id = -1 if tokenizer.bos_token_id is None else tokenizer.bos_token_id
    t.eos_id = -1 if tokenizer.eos_token_id is None else tokenizer.eos_token_id
    t.pad_id = -1 if tokenizer.pad_token_id is None or tokenizer.pad_token_id == t.unk_id else tokenizer.pad_token_id
    for field in ("unk", "bos", "eos", "pad"):
        tok = getattr(tokenizer, f"{field}_token", None)
        if tok:
            setattr(t, f"{field}_piece", str(tok))
    n.name = "identity"
    n.add_dummy_prefix = bool(dummy_prefix)
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return proto


EDGE_CASES = (
    "Hello, World! 1234567 and 3.14159",
    "tab\there, newline\nthere",
    "mixed العربية and English 2024",
    "café naïve 中文 😀",
    "قال رسول الله صلى الله عليه وسلم: «إنما الأعمال بالنيات»",
)


def plain_added_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Tokens added outside the BPE model and not special (``add_tokens(...)``): the text matches
    them whole, as SentencePiece matches its USER_DEFINED pieces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return []
    spec = json.loads(backend.to_str())
    vocab = (spec.get("model") or {}).get("vocab") or {}
    return [t["content"] for t in spec.get("added_tokens", []) if not t.get("special") and t["content"] not in vocab]


def check_equal(tokenizer: PreTrainedTokenizerBase, proto, texts: Iterable[str], what: str) -> int:
    """Asserts the HF tokenizer encodes ``texts`` (plus edge cases) exactly like SentencePiece.

    Returns the number of texts compared. Raises RuntimeError naming the first difference.
    """
    sp = spm_util.processor(proto)
    texts = list(texts) + list(EDGE_CASES) + [f"a {t} in a line{t}, twice" for t in plain_added_tokens(tokenizer)]
    ours = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ref = sp.encode(texts)
    for text, a, b in zip(texts, ours, ref):
        if a != b:
            i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise RuntimeError(
                f"{what}: the Hugging Face tokenizer differs from SentencePiece at token {i} of {text[:60]!r}: "
                f"{tokenizer.convert_ids_to_tokens(a[i : i + 3])} vs {[sp.id_to_piece(x) for x in b[i : i + 3]]}"
            )
    if len(tokenizer) != len(proto.pieces):
        raise RuntimeError(f"{what}: len(tokenizer)={len(tokenizer)} but the SentencePiece model has {len(proto.pieces)} pieces")
    return len(texts)
