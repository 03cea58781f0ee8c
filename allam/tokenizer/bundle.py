"""The tokenizer bundle and the cache conventions every variant shares.

A built tokenizer is a Hugging Face folder under ``cache_dir`` named ``<name>-<fingerprint>``
(:func:`fingerprint` hashes the options and the training text's key with :data:`BUILD_VERSION`).
:class:`TokenizerBundle` is what the rest of the code holds; :class:`TrainingTexts` reads the
training text only when a folder must really be built. Used by allam.tokenizer.variants
(SentencePiece variants) and allam.tokenizer.bytelevel_variants (byte-level ones)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from transformers import PreTrainedTokenizerBase

from allam.config import ConfigError
from allam.config.langs import lang_name
from allam.tokenizer import hf_folder
from allam.tokenizer import spm as spm_util
from allam.tokenizer.chat_template import set_chat_template, write_chat_template

# bump when an algorithm or option changes what gets built, so old cache folders are not reused
BUILD_VERSION = 1

Texts = Callable[[str], Iterable[str]]


@dataclass
class TokenizerBundle:
    """A loaded tokenizer and where it lives.

    tokenizer: the fast tokenizer ``AutoTokenizer.from_pretrained(path)`` returns (for a folder the
        project built, with the project's chat template set: allam.tokenizer.chat_template).
    path: the folder it loads from (tokenizer.model + configs); a model export copies it.
    name: e.g. "english8k", "mistral7b", "english8k+ar16000", "bilingual16384".
    base: for an expanded tokenizer, the base it grew from (subtoken_mean init needs it); else None.
    sp_model_path: the SentencePiece model inside ``path``, if there is one.
    """

    tokenizer: PreTrainedTokenizerBase
    path: Path
    name: str
    base: "TokenizerBundle | None" = None
    sp_model_path: Path | None = None

    @property
    def meta(self) -> dict:
        """What was recorded when the folder was built (options, counts, timings); {} if foreign."""
        return hf_folder.read_meta(self.path)


def export_tokenizer(bundle: TokenizerBundle, out_dir: Path) -> Path:
    """Ships the tokenizer with a model export: copies the folder's files (tokenizer.model
    included, which ``save_pretrained`` alone does not write, so the export can be expanded
    later as a base). Falls back to ``save_pretrained`` for a folder without such files.

    The export always ships ``tokenizer.json`` (the fast tokenizer, as loaded and checked equal to
    SentencePiece when the folder was built), so lm-evaluation-harness, vLLM or TGI load it without
    converting ``tokenizer.model`` (which needs sentencepiece and protobuf).

    The tokenizer's chat template (allam.tokenizer.chat_template) ships as ``chat_template.jinja``."""
    copied = hf_folder.copy_files(bundle.path, out_dir)
    if not copied:
        bundle.tokenizer.save_pretrained(str(out_dir))
    elif "tokenizer.json" not in copied:
        bundle.tokenizer.backend_tokenizer.save(str(Path(out_dir) / "tokenizer.json"))
    write_chat_template(bundle.tokenizer, Path(out_dir))
    return Path(out_dir)


def fingerprint(options: dict, text_fingerprint: str = "") -> str:
    blob = json.dumps({**options, "text": text_fingerprint, "build_version": BUILD_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def safe_name(name: str) -> str:
    return re.sub(r"[^\w.+\-]", "-", name)


def load_bundle(folder: Path, name: str, base: TokenizerBundle | None = None) -> TokenizerBundle:
    """A folder the project built, with the project's chat template set."""
    tok = set_chat_template(hf_folder.load(folder, local_files_only=True))
    sp_path = folder / hf_folder.SP_FILE
    return TokenizerBundle(tok, folder, name, base, sp_path if sp_path.is_file() else None)


def sample_lines(lines: list[str], n: int = 200) -> list[str]:
    step = max(1, len(lines) // n)
    return lines[::step][:n]


# --------------------------------------------------------------------------- training text
class TrainingTexts:
    """Training text of some languages, read only when a tokenizer must really be trained.

    Its fingerprint (the cache key) comes from ``texts.key(lang)`` when the text source offers
    one (allam.data.source_texts.SourceTexts: the sources' content fingerprints), so a cache hit
    reads no corpus; otherwise from the text itself."""

    def __init__(self, texts: Texts, plan: list[tuple[str, int | None]], empty: Callable[[str], str], seed: int = 0):
        self._texts, self.plan, self._empty, self.seed = texts, plan, empty, int(seed)
        self._read: spm_util.TrainingText | None = None

    @property
    def fingerprint(self) -> str:
        key = getattr(self._texts, "key", None)
        if key is None:
            return self.read().fingerprint
        return hashlib.sha256(json.dumps([[lang, cap, key(lang), self.seed] for lang, cap in self.plan]).encode()).hexdigest()

    def read(self) -> spm_util.TrainingText:
        if self._read is None:
            text = spm_util.TrainingText(self.seed)
            for lang, cap in self.plan:
                if text.add(lang, self._texts(lang), cap) == 0:
                    raise ConfigError(self._empty(lang))
            self._read = text
        return self._read


def target_plan(targets: tuple[str, ...], training_words) -> tuple[list, str, str]:
    """For an expansion's target languages: the :class:`TrainingTexts` plan (``training_words``
    split evenly between them), their names ("Arabic", "Arabic+Persian") and the tag that names
    the tokenizer ("ar", "ar-fa")."""
    cap = training_words if len(targets) == 1 or training_words is None else int(training_words) // len(targets)
    return [(c, cap) for c in targets], "+".join(lang_name(c) for c in targets), "-".join(targets)
