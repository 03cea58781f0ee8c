"""Post-training data: chat and preference rows, read, checked, tokenized with the chat template,
and padded into batches.

Row formats (JSONL lines, parquet rows or Hugging Face dataset rows):

- chat: ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}``
- preference: ``{"prompt": str | messages, "chosen": str, "rejected": str}`` (a string prompt is one
  user turn; a messages prompt ends with a user turn)

Other fields are ignored. A source is a ``data.sources``-style mapping (``loader`` jsonl | parquet
| hf, ``path``, ``split``, ``skip_bad_utf8``) and its files resolve as pretraining sources do
(:func:`allam.data.source_files.resolve_files`: a file, a folder or a glob); :func:`file_source` makes
one from a path. A preference file given where chat data is expected, or the reverse, is a
one-line ConfigError naming the file and what was expected; so is a row that is not JSON or lacks
the kind's fields.

Rows that cannot train are dropped and counted, one reason each (:data:`REASONS`): a message that
is not a ``{"role", "content"}`` pair of strings, a role other than system/user/assistant, turns out
of order (an optional system turn first, then user and assistant alternating, ending with an
assistant answer), no assistant turn, an empty answer, chosen equal to rejected, and (when
tokenized) an example longer than the context. :meth:`Rows.report` logs one line per reason, once,
before training starts (allam.data.post_datamodule.load_examples calls it).

Tokenization: the chat template (:mod:`allam.tokenizer.chat_template`) renders the conversation and
marks the assistant turns; ``apply_chat_template(..., return_assistant_tokens_mask=True)`` gives the
loss mask from those marks (token offsets against the template's spans), so labels come from the
template, never from a search for the answer's string. Labels sit at the positions of the tokens
they label (the loss shifts them, as Hugging Face causal LMs do); every other position is -100.

Truncation rule: none. An example longer than ``max_length`` tokens (SFT: the whole conversation;
preference: the prompt plus the longer of its two answers) is dropped and counted, so no answer is
cut and no prompt loses its start.

Batches are padded, not packed: :func:`collate_sft` and :func:`collate_preferences` right-pad to
the batch's longest sequence with the tokenizer's pad id (its eos id when it has no pad token),
labels -100 and attention mask 0 on padding, so no example attends to another.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from allam.config import ConfigError
from allam.data import source_files, sources

log = logging.getLogger("allam")

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100
REASONS = {
    "malformed": "a message or field that is not text (messages need string role and content)",
    "unknown_role": "a role other than system, user, assistant",
    "turn_order": "turns out of order (an optional system turn, then user and assistant alternating, ending with an answer)",
    "no_assistant": "no assistant turn",
    "empty_answer": "an empty answer",
    "same_answers": "chosen equal to rejected",
    "too_long": "longer than the context",
}
CHAT_FIELDS = ("messages",)
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
_KIND_TEXT = {"chat": "chat data (rows of 'messages')", "preference": "preference data (rows of 'prompt', 'chosen', 'rejected')"}


@dataclass
class Rows:
    """What a reader kept, and how many rows it dropped for each reason."""

    kind: str  # "chat" | "preference"
    name: str
    rows: list = field(default_factory=list)  # chat: messages lists; preference: (prompt messages, chosen, rejected)
    dropped: Counter = field(default_factory=Counter)
    read: int = 0
    examples: Optional[int] = None  # rows that became examples, once tokenized (_tokenize)
    unused: int = 0  # kept rows never tokenized: an example limit was reached first

    def report(self) -> list[str]:
        """One line per drop reason (logged as warnings), after a line with the totals: once
        tokenized, kept + dropped (+ unused, under an example limit) = read."""
        kept = len(self.rows) if self.examples is None else self.examples
        unused = f", {self.unused} not used (the example limit)" if self.unused else ""
        lines = [f"{self.kind} data {self.name}: kept {kept} of {self.read} rows{unused}"]
        lines += [f"{self.kind} data {self.name}: dropped {n} rows: {REASONS[r]}" for r, n in sorted(self.dropped.items()) if n]
        log.info(lines[0])
        for line in lines[1:]:
            log.warning(line)
        return lines


# --------------------------------------------------------------------------- reading rows
def file_source(path: str | Path, loader: Optional[str] = None, split: Optional[str] = None) -> dict:
    """A source mapping for a file, folder or glob; the loader follows the extension unless given:
    .parquet (a file or glob), a saved dataset folder (hf), a folder of .parquet files and no
    .jsonl/.json (the Hub's layout, e.g. data/train-00000-of-00002.parquet): parquet; otherwise jsonl."""
    p = Path(str(path)).expanduser()
    if loader is None:
        if str(path).endswith(".parquet"):
            loader = "parquet"
        elif p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            loader = "hf"
        elif p.is_dir() and _only_parquet(p):
            loader = "parquet"
        else:
            loader = "jsonl"
    return {"loader": loader, "path": str(path), "split": split}


def _only_parquet(folder: Path) -> bool:
    names = [f.name for f in folder.rglob("*") if f.is_file()]
    return any(n.endswith(".parquet") for n in names) and not any(n.endswith((".jsonl", ".json")) for n in names)


def _raw_rows(name: str, src: Any) -> Iterator[tuple[str, str, Any]]:
    """(file, where, row) of a jsonl, parquet or hf source, in file order."""
    src = sources.source_values(src)
    loader = src["loader"]
    if loader == "hf":
        ds = source_files.hf_dataset(name, src)
        for i, row in enumerate(ds):
            yield str(src["path"]), f"{src['path']} row {i}", row
        return
    if loader not in ("jsonl", "parquet"):
        raise ConfigError(f"data.sources.{name}.loader={loader}: chat and preference data read jsonl, parquet or hf")
    for f in source_files.resolve_files(name, src):
        if loader == "parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(f)
            except OSError as e:
                raise source_files.unreadable(name, f, e) from None
            for batch in pf.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    yield str(f), str(f), row
            continue
        try:
            for lineno, row in sources.json_rows(name, f, bool(src["skip_bad_utf8"]), [0]):
                yield str(f), f"{f} line {lineno}", row
        except sources.BadUtf8 as e:
            raise ConfigError(f"data.sources.{name}: {e} (set data.sources.{name}.skip_bad_utf8=true to skip such lines)") from None
        except sources.Unreadable as e:
            raise source_files.unreadable(name, e.path, e.exc) from None


def _check_kind(name: str, file: str, where: str, row: Any, kind: str) -> None:
    """One-line ConfigError for a row of the other kind, or one without the kind's fields."""
    if not isinstance(row, dict):
        raise ConfigError(f"data.sources.{name}: {where} is not a JSON object; expected {_KIND_TEXT[kind]}")
    need, other = (CHAT_FIELDS, PREFERENCE_FIELDS) if kind == "chat" else (PREFERENCE_FIELDS, CHAT_FIELDS)
    missing = [k for k in need if k not in row]
    if not missing:
        return
    if all(k in row for k in other):
        theirs = "preference" if kind == "chat" else "chat"
        raise ConfigError(f"data.sources.{name}.path={file}: holds {_KIND_TEXT[theirs]}, but {_KIND_TEXT[kind]} is expected")
    raise ConfigError(f"data.sources.{name}: {where} has no {', '.join(repr(k) for k in missing)}; expected {_KIND_TEXT[kind]}")


def check_messages(messages: Any, final: str = "assistant") -> Optional[str]:
    """Why a conversation cannot train (a :data:`REASONS` key), or None. ``final`` is the role the
    conversation must end with: "assistant" for chat rows, "user" for a preference prompt."""
    if not isinstance(messages, list) or not messages:
        return "malformed"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages):
        return "malformed"
    roles = [m["role"] for m in messages]
    if any(r not in ROLES for r in roles):
        return "unknown_role"
    if final == "assistant" and "assistant" not in roles:
        return "no_assistant"
    if any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
        return "empty_answer"
    turns = roles[1:] if roles[0] == "system" else roles
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    if not turns or turns != expected or turns[-1] != final:
        return "turn_order"
    return None


def read_chat(name: str, src: Any) -> Rows:
    """The chat rows of a source that can train (messages lists), and the counts of those dropped."""
    out = Rows("chat", name)
    for file, where, row in _raw_rows(name, src):
        _check_kind(name, file, where, row, "chat")
        out.read += 1
        why = check_messages(row["messages"])
        if why:
            out.dropped[why] += 1
        else:
            out.rows.append([{"role": m["role"], "content": m["content"]} for m in row["messages"]])
    return out


def read_preferences(name: str, src: Any) -> Rows:
    """The preference rows of a source that can train, as (prompt messages, chosen, rejected), and
    the counts of those dropped."""
    out = Rows("preference", name)
    for file, where, row in _raw_rows(name, src):
        _check_kind(name, file, where, row, "preference")
        out.read += 1
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        why = check_messages(prompt, final="user")
        if why is None and not (isinstance(chosen, str) and isinstance(rejected, str)):
            why = "malformed"
        if why is None and not (chosen.strip() and rejected.strip()):
            why = "empty_answer"
        if why is None and chosen.strip() == rejected.strip():
            why = "same_answers"
        if why:
            out.dropped[why] += 1
        else:
            out.rows.append(([{"role": m["role"], "content": m["content"]} for m in prompt], chosen, rejected))
    return out


# --------------------------------------------------------------------------- tokenizing
def require_chat_template(tokenizer, what: str = "chat data") -> None:
    """One-line ConfigError when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(f"tokenizer {name}: has no chat template, which {what} needs (a tokenizer the project builds "
                          "has one; a foreign one needs chat_template.jinja in its folder)")


def _rendered(tokenizer, messages: list) -> tuple[list[int], list[int]]:
    """Token ids of the conversation and the template's assistant mask (1 on answer tokens)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if not any(mask):
        raise ConfigError(f"tokenizer {tokenizer.name_or_path}: its chat template marks no assistant tokens; it needs "
                          "{% generation %}...{% endgeneration %} around assistant turns (allam.tokenizer.chat_template)")
    return ids, mask


def sft_example(tokenizer, messages: list, max_length: Optional[int] = None) -> Optional[dict]:
    """``{"input_ids", "labels"}`` of one conversation: labels are the ids on the template's
    assistant tokens (each answer and the eos that closes it) and -100 elsewhere. None when longer
    than ``max_length``."""
    ids, mask = _rendered(tokenizer, messages)
    if max_length is not None and len(ids) > max_length:
        return None
    return {"input_ids": ids, "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]}


def preference_example(tokenizer, prompt: list, chosen: str, rejected: str, max_length: Optional[int] = None) -> Optional[dict]:
    """Chosen and rejected sequences that share the rendered prompt: ``chosen_input_ids``,
    ``chosen_labels``, ``rejected_input_ids``, ``rejected_labels`` and ``prompt_length`` (the tokens
    of the prompt rendered with ``add_generation_prompt=True``, identical at the start of both).
    Labels only on the final answer's assistant tokens. None when the prompt plus the longer answer
    exceeds ``max_length``."""
    prompt_ids = list(tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True,
                                                    add_generation_prompt=True)["input_ids"])
    n = len(prompt_ids)
    out: dict = {"prompt_length": n}
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        ids, mask = _rendered(tokenizer, [*prompt, {"role": "assistant", "content": answer}])
        if ids[:n] != prompt_ids:
            raise ConfigError(f"tokenizer {tokenizer.name_or_path}: the chat template's prompt is not a token prefix of "
                              "prompt + answer, so chosen and rejected cannot share it")
        out[f"{side}_input_ids"] = ids
        out[f"{side}_labels"] = [t if (m and i >= n) else IGNORE_INDEX for i, (t, m) in enumerate(zip(ids, mask))]
    if max_length is not None and max(len(out["chosen_input_ids"]), len(out["rejected_input_ids"])) > max_length:
        return None
    return out


def _tokenize(rows: Rows, make, limit: Optional[int]) -> list[dict]:
    """make(row) for the kept rows until `limit` examples (None: all); a row make() finds longer
    than the context (None) is counted in rows.dropped."""
    examples, used = [], 0
    for row in rows.rows:
        if limit is not None and len(examples) >= limit:
            break
        used += 1
        ex = make(row)
        if ex is None:
            rows.dropped["too_long"] += 1
        else:
            examples.append(ex)
    rows.examples, rows.unused = len(examples), len(rows.rows) - used
    return examples


def tokenize_sft(tokenizer, rows: Rows, max_length: Optional[int] = None, limit: Optional[int] = None) -> list[dict]:
    """SFT examples of kept chat rows (tokenized only until `limit` are kept, when set); those
    longer than the context are counted in rows.dropped."""
    require_chat_template(tokenizer, "supervised fine-tuning")
    return _tokenize(rows, lambda messages: sft_example(tokenizer, messages, max_length), limit)


def tokenize_preferences(tokenizer, rows: Rows, max_length: Optional[int] = None,
                         limit: Optional[int] = None) -> list[dict]:
    """Preference examples of kept rows (tokenized only until `limit` are kept, when set); those
    longer than the context are counted in rows.dropped."""
    require_chat_template(tokenizer, "preference tuning")
    return _tokenize(rows, lambda row: preference_example(tokenizer, *row, max_length), limit)


def load_sft(name: str, src: Any, tokenizer, max_length: Optional[int] = None) -> tuple[list[dict], Rows]:
    """Reads and tokenizes a chat source; prints the kept and dropped counts once."""
    rows = read_chat(name, src)
    examples = tokenize_sft(tokenizer, rows, max_length)
    rows.report()
    return examples, rows


def load_preferences(name: str, src: Any, tokenizer, max_length: Optional[int] = None) -> tuple[list[dict], Rows]:
    """Reads and tokenizes a preference source; prints the kept and dropped counts once."""
    rows = read_preferences(name, src)
    examples = tokenize_preferences(tokenizer, rows, max_length)
    rows.report()
    return examples, rows


# --------------------------------------------------------------------------- batches (padding, not packing)
def pad_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's pad token, else its eos (padding is masked either way)."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ConfigError(f"tokenizer {tokenizer.name_or_path}: has neither a pad nor an eos token to pad batches with")
    return int(pid)


def _pad(seqs: list[list[int]], value: int, length: int):
    import torch

    return torch.tensor([list(s) + [value] * (length - len(s)) for s in seqs], dtype=torch.long)


def collate_sft(batch: list[dict], pad: int) -> dict:
    """Right-pads SFT examples to the longest in the batch: input_ids (pad id), labels (-100),
    attention_mask (0 on padding)."""
    length = max(len(ex["input_ids"]) for ex in batch)
    ids = [ex["input_ids"] for ex in batch]
    return {"input_ids": _pad(ids, pad, length), "labels": _pad([ex["labels"] for ex in batch], IGNORE_INDEX, length),
            "attention_mask": _pad([[1] * len(s) for s in ids], 0, length)}


def collate_preferences(batch: list[dict], pad: int) -> dict:
    """Right-pads chosen and rejected sequences to the longest of either in the batch, so they can
    be stacked into one forward pass: ``chosen_*`` and ``rejected_*`` input_ids, labels,
    attention_mask."""
    length = max(len(ex[f"{s}_input_ids"]) for ex in batch for s in ("chosen", "rejected"))
    out = {}
    for s in ("chosen", "rejected"):
        ids = [ex[f"{s}_input_ids"] for ex in batch]
        out[f"{s}_input_ids"] = _pad(ids, pad, length)
        out[f"{s}_labels"] = _pad([ex[f"{s}_labels"] for ex in batch], IGNORE_INDEX, length)
        out[f"{s}_attention_mask"] = _pad([[1] * len(x) for x in ids], 0, length)
    return out
