"""Typed schemas for every config key, registered in Hydra's ConfigStore.

conf/config.yaml starts its defaults list with ``allam_schema`` so every group file is merged
onto a typed node: an unknown key or a wrong type fails at compose time. Range and choice
checks that a type cannot express live in :mod:`allam.config.rules`. The data group's schema lives in
:mod:`allam.config.data_schema` (re-exported here); the choice base class in :mod:`allam.config.strenum`.

Choices are :class:`StrEnum` members: they compare equal to their value, print as their value
and serialize as their value, so no module unwraps them by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from hydra.core.config_store import ConfigStore

from allam.config.data_schema import (  # noqa: F401  (re-exported: the data group's schema lives there)
    CLEANING,
    HOLD_OUT,
    READER,
    DataConfig,
    PrepareConfig,
    PrepareExecutor,
    SourceConfig,
    SourceKind,
    StageConfig,
    source_defaults,
    source_fields,
)
from allam.config.strenum import StrEnum

ROOT = Path(__file__).resolve().parent.parent.parent
SEED_KEYS = ("trainer.seed", "init.seed", "data.seed")  # what changes between the seeds of one experiment
CONF_DIR = ROOT / "conf"
# what `task=` may name; allam.tasks runs each as the module allam.tasks.<name, "-" as "_">
TASKS = ("train", "plan", "prepare", "tokenizer-report", "export", "report", "eval", "generate")


# --------------------------------------------------------------------------- enums
class Attention(StrEnum):
    auto = "auto"
    xformers = "xformers"
    sdpa = "sdpa"
    eager = "eager"


class InitName(StrEnum):
    random = "random"
    pretrained = "pretrained"  # a Hugging Face checkpoint of an allowlisted architecture
    llama2 = "llama2"  # ALLaM's name for the same thing: continue from Llama-2


def is_pretrained(name) -> bool:
    """Whether init `name` continues from a checkpoint (pretrained, or its alias llama2)."""
    return name in (InitName.pretrained, InitName.llama2)


class Arch(StrEnum):
    """Decoder architectures a run can build or continue from (Hugging Face ``model_type``)."""

    llama = "llama"
    mistral = "mistral"
    qwen2 = "qwen2"
    qwen3 = "qwen3"
    gemma = "gemma"
    gemma3_text = "gemma3_text"


class NewEmbeddings(StrEnum):
    subtoken_mean = "subtoken_mean"
    mean = "mean"
    random = "random"


class TokenizerVariant(StrEnum):
    base = "base"
    expanded = "expanded"
    bilingual = "bilingual"


class OptimName(StrEnum):
    adamw = "adamw"
    adamw8bit = "adamw8bit"


class Schedule(StrEnum):
    cosine = "cosine"
    constant = "constant"


class Checkpointing(StrEnum):
    none = "none"
    selective = "selective"
    full = "full"


class CrossEntropy(StrEnum):
    auto = "auto"
    chunked = "chunked"
    fused = "fused"
    plain = "plain"


class LoggerName(StrEnum):
    csv = "csv"
    wandb = "wandb"
    none = "none"


# --------------------------------------------------------------------------- groups
@dataclass
class ModelConfig:
    """Decoder shape. Group `model`: tiny, micro (tests), 1b, 7b, 13b, 70b (Llama-2), llama3_8b, qwen2_5_7b, mistral_nemo_12b."""

    name: str = "tiny"
    arch: Arch = Arch.llama  # Hugging Face model_type; init=pretrained checks it against the checkpoint's
    head_dim: Optional[int] = None  # None: hidden_size / num_heads (Mistral-Nemo: 128 with 5120 / 32)
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
    # recompute decoder layers in the backward instead of keeping their activations:
    # none; selective: the even-numbered layers (0, 2, 4, ...); full: every layer
    activation_checkpointing: Checkpointing = Checkpointing.none
    hf_id: Optional[str] = None  # the published checkpoint of this shape, if any (default init.checkpoint)


@dataclass
class InitConfig:
    """Group `init`: random (from scratch) or pretrained (continue from a Hugging Face checkpoint of
    an allowlisted architecture; `llama2` is ALLaM's name for it)."""

    name: InitName = InitName.random
    std: float = 0.02
    scaled_residual: bool = True  # residual projections (o_proj, down_proj) get std / sqrt(2 * layers)
    seed: int = 1234
    checkpoint: Optional[str] = None  # hub id or local folder (init=pretrained / llama2)
    local_files_only: bool = False  # True: never contact the hub, only local folders and cache
    new_embeddings: NewEmbeddings = NewEmbeddings.subtoken_mean
    # the output head's new rows when they should differ from the input embedding's (None: as
    # new_embeddings), e.g. subtoken_mean inputs with mean output rows; an untied model only
    new_output_embeddings: Optional[NewEmbeddings] = None
    embedding_warmup_tokens: int = 0


@dataclass
class TokenizerConfig:
    """Group `tokenizer`: base, mistral, expanded, expanded8k, expanded32k, bilingual (conf/tokenizer/).

    `base` names the base tokenizer: `auto` (the init checkpoint's own tokenizer when init
    loads one, otherwise `english8k`), `english8k` (the project's English SentencePiece BPE,
    trained offline on the English training sources), `mistral7b` (the 32,000-piece
    Mistral-7B-v0.1 SentencePiece model shipped in mistral-common), `tekken`, `qwen`, `gpt2` (the
    byte-level BPE bases shipped in packages), or a path to a SentencePiece .model file / Hugging
    Face tokenizer folder / hub id.
    """

    variant: TokenizerVariant = TokenizerVariant.base
    base: str = "auto"
    english_vocab_size: int = 8192  # size of the offline english8k base
    base_ar_share: float = 0.0  # english8k: Arabic share of its training words (0: English only; english_base: 0.01)
    # english8k: share of its training words per other language, e.g. {hi: 0.01} (empty: {ar: base_ar_share})
    base_mix: dict[str, float] = field(default_factory=dict)
    num_new_tokens: int = 16000  # expanded: Arabic pieces appended to the base
    vocab_size: int = 64000  # bilingual: size of the from-scratch tokenizer
    # words of training text the tokenizer learns from, split evenly among its languages (an
    # expansion's targets; bilingual: its targets and English): a seeded sample, streamed in bounded
    # memory, of each language's whole training text (allam.tokenizer.spm.TrainingText); text below
    # the cap is used whole. None: all of it, in memory.
    training_words: Optional[int] = 100_000_000
    seed: int = 0


@dataclass
class OptimConfig:
    """Group `optim`: adamw, adamw8bit, allam_constant, toy_constant, rewarm_cosine (conf/optim/); LR schedule fields."""

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
    """Group `trainer`: cpu, gpu (one GPU, or DDP), fsdp (conf/trainer/)."""

    name: str = "cpu"
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed... (Lightning strategy names)
    precision: str = "32-true"
    max_tokens: Optional[int] = 262144  # pretraining budget in tokens (sets max_steps); null under sft/dpo (their group unsets it)
    max_steps: Optional[int] = None  # overrides max_tokens when set
    accumulate_grad_batches: int = 1
    val_every_steps: Optional[int] = None  # None: validate at the end only
    log_every_n_steps: int = 10
    checkpoint_every_steps: Optional[int] = None  # None: only the final checkpoint
    compile: bool = False  # torch.compile each decoder layer (the FSDP2 unit) on its own
    # the training loss (head matmul + cross-entropy): auto (fused where Liger Kernel runs, else
    # chunked); chunked: plain PyTorch, one chunk of tokens' logits at a time, never the full
    # [batch, seq, vocab] logits or their fp32 copy; fused: Liger Kernel's fused linear + CE;
    # plain: full logits upcast to fp32
    cross_entropy: CrossEntropy = CrossEntropy.auto
    cross_entropy_chunk: int = 1024  # tokens per chunk of the chunked cross-entropy
    peak_tflops: Optional[float] = None  # device peak for MFU; None: looked up (GPU) or measured (CPU)
    seed: int = 1234
    deterministic: bool = False
    progress_bar: bool = True


class NonFinite(StrEnum):
    stop = "stop"
    skip = "skip"


class Resume(StrEnum):
    auto = "auto"
    never = "never"


@dataclass
class TrainConfig:
    """What the training step does beyond the model and optimizer (`train.*`)."""

    # a non-finite loss or gradient norm: stop (one line naming the step and the last good
    # checkpoint) or skip the optimizer step (counted, up to max_nonfinite_skips)
    nonfinite: NonFinite = NonFinite.stop
    max_nonfinite_skips: int = 10


@dataclass
class RunConfig:
    """How a run treats its run directory (`run.*`)."""

    # auto: a run directory holding checkpoints resumes from its newest valid one;
    # never: refuse a run directory that already holds a run
    resume: Resume = Resume.auto
    # refuse a configuration the plan says cannot fit the device's memory (GPU, or host RAM on CPU)
    memory_check: bool = True


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.csv
    project: str = "allam"
    entity: Optional[str] = None
    mode: str = "offline"  # wandb mode: offline unless the user asks for online
    tags: list[str] = field(default_factory=list)
    # W&B run name and group; None: from the command's overrides (Hydra's override_dirname), the
    # group without the seed keys, so the seeds of one sweep cell land in one group
    run_name: Optional[str] = None
    group: Optional[str] = None


@dataclass
class EvalConfig:
    """Group `eval`: demo (the offline bilingual suite built from held-out text), competence and
    competence_<code> (the language-competence tier), paper (the paper's benchmarks). Every suite is lm-evaluation-harness tasks (allam/eval/harness.py)."""

    name: str = "demo"
    tasks: list[str] = field(default_factory=list)  # lm-evaluation-harness task or group names
    num_fewshot: dict[str, int] = field(default_factory=dict)  # task -> few-shot examples (absent: 0)
    at_end: bool = False  # evaluate the final model at the end of training (results.json eval.*)
    every_tokens: Optional[int] = None  # also every N training tokens, logged as eval/<task>/acc
    limit: Optional[int] = None  # score only the first N items of each task (a quick look, not a result)
    batch_size: int = 16
    # context in tokens; None: the model's max_position_embeddings (raised for an answer that is longer)
    max_length: Optional[int] = None
    seed: int = 1234  # demo suite: which held-out items, in what order, and where the answers sit
    data_dir: Optional[str] = None  # local copies of hub datasets, read as <data_dir>/<dataset_path>


@dataclass
class GenerateConfig:
    """How task=generate samples (`generate.*`; the prompt is the top-level `prompt`)."""

    max_new_tokens: int = 128  # stop after this many new tokens (or earlier at the end-of-text token)
    temperature: float = 0.7  # 0: greedy (the most likely token each step); above 0: sample from softmax(logits / T)
    top_p: float = 0.9  # nucleus sampling: draw only from the smallest set of tokens whose probability reaches top_p (1: all)
    seed: int = 1234  # seeds torch before sampling: the same seed gives the same text
    # auto: one user message through the tokenizer's chat template when it has one, else plain
    # text; true: the template (one-line error when the tokenizer has none); false: plain text
    chat: Union[bool, str] = "auto"


class ObjectiveName(StrEnum):
    pretrain = "pretrain"  # next-token loss on packed blocks of the data group's sources
    sft = "sft"  # supervised fine-tuning on chat rows, loss on the assistant tokens only
    dpo = "dpo"  # direct preference optimization on (prompt, chosen, rejected) rows


class PreferenceLoss(StrEnum):
    sigmoid = "sigmoid"  # DPO (Rafailov et al. 2023), with conservative label smoothing
    ipo = "ipo"  # IPO (Azar et al. 2023)


@dataclass
class ObjectiveConfig:
    """Group `objective`: what the trainer optimizes (pretrain, sft, dpo). sft and dpo read chat or
    preference data (allam.data.chat) instead of the data group's sources."""

    name: ObjectiveName = ObjectiveName.pretrain
    # sft/dpo training data: a JSONL/parquet file, a folder or glob of them, or `demo` (the offline
    # translation sets, written once into <paths.cache_dir>/post_training by allam.data.chat_demo)
    train: Optional[str] = None
    # sft/dpo held-out data, the same forms; None: no post-training validation; auto (the sft and dpo
    # groups' value): the demo's held-out set when train is demo, none for other training data
    val: Optional[str] = None
    epochs: int = 1  # passes over the training examples (sets the steps unless trainer.max_steps is set)
    max_examples: Optional[int] = None  # use only the first N training examples (None: all); a quick run
    beta: float = 0.1  # dpo: scale of the implicit reward beta * (log pi - log pi_ref)
    label_smoothing: float = 0.0  # dpo, sigmoid loss: probability the preference label is wrong (cDPO)
    loss_type: PreferenceLoss = PreferenceLoss.sigmoid  # dpo: sigmoid (DPO) or ipo


POST_VAL_AUTO = "auto"


def post_validation(objective):
    """The held-out data post-training scores (``objective.val``; None: none): ``auto`` (the
    sft/dpo groups' default) is the demo's held-out set when ``objective.train`` is ``demo`` and
    none for any other training data, so one's own training file is never scored on the demo's."""
    val = objective.get("val") if hasattr(objective, "get") else getattr(objective, "val", None)
    if val is not None and str(val) == POST_VAL_AUTO:
        train = objective.get("train") if hasattr(objective, "get") else getattr(objective, "train", None)
        return "demo" if train is not None and str(train) == "demo" else None
    return val


@dataclass
class PathsConfig:
    root: str = str(ROOT)
    cache_dir: str = "${oc.env:ALLAM_CACHE,${paths.root}/.cache}"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class AllamConfig:
    task: str = "train"  # a name from TASKS above (train, plan, prepare, tokenizer-report, export, report, eval, generate)
    ckpt: Optional[str] = None  # checkpoint for resume / export; task=eval, generate: also a run dir or Hugging Face folder
    prompt: Optional[str] = None  # task=generate: the text to continue, or the user message under a chat template
    report_dir: Optional[str] = None  # task=report: a folder of runs (e.g. a multirun sweep dir)
    report_mix_commits: bool = False  # task=report: let one claim arm hold runs from different git commits
    export: bool = True  # export a Hugging Face folder at the end of training
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="allam_schema", node=AllamConfig)


register()


