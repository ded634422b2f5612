"""``cxr_keras.losses.get``: one table of every loss, names resolved by family, values checked
against NumPy formulas written here, every entry serialisable."""

import numpy as np
import pytest

from cxr_keras import losses

from _serialization import round_trip


def test_every_family_is_in_the_one_table():
    assert losses.names("multilabel") == ("multilabel/bce", "multilabel/focal", "multilabel/zlpr",
                                          "multilabel/fzlpr", "multilabel/bfl")
    assert len(losses.names("segmentation")) == 5
    assert len(losses.names("multiclass")) == 12  # the multi-loss paper's 12 losses
    assert len(losses.LOSSES) == 22


def test_short_names_work_where_one_family_has_them():
    assert type(losses.get("fzlpr", tau=0.3)).__name__ == "FZLPR"
    assert losses.get("fzlpr", tau=0.3).tau == 0.3
    assert type(losses.get("tversky")).__name__ == "TverskyLoss"
    assert type(losses.get("bfl")).__name__ == "BiasedFocalLoss"
    assert losses.get("cal_cce").name == "cal_cce"


@pytest.mark.parametrize("name", ["bce", "focal"])
def test_ambiguous_names_ask_for_the_family(name):
    with pytest.raises(ValueError, match=f"multilabel/{name}.*segmentation/{name}"):
        losses.get(name)


def test_unknown_names_and_options_are_named():
    with pytest.raises(ValueError, match="'zlrp'.*multilabel/zlpr"):
        losses.get("zlrp")
    with pytest.raises(TypeError, match="gama"):
        losses.get("multiclass/focal", gama=2.0)


def test_values_against_numpy():
    rng = np.random.default_rng(0)
    y = (rng.random((4, 3)) < 0.5).astype("float32")
    z = rng.normal(size=(4, 3)).astype("float32")
    p = 1 / (1 + np.exp(-z))
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert float(losses.get("multilabel/bce")(y, z)) == pytest.approx(bce, rel=1e-5)
    assert float(losses.get("segmentation/bce")(y, p)) == pytest.approx(bce, rel=1e-4)
    # ZLPR (tau = 1): log(1 + sum_neg e^s) + log(1 + sum_pos e^-s), averaged over rows
    zlpr = np.mean([np.log1p(np.exp(zi[yi == 0]).sum()) + np.log1p(np.exp(-zi[yi == 1]).sum())
                    for yi, zi in zip(y, z)])
    assert float(losses.get("zlpr")(y, z)) == pytest.approx(zlpr, rel=1e-5)
    q = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    onehot = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    cce = -np.mean(np.log((q * onehot).sum(1)))
    assert float(losses.get("multiclass/cce")(onehot, q)) == pytest.approx(cce, rel=1e-5)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_every_loss_round_trips(name):
    loss = losses.get(name)
    back = round_trip(loss)
    rng = np.random.default_rng(1)
    if name.startswith("multiclass/"):
        y = np.eye(3, dtype="float32")[[0, 2, 1, 1]]
        p = rng.dirichlet(np.ones(3), 4).astype("float32")
    elif name.startswith("segmentation/"):
        y = (rng.random((2, 8, 8, 1)) < 0.4).astype("float32")
        p = rng.uniform(0.05, 0.95, (2, 8, 8, 1)).astype("float32")
    else:
        y = (rng.random((4, 5)) < 0.4).astype("float32")
        p = rng.normal(size=(4, 5)).astype("float32")
    assert float(back(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-6)
