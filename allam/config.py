"""Typed schemas for every config key, registered in Hydra's ConfigStore.

conf/config.yaml starts its defaults list with ``allam_schema`` so every group file is merged
onto a typed node: an unknown key or a wrong type fails at compose time. Range and choice
checks that a type cannot express live in :func:`validate`, which run.py calls before any
work starts. Every error is one line naming the key, the value and what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


class ConfigError(ValueError):
    """A config that is known to be wrong. The message is one line: key, value, what is allowed."""


# --------------------------------------------------------------------------- enums
class Attention(str, Enum):
    auto = "auto"
    xformers = "xformers"
    sdpa = "sdpa"
    eager = "eager"


class InitName(str, Enum):
    random = "random"
    llama2 = "llama2"


class NewEmbeddings(str, Enum):
    subtoken_mean = "subtoken_mean"
    mean = "mean"
    random = "random"


class TokenizerVariant(str, Enum):
    base = "base"
    expanded = "expanded"
    bilingual = "bilingual"


class Lang(str, Enum):
    ar = "ar"
    en = "en"


class SourceKind(str, Enum):
    natural = "natural"
    translated = "translated"


class OptimName(str, Enum):
    adamw = "adamw"
    adamw8bit = "adamw8bit"


class Schedule(str, Enum):
    cosine = "cosine"
    constant = "constant"


class LoggerName(str, Enum):
    csv = "csv"
    wandb = "wandb"
    none = "none"


# --------------------------------------------------------------------------- groups
@dataclass
class ModelConfig:
    """Llama shape. Group `model`: tiny, 1b, 7b, 13b, 70b."""

    name: str = "tiny"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: Optional[int] = None  # None: same as num_heads (no grouped-query attention)
    intermediate_size: int = 688
    seq_len: int = 256  # training context; also max_position_embeddings of a fresh model
    max_position_embeddings: Optional[int] = None  # None: seq_len
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # vocabulary rows of a fresh model; None: the tokenizer's size padded to a multiple of 64.
    # Published shapes set it (Llama-2: 32000) so plan mode needs no tokenizer.
    vocab_size: Optional[int] = None
    pad_vocab_to: int = 64
    tie_embeddings: bool = False
    attention: Attention = Attention.auto
    gradient_checkpointing: bool = False
    hf_id: Optional[str] = None  # the published checkpoint of this shape, if any (default init.checkpoint)


@dataclass
class InitConfig:
    """Group `init`: random (from scratch) or llama2 (continue from a Hugging Face Llama)."""

    name: InitName = InitName.random
    std: float = 0.02
    scaled_residual: bool = True  # residual projections (o_proj, down_proj) get std / sqrt(2 * layers)
    seed: int = 1234
    checkpoint: Optional[str] = None  # hub id or local folder (init=llama2)
    local_files_only: bool = False  # True: never contact the hub, only local folders and cache
    new_embeddings: NewEmbeddings = NewEmbeddings.subtoken_mean
    embedding_warmup_tokens: int = 0


@dataclass
class TokenizerConfig:
    """Group `tokenizer`: base, expanded, bilingual.

    `base` names the base tokenizer: `auto` (the init checkpoint's own tokenizer when init
    loads one, otherwise `english8k`), `english8k` (the project's English SentencePiece BPE,
    trained offline on the English training sources), `mistral7b` (the 32,000-piece
    Mistral-7B-v0.1 SentencePiece model shipped in mistral-common), or a path to a
    SentencePiece .model file / Hugging Face tokenizer folder / hub id.
    """

    variant: TokenizerVariant = TokenizerVariant.base
    base: str = "auto"
    english_vocab_size: int = 8192  # size of the offline english8k base
    num_new_tokens: int = 16000  # expanded: Arabic pieces appended to the base
    vocab_size: int = 64000  # bilingual: size of the from-scratch tokenizer
    training_words: Optional[int] = None  # cap on words of training text read (None: all)
    seed: int = 0


@dataclass
class SourceConfig:
    """One data source. `loader`: demo | text | jsonl | parquet | hf."""

    lang: Lang = MISSING
    kind: SourceKind = SourceKind.natural
    loader: str = "demo"
    path: Optional[str] = None  # demo source name, file path / glob, or HF dataset name
    text_field: str = "text"
    split: Optional[str] = None  # HF datasets split
    weight: Optional[float] = None  # relative weight within its (lang, kind) stream; None: by size
    # cleaning
    nfc: bool = True
    strip_diacritics: bool = False
    strip_tatweel: bool = False
    strip_bidi: bool = False
    min_chars: int = 20
    max_wrong_script: float = 0.5  # drop a document whose share of the other script's letters exceeds this
    dedup: bool = True
    skip_bad_utf8: bool = False  # False: a non-UTF-8 file is an error naming file and byte offset
    pair_field: Optional[str] = None  # translated jsonl/parquet/hf sources: field with the English original (parallel_pairs)


@dataclass
class StageConfig:
    tokens: Optional[int] = None  # None: until the end of training (last stage only)
    ar_ratio: float = 0.45
    translated_share: Optional[float] = None


@dataclass
class DataConfig:
    """Group `data`: sources and the language mix."""

    name: str = "demo"
    # name -> SourceConfig. Typed Any so a source can be added from the command line
    # (`+data.sources.NAME={lang: ar, loader: jsonl, path: ...}`); validate() checks each entry
    # against SourceConfig and fills its defaults.
    sources: dict[str, Any] = field(default_factory=dict)
    ar_ratio: float = 0.45  # fraction of training tokens that are Arabic
    translated_share: Optional[float] = None  # fraction of Arabic tokens from translated sources; None: by size
    stages: list[StageConfig] = field(default_factory=list)  # empty: one stage with ar_ratio/translated_share
    parallel_pairs: bool = False  # emit translated documents as aligned English+Arabic pairs
    batch_size: int = 8  # sequences per device per step
    num_workers: int = 0
    # held-out text scored per language, as whole documents chosen by bytes, so runs with different
    # tokenizers are scored on the same text (0: all held-out text)
    val_bytes: int = 65536
    allow_repeat: bool = True  # a source may be repeated (epochs > 1) to meet its quota
    seed: int = 1234
    allow_fingerprint_change: bool = False  # resume even if the data fingerprint differs from the checkpoint's


@dataclass
class OptimConfig:
    """Group `optim`: adamw, adamw8bit; LR schedule fields."""

    name: OptimName = OptimName.adamw
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    schedule: Schedule = Schedule.cosine
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr


@dataclass
class TrainerConfig:
    """Group `trainer`: cpu, gpu, ddp, fsdp, ..."""

    name: str = "cpu"
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed... (Lightning strategy names)
    precision: str = "32-true"
    max_tokens: int = 262144  # training budget in tokens (sets max_steps)
    max_steps: Optional[int] = None  # overrides max_tokens when set
    accumulate_grad_batches: int = 1
    val_every_steps: Optional[int] = None  # None: validate at the end only
    log_every_n_steps: int = 10
    checkpoint_every_steps: Optional[int] = None  # None: only the final checkpoint
    compile: bool = False
    peak_tflops: Optional[float] = None  # device peak for MFU; None: looked up (GPU) or measured (CPU)
    seed: int = 1234
    deterministic: bool = False
    progress_bar: bool = True


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.csv
    project: str = "allam"
    entity: Optional[str] = None
    mode: str = "offline"  # wandb mode: offline unless the user asks for online
    tags: list[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    root: str = str(ROOT)
    cache_dir: str = "${oc.env:ALLAM_CACHE,${paths.root}/.cache}"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class AllamConfig:
    task: str = "train"  # train | plan | tokenizer-report | export | report
    ckpt: Optional[str] = None  # checkpoint for resume / export
    report_dir: Optional[str] = None  # task=report: a folder of runs (e.g. a multirun sweep dir)
    export: bool = True  # export a Hugging Face folder at the end of training
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="allam_schema", node=AllamConfig)


register()


# --------------------------------------------------------------------------- validation
TASKS = ("train", "plan", "tokenizer-report", "export", "report")
GROUPS = ("model", "init", "tokenizer", "data", "optim", "trainer", "logger", "paths", "experiment")


def group_choices(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value}: {allowed}")


def _unit(key: str, value: Optional[float]) -> None:
    if value is not None and not (0.0 <= float(value) <= 1.0):
        _fail(key, value, "must be a fraction in [0, 1]")


def _positive(key: str, value: Optional[int], allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        _fail(key, value, "must be " + ("non-negative" if allow_zero else "positive"))


def _source(name: str, node: Any) -> DictConfig:
    """One data source checked against SourceConfig, with its defaults filled in."""
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

    key = f"data.sources.{name}"
    if not isinstance(node, (dict, DictConfig)):
        _fail(key, node, "must be a mapping of SourceConfig fields (lang, kind, loader, path, ...)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SourceConfig), node)
        lang = merged.lang  # MISSING unless given
    except ConfigKeyError as exc:
        bad = str(exc).split("'")[1] if "'" in str(exc) else "?"
        raise ConfigError(f"{key}.{bad}: no such key; allowed: " + ", ".join(SourceConfig.__dataclass_fields__))
    except MissingMandatoryValue:
        raise ConfigError(f"{key}.lang: missing; allowed: ar, en")
    except ValidationError as exc:
        field_name = getattr(exc, "key", None) or "?"
        first = str(exc).strip().splitlines()[0]
        _fail(f"{key}.{field_name}", getattr(exc, "value", "?"), first)
    del lang
    return merged


def _check_keys(cfg: DictConfig) -> None:
    """Keys added with '+' bypass the schema's struct check; a misspelled one must still fail."""
    schema = OmegaConf.structured(AllamConfig)
    for key in cfg:
        if key not in schema:
            raise ConfigError(f"{key}: no such key; allowed: {', '.join(str(k) for k in schema)}")
        if isinstance(schema[key], DictConfig):
            for sub in cfg[key]:
                if sub not in schema[key]:
                    allowed = ", ".join(str(k) for k in schema[key])
                    raise ConfigError(f"{key}.{sub}: no such key in {key}; allowed: {allowed}")


def validate(cfg: DictConfig) -> None:
    """Checks a composed config before anything is built (and fills each data source's defaults).
    Raises ConfigError (one line)."""
    _check_keys(cfg)
    m, d, o, t, tok, ini = cfg.model, cfg.data, cfg.optim, cfg.trainer, cfg.tokenizer, cfg.init
    if cfg.task not in TASKS:
        _fail("task", cfg.task, "allowed: " + ", ".join(TASKS))
    _unit("data.ar_ratio", d.ar_ratio)
    _unit("data.translated_share", d.translated_share)
    for i, st in enumerate(d.stages):
        _unit(f"data.stages.{i}.ar_ratio", st.ar_ratio)
        _unit(f"data.stages.{i}.translated_share", st.translated_share)
        if st.tokens is None and i != len(d.stages) - 1:
            _fail(f"data.stages.{i}.tokens", None, "only the last stage may leave tokens unset")
        _positive(f"data.stages.{i}.tokens", st.tokens)
    for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "seq_len"):
        _positive(f"model.{key}", m[key])
    if m.hidden_size % m.num_heads:
        _fail("model.hidden_size", m.hidden_size, f"must be divisible by model.num_heads={m.num_heads}")
    kv = m.num_kv_heads or m.num_heads
    if m.num_heads % kv:
        _fail("model.num_kv_heads", kv, f"must divide model.num_heads={m.num_heads}")
    if m.max_position_embeddings is not None and m.seq_len > m.max_position_embeddings:
        _fail("model.seq_len", m.seq_len, f"must be <= model.max_position_embeddings={m.max_position_embeddings}")
    _positive("data.batch_size", d.batch_size)
    _positive("data.val_bytes", d.val_bytes, allow_zero=True)
    _positive("data.num_workers", d.num_workers, allow_zero=True)
    _positive("trainer.max_tokens", t.max_tokens)
    _positive("trainer.max_steps", t.max_steps)
    _positive("trainer.accumulate_grad_batches", t.accumulate_grad_batches)
    if o.lr <= 0:
        _fail("optim.lr", o.lr, "must be positive")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        _fail("optim.betas", list(o.betas), "must be two numbers in [0, 1)")
    _unit("optim.min_lr_ratio", o.min_lr_ratio)
    _positive("optim.warmup_steps", o.warmup_steps, allow_zero=True)
    _positive("tokenizer.num_new_tokens", tok.num_new_tokens)
    _positive("tokenizer.vocab_size", tok.vocab_size)
    _positive("tokenizer.english_vocab_size", tok.english_vocab_size)
    _positive("init.embedding_warmup_tokens", ini.embedding_warmup_tokens, allow_zero=True)
    if ini.std <= 0:
        _fail("init.std", ini.std, "must be positive")
    if ini.name == InitName.llama2 and not ini.checkpoint:
        _fail(
            "init.checkpoint",
            None,
            f"init=llama2 needs a checkpoint (hub id or local folder); model={m.name} has no published one",
        )
    if ini.name == InitName.llama2 and tok.variant == TokenizerVariant.bilingual:
        _fail("tokenizer", "bilingual", "a vocabulary trained from scratch does not fit a checkpoint's embeddings; "
              "with init=llama2 use tokenizer=base or tokenizer=expanded")
    if t.precision not in ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true"):
        _fail("trainer.precision", t.precision, "allowed: 32-true, bf16-mixed, bf16-true, 16-mixed, 16-true")
    for name in list(d.sources):
        d.sources[name] = src = _source(name, d.sources[name])
        if src.loader not in ("demo", "text", "jsonl", "parquet", "hf"):
            _fail(f"data.sources.{name}.loader", src.loader, "allowed: demo, text, jsonl, parquet, hf")
        _unit(f"data.sources.{name}.max_wrong_script", src.max_wrong_script)
    stages = list(d.stages) or [d]
    if any(st.ar_ratio > 0 for st in stages) and d.sources and not any(s.lang == Lang.ar for s in d.sources.values()):
        _fail("data.ar_ratio", max(st.ar_ratio for st in stages), "is above 0 but data.sources has no Arabic source")
    if any(st.ar_ratio < 1 for st in stages) and d.sources and not any(s.lang == Lang.en for s in d.sources.values()):
        _fail("data.ar_ratio", min(st.ar_ratio for st in stages), "is below 1 but data.sources has no English source")


def to_dict(cfg: DictConfig) -> dict:
    """Plain, resolved dict (enums as their values) for results.json and loggers."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


# --------------------------------------------------------------------------- compose errors
def _allowed_keys(node_path: str) -> str:
    schema = OmegaConf.structured(AllamConfig)
    node = OmegaConf.select(schema, node_path) if node_path else schema
    if isinstance(node, DictConfig):
        return ", ".join(str(k) for k in node.keys())
    return ""


def explain_compose_error(exc: BaseException) -> str:
    """Turns a Hydra/OmegaConf composition error into one line: key, value, what is allowed."""
    import re

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
        name = key.split(".")[2]
        return (f"{key}: no such key, or no source '{name}'; a source's keys: "
                f"{', '.join(SourceConfig.__dataclass_fields__)}; add a source with "
                f"+data.sources.{name}={{lang: ar, loader: jsonl, path: ...}}")
    if key and ("not in" in detail or "Could not override" in text or "Key '" in detail):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = _allowed_keys(parent)
        return f"{key}: no such key{' in ' + parent if parent else ''}; allowed: {allowed}"
    mvals = re.search(r"expected one of \[(.*?)\]", ctext)
    if key and mvals:
        return f"{key}={value}: allowed: {mvals.group(1)}"
    if key:
        return f"{key}={value}: {detail}"
    return " ".join(text.split())[:300]
