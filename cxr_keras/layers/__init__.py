"""Custom layers (keras.ops only, registered serializable under package "cxr_keras")."""

from cxr_keras.layers.batch_norm import FusedBatchNormalization
from cxr_keras.layers.csra import CSRA
from cxr_keras.layers.eca import ECA
from cxr_keras.layers.raw_image import RawImagePreprocessing

__all__ = ["CSRA", "ECA", "FusedBatchNormalization", "RawImagePreprocessing"]
