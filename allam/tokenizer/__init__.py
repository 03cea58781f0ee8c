"""Tokenizers: load a base tokenizer, expand it with pieces of the target languages (Arabic by
default), train a bilingual one, fertility.

Public API:
    TokenizerBundle, build_tokenizer(cfg, *, cache_dir, texts, init_checkpoint=None, local_files_only=False,
                                     targets=("ar",))
    export_tokenizer(bundle, out_dir) -> Path                   (copy the folder into a model export)
    token_byte_lengths(tokenizer) -> np.ndarray
    fertility_report(variants, out_dir, texts, *, max_words=None, langs=("ar", "en")) -> dict

Tokenizer code reads no corpus: the caller passes the text (``texts(lang)`` yields "ar" / "en"
text; allam.data.source_texts.SourceTexts over the configured sources).

Files: spm.py (SentencePiece training with Llama-2's settings), expand.py (appending Arabic
pieces to a ModelProto), hf_folder.py (Hugging Face folders and their equality check),
bundle.py (TokenizerBundle and the cache naming every variant shares), variants.py (build_tokenizer:
resolve, train, expand and cache every variant), bytelevel.py (byte-level BPE bases), bytelevel_expand.py (their expansion),
bytelevel_variants.py (their cached folders), byte_lengths.py (bytes per token), fertility.py (the
fertility report).
"""
from allam.tokenizer.bundle import TokenizerBundle, export_tokenizer
from allam.tokenizer.variants import build_tokenizer
from allam.tokenizer.byte_lengths import token_byte_lengths
from allam.tokenizer.fertility import fertility_report

__all__ = ["TokenizerBundle", "build_tokenizer", "export_tokenizer", "fertility_report", "token_byte_lengths"]
