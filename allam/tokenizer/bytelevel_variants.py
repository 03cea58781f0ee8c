"""The byte-level BPE side of ``build_tokenizer``: shipped bases (tekken, qwen, gpt2) as cached
tokenizer.json folders, and ALLaM's expansion of any byte-level base (the algorithm itself is
:mod:`allam.tokenizer.bytelevel_expand`). Cached and named like every other variant (see variants.py)."""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Sequence

from allam.config import ConfigError
from allam.config.langs import lang_name
from allam.tokenizer import bytelevel, bytelevel_expand, hf_folder
from allam.tokenizer.bundle import (Texts, TokenizerBundle, TrainingTexts, fingerprint, load_bundle, safe_name, sample_lines,
                                    target_plan)
from allam.tokenizer.expand import target_test

log = logging.getLogger("allam.tokenizer.variants")


def _shipped_path(name: str) -> Path:
    shipped = bytelevel.SHIPPED[name]
    path = shipped.path()
    if path is None:
        raise ConfigError(f"tokenizer.base={name}: {shipped.file} of the {shipped.package} package is not installed "
                          f"({shipped.install})")
    return path


def shipped_base(name: str, cache_dir: Path) -> TokenizerBundle:
    """A byte-level vocabulary shipped in a package, as a cached tokenizer.json folder checked
    against the package's own encoder."""
    from tokenizers import Tokenizer

    shipped, path = bytelevel.SHIPPED[name], _shipped_path(name)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    folder = Path(cache_dir) / f"{name}-{fingerprint({'kind': 'byte-level', 'sha256': sha})}"
    if not hf_folder.is_complete(folder):
        text, conf = bytelevel.shipped_tokenizer_json(name)
        fast, ref = Tokenizer.from_str(text), bytelevel.reference_encoder(name)
        for sample in hf_folder.EDGE_CASES:
            if fast.encode(sample, add_special_tokens=False).ids != ref(sample):
                raise ConfigError(f"tokenizer.base={name}: the converted tokenizer differs from {shipped.package}'s on {sample!r}")
        meta = {"name": name, "kind": "byte-level", "source": str(path), "sha256": sha, "license": shipped.license,
                "model": shipped.model}
        hf_folder.write_json_folder(text, conf, folder, meta)
    return load_bundle(folder, name)


def shipped_size(name: str) -> int:
    """Ids of a shipped base (special tokens included), without writing a folder."""
    from tokenizers import Tokenizer

    _shipped_path(name)
    return Tokenizer.from_str(bytelevel.shipped_tokenizer_json(name)[0]).get_vocab_size(with_added_tokens=True)


def byte_level_spec(base: TokenizerBundle) -> dict | None:
    """The base's tokenizer.json (parsed) when it is a byte-level BPE, else None."""
    backend = getattr(base.tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    return spec if bytelevel.is_byte_level(spec) else None


def expanded_byte_level(cfg, base: TokenizerBundle, spec: dict, cache_dir: Path, texts: Texts, n: int,
                        targets: Sequence[str] = ("ar",)) -> TokenizerBundle:
    """ALLaM's expansion of the byte-level base `base` (its tokenizer.json `spec`): merges of the
    targets (Arabic) continued from the base's own segmentations, appended after its last merge."""
    targets = tuple(targets)
    base_json = json.dumps(bytelevel.pin_specials(spec), ensure_ascii=False)
    plan, names, tag = target_plan(targets, cfg.training_words)
    text = TrainingTexts(texts, plan, lambda lang: f"tokenizer.variant=expanded: no {lang_name(lang)} training text "
                         f"(the {lang_name(lang)} sources yielded nothing)", seed=cfg.seed)
    name = f"{base.name}+{tag}{n}"
    options = {"kind": "expanded-byte-level", "base_sha256": hashlib.sha256(base_json.encode()).hexdigest(),
               "num_new_tokens": n}
    if targets != bytelevel_expand.ARABIC:
        options["targets"] = list(targets)
    folder = Path(cache_dir) / f"{safe_name(name)}-{fingerprint(options, text.fingerprint)}"

    def build() -> None:
        t0 = time.perf_counter()
        read = text.read()
        try:
            merged, stats = bytelevel_expand.expand(base_json, read.lines, n, targets)
        except ValueError as e:
            raise ConfigError(f"tokenizer.base={cfg.base}: {e}") from None
        if stats.added < n:
            words = sum(read.words[c] for c in targets)
            raise ConfigError(f"tokenizer.num_new_tokens={n}: the {names} training text ({words} words) supports only "
                              f"{stats.added} new tokens over {base.name} (no pair occurs twice after that)")
        has_target = target_test(targets)
        english = list(itertools.islice(texts("en"), 2000)) + [t for t in hf_folder.EDGE_CASES if not has_target(t)]
        try:
            checked = bytelevel_expand.check_expansion(base_json, merged, english, sample_lines(read.lines), targets)
        except RuntimeError as e:
            raise ConfigError(f"tokenizer.base={cfg.base}: expansion check failed ({e})") from None
        conf_path = base.path / "tokenizer_config.json"
        conf = {k: v for k, v in json.loads(conf_path.read_text()).items()
                if k.endswith("_token") or k in ("add_bos_token", "add_eos_token")} if conf_path.is_file() else {}
        meta = {**options, "base": base.name, "training_words": read.words, "stats": stats.__dict__, "checked": checked,
                "train_seconds": round(time.perf_counter() - t0, 2)}
        hf_folder.write_json_folder(merged, conf, folder, {"name": name, **meta})
        log.info("tokenizer %s: %d %s tokens (%d merges) appended to %s in %.1fs", name, stats.added, names, stats.merges,
                 base.name, time.perf_counter() - t0)

    if not hf_folder.build_once(folder, f"training tokenizer {name}", build):
        log.info("tokenizer %s: cached at %s", name, folder)
    return load_bundle(folder, name, base=base)
