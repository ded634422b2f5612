"""Run a model over a whole batched ``tf.data`` dataset, or pick some of its rows."""

from __future__ import annotations

import numpy as np


def predict_dataset(model, ds, dtype=np.float32):
    """Model outputs and targets (None when the dataset has none) of a whole unshuffled dataset,
    in order. A short last batch is padded to the batch size, so that it does not trace the
    predict function again."""
    outs, ys, size = [], [], None
    for batch in ds:
        x, y = batch if isinstance(batch, tuple) else (batch, None)
        x = np.asarray(x)
        n = len(x)
        size = size or n
        if n < size:
            x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])
        outs.append(np.asarray(model.predict_on_batch(x), dtype)[:n])
        if y is not None:
            ys.append(np.asarray(y))
    return np.concatenate(outs), (np.concatenate(ys) if ys else None)


def gather_rows(ds, wanted) -> dict:
    """The (preprocessed) inputs of the dataset's rows whose running number is in ``wanted``,
    as ``{row: array}``; only those rows are kept in memory."""
    wanted, picked, start = set(int(i) for i in wanted), {}, 0
    for batch in ds:
        x = np.asarray(batch[0] if isinstance(batch, tuple) else batch)
        for j in range(len(x)):
            if start + j in wanted:
                picked[start + j] = x[j]
        start += len(x)
    return picked
