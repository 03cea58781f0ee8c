"""ConfigError, the command line's overrides as Hydra composes them, and the translation of
Hydra/OmegaConf composition errors into one line."""
from __future__ import annotations

import re


class ConfigError(ValueError):
    """A config that is known to be wrong. The message is one line: key, value, what is allowed."""


class RunFailed(RuntimeError):
    """A run that stopped on purpose (non-finite numbers, a refused resume, ...). One line: what
    happened, where, and what to do."""


def group_choices(group: str) -> list[str]:
    """The options of a config group (its YAML files under conf/)."""
    from allam.config.schema import CONF_DIR

    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _allowed_keys(node_path: str) -> str:
    from omegaconf import DictConfig, OmegaConf

    from allam.config.schema import AllamConfig

    schema = OmegaConf.structured(AllamConfig)
    node = OmegaConf.select(schema, node_path) if node_path else schema
    if isinstance(node, DictConfig):
        return ", ".join(str(k) for k in node.keys())
    return ""


def compose_overrides(overrides: list[str]) -> list[str]:
    """The command line's overrides as Hydra should compose them. ``data.sources.NAME.FIELD=V``
    (FIELD a SourceConfig field) becomes ``++data.sources.NAME.FIELD=V``: a source's YAML lists only
    the fields it changes, and Hydra refuses to set any other one without a prefix. A NAME that is
    no source then fails validation (``data.sources.NAME.lang: missing``, naming the sources).
    ``prompt=TEXT`` is taken literally (:func:`literal`) unless TEXT is already a quoted string."""
    from allam.config.schema import SourceConfig

    out = []
    for o in overrides:
        m = re.match(r"data\.sources\.[^.=]+\.(\w+)=", o)
        if o.startswith("prompt="):
            text = o[len("prompt="):]
            quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
            out.append(o if quoted else "prompt=" + literal(text))
        else:
            out.append("++" + o if m and m.group(1) in SourceConfig.__dataclass_fields__ else o)
    return out


def literal(text: str) -> str:
    """`text` as a quoted Hydra override value that composes back to exactly `text`: commas,
    colons, '=', quotes, Arabic letters and ``${...}`` (no interpolation) included."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)  # a quote, and backslashes before it
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)  # no interpolation
    text = re.sub(r"(\\*)\Z", lambda m: m.group(1) * 2, text)  # backslashes before the closing quote
    return "'" + text + "'"


def explain_compose_error(exc: BaseException) -> str:
    """Turns a Hydra/OmegaConf composition error into one line: key, value, what is allowed."""
    from allam.config.schema import SourceConfig

    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    ctext = str(cause) if cause else ""
    m = re.search(r"Could not find '([\w/.-]+)/([\w.-]+)'", text)
    if m:
        group, choice = m.group(1), m.group(2)
        return f"{group}={choice}: no such choice; allowed: {', '.join(group_choices(group))}"
    key = value = None
    m2 = re.search(r"Error merging override ([\w.]+)=(.*)", text)
    if m2:
        key, value = m2.group(1), m2.group(2).strip()
    m3 = re.search(r"Could not override '([\w.]+)'", text)
    if m3:
        key = m3.group(1)
    detail = (ctext or text).strip().splitlines()[0] if (ctext or text).strip() else type(exc).__name__
    if key and key.startswith("data.sources.") and key.count(".") >= 3:
        name, field_name = key.split(".")[2], key.split(".")[3]
        if field_name in SourceConfig.__dataclass_fields__:  # run.py's compose_overrides adds the '++' itself
            return (f"{key}: not in the composed config: no source '{name}', or its YAML leaves {field_name} out "
                    f"(Hydra then sets it only as ++{key}=...; run.py adds the ++ itself); a new source is "
                    f"added with +data.sources.{name}={{lang: ar, loader: jsonl, path: ...}}")
        return (f"{key}: no such key; a source's keys: {', '.join(SourceConfig.__dataclass_fields__)}")
    table = re.match(r"(data\.mix|data\.stages\.\d+\.mix|tokenizer\.base_mix)\b", key or "")
    if table and ("not in struct" in detail or "Could not override" in text):  # a share table: keys are languages
        return (f"{key}: not in the table yet (a language the preset's {table.group(1)} does not name, or no table); "
                f"add it with +{key}=<value>, e.g. +data.mix.hi=0.2 or +data.mix={{ar:0.3,hi:0.2,en:null}} "
                "(a table given to an existing one merges into it, language by language)")
    if key and ("not in" in detail or "Could not override" in text or "Key '" in detail):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = _allowed_keys(parent)
        while parent and not allowed:  # a misspelled group or sub-key: name the first part that does not exist
            parent = parent.rsplit(".", 1)[0] if "." in parent else ""
            allowed = _allowed_keys(parent)
            bad = key[len(parent) + 1:].split(".")[0] if parent else key.split(".")[0]
            if allowed:
                where = f"{parent}.{bad}" if parent else bad
                return f"{key}: no such key '{where}'; allowed{' in ' + parent if parent else ''}: {allowed}"
        return f"{key}: no such key{' in ' + parent if parent else ''}; allowed: {allowed}"
    mvals = re.search(r"expected one of \[(.*?)\]", ctext)
    if key and mvals:
        return f"{key}={value}: allowed: {mvals.group(1)}"
    if key:
        return f"{key}={value}: {detail}"
    return " ".join(text.split())[:300]
