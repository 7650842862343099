"""Layer 3 (config): one typed dataclass per axis, validated on construction — the experiment and its model
(:mod:`.experiment`), the editor and its training (:mod:`.method`), the options of the methods built from options
alone (:mod:`.options`), the studies' settings (:mod:`.studies`) — and the notebooks' parameters, profiles and shared
command-line options (:mod:`.parameters`)."""
from .experiment import PROFILES, ExperimentConfig, ModelConfig, config_table
from .method import MethodConfig
from .options import OPTIONS, CaliNetConfig, FTLConfig, GraceConfig
from .studies import (PAPER_BALANCED_SIZES, PAPER_TRAIN_SIZES, GradientConfig, MixtureConfig, SearchConfig,
                      SequenceConfig)

__all__ = ["PROFILES", "ExperimentConfig", "ModelConfig", "config_table", "MethodConfig", "OPTIONS", "CaliNetConfig",
           "FTLConfig", "GraceConfig", "PAPER_BALANCED_SIZES", "PAPER_TRAIN_SIZES", "GradientConfig", "MixtureConfig",
           "SearchConfig", "SequenceConfig"]
