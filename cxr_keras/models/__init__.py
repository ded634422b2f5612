"""Model builders (keras.ops / keras.layers only)."""

from cxr_keras.models.densenet_fzlpr import (
    FEATURE_LAYER, TOP_LAYER_NAMES, backbone_layers, densenet121_fzlpr, set_backbone_trainable,
    top_layers,
)

__all__ = ["densenet121_fzlpr", "set_backbone_trainable", "top_layers", "backbone_layers",
           "TOP_LAYER_NAMES", "FEATURE_LAYER"]
