"""Typed run configuration: the sections (:mod:`.sections`) and YAML loading (:mod:`.loader`)."""

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
