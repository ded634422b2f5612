"""Losses (keras.ops only, registered serializable under package "cxr_keras"); ``get(name)`` finds
any of them by name (:mod:`cxr_keras.losses.registry`)."""

from cxr_keras.losses.biased_focal import BiasedFocalLoss, biased_focal_loss
from cxr_keras.losses.calibrated import (
    CLASSIFICATION_LOSSES,
    CalibratedLoss,
    EntropyRegularizer,
    LabelSmoothedLoss,
    NegativeEntropyCrossentropy,
    calibration_difference,
    get_classification_loss,
)
from cxr_keras.losses.ranking import FZLPR, LOSS_NAMES, ZLPR, MaskedBinaryLoss, fzlpr, get_loss
from cxr_keras.losses.registry import LOSSES, get, names
from cxr_keras.losses.segmentation import (
    SEGMENTATION_LOSSES,
    BCEDiceLoss,
    DiceLoss,
    FocalTverskyLoss,
    TverskyLoss,
    get_segmentation_loss,
)

__all__ = ["get", "names", "LOSSES", "FZLPR", "ZLPR", "MaskedBinaryLoss", "fzlpr", "get_loss", "LOSS_NAMES",
           "SEGMENTATION_LOSSES", "DiceLoss", "BCEDiceLoss", "TverskyLoss", "FocalTverskyLoss",
           "get_segmentation_loss", "CLASSIFICATION_LOSSES", "CalibratedLoss",
           "EntropyRegularizer", "LabelSmoothedLoss", "NegativeEntropyCrossentropy",
           "calibration_difference", "get_classification_loss",
           "BiasedFocalLoss", "biased_focal_loss"]
