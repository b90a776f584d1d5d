"""Typed run configuration: the sections (:mod:`.sections`) and YAML loading (:mod:`.loader`)."""

from ploutos.config.loader import (
    DEFAULT_CONFIG,
    config_hash,
    configs_dir,
    dump,
    field_docs,
    load,
    resolve_path,
    to_dict,
)
from ploutos.config.sections import (
    SECTIONS,
    Config,
    DataConfig,
    EnsembleConfig,
    EnvConfig,
    FeaturesConfig,
    HardwareConfig,
    InvalidValue,
    PaperConfig,
    PPOConfig,
    SlurmConfig,
    WalkForwardConfig,
)

__all__ = [
    "DEFAULT_CONFIG",
    "config_hash",
    "configs_dir",
    "dump",
    "field_docs",
    "load",
    "resolve_path",
    "to_dict",
    "SECTIONS",
    "Config",
    "DataConfig",
    "EnsembleConfig",
    "EnvConfig",
    "FeaturesConfig",
    "HardwareConfig",
    "InvalidValue",
    "PPOConfig",
    "PaperConfig",
    "SlurmConfig",
    "WalkForwardConfig",
]
