"""Losses (keras.ops only, registered serializable under package "cxr_keras")."""

from cxr_keras.losses.ranking import (
    FZLPR, LOSS_NAMES, ZLPR, MaskedBinaryLoss, fzlpr, get_loss,
)

__all__ = ["FZLPR", "ZLPR", "MaskedBinaryLoss", "fzlpr", "get_loss", "LOSS_NAMES"]
