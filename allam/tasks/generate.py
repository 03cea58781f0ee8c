"""task=generate: talk to a model. Sample from a run, a checkpoint or a Hugging Face folder,
streaming the text to the terminal as the tokens come.

    python run.py task=generate ckpt=outputs/english_base prompt="The kingdom of heaven"
    python run.py task=generate ckpt=outputs/sft/hf prompt="ترجم إلى الإنجليزية: ..." generate.temperature=0

Reads top to bottom: resolve ckpt -> its tokenizer -> the prompt's ids (one user message through
the tokenizer's chat template, or plain text; one line before any model is loaded when chat is
asked of a tokenizer without a template) -> the model -> sample, streaming -> results.json
(``task: generate``; ``source_run`` names the run it sampled).
"""
from __future__ import annotations

import logging
import sys
import time

import torch
from omegaconf import DictConfig, OmegaConf
from transformers.generation.streamers import BaseStreamer

from allam import results as R
from allam.config import ConfigError, to_dict, validate
from allam.config.derived import device_type
from allam.config.saved import training_config_for
from allam.tasks.builders import model_source, run_dir, saved_run_tokenizer

log = logging.getLogger("allam")
CONTEXT_IDS = 8  # prompt ids decoded ahead of the new ones, so the first new word keeps its leading space


def run(cfg: DictConfig) -> dict:
    from allam.eval import load

    validate(cfg)
    t0 = time.perf_counter()
    source = model_source(cfg.ckpt, "generate")
    out = run_dir(cfg)
    tokenizer = load.load_tokenizer(source, saved_run_tokenizer(cfg))
    trained = training_config_for(source.path) if source.run_dir is not None else None
    mode = chat_mode(cfg.generate.chat, trained)
    text_in, ids, chat = prompt_ids(tokenizer, str(cfg.prompt), mode)  # before any model is loaded
    model = load.load_model(source, device_type(cfg.trainer))
    max_new = new_token_budget(model, len(ids), int(cfg.generate.max_new_tokens))
    log.info("generating up to %d tokens from %s (%s, %s)", max_new, source.path,
             "chat template" if chat else "plain text", describe(cfg.generate))
    t1 = time.perf_counter()
    stream = Echo(tokenizer, ids)
    new = sample(model, tokenizer, ids, cfg.generate, max_new, streamer=stream)
    seconds = time.perf_counter() - t1
    text = continuation(tokenizer, ids, new)
    stopped = "end_of_text" if new and new[-1] in stop_ids(model, tokenizer) else "max_new_tokens"
    results = {
        "task": "generate",
        "run_dir": str(out),
        "ckpt": str(source.path),
        "source_run": str(source.run_dir) if source.run_dir is not None else None,
        "prompt": str(cfg.prompt),
        "generate.prompt_text": text_in,
        "generate.chat": chat,
        "generate.prompt_tokens": len(ids),
        "generate.text": text,
        "generate.token_ids": new,
        "generate.tokens": len(new),
        "generate.stopped": stopped,
        "generate.seconds": seconds,
        "generate.tokens_per_second": len(new) / seconds if seconds > 0 else None,
        "wall_seconds": time.perf_counter() - t0,
        "config": to_dict(trained) if trained is not None else to_dict(cfg),
        "generate_config": to_dict(cfg.generate),
    }
    print(f"generated {len(new)} tokens in {seconds:.2f} s ({stopped.replace('_', ' ')})")
    print(f"results: {R.write(out, results)}")
    return results


def describe(gen) -> str:
    if float(gen.temperature) == 0:
        return "greedy"
    return f"temperature {gen.temperature}, top_p {gen.top_p}, seed {gen.seed}"


def chat_mode(chat, trained) -> str:
    """generate.chat as prompt_ids reads it. Every project tokenizer carries the chat template, but
    only a post-trained model has learned it: for one of this project's runs (`trained`: its saved
    config), auto means the template after objective=sft or dpo and plain text after pretraining;
    for a folder from elsewhere, auto means the template when its tokenizer has one."""
    mode = str(chat).lower()
    if mode == "auto" and trained is not None:
        objective = str(OmegaConf.select(trained, "objective.name", default="pretrain"))
        return "auto" if objective in ("sft", "dpo") else "false"
    return mode


def prompt_ids(tokenizer, prompt: str, chat) -> tuple[str, list[int], bool]:
    """(the text the model sees, its token ids, whether the chat template made it). chat=auto uses
    the template when the tokenizer has one; true demands it (ConfigError naming the fix when
    there is none); false sends `prompt` as plain text (with the tokenizer's usual special tokens)."""
    mode = str(chat).lower()
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "true" and not has_template:
        raise ConfigError("generate.chat=true: this tokenizer has no chat template (tokenizer_config.json "
                          "chat_template); use generate.chat=false (or auto) to send the prompt as plain text, "
                          "or a model whose tokenizer ships a template (a post-trained run's export)")
    if mode != "false" and has_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes its own BOS
        used = True
    else:
        text, ids, used = prompt, tokenizer(prompt)["input_ids"], False
    if not ids:
        raise ConfigError(f"prompt={prompt!r}: encodes to no tokens (and this tokenizer adds no BOS); give some text")
    return text, list(ids), used


def new_token_budget(model, prompt_tokens: int, max_new_tokens: int) -> int:
    """max_new_tokens, cut so prompt and answer fit the model's context (max_position_embeddings);
    one line when the prompt alone fills it."""
    context = getattr(model.config, "max_position_embeddings", None)
    if context is None:
        return max_new_tokens
    if prompt_tokens >= context:
        raise ConfigError(f"prompt: {prompt_tokens} tokens, but the model's context is {context} tokens; "
                          "shorten the prompt")
    if prompt_tokens + max_new_tokens > context:
        log.info("generate.max_new_tokens=%d cut to %d: the prompt's %d tokens and the answer fill the "
                 "model's %d-token context", max_new_tokens, context - prompt_tokens, prompt_tokens, context)
    return min(max_new_tokens, context - prompt_tokens)


def stop_ids(model, tokenizer) -> list[int]:
    """The token ids that end a generation: the tokenizer's end-of-text token and any the model's
    generation config names (a chat model's end-of-turn token)."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in configured if isinstance(configured, (list, tuple)) else [configured]:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def sample(model, tokenizer, ids: list[int], gen, max_new_tokens: int, streamer=None) -> list[int]:
    """The new token ids after `ids` (the stop token included when one ended it). temperature 0:
    greedy; otherwise sampled from softmax(logits / temperature) cut to top_p, after
    ``torch.manual_seed(seed)``, so a seed gives the same tokens again. Output rows past the
    tokenizer's last id (vocabulary padding) are never chosen."""
    torch.manual_seed(int(gen.seed))
    if float(gen.temperature) == 0:
        how = {"do_sample": False}
    else:  # top_k=0: no top-k cut on top of top_p (a checkpoint's generation_config may set one)
        how = {"do_sample": True, "temperature": float(gen.temperature), "top_p": float(gen.top_p), "top_k": 0}
    # rows past the tokenizer (the vocabulary padded to a multiple) are no token: never drawn
    rows = model.get_output_embeddings().weight.shape[0]
    if rows > len(tokenizer):
        how["suppress_tokens"] = list(range(len(tokenizer), rows))
    stops = stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    input_ids = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                             eos_token_id=stops or None, pad_token_id=pad, streamer=streamer, **how)
    return out[0, len(ids):].tolist()


def continuation(tokenizer, ids: list[int], new: list[int]) -> str:
    """The text `new` adds after `ids`, special tokens left out. The last prompt ids are decoded
    with it so the first new word keeps the space it starts with."""
    context = list(ids[-CONTEXT_IDS:])
    head = tokenizer.decode(context, skip_special_tokens=True)
    full = tokenizer.decode(context + list(new), skip_special_tokens=True)
    return full[len(head):] if full.startswith(head) else tokenizer.decode(new, skip_special_tokens=True)


class Echo(BaseStreamer):
    """Prints the new text as ``model.generate`` produces it (a transformers streamer). Each step
    decodes all new ids (:func:`continuation`) and prints what was not printed yet, holding back
    an incomplete character (U+FFFD: a multi-byte character whose bytes have not all come), so
    what it prints is the final text whenever decoding more ids never rewrites earlier text."""

    def __init__(self, tokenizer, prompt_ids: list[int], file=None):
        self.tokenizer, self.prompt_ids, self.file = tokenizer, list(prompt_ids), file
        self.new: list[int] = []
        self.printed = ""
        self.prompt_seen = False

    def _show(self, text: str) -> None:
        if text.startswith(self.printed) and len(text) > len(self.printed):
            print(text[len(self.printed):], end="", flush=True, file=self.file or sys.stdout)
            self.printed = text

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate hands the prompt over first
            self.prompt_seen = True
            return
        self.new.extend(value.reshape(-1).tolist())
        self._show(continuation(self.tokenizer, self.prompt_ids, self.new).rstrip("\ufffd"))

    def end(self) -> None:
        self._show(continuation(self.tokenizer, self.prompt_ids, self.new))
        print(file=self.file or sys.stdout, flush=True)
