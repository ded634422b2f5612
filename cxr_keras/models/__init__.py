"""Model builders (keras.ops / keras.layers only)."""

from cxr_keras.models._densenet import densenet
from cxr_keras.models._efficientnet import efficientnet
from cxr_keras.models.backbones import multiscale_backbone
from cxr_keras.models.contrastive import MoCo, SimCLR
from cxr_keras.models.densenet_fzlpr import (
    FEATURE_LAYER,
    TOP_LAYER_NAMES,
    backbone_layers,
    densenet121_fzlpr,
    set_backbone_trainable,
    top_layers,
)
from cxr_keras.models.efficientnet_unet import (
    DEEPEST_CONV,
    ENSEMBLE_CONV,
    efficientnet_classifier,
    efficientnet_encoder,
    efficientnet_unet,
    model_level_ensemble,
)
from cxr_keras.models.faster_rcnn import FasterRCNN
from cxr_keras.models.mae import DualMaskedAutoencoder, MaskedAutoencoder, random_masking
from cxr_keras.models.mlrfnet import BACKBONES, build_backbone, gradcam_layers, mlrfnet
from cxr_keras.models.res2net import res2net50, resnet50, stage_outputs
from cxr_keras.models.resnet import resnet18, resnet34
from cxr_keras.models.task_heads import task_model
from cxr_keras.models.vit import copy_encoder, vit, vit_small

__all__ = ["densenet", "efficientnet", "densenet121_fzlpr", "set_backbone_trainable", "top_layers", "backbone_layers",
           "TOP_LAYER_NAMES", "FEATURE_LAYER", "efficientnet_unet", "efficientnet_classifier",
           "efficientnet_encoder", "model_level_ensemble", "DEEPEST_CONV", "ENSEMBLE_CONV",
           "mlrfnet", "build_backbone", "gradcam_layers", "BACKBONES", "res2net50", "resnet50",
           "stage_outputs", "resnet18", "resnet34", "vit", "vit_small", "copy_encoder", "MaskedAutoencoder",
           "DualMaskedAutoencoder", "random_masking", "MoCo", "SimCLR",
           "multiscale_backbone", "FasterRCNN", "task_model"]
