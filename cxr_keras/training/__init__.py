"""Shared training layer: run folders, runtime set-up, staged resumable fitting, schedules."""

from .coupled_sgd import CoupledDecaySGD
from .fit import BestCheckpoint, EpochReseed, StopOnNaN, TrainingDiverged, fit_stage, read_history
from .layer_decay import LayerDecayAdamW, vit_layer_multipliers
from .run_folder import RunFolder, config_hash
from .runtime import Runtime, configure

__all__ = ["BestCheckpoint", "EpochReseed", "StopOnNaN", "TrainingDiverged", "fit_stage",
           "read_history", "RunFolder", "config_hash", "Runtime", "configure",
           "LayerDecayAdamW", "vit_layer_multipliers", "CoupledDecaySGD"]
