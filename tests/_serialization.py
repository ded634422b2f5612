"""Serialisation round trips, one helper for every test file.

``round_trip(obj)``: a layer, loss, regulariser or schedule through Keras' JSON config and back
with ``safe_mode=True``; the copy must be of the same class with the same ``get_config()``.
``reload_keras_file(model, path)``: save a ``.keras`` file and load it back (``safe_mode=True``);
``reload_in_fresh_process(path, x)``: load it in a new Python that imports only ``cxr_keras`` and
return its outputs on ``x``.
"""

import json
import subprocess
import sys

import keras
import numpy as np


def round_trip(obj):
    config = keras.saving.serialize_keras_object(obj)
    json.dumps(config)  # the config must be plain JSON
    back = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert type(back) is type(obj), (type(back), type(obj))
    assert back.get_config() == obj.get_config()
    return back


def reload_keras_file(model, path, compile=True):
    model.save(path)
    return keras.saving.load_model(path, safe_mode=True, compile=compile)


def reload_in_fresh_process(path, x, timeout=300):
    """Outputs of the ``.keras`` file at ``path`` on ``x``, computed in a new process."""
    path = str(path)
    np.save(path + ".x.npy", np.asarray(x))
    code = ("import sys, numpy as np, keras, cxr_keras\n"
            "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
            "y = m.predict(np.load(sys.argv[1] + '.x.npy'), verbose=0)\n"
            "np.save(sys.argv[1] + '.y.npy', keras.tree.flatten(y)[0])\n")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return np.load(path + ".y.npy")
