"""A ``keras.Model`` whose ``call`` returns its own loss terms (shared by the MAEs, MoCo and Faster
R-CNN): ``fit`` minimises ``y_pred["total"]`` and logs every term."""

import keras
from keras import ops


class LossTermsModel(keras.Model):
    """A model whose ``call`` returns its loss terms: the loss is ``y_pred[total_key]`` (plus any
    added losses) and every tracker in ``self.loss_trackers`` logs ``y_pred[name]``."""

    total_key = "total"

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = y_pred[self.total_key]
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for k, tracker in self.loss_trackers.items():
            tracker.update_state(y_pred[k])
        return super().compute_metrics(x, y, y_pred, sample_weight)
