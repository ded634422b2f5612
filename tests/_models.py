"""Small models shared by the tests."""

import keras


def tiny_backbone(size, channels):
    """A small stand-in for DenseNet121: a 7x7 (at size 28) feature map from a layer named "relu"."""
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", name="stem_conv")(inp)
    x = keras.layers.MaxPooling2D(2, name="stem_pool")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    return keras.Model(inp, x, name="tiny_backbone")
