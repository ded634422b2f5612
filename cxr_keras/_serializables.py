"""Every module that registers Keras serialisables (layers, losses, models, initialisers,
schedules, optimisers, regularisers). ``import cxr_keras`` imports this, so that
``keras.saving.load_model`` finds our objects without a further import."""

from . import layers, losses, models, regularizers  # noqa: F401
from .layers import roi_align  # noqa: F401
from .training import cyclic_cosine, layer_decay  # noqa: F401
