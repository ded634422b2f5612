"""dual_mae sweep reports (Table 2, Tables 5-6) from run metrics: means, stds and the paper's
values in the right cells; ImageNet weights chosen per backbone."""

import numpy as np
import pytest

from cxr_keras.io import DataError
from cxr_keras.recipes import dual_mae
from cxr_keras.recipes import dual_mae_paper as paper


class FakeRun:
    def __init__(self, **m):
        self._m = m

    def metrics(self):
        return self._m


def _run(backbone, init, auc, ratio=None, frac=1.0, sens=0.5):
    tm = {"mean": {"sensitivity": sens, "precision": 0.4, "f1": 0.45}}
    return FakeRun(backbone=backbone, init=init, mask_ratio=ratio, label_fraction=frac,
                   test_mean_auc=auc, test_auc={c: auc for c in paper.CLASSES},
                   test_threshold_metrics={"youden_val": tm, "p0.5": tm})


def test_mask_ratio_report_means_over_seeds_beside_the_paper():
    runs = [_run("vit_s", "dual_mae", a, ratio=0.75) for a in (0.70, 0.80)]
    runs.append(_run("vit_s", "mae", 0.61, ratio=0.95))
    text = dual_mae.mask_ratio_report(runs)
    row = next(l for l in text.splitlines() if l.startswith("| dual-MAE (X-ray)"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in next(l for l in text.splitlines()
                                      if l.startswith("| model")).strip("|").split("|")]
    cell = cells[header.index("0.75")]
    assert cell == f"0.750 ({np.std([0.7, 0.8], ddof=1):.3f}, n=2) (0.7520)"
    assert cells[header.index("0.65")] == "- (0.6990)"
    mae = next(l for l in text.splitlines() if l.startswith("| MAE (X-ray)"))
    assert "0.610 (0.000, n=1) (0.7260)" in mae


def test_label_fraction_report_tables_5_and_6():
    runs = [_run("vit_s", "dual_mae", 0.6, frac=0.1, sens=0.3),
            _run("vit_s", "dual_mae", 0.7, frac=0.1, sens=0.5),
            _run("resnet34", "scratch", 0.55, frac=0.5)]
    text = dual_mae.label_fraction_report(runs)
    t5, t6 = text.split("Table 6")
    row10 = next(l for l in t5.splitlines() if l.startswith("| 10%"))
    assert "0.650 (0.071) (0.6200)" in row10 and "0.400 (0.141)" in row10
    resnet = next(l for l in t6.splitlines() if l.startswith("| ResNet-34 (random)"))
    assert "0.550 (0.000, n=1) (0.6390)" in resnet


def test_imagenet_weights_per_backbone():
    cfg = dual_mae.Config(imagenet_weights="vit_s=a.weights.h5,resnet34=b.weights.h5")
    assert dual_mae.imagenet_weights(cfg) == "a.weights.h5"
    cfg.backbone = "resnet34"
    assert dual_mae.imagenet_weights(cfg) == "b.weights.h5"
    cfg.imagenet_weights = "vit_s=a.weights.h5"
    with pytest.raises(DataError, match="no file for resnet34"):
        dual_mae.imagenet_weights(cfg)
    cfg.imagenet_weights = "one.weights.h5"
    assert dual_mae.imagenet_weights(cfg) == "one.weights.h5"


def test_the_tested_model_is_the_final_one_unless_best_val_is_asked(tmp_path):
    """The paper tests the model after fine-tuning; best.keras (best validation epoch) only with
    --select best_val."""
    from types import SimpleNamespace

    import keras

    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    model.set_weights([np.full((2, 1), 1.0), np.zeros(1)])
    model.save(tmp_path / "best.keras")                            # best validation epoch
    model.set_weights([np.full((2, 1), 2.0), np.zeros(1)])
    model.save_weights(tmp_path / "finetune.weights.h5")           # after the last epoch
    run_dir = SimpleNamespace(checkpoints=tmp_path)
    x = np.ones((1, 2), "float32")
    cfg, _ = dual_mae.from_command_line(["--quick"])
    assert cfg.select == "final"
    assert float(dual_mae.tested_model(cfg, run_dir)(x)[0, 0]) == 4.0
    cfg, _ = dual_mae.from_command_line(["--quick", "--select", "best_val"])
    assert float(dual_mae.tested_model(cfg, run_dir)(x)[0, 0]) == 2.0
    assert dual_mae.from_command_line(["--set", "select=best_val"])[0].select == "best_val"
    with pytest.raises(DataError, match="select must be"):
        dual_mae.from_command_line(["--set", "select=last"])


@pytest.mark.parametrize("decay_all", [False, True])
def test_weight_decay_on_biases_only_with_decay_all(decay_all):
    """MAE's convention: no weight decay on vectors (biases, norms); decay_all=True decays every
    weight, the paper's "weight decay of 0.05" read literally. A zero gradient leaves AdamW's
    decoupled decay alone: w <- w (1 - 0.05 lr)."""
    import keras

    cfg = dual_mae.Config(decay_all=decay_all)
    opt = dual_mae.optimizer(0.1, steps_per_epoch=10, epochs=1, warmup=0, cfg=cfg)
    dense = keras.layers.Dense(2, bias_initializer="ones")
    dense.build((None, 3))
    kernel = np.asarray(dense.kernel)
    opt.apply_gradients([(np.zeros((3, 2), "float32"), dense.kernel),
                         (np.zeros(2, "float32"), dense.bias)])
    np.testing.assert_allclose(np.asarray(dense.kernel), kernel * 0.995, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dense.bias), 0.995 if decay_all else 1.0, rtol=1e-6)
