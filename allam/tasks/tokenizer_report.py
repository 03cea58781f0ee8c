"""task=tokenizer-report: fertility of tokenizer variants on the configured sources' held-out text
of every language of the mix (table, JSON and PNG in the run dir).

Compares the run's own tokenizer with the offline SentencePiece bases (english8k, mistral7b), the
shipped byte-level BPE bases (tekken; qwen and gpt2 where their packages are installed), their
expansions (with tokenizer.num_new_tokens new pieces) and the bilingual tokenizer
(tokenizer.vocab_size), all trained on the configured sources' training text exactly as a
training run would.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from allam import results as R
from allam.config import ConfigError, mix_languages, validate
from allam.tasks.builders import build_tokenizer, group_choices, run_dir

VARIANTS = (
    {"variant": "base", "base": "english8k"},
    {"variant": "base", "base": "mistral7b"},
    {"variant": "expanded", "base": "english8k"},
    {"variant": "expanded", "base": "mistral7b"},
    {"variant": "bilingual"},
)
# byte-level BPE bases (Mistral-Nemo's Tekken, Qwen, GPT-2) and their expansions, where installed
BYTE_LEVEL = tuple({"variant": v, "base": b} for b in ("tekken", "qwen", "gpt2") for v in ("base", "expanded"))


def run(cfg: DictConfig) -> dict:
    from allam.data.source_texts import SourceTexts
    from allam.tokenizer import fertility_report

    validate(cfg)
    bundles = [build_tokenizer(cfg)]
    from allam.tokenizer.bytelevel import SHIPPED

    skipped = {}
    for spec in VARIANTS + tuple(v for v in BYTE_LEVEL if SHIPPED[v["base"]].path() is not None):
        try:
            bundle = build_tokenizer(cfg, OmegaConf.merge(cfg.tokenizer, spec))
        except ConfigError as e:  # a comparison that cannot be built here (e.g. a base already holding the language)
            what = " ".join(f"{k}={v}" for k, v in spec.items())
            skipped[what] = str(e)
            print(f"tokenizer-report: skipped {what}: {e}")
            continue
        if bundle.name not in {b.name for b in bundles}:
            bundles.append(bundle)
    present = {str(cfg.data.sources[n].lang) for n in cfg.data.sources}
    langs = [code for code in mix_languages(cfg.data) if code in present]
    report = fertility_report(bundles, run_dir(cfg), SourceTexts(cfg.data.sources, "val"), langs=langs)
    results = {"task": "tokenizer-report", "choices": group_choices(cfg), "tokenizers": report, "skipped": skipped}
    print(f"results: {R.write(run_dir(cfg), results)}")
    return results
