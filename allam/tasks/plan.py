"""task=plan: the model on the meta device, parameters, tokens per step and memory per rank.
Trains, builds and downloads nothing."""
from __future__ import annotations

from omegaconf import DictConfig

from allam.config import TokenizerVariant, is_pretrained, validate
from allam.config.derived import tokens_per_step, world_size
from allam.tasks.builders import group_choices


def run(cfg: DictConfig) -> dict:
    from allam.model.plan import make_plan
    from allam.model.vocab import planned_vocab

    validate(cfg)
    vocab, source = planned_vocab(cfg.tokenizer, cfg.model, cfg.init)
    p = make_plan(cfg.model, cfg.trainer, batch_size=cfg.data.batch_size, optimizer=cfg.optim.name,
                  vocab_size=vocab, world=world_size(cfg.trainer),
                  tokens_per_step=tokens_per_step(cfg.data, cfg.model, cfg.trainer),
                  grows=is_pretrained(cfg.init.name) and cfg.tokenizer.variant == TokenizerVariant.expanded)
    print(f"plan: model={cfg.model.name} init={cfg.init.name} tokenizer={cfg.tokenizer.variant} (vocabulary from {source})")
    for line in p.lines():
        print("  " + line)
    results = {"task": "plan", "choices": group_choices(cfg), **{f"plan.{k}": v for k, v in p.as_dict().items()}}
    results["model.parameters"] = p.parameters
    return results
