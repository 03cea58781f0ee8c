"""task=plan: the model on the meta device, parameters, tokens per step and memory per rank.
Trains and builds nothing and reads no weights (a hub tokenizer's or checkpoint's config may be
fetched to size the vocabulary: allam.model.vocab.planned_vocab)."""
from __future__ import annotations

from omegaconf import DictConfig

from allam.config import TokenizerVariant, is_pretrained, validate
from allam import results as R
from allam.tasks.builders import group_choices, run_dir


def run(cfg: DictConfig) -> dict:
    from allam.model.vocab import planned_vocab
    from allam.tasks.preflight import planned

    validate(cfg)
    vocab, source = planned_vocab(cfg.tokenizer, cfg.model, cfg.init)
    p = planned(cfg, vocab, grows=is_pretrained(cfg.init.name) and cfg.tokenizer.variant == TokenizerVariant.expanded)
    per_example = 2 if str(cfg.objective.name) == "dpo" else 1
    print(f"plan: model={cfg.model.name} init={cfg.init.name} tokenizer={cfg.tokenizer.variant} (vocabulary from {source})")
    for line in p.lines():
        print("  " + line)
    if per_example == 2:
        print("  dpo          2 sequences per pair (chosen, rejected): the micro-batch and tokens/step count both; "
              "logits: the whole micro-batch's (DPO scores pairs from full logits)")
    results = {"task": "plan", "choices": group_choices(cfg), **{f"plan.{k}": v for k, v in p.as_dict().items()}}
    results["model.parameters"] = p.parameters
    R.write(run_dir(cfg), results)  # the run directory says what was planned, as every task's does
    return results
