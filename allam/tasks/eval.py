"""task=eval: score a run, a checkpoint or a Hugging Face folder on an eval suite.

    python run.py task=eval ckpt=outputs/english_base                  # eval=demo, the offline suite
    python run.py task=eval ckpt=outputs/english_base/hf eval=paper eval.data_dir=/data/hub-copies

Reads top to bottom: check the suite (before any model is loaded) -> load the model -> score ->
results.json (``eval.<task>.*``; ``task: eval``, ``source_run`` names the run it scored).
"""
from __future__ import annotations

import time

from omegaconf import DictConfig

from allam import results as R
from allam.config import to_dict, validate
from allam.config.derived import device_type
from allam.config.saved import training_config_for
from allam.tasks.builders import model_source, run_dir, saved_run_tokenizer


def run(cfg: DictConfig) -> dict:
    from allam.eval import harness, load

    validate(cfg)
    t0 = time.perf_counter()
    source = model_source(cfg.ckpt, "eval")
    out = run_dir(cfg)
    plan = harness.prepare(cfg.eval, out)  # one line, before any model is loaded, if the suite cannot run
    model, tokenizer = load.load(source, saved_run_tokenizer(cfg), device_type(cfg.trainer))
    scores = harness.evaluate(model, tokenizer, cfg.eval, plan)
    trained = training_config_for(source.path) if source.run_dir is not None else None
    results = {
        "task": "eval",
        "run_dir": str(out),
        "ckpt": str(source.path),
        "source_run": str(source.run_dir) if source.run_dir is not None else None,
        # the groups of the run it scored (this command's would describe its own defaults, not the model)
        "choices": ((R.read(source.run_dir / R.FILENAME) or {}).get("choices") if source.run_dir is not None
                    else None),
        "eval.suite": str(cfg.eval.name),
        **R.eval_keys(scores),
        "wall_seconds": time.perf_counter() - t0,
        "config": to_dict(trained) if trained is not None else to_dict(cfg),
        "eval_config": to_dict(cfg.eval),
    }
    R.print_eval(results)
    print(f"results: {R.write(out, results)}")
    return results
