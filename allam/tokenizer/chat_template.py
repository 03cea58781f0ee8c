"""The project's chat template: set on every tokenizer bundle it builds, shipped in every export.

One Jinja template for every tokenizer kind (SentencePiece base, expanded, bilingual, byte-level).
It uses only the tokenizer's own ``bos_token`` and ``eos_token`` (no new special tokens, so no
vocabulary or embedding changes) and plain-text role markers::

    <bos>[SYS] system text [/SYS][INST] user text [/INST] answer<eos>[INST] next user text [/INST] answer<eos>

Each assistant turn is `` answer<eos>`` inside ``{% generation %}`` … ``{% endgeneration %}``, so
``tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
return_assistant_tokens_mask=True)`` marks exactly the answer tokens and the end-of-sequence that
closes each answer (the loss mask of supervised fine-tuning comes from there, not from a string
search). The answer's leading space belongs to the answer, so a prompt rendered with
``add_generation_prompt=True`` ends at ``[/INST]`` and is a token prefix of the whole conversation
(the model generates the space-led first word, as it was trained to). ``add_generation_prompt``
adds nothing. An unknown role raises. Content is stripped of surrounding whitespace.

Where it lives: :func:`allam.tokenizer.bundle.load_bundle` sets it on every folder the project
builds (the cached folders themselves are not rewritten), and
:func:`allam.tokenizer.bundle.export_tokenizer` writes it into the export as
``chat_template.jinja``, the file ``save_pretrained`` of transformers 5 writes and
``AutoTokenizer.from_pretrained`` reads back. A foreign tokenizer folder or hub tokenizer keeps its
own template, or none.
"""
from __future__ import annotations

from pathlib import Path

TEMPLATE_FILE = "chat_template.jinja"

CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ '[SYS] ' + message['content'] | trim + ' [/SYS]' }}"
    "{%- elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{% generation %}{{ ' ' + message['content'] | trim + eos_token }}{% endgeneration %}"
    "{%- else %}{{ raise_exception('unknown role: ' + message['role'] + ' (allowed: system, user, assistant)') }}"
    "{%- endif %}"
    "{%- endfor %}"
)


def set_chat_template(tokenizer):
    """Sets the project's template on ``tokenizer`` (in memory) and returns it."""
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_chat_template(tokenizer, out_dir: Path) -> Path | None:
    """Writes the tokenizer's template as ``out_dir/chat_template.jinja``; None when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    path = Path(out_dir) / TEMPLATE_FILE
    path.write_text(template, encoding="utf-8")
    return path
