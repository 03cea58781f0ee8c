"""task=plan: the model on the meta device, parameters, tokens per step and memory per rank.
Trains and builds nothing and reads no weights (a hub tokenizer's or checkpoint's config may be
fetched to size the vocabulary: allam.model.vocab.planned_vocab)."""
from __future__ import annotations

from omegaconf import DictConfig

from allam.config import TokenizerVariant, is_pretrained, validate
from allam.config.derived import tokens_per_step, world_size
from allam import results as R
from allam.tasks.builders import group_choices, run_dir


def run(cfg: DictConfig) -> dict:
    from allam.model.plan import make_plan
    from allam.model.vocab import planned_vocab

    validate(cfg)
    vocab, source = planned_vocab(cfg.tokenizer, cfg.model, cfg.init)
    # a DPO micro-batch holds each pair's chosen and rejected sequences: twice data.batch_size
    # (post-training batches are padded to their longest example: the plan takes model.seq_len)
    per_example = 2 if str(cfg.objective.name) == "dpo" else 1
    p = make_plan(cfg.model, cfg.trainer, batch_size=cfg.data.batch_size * per_example, optimizer=cfg.optim.name,
                  vocab_size=vocab, world=world_size(cfg.trainer),
                  tokens_per_step=tokens_per_step(cfg.data, cfg.model, cfg.trainer) * per_example,
                  grows=is_pretrained(cfg.init.name) and cfg.tokenizer.variant == TokenizerVariant.expanded)
    print(f"plan: model={cfg.model.name} init={cfg.init.name} tokenizer={cfg.tokenizer.variant} (vocabulary from {source})")
    for line in p.lines():
        print("  " + line)
    if per_example == 2:
        print("  dpo          2 sequences per pair (chosen, rejected): the micro-batch and tokens/step count both")
    results = {"task": "plan", "choices": group_choices(cfg), **{f"plan.{k}": v for k, v in p.as_dict().items()}}
    results["model.parameters"] = p.parameters
    R.write(run_dir(cfg), results)  # the run directory says what was planned, as every task's does
    return results
