"""Inference helpers: test-time augmentation."""

from cxr_keras.inference.tta import TABLE3_STEPS, VIEWS, TTAPredictor, apply_view, cumulative_means, zoom_images

__all__ = ["TTAPredictor", "cumulative_means", "apply_view", "zoom_images", "VIEWS",
           "TABLE3_STEPS"]
