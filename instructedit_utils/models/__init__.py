"""Layer 2 (models): loading models offline (:mod:`.loading`), the paper's metrics on a model (:mod:`.metrics`),
forward passes split at an edited block (:mod:`.forward`), the matrices an editor edits and their gradient factors
(:mod:`.targets`) and weight deltas applied and taken back (:mod:`.deltas`). Imports only
:mod:`instructedit_utils.util`."""
from .loading import ARCHITECTURES, MODEL_PRESETS, arch_spec, load_model

__all__ = ["ARCHITECTURES", "MODEL_PRESETS", "arch_spec", "load_model"]
