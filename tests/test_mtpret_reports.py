"""mtpret recipe without training: the paper's tables agree with themselves, the grid report puts
ours beside them, bad arguments are named, the DeepLab-V3 head reads the asked feature map."""

import json

import numpy as np
import pytest

from cxr_keras.io import DataError
from cxr_keras.recipes import mtpret
from cxr_keras.recipes import mtpret_paper as paper


def _cfg(*extra):
    cfg, _ = mtpret.from_command_line(["--quick", "--out", "x", *extra])
    return cfg


def test_paper_tables_are_complete_and_cross_check():
    for bb in paper.BACKBONES:
        assert set(paper.TABLE2[bb]) == set(paper.METHODS)
        for m in paper.METHODS:
            row2, row3, row4 = paper.TABLE2[bb][m], paper.TABLE3[bb][m], paper.TABLE4[bb][m]
            assert set(row2) == set(paper.TASKS)
            assert all(0 < v < 1 for v in list(row2.values()) + list(row3.values()))
            assert row2["lung"] == row3["dice"] and row2["tbx"] == row3["map"]
            assert row2["chexpert"] == row4["Average"]
            obs = [row4[o] for o in paper.CHEXPERT_OBSERVATIONS]
            assert np.mean(obs) == pytest.approx(row4["Average"], abs=1e-4)  # rounded in %
        assert paper.TABLE7[bb]["MTPret"] == paper.TABLE4[bb]["MTPret"]
    assert paper.TABLE2["resnet18"]["MTPret"]["nih"] == 0.7905          # SPEC: 79.05 / 80.06
    assert paper.TABLE2["resnet50"]["MTPret"]["nih"] == 0.8006
    assert sum(paper.SPLITS["tbx"]) == 800 and sum(paper.SPLITS["nih"]) == 112120


def test_every_init_has_a_paper_column_and_each_task_a_reader():
    assert [mtpret.PAPER_NAME[i] for i in mtpret.INITS] == list(paper.METHODS)
    assert set(mtpret.FINETUNE_TASKS) == set(paper.TASKS)  # the seven of Table II
    assert set(mtpret.MULTITASK_TASKS) <= set(mtpret.FINETUNE_TASKS)
    from cxr_keras.data import datasets

    for spec in mtpret.TASKS.values():
        datasets.get(spec.reader)  # raises for an unknown reader


class _Run:
    def __init__(self, m):
        self._m = m

    def metrics(self):
        return self._m


def _metrics(task, init, main, **test):
    return {"task": task, "init": init, "method": mtpret.PAPER_NAME[init], "backbone": "resnet18",
            "main": main, "test": test}


def test_grid_report_puts_ours_beside_the_paper():
    chex = {o: 0.7 + 0.01 * i for i, o in enumerate(paper.CHEXPERT_OBSERVATIONS)}
    runs = [_Run(_metrics("lung", "mtpret", 0.91, dice=0.91, miou=0.88)),
            _Run(_metrics("tbx", "mtpret", 0.42, map=0.42, ap_active=0.8, ap_latent=0.04)),
            _Run(_metrics("chexpert", "mtpret", 0.72, per_class_auc=chex)),
            _Run(_metrics("lung", "scratch", 0.90, dice=0.90, miou=0.87)),
            _Run(_metrics("deepcovid", "mtpret", 0.93, auc=0.93, accuracy=0.9, specificity=0.8,
                          sensitivity=0.7))]
    text = mtpret.grid_report(runs)
    assert "| MTPret | - (0.7905) |" in text           # NIHCC not run: the paper's alone
    assert "0.9100 (0.9537)" in text and "0.9000 (0.9524)" in text   # lung Dice, Table II
    assert "0.8000 (0.6484)" in text                    # AP active, Table III
    assert "Table IV" in text and "Table VII" in text and "MoCo-CXR" in text
    assert text.index("Scratch") < text.index("MTPret |")  # the paper's column order
    assert "0.9300 (0.9994)" in text                    # DeepCovid AUC, Table II
    # Table VI: accuracy, specificity, sensitivity, AUC of ours beside the paper's rows
    assert "| MTPret (ours) | 0.9000 | 0.8000 | 0.7000 | 0.9300 |" in text
    assert "| MTPret | - (0.9971) | - (0.9400) | - (0.9990) | - (0.9994) |" in text
    assert "| MoCo-CXR | - (0.9781) | - (0.9385) | - (0.9790) | - (0.9948) |" in text


def test_deepcovid_report_puts_table_vi_beside_ours():
    m = dict(_metrics("deepcovid", "mtpret", 0.95, auc=0.95, accuracy=0.9, specificity=0.85,
                      sensitivity=0.75), start="x", epochs_trained=3, train_images=20,
             test_images=30)
    text = mtpret.finetune_report(_cfg(), m)
    assert "| auc | 0.9994 | 0.9500 | -0.0494 |" in text
    assert "| accuracy | 0.9971 | 0.9000 | -0.0971 |" in text
    assert "| sensitivity | 0.9990 | 0.7500 | -0.2490 |" in text
    m["method"] = "Scratch"  # Table VI has no Scratch row: our accuracy alone
    assert "| accuracy | - | 0.9000 | - |" in mtpret.finetune_report(_cfg(), m)


def test_md_pretraining_is_table_i_without_held_out_images():
    cfg = _cfg()
    md = mtpret.pretrain_sources(cfg, "md")
    assert sorted(md) == ["indiana", "lung", "montgomery", "mura", "nih", "pneumonia",
                          "rsna_boneage", "shenzhen", "tbx"]
    split = {name: source[2] for name, source in md.items()}
    assert split == {"shenzhen": None, "montgomery": None, "indiana": None,
                     "rsna_boneage": "train", "nih": None, "pneumonia": "train",
                     "mura": "train", "lung": "train", "tbx": "train"}
    assert dict(md["montgomery"][1]) == {"split": "train", "masks": False}
    assert md["pneumonia"][1] == mtpret.TASKS["pneumonia"].options  # the fine-tuning split
    assert list(mtpret.pretrain_sources(cfg, "sd")) == ["nih"]
    cfg.pretrain_nih = "train"
    nih = mtpret.pretrain_sources(cfg, "md")["nih"]
    assert nih == ("nih", mtpret.TASKS["nih"].options, "train")
    assert mtpret.pretrain_config(cfg, "md_moco")["sources"] == sorted(md)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(DataError, match="ImageNet weights"):
        _cfg("--init", "md_moco++")
    with pytest.raises(DataError, match="multiple of 32"):
        _cfg("--set", "image_size=[100,96]")
    with pytest.raises(DataError, match=r"unknown task\(s\) \['covid'\]"):
        mtpret.parse_tasks("lung,covid")
    with pytest.raises(DataError, match="pretrain_nih"):
        _cfg("--set", "pretrain_nih=test")
    with pytest.raises(DataError, match="READER=FOLDER"):
        mtpret.from_command_line(["--roots", "nih"])
    _, opts = mtpret.from_command_line(["--roots", "nih=/a, mura=/b", "--root", "tbx11k=/c"])
    assert opts.roots == {"nih": "/a", "mura": "/b", "tbx11k": "/c"}
    assert str(opts.root("mura")) == "/b"
    with pytest.raises(DataError, match="dataset 'nih' needs the nih folder"):
        cfg, opts = mtpret.from_command_line(["--dataset", "nih", "--out", str(tmp_path)])
        mtpret.reader_root("nih", cfg, opts)


def test_configurations_name_their_source_runs():
    cfg = _cfg()
    mt = mtpret.multitask_config(cfg, "mtpret")
    assert mt["pretrain"]["init"] == "md_moco" and mt["l2sp"] == (0.1, 0.01)
    assert "l2sp" not in mtpret.multitask_config(cfg, "mtpret--")
    cfg.init = "sd_simclr"
    ft = mtpret.finetune_config(cfg)
    assert ft["pretrain"]["init"] == "sd_simclr" and "queue_size" not in ft["pretrain"]
    json.dumps(ft, default=str)


@pytest.mark.parametrize("level, cells", [(-1, (2, 2)), (1, (8, 8))])
def test_deeplab_head_reads_the_asked_feature_map(level, cells):
    from cxr_keras.models import multiscale_backbone, task_model

    backbone = multiscale_backbone("resnet18", input_shape=(64, 64, 3), widths=(4, 8, 8, 8))
    model = task_model(backbone, "segmentation", 1, "seg", rates=(1, 2), filters=8, level=level)
    assert model.output.shape[1:] == (64, 64, 1)
    aspp = model.get_layer("seg_deeplab_aspp0_conv")
    assert tuple(aspp.input.shape[1:3]) == cells


def test_every_config_field_is_reachable_from_the_command_line(tmp_path):
    from dataclasses import asdict, replace

    from cxr_keras.training import config_hash

    for name, value in asdict(mtpret.Config()).items():
        text = json.dumps(list(value) if isinstance(value, tuple) else value)
        got, _ = mtpret.from_command_line(["--set", f"{name}={text}"])
        assert json.dumps(getattr(got, name)) == json.dumps(value), name
    # the shortcuts keep their meaning; a stage's default method when --init is not given
    cfg, _ = mtpret.from_command_line(["--quick", "--init", "sd_moco", "--backbone", "resnet50",
                                       "--rounds", "3", "--pretrain-epochs", "0",
                                       "--finetune-epochs", "4", "--imagenet-weights", "w.h5"])
    assert (cfg.init, cfg.backbone, cfg.rounds, cfg.pretrain_epochs, cfg.finetune_epochs,
            cfg.imagenet_weights) == ("sd_moco", "resnet50", 3, 0, 4, "w.h5")
    assert cfg.queue_size == mtpret.QUICK["queue_size"]                # the preset stands
    assert _cfg("--stage", "pretrain").init == "md_moco"
    assert _cfg("--stage", "multitask").init == "mtpret"
    with pytest.raises(DataError, match="--stage pretrain takes --init"):
        mtpret.pretrain(_cfg("--stage", "pretrain", "--init", "mtpret"), out=tmp_path)
    # the full Config of a fine-tuning folder, read back, names the same folder
    cfg = replace(_cfg("--set", "task=lung", "--seed", "2"), init="md_moco")
    (tmp_path / "recipe_config.json").write_text(json.dumps(asdict(cfg)))
    back, _ = mtpret.from_command_line(["--config", str(tmp_path / "recipe_config.json")])
    assert back == cfg
    assert config_hash(mtpret.finetune_config(back)) == config_hash(mtpret.finetune_config(cfg))


def test_segmentation_loss_is_eq7_mean_of_per_image_dice():
    """Eq. 7 averages 1 - Dice over the images; on this batch the pooled Dice differs."""
    y = np.zeros((2, 4, 4, 1), "float32")
    y[0, :2] = 1.0                       # 8 lung pixels
    y[1, 0, 0] = 1.0                     # 1 lung pixel
    p = np.full((2, 4, 4, 1), 0.1, "float32")
    p[0, :2] = 0.9
    p[1] = 0.6
    logits = np.log(p / (1 - p))
    loss, *_ = mtpret.loss_and_metrics("lung", mtpret.Config(), 1)
    inter, sums = (y * p).sum(axis=(1, 2, 3)), y.sum(axis=(1, 2, 3)) + p.sum(axis=(1, 2, 3))
    per_image = np.mean(1 - (2 * inter + 1) / (sums + 1))
    pooled = 1 - (2 * inter.sum() + 1) / (sums.sum() + 1)
    assert abs(per_image - pooled) > 0.05
    assert float(loss(y, logits)) == pytest.approx(per_image, rel=1e-5)
