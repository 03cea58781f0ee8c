"""The config: typed schemas (:mod:`.schema`), the rules a config must satisfy (:mod:`.rules`),
quantities derived from it (:mod:`.derived`) and one-line errors (:mod:`.errors`)."""
from allam.config.errors import ConfigError, RunFailed, explain_compose_error, group_choices
from allam.config.mix_rules import Stage, mix_languages, mix_stages, mix_targets
from allam.config.rules import to_dict, validate
from allam.config.schema import (
    Arch,
    is_pretrained,
    CONF_DIR,
    ROOT,
    AllamConfig,
    Attention,
    DataConfig,
    InitConfig,
    InitName,
    LoggerConfig,
    LoggerName,
    ModelConfig,
    NewEmbeddings,
    NonFinite,
    OptimConfig,
    OptimName,
    PathsConfig,
    Resume,
    RunConfig,
    Schedule,
    SourceConfig,
    SourceKind,
    StageConfig,
    StrEnum,
    TokenizerConfig,
    TokenizerVariant,
    TrainConfig,
    TrainerConfig,
    source_defaults,
    source_fields,
)

__all__ = [
    "CONF_DIR", "ROOT", "AllamConfig", "Arch", "Attention", "ConfigError", "RunFailed", "DataConfig", "InitConfig", "InitName",
    "LoggerConfig", "LoggerName", "ModelConfig", "NewEmbeddings", "NonFinite", "OptimConfig", "OptimName", "PathsConfig",
    "Resume", "RunConfig", "Schedule", "SourceConfig", "SourceKind", "Stage", "StageConfig", "StrEnum", "TokenizerConfig",
    "TokenizerVariant", "TrainConfig", "TrainerConfig", "explain_compose_error", "group_choices", "is_pretrained", "mix_languages", "mix_stages", "mix_targets",
    "source_defaults", "source_fields", "to_dict", "validate",
]
