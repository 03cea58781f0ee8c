"""Tokenizers: load a base tokenizer, expand it with Arabic pieces, train a bilingual one, fertility.

Public API:
    TokenizerBundle, build_tokenizer(cfg, *, cache_dir, init_checkpoint=None, texts=None, local_files_only=False)
    export_tokenizer(bundle, out_dir) -> Path                   (copy the folder into a model export)
    token_byte_lengths(tokenizer) -> np.ndarray
    tokenizer_report(variants, out_dir, texts) -> dict          (allam.tokenizer.report)

Files: spm.py (SentencePiece training with Llama-2's settings), expand.py (appending Arabic
pieces to a ModelProto), hf_folder.py (Hugging Face folders and their equality check),
build.py (variants and the cache), byte_lengths.py (bytes per token), report.py (fertility).
"""
from allam.tokenizer.build import TokenizerBundle, build_tokenizer, export_tokenizer
from allam.tokenizer.byte_lengths import token_byte_lengths


def tokenizer_report(*args, **kwargs):
    from allam.tokenizer.report import tokenizer_report as _report

    return _report(*args, **kwargs)


__all__ = ["TokenizerBundle", "build_tokenizer", "export_tokenizer", "token_byte_lengths", "tokenizer_report"]
