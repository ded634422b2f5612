"""cxr-keras: Keras 3 reproductions of five chest X-ray deep-learning papers."""

__version__ = "0.1.0"
