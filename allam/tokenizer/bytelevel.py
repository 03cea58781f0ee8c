"""Byte-level BPE bases (Mistral-Nemo's Tekken, Qwen, GPT-2, any ``tokenizer.json`` with a
ByteLevel pre-tokenizer): read, converted and described.

Shipped bases are read from installed packages, never downloaded: their tiktoken-style rank
files become a ``tokenizers`` BPE (every byte string with a rank is a token; the merge ``(l, r)``
ranks as the token ``l + r``; a pre-token that is itself a token is used whole, as tiktoken
does), checked against the package's own tokenizer on real text when the folder is built.

Expansion for them lives in :mod:`allam.tokenizer.bytelevel_expand`.
"""
from __future__ import annotations

import base64
import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                 "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")


@dataclass(frozen=True)
class ShippedBase:
    """A byte-level vocabulary inside an installable package."""

    name: str
    package: str
    file: str  # inside the package folder
    license: str
    model: str  # which published models use it
    install: str

    def path(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)  # finds the folder without importing the package
        if spec is None or not spec.submodule_search_locations:
            return None
        p = Path(list(spec.submodule_search_locations)[0]) / self.file
        return p if p.is_file() else None


SHIPPED = {
    "tekken": ShippedBase("tekken", "mistral_common", "data/tekken_240911.json", "Apache-2.0",
                          "Mistral-Nemo-12B (131,072 ids: 1,000 control tokens, then byte-level BPE)",
                          "pip install mistral-common (a dependency of allam)"),
    "qwen": ShippedBase("qwen", "dashscope", "resources/qwen.tiktoken", "Apache-2.0",
                        "Qwen / Qwen2 / Qwen2.5 (151,643 byte-level BPE tokens + 22 special tokens)",
                        "pip install --no-deps dashscope==2.0.2"),
    "gpt2": ShippedBase("gpt2", "whisper", "assets/gpt2.tiktoken", "MIT",
                        "GPT-2 (50,256 byte-level BPE tokens + <|endoftext|>)",
                        "pip install --no-deps openai-whisper==20250625"),
}


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table, as the ByteLevel pre-tokenizer uses."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def to_alphabet(data: bytes) -> str:
    t = byte_alphabet()
    return "".join(t[b] for b in data)


# --------------------------------------------------------------------------- rank files -> tokenizer.json
def _read_tiktoken(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_text().splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def _ranks_to_model(ranks: dict[bytes, int], offset: int) -> tuple[dict[str, int], list[list[str]]]:
    """Vocabulary (ids = rank + offset) and merges of the BPE that tiktoken's rank order defines:
    every split of a token into two tokens is a merge, ranked by the token's own rank."""
    vocab = {to_alphabet(b): r + offset for b, r in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        splits = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        splits.sort(key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
        merges += [[to_alphabet(a), to_alphabet(b)] for a, b in splits]
    return vocab, merges


def _tokenizer_json(vocab: dict[str, int], merges: list, specials: dict[str, int], pattern: str,
                    normalizer: str | None, bos: str | None) -> str:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    full = dict(vocab)
    full.update(specials)  # every special token in the model's vocabulary, at its own id
    model = BPE(full, [tuple(m) for m in merges], fuse_unk=False, byte_fallback=False, ignore_merges=True)
    tok = Tokenizer(model)
    if normalizer == "NFC":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in sorted(specials, key=specials.get)])
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, specials[bos])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


def shipped_tokenizer_json(name: str) -> tuple[str, dict]:
    """The tokenizer.json text of a shipped base and its tokenizer_config entries."""
    base = SHIPPED[name]
    path = base.path()
    if path is None:
        raise FileNotFoundError(f"{base.file} of package {base.package} ({base.install})")
    if name == "tekken":
        from mistral_common.tokens.tokenizers.tekken import Tekkenizer

        data = json.loads(path.read_text())
        n_special = int(data["config"]["default_num_special_tokens"])
        inner = int(data["config"]["default_vocab_size"]) - n_special
        ranks = {base64.b64decode(v["token_bytes"]): int(v["rank"]) for v in data["vocab"][:inner]}
        specials = {str(getattr(t["token_str"], "value", t["token_str"])): int(t["rank"])
                    for t in Tekkenizer.from_file(path)._all_special_tokens}
        vocab, merges = _ranks_to_model(ranks, n_special)
        text = _tokenizer_json(vocab, merges, specials, data["config"]["pattern"], None, "<s>")
        return text, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    ranks = _read_tiktoken(path)
    if name == "qwen":
        specials = {s: len(ranks) + i for i, s in enumerate(QWEN_SPECIALS)}
        vocab, merges = _ranks_to_model(ranks, 0)
        text = _tokenizer_json(vocab, merges, specials, QWEN_PATTERN, "NFC", None)
        return text, {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    specials = {"<|endoftext|>": len(ranks)}
    vocab, merges = _ranks_to_model(ranks, 0)
    text = _tokenizer_json(vocab, merges, specials, GPT2_PATTERN, None, None)
    return text, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": None}


def reference_encoder(name: str):
    """The package's own encoder of a shipped base (text -> ids, no special tokens), to check the
    converted tokenizer against."""
    path = SHIPPED[name].path()
    if name == "tekken":
        from mistral_common.tokens.tokenizers.tekken import Tekkenizer

        t = Tekkenizer.from_file(path)
        return lambda text: t.encode(text, bos=False, eos=False)
    import tiktoken

    ranks = _read_tiktoken(path)
    if name == "qwen":
        import unicodedata

        enc = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens={})
        return lambda text: enc.encode_ordinary(unicodedata.normalize("NFC", text))
    enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    return enc.encode_ordinary


# --------------------------------------------------------------------------- what a tokenizer.json is
def is_byte_level(spec: dict) -> bool:
    """A BPE whose pre-tokenizer (or one in its sequence) is ByteLevel."""
    if (spec.get("model") or {}).get("type") != "BPE":
        return False
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(p and p.get("type") == "ByteLevel" for p in parts)


def _merges(spec: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"].get("merges", [])]


def pin_specials(spec: dict) -> dict:
    """A copy of the tokenizer.json ``spec`` whose model vocabulary holds every added token at its id."""
    spec = json.loads(json.dumps(spec))
    vocab = spec["model"]["vocab"]
    for added in spec.get("added_tokens", []):
        if vocab.get(added["content"], added["id"]) != added["id"]:
            raise ValueError(f"added token {added['content']!r} has id {added['id']} but the model's vocabulary gives "
                             f"{vocab[added['content']]}")
        vocab[added["content"]] = added["id"]
    return spec
