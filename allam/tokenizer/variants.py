"""Resolve, train, expand and cache tokenizers: the ``tokenizer`` config group's one entry point.

Every artifact is a Hugging Face folder under ``cache_dir`` named ``<name>-<fingerprint>``; the
fingerprint hashes the base model's bytes, the training text and every option that changes the
result, so a changed corpus or option builds a new folder and an unchanged one is reused. Folders
are written atomically, and one process builds a folder while the others (e.g. DDP ranks) wait
for it (:func:`allam.tokenizer.hf_folder.build_once`).
"""
from __future__ import annotations

import importlib.util
import logging
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from allam.config import ConfigError
from allam.config.langs import BASE_LANG, lang_name, language
from allam.tokenizer import expand as expand_mod
from allam.tokenizer import hf_folder
from allam.tokenizer import spm as spm_util
from allam.tokenizer.bundle import (Texts, TokenizerBundle, TrainingTexts, fingerprint, load_bundle, safe_name, sample_lines,
                                    target_plan)

log = logging.getLogger(__name__)

KEYWORDS = ("auto", "english8k", "mistral7b", "tekken", "qwen", "gpt2")
BYTE_LEVEL = ("tekken", "qwen", "gpt2")  # byte-level BPE vocabularies shipped in packages (bytelevel.SHIPPED)
MISTRAL_FILE = ("data", "tokenizer.model.v1")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _publish(proto, folder: Path, name: str, meta: dict, check_texts: Iterable[str] = ()) -> None:
    """Writes the folder, then checks that AutoTokenizer on it encodes like SentencePiece."""
    hf_folder.write_folder(proto, folder, {"name": name, **meta})
    try:
        hf_folder.check_equal(hf_folder.load(folder, local_files_only=True), proto, check_texts, name)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- base tokenizers
def _english(cfg, cache_dir: Path, texts: Texts) -> TokenizerBundle:
    size = int(cfg.english_vocab_size)
    name = f"english{size // 1024}k" if size % 1024 == 0 else f"english{size}"
    table = dict(cfg.get("base_mix") or {})
    if table and float(cfg.get("base_ar_share", 0.0) or 0.0):
        raise ConfigError(f"tokenizer.base_ar_share={cfg.base_ar_share}: applies only when tokenizer.base_mix is "
                          "empty; with tokenizer.base_mix set the Arabic share is tokenizer.base_mix.ar")
    shares = table or {"ar": float(cfg.get("base_ar_share", 0.0) or 0.0)}
    if any(float(v) != 0.0 for v in shares.values()):
        from allam.tokenizer.target_share import WithTargetShare

        texts = WithTargetShare(texts, shares, "tokenizer.base_mix" if table else "tokenizer.base_ar_share")
    text = TrainingTexts(texts, [("en", cfg.training_words)], lambda _: f"tokenizer.base={cfg.base}: no English training text to train {name} on", seed=cfg.seed)
    return _trained_bpe(cfg, cache_dir, name, "english-bpe", size, text, "English BPE", "tokenizer.english_vocab_size")


def _trained_bpe(cfg, cache_dir: Path, name: str, kind: str, size: int, text: TrainingTexts, what: str, key: str,
                 extra: dict | None = None) -> TokenizerBundle:
    """A SentencePiece BPE trained from scratch with Llama-2's settings, cached by fingerprint
    (``extra``: more options that change the result)."""
    options = {"kind": kind, "vocab_size": size, "seed": int(cfg.seed), "trainer": spm_util.LLAMA2_TRAINER_OPTIONS, **(extra or {})}
    folder = Path(cache_dir) / f"{name}-{fingerprint(options, text.fingerprint)}"

    def build() -> None:
        t0 = time.perf_counter()
        read = text.read()
        try:
            proto = spm_util.train_bpe(read.lines, size, seed=cfg.seed, what=f"{name} {what}")
        except ValueError as e:
            raise ConfigError(f"{key}={size}: {e} ({read.words} words)") from None
        meta = {**options, "training_words": read.words, "train_seconds": round(time.perf_counter() - t0, 2)}
        _publish(proto, folder, name, meta, sample_lines(read.lines))
        log.info("tokenizer %s: built in %.1fs at %s", name, time.perf_counter() - t0, folder)

    if not hf_folder.build_once(folder, f"training tokenizer {name}", build):
        log.info("tokenizer %s: cached at %s", name, folder)
    return load_bundle(folder, name)


def _wrap_model_file(model_file: Path, name: str, cache_dir: Path, key: str) -> TokenizerBundle:
    """A SentencePiece .model file as a cached Hugging Face folder."""
    try:
        proto = spm_util.read_model(model_file)
    except ValueError as e:
        raise ConfigError(f"{key}={model_file}: {e}") from None
    if not spm_util.is_bpe(proto):
        kind = spm_util.sp_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
        raise ConfigError(
            f"{key}={model_file}: a SentencePiece {kind} model; .model files must be BPE (Llama-style), "
            "other tokenizers load from a Hugging Face folder"
        )
    sha = spm_util.model_sha256(proto)
    folder = Path(cache_dir) / f"{safe_name(name)}-{sha[:16]}"
    if not hf_folder.is_complete(folder):
        try:
            _publish(proto, folder, name, {"kind": "sentencepiece-file", "source": str(model_file), "sha256": sha})
        except RuntimeError as e:
            norm = proto.normalizer_spec
            why = ""
            if norm.name != "identity" or norm.remove_extra_whitespaces:
                rules = [f"normalizer {norm.name}"] * (norm.name != "identity") + ["remove_extra_whitespaces"] * norm.remove_extra_whitespaces
                why = (f"its {' and '.join(rules)} are SentencePiece's, which the Hugging Face (Llama) conversion does not "
                       "apply; use a model trained with normalization_rule_name=identity and remove_extra_whitespaces=false, "
                       "as Llama-2's; ")
            raise ConfigError(f"{key}={model_file}: {why}{e}") from None
    return load_bundle(folder, name)


def _mistral(cache_dir: Path) -> TokenizerBundle:
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("tokenizer.base=mistral7b: the mistral-common package is not installed (pip install mistral-common)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MISTRAL_FILE)
    if not path.is_file():
        raise ConfigError(f"tokenizer.base=mistral7b: {path} is missing from the installed mistral-common")
    return _wrap_model_file(path, "mistral7b", cache_dir, "tokenizer.base")


def _external(spec: str, cache_dir: Path, key: str, local_files_only: bool) -> TokenizerBundle:
    """A SentencePiece .model file, a Hugging Face tokenizer folder, or a hub id."""
    path = Path(spec).expanduser()
    if path.is_file():
        name = path.stem if path.suffix == ".model" else path.name
        if name == "tokenizer":  # .../<folder>/tokenizer.model: the folder says more
            name = hf_folder.read_meta(path.parent).get("name") or path.resolve().parent.name
        return _wrap_model_file(path, name, cache_dir, key)
    if path.is_dir():
        if not any((path / f).is_file() for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")):
            raise ConfigError(f"{key}={spec}: folder has no tokenizer (tokenizer.model, tokenizer.json or tokenizer_config.json)")
        try:
            tok = hf_folder.load(path, local_files_only=True)
        except Exception as e:
            raise ConfigError(f"{key}={spec}: not a loadable tokenizer folder ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        sp_path = path / hf_folder.SP_FILE
        name = hf_folder.read_meta(path).get("name") or path.resolve().name
        return TokenizerBundle(tok, path.resolve(), name, None, sp_path if sp_path.is_file() else None)
    looks_local = spec.startswith((".", "/", "~")) or spec.endswith(".model") or spec.count("/") > 1
    if looks_local or not _HUB_ID.match(spec):
        raise ConfigError(f"{key}={spec}: no such file or folder (expected a SentencePiece .model, a tokenizer folder, a hub id, or one of {', '.join(KEYWORDS)})")
    return _hub(spec, key, local_files_only)


def _hub(repo_id: str, key: str, local_files_only: bool) -> TokenizerBundle:
    from huggingface_hub import snapshot_download

    patterns = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local_files_only))
        tok = hf_folder.load(folder, local_files_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        where = "not in the local Hugging Face cache" if local_files_only else "could not be loaded from the hub"
        raise ConfigError(f"{key}={repo_id}: not a local file or folder, and as a hub id it is {where} ({msg})") from None
    sp_path = folder / hf_folder.SP_FILE
    return TokenizerBundle(tok, folder, repo_id.replace("/", "--"), None, sp_path if sp_path.is_file() else None)


def resolve_base(
    cfg, *, cache_dir: Path, init_checkpoint: str | None, texts: Texts, local_files_only: bool = False
) -> TokenizerBundle:
    spec = str(cfg.base)
    if spec == "auto":
        if init_checkpoint:
            return _external(str(init_checkpoint), cache_dir, "tokenizer.base=auto (init.checkpoint)", local_files_only)
        spec = "english8k"
    if spec == "english8k":
        return _english(cfg, cache_dir, texts)
    if spec == "mistral7b":
        return _mistral(cache_dir)
    if spec in BYTE_LEVEL:
        from allam.tokenizer.bytelevel_variants import shipped_base

        return shipped_base(spec, cache_dir)
    return _external(spec, cache_dir, "tokenizer.base", local_files_only)


# --------------------------------------------------------------------------- targets
ARABIC = ("ar",)


def check_targets(targets: Sequence[str], variant: str) -> tuple[str, ...]:
    """The target language codes, checked: known, not English, and (for an expansion) written in
    a script of their own. Raises ConfigError (one line)."""
    codes = tuple(dict.fromkeys(str(c) for c in targets))
    if not codes:
        raise ConfigError(f"tokenizer.variant={variant}: no target language (the languages besides {BASE_LANG})")
    for code in codes:
        language(code, "lang")
        if code == BASE_LANG:
            raise ConfigError(f"lang={code}: {lang_name(code)} is the base language, not a target of tokenizer.variant={variant}")
    latin = [c for c in codes if all(s == "Latin" for s in language(c).scripts)]
    if variant == "expanded" and latin:
        raise ConfigError(
            f"tokenizer.variant=expanded: {', '.join(f'{c} ({lang_name(c)})' for c in latin)} is written in Latin script, "
            "whose new pieces would be made of English letters and change how English encodes; "
            "use tokenizer=base or tokenizer=bilingual"
        )
    return codes


# --------------------------------------------------------------------------- expanded
def _expanded(cfg, base: TokenizerBundle, cache_dir: Path, texts: Texts, targets: tuple[str, ...] = ARABIC) -> TokenizerBundle:
    n = int(cfg.num_new_tokens)
    if n <= 0:
        raise ConfigError(f"tokenizer.num_new_tokens={n}: must be positive")
    if base.sp_model_path is None:
        from allam.tokenizer.bytelevel_variants import byte_level_spec, expanded_byte_level

        spec = byte_level_spec(base)
        if spec is not None:
            return expanded_byte_level(cfg, base, spec, cache_dir, texts, n, targets)
    plan, names, tag = target_plan(targets, cfg.training_words)
    base_proto = _base_proto(cfg, base)
    if not spm_util.is_bpe(base_proto):
        kind = spm_util.sp_pb2.TrainerSpec.ModelType.Name(base_proto.trainer_spec.model_type)
        raise ConfigError(f"tokenizer.base={cfg.base}: expansion needs a SentencePiece BPE model; {base.name} is {kind}")
    if not spm_util.has_byte_fallback(base_proto):
        warnings.warn(
            f"base tokenizer {base.name} has no byte fallback: characters outside its vocabulary and the new {names} "
            "pieces encode as <unk> and cannot be decoded back, so decode(encode(x)) == x holds only for covered text",
            stacklevel=3,
        )
    text = TrainingTexts(texts, plan, lambda lang: f"tokenizer.variant=expanded: no {lang_name(lang)} training text "
                         f"(the {lang_name(lang)} sources yielded nothing)", seed=cfg.seed)
    name = f"{base.name}+{tag}{n}"
    options = {"kind": "expanded", "base_sha256": spm_util.model_sha256(base_proto), "num_new_tokens": n, "seed": int(cfg.seed),
               "selection": expand_mod.SELECTION_VERSION}
    if targets != ARABIC:
        options["targets"] = list(targets)
    folder = Path(cache_dir) / f"{safe_name(name)}-{fingerprint(options, text.fingerprint)}"

    def build() -> None:
        t0 = time.perf_counter()
        read = text.read()
        if base.sp_model_path is None:  # a rebuilt proto: check it on real Arabic text too
            try:
                hf_folder.check_equal(base.tokenizer, base_proto, sample_lines(read.lines), base.name)
            except RuntimeError as e:
                raise ConfigError(f"tokenizer.base={cfg.base}: cannot rebuild a SentencePiece model from its tokenizer.json ({e})") from None
        merged, stats, arabic_size = _train_and_merge(cfg, base_proto, base.name, read, n, targets)
        meta = {
            **options,
            "base": base.name,
            "training_words": read.words,
            "arabic_model_size": arabic_size,
            "stats": stats.__dict__,
            "train_seconds": round(time.perf_counter() - t0, 2),
        }
        _publish(merged, folder, name, meta, sample_lines(read.lines))
        log.info("tokenizer %s: %d %s pieces appended to %s in %.1fs", name, stats.added, names, base.name, time.perf_counter() - t0)

    if not hf_folder.build_once(folder, f"training tokenizer {name}", build):
        log.info("tokenizer %s: cached at %s", name, folder)
    return load_bundle(folder, name, base=base)


def _base_proto(cfg, base: TokenizerBundle):
    """The base's SentencePiece model: its tokenizer.model, else one rebuilt from a Llama-style
    tokenizer.json (checked to encode exactly like the base tokenizer). Tokens added on top of a
    tokenizer.model (e.g. a ``<pad>`` at 32000) live only in the tokenizer's own files: then the
    model is rebuilt from those too, so they keep their ids and the new pieces come after them."""
    if base.sp_model_path is not None:
        try:
            proto = spm_util.read_model(base.sp_model_path)
        except ValueError as e:
            raise ConfigError(f"tokenizer.base={cfg.base}: {e}") from None
        if len(base.tokenizer) <= len(proto.pieces):
            return proto
        extra = base.tokenizer.convert_ids_to_tokens(list(range(len(proto.pieces), len(base.tokenizer))))
        rebuilt = hf_folder.proto_from_tokenizer(base.tokenizer)
        if rebuilt is not None and len(rebuilt.pieces) == len(base.tokenizer):
            try:
                hf_folder.check_equal(base.tokenizer, rebuilt, [], base.name)
                log.info("tokenizer.base=%s: %d tokens added on top of its tokenizer.model (%s) keep their ids",
                         cfg.base, len(extra), ", ".join(map(str, extra[:5])))
                return rebuilt
            except RuntimeError:
                pass
        raise ConfigError(f"tokenizer.base={cfg.base}: {len(extra)} tokens added on top of its tokenizer.model "
                          f"({', '.join(map(str, extra[:5]))}) would lose their ids in an expansion, and its "
                          "tokenizer.json does not rebuild a model that encodes like it")
    proto = hf_folder.proto_from_tokenizer(base.tokenizer)
    if proto is not None:
        try:
            hf_folder.check_equal(base.tokenizer, proto, [], base.name)
            return proto
        except RuntimeError:
            pass
    raise ConfigError(
        f"tokenizer.base={cfg.base}: expansion needs a SentencePiece BPE base; {base.path} has no tokenizer.model "
        "and its tokenizer.json is not a Llama-style BPE (e.g. a byte-level BPE cannot be expanded here)"
    )


def _train_and_merge(cfg, base_proto, base_name: str, text: spm_util.TrainingText, n: int, targets: tuple[str, ...] = ARABIC):
    """Trains the targets' (Arabic) BPE large enough that ``n`` usable new pieces remain after selection."""
    overrides = spm_util.trainer_overrides_like(base_proto)
    overrides["byte_fallback"] = False  # its byte pieces would never be appended; save the slots
    keep = expand_mod.target_test(targets)
    names = "+".join(lang_name(c) for c in targets)
    base_arabic = sum(keep(p.piece) for p in base_proto.pieces)
    size = n + base_arabic + n // 20 + 256
    for attempt in range(4):
        try:
            arabic = spm_util.train_bpe(
                text.lines, size, seed=cfg.seed, hard_vocab_limit=False, what=f"{names} BPE for {base_name} (try {attempt + 1})", **overrides
            )
        except ValueError as e:  # a script of many characters (Han) needs room for each of them first
            m = re.search(r"use at least (\d+)", str(e))
            if m is None or attempt == 3:
                raise
            size = int(m.group(1)) + n + n // 20 + 256
            continue
        merged, stats = expand_mod.expand(base_proto, arabic, n, keep)
        if stats.added == n:
            return merged, stats, len(arabic.pieces)
        if len(arabic.pieces) < size:  # the text ran out of merges
            words = sum(text.words[c] for c in targets)
            raise ConfigError(
                f"tokenizer.num_new_tokens={n}: the {names} training text ({words} words) supports only "
                f"{stats.added} new pieces over {base_name}"
            )
        size += 2 * (n - stats.added) + n // 10
    raise ConfigError(f"tokenizer.num_new_tokens={n}: could not find {n} new {names} pieces over {base_name} (got {stats.added})")


# --------------------------------------------------------------------------- bilingual
def _bilingual(cfg, cache_dir: Path, texts: Texts, targets: tuple[str, ...] = ARABIC) -> TokenizerBundle:
    """A BPE trained from scratch on the targets and English, ``training_words`` split evenly."""
    size = int(cfg.vocab_size)
    if size <= 0:
        raise ConfigError(f"tokenizer.vocab_size={size}: must be positive")
    langs = targets + (BASE_LANG,)
    name = f"bilingual{size}" if targets == ARABIC else f"bilingual-{'-'.join(targets)}{size}"
    cap = None if cfg.training_words is None else int(cfg.training_words) // len(langs)
    text = TrainingTexts(texts, [(c, cap) for c in langs],
                 lambda lang: f"tokenizer.variant=bilingual: no {lang_name(lang)} training text", seed=cfg.seed)
    extra = {} if targets == ARABIC else {"targets": list(targets)}
    return _trained_bpe(cfg, cache_dir, name, "bilingual-bpe", size, text, "+".join(lang_name(c) for c in langs) + " BPE",
                        "tokenizer.vocab_size", extra)


# --------------------------------------------------------------------------- entry point
def build_tokenizer(
    cfg,
    *,
    cache_dir: Path,
    texts: Texts,
    init_checkpoint: str | None = None,
    local_files_only: bool = False,
    targets: Sequence[str] = ARABIC,
) -> TokenizerBundle:
    """The tokenizer the ``tokenizer`` config group asks for (see TokenizerConfig in allam.config).

    ``texts(lang)`` yields training text of "ar" / "en" (read only when a tokenizer must be
    trained; allam.data.source_texts.SourceTexts gives the configured sources' training split).
    ``targets``: the language codes (not English; allam.config.langs) whose text trains the new
    pieces of ``expanded`` and, with English, ``bilingual``; ("ar",) keeps every name and cache
    folder as before. An expansion for a Latin-script target is refused (ConfigError).
    ``init_checkpoint`` is the checkpoint of init=pretrained (or its alias llama2), whose own tokenizer ``tokenizer.base=auto``
    selects. Raises ConfigError (one line) for a config that cannot work.
    """
    cache_dir = Path(cache_dir)
    variant = str(cfg.variant)
    if variant not in ("base", "expanded", "bilingual"):
        raise ConfigError(f"tokenizer.variant={variant}: allowed: base, expanded, bilingual")
    if variant != "base":
        targets = check_targets(targets, variant)
    if variant == "bilingual":
        return _bilingual(cfg, cache_dir, texts, targets)
    base = resolve_base(cfg, cache_dir=cache_dir, init_checkpoint=init_checkpoint, texts=texts, local_files_only=local_files_only)
    if variant == "base":
        return base
    return _expanded(cfg, base, cache_dir, texts, targets)


def resolve_base_size(spec: str, local_files_only: bool = False) -> int:
    """Pieces in a base tokenizer named by `tokenizer.base`, without training anything:
    mistral7b and .model files are read with SentencePiece; folders and hub ids are loaded."""
    import sentencepiece as spm_lib

    if spec in BYTE_LEVEL:
        from allam.tokenizer.bytelevel_variants import shipped_size

        return shipped_size(spec)
    if spec == "mistral7b":
        spec_ = importlib.util.find_spec("mistral_common")
        if spec_ is None or not spec_.submodule_search_locations:
            raise ConfigError("tokenizer.base=mistral7b: the mistral-common package is not installed (pip install mistral-common)")
        path = Path(list(spec_.submodule_search_locations)[0]).joinpath(*MISTRAL_FILE)
        return spm_lib.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    path = Path(spec).expanduser()
    if path.is_file():
        return spm_lib.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    try:
        return len(hf_folder.load(spec, local_files_only=local_files_only or path.is_dir()))
    except Exception as e:
        raise ConfigError(f"tokenizer.base={spec}: cannot read its size ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
