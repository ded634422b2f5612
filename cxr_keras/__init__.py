"""cxr-keras: Keras 3 reproductions of five chest X-ray deep-learning papers.

Importing the package registers every serialisable layer, loss, model, schedule and regulariser
with Keras, so a saved ``.keras`` file loads after ``import cxr_keras`` alone. Worker processes
(the spawned data-preparation pool) skip that: they never load a model, and Keras costs each of
them seconds and hundreds of MB.
"""

import multiprocessing as _multiprocessing

__version__ = "0.1.0"

if _multiprocessing.current_process().name == "MainProcess":
    from . import _serializables  # noqa: F401
