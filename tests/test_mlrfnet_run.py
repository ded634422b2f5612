"""mlrfnet end to end on phantom NIH (the exact --quick configuration, about 2 min on 2 cores),
plus the pieces around it: the ablation models, CheXpert's uncertainty policies on one cache,
Youden thresholds, the experiment grid, and the recipe's API (every Config field from the command
line, config.json reproducing the run, a finished run returned as it is)."""

import json
from dataclasses import asdict

import numpy as np
import pytest
from _reports import check_calibration, markdown_tables

from cxr_keras.evaluation.metrics import youden_thresholds
from cxr_keras.recipes import mlrfnet


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg, opts = mlrfnet.from_command_line(
        ["--dataset", "phantom", "--quick", "--out", str(out), "--verbose", "0", "--workers", "1",
         "--set", "bootstrap=50", "--set", "latency_images=2", "--test-dataset", "chexpert"])
    return mlrfnet.run(cfg, opts=opts), opts, cfg


def test_run_folder_has_every_artefact(finished_run):
    run, _, _ = finished_run
    for rel in ("config.json", "metrics.json", "report.md", "DONE", "checkpoints/best.keras",
                "predictions/val.npz", "predictions/test.npz", "plots/roc_test.png",
                "plots/training_curves.png", "plots/gradcam_boxes.png", "logs/history_train.csv"):
        assert run.file(rel).exists(), rel
    with np.load(run.file("predictions", "test.npz"), allow_pickle=False) as z:
        assert z["y_true"].shape == z["logits"].shape == (len(z["y_true"]), 14)


def _test_predictions(run, m):
    """Labels and probabilities of the evaluated columns, from predictions/test.npz."""
    from scipy.special import expit

    with np.load(run.file("predictions", "test.npz"), allow_pickle=False) as z:
        cols = [list(z["labels"]).index(k) for k in m["test_auc"]]
        return z["y_true"][:, cols], expit(z["logits"][:, cols])


def test_mean_auc_beats_chance(finished_run):
    """The mean AUC of the saved test predictions (the number metrics.json reports) against a
    permutation null at the test's size: label rows shuffled across images, 200 times."""
    from _baselines import auc_permutation_null, mean_auc, null_summary, permutation_p

    run, _, _ = finished_run
    m = json.loads(run.file("metrics.json").read_text())
    y, prob = _test_predictions(run, m)
    observed = mean_auc(y, prob)
    assert observed == pytest.approx(m["test_mean_auc"], abs=1e-12)
    null = auc_permutation_null(y, prob, n=200, seed=0)
    # measured on 139 test images: 0.74 (seed 0, as here), 0.75 (seed 1), 0.84 (seed 0, oneDNN
    # on); null mean 0.50, 99th percentile 0.57-0.59, p = 1/201
    assert observed > np.percentile(null, 99) and permutation_p(observed, null) < 0.01, (
        null_summary(observed, null), m["test_auc"])


def test_mean_auc_interval_is_the_documented_bootstrap(finished_run):
    """test_mean_auc_ci95 is the 2.5 and 97.5 percentiles of the mean AUC over cfg.bootstrap
    resamples of the test rows drawn with default_rng(cfg.seed): recomputed here with the
    Mann-Whitney form of the AUC (columns a resample leaves with one class skipped)."""
    from _baselines import mann_whitney_auc

    run, _, cfg = finished_run
    m = json.loads(run.file("metrics.json").read_text())
    y, prob = _test_predictions(run, m)
    rng = np.random.default_rng(cfg.seed)
    stats = [np.nanmean(mann_whitney_auc(y[idx], prob[idx]))
             for idx in (rng.integers(0, len(y), len(y)) for _ in range(cfg.bootstrap))]
    expected = np.percentile(stats, [2.5, 97.5])
    assert m["test_mean_auc_ci95"] == pytest.approx(expected, abs=1e-12)
    assert expected[1] - expected[0] > 0


def test_cost_and_localisation_are_measured(finished_run):
    run, _, _ = finished_run
    m = json.loads(run.file("metrics.json").read_text())
    # the paper-size model is built and counted even in a quick run: 4.26 GMACs (paper 4.29)
    assert 4.2 < m["cost"]["paper_size"]["gmacs"] < 4.35
    assert m["cost"]["trained"]["gmacs"] < 0.1 and m["cost"]["trained"]["seconds_per_image"] > 0
    loc = m["localization"]
    assert set(loc) == {"u2", "u3", "u4"} and loc["u4"]["layer"] == "eca_u4"
    assert loc["u4"]["overall"]["n"] > 10
    for v in loc.values():
        assert 0 <= v["overall"]["pointing_accuracy"] <= 1 and 0 <= v["overall"]["mean_iou"] <= 1
    thr = m["test_threshold_metrics"]
    assert set(thr) == {"youden_val", "p0.5"}


def test_report_prints_papermarkdown_tables(finished_run):
    run, _, _ = finished_run
    text = run.file("report.md").read_text()
    for number in ("0.8530", "0.9630", "79.3000", "4.2900", "0.0460", "0.8300"):
        assert number in text, number
    assert "phantom" in text and "pointing game" in text


def test_report_cells_equal_metrics(finished_run):
    """Every number of ours in report.md is the metrics.json value, to 4 decimals (3 in the
    pointing-game table), and every difference is ours minus the paper's value."""
    from cxr_keras.recipes import mlrfnet_paper as paper

    run, _, cfg = finished_run
    m = json.loads(run.file("metrics.json").read_text())
    text = run.file("report.md").read_text()
    tables = markdown_tables(text)
    check_calibration(run, m["test_calibration"], "Calibration (test)")

    def table(prefix):
        (rows,) = [v for k, v in tables.items() if k and k.startswith(prefix)]
        return {r[next(iter(r))]: r for r in rows}

    def ours(cell):  # "ours (paper)" or "ours"
        return cell.split(" (")[0]

    f4 = "{:.4f}".format
    # Table 5, item | paper | ours | difference
    t5 = table("Table 5: test AUC per label")
    expected = dict(m["test_auc"], Mean=m["test_mean_auc"])
    assert set(t5) == set(expected)
    for item, value in expected.items():
        ref = paper.TABLE5["MLRFNet"][item]
        assert (t5[item]["ours"], t5[item]["paper"], t5[item]["difference"]) == (
            f4(value), f4(ref), f"{value - ref:+.4f}"), item
    assert ours(table("Table 5: mean AUC")["ours"]["Mean"]) == f4(m["test_mean_auc"])
    lo, hi = m["test_mean_auc_ci95"]
    assert f"({cfg.bootstrap} resamples): [{f4(lo)}, {f4(hi)}]" in text
    # Table 7: mean threshold metrics in percent
    t7 = table("Table 7")
    for row, key in (("ours (Youden threshold from validation)", "youden_val"),
                     ("ours (probability 0.5)", "p0.5")):
        for col in ("accuracy", "sensitivity", "specificity", "f1"):
            value = 100 * m["test_threshold_metrics"][key]["mean"][col]
            assert ours(t7[row][col]) == f4(value), (row, col)
    # Table 8: cost
    t8 = table("Table 8")
    for row, key in (("ours, paper size (224)", "paper_size"), ("ours, as trained", "trained")):
        assert ours(t8[row]["gflops"]) == f4(m["cost"][key]["gmacs"]), row
        assert ours(t8[row]["seconds_per_image"]) == f4(m["cost"][key]["seconds_per_image"]), row
    # pointing game / mean IoU per finding and level
    loc = m["localization"]
    grad = table("Grad-CAM")
    first = next(iter(loc.values()))
    assert set(grad) == set(first["per_label"]) | {"all"}
    for finding, row in grad.items():
        stats = {lv: v["overall"] if finding == "all" else v["per_label"][finding]
                 for lv, v in loc.items()}
        assert row["boxes"] == str(stats["u2"]["n"]), finding
        for lv, s in stats.items():
            cell = row[f"{lv} (`{loc[lv]['layer']}`)"]
            assert cell == f"{s['pointing_accuracy']:.3f} / {s['mean_iou']:.3f}", (finding, lv)
    # the ablation table (Tables 9-11)
    number, _, ref = paper.ABLATIONS[cfg.ablation]
    row = table(f"Table {number}")[f"mean AUC ({cfg.source})"]
    value = m["test_mean_auc"]
    assert (row["ours"], row["difference"]) == (f4(value), f"{value - ref[cfg.source]:+.4f}")


def test_cross_dataset_test_on_chexpert(finished_run):
    """--test-dataset chexpert: the NIH model on phantom CheXpert's valid.csv, scored on the seven
    findings both label once harmonised; the AUCs are those of the saved predictions, whose
    labels are valid.csv's own columns (Pleural Effusion as Effusion)."""
    from pathlib import Path

    from scipy.special import expit

    from cxr_keras.data import load_table
    from cxr_keras.evaluation.metrics import per_class_auc

    run, opts, _ = finished_run
    c = json.loads(run.file("metrics.json").read_text())["cross_dataset"]
    shared = ["Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia",
              "Cardiomegaly"]
    assert c["dataset"] == "chexpert" and c["findings"] == shared
    z = run.load_predictions("test_chexpert")
    assert list(z["labels"]) == shared and z["logits"].shape == (c["images"], 7)
    raw = load_table("chexpert", next(Path(opts.out).glob("_data/phantom-chexpert-*")), uncertain="ignore")
    raw = raw.loc[raw["split"] == "test"]
    columns = [{"Effusion": "Pleural Effusion"}.get(f, f) for f in shared]
    np.testing.assert_array_equal(z["y_true"], raw[columns].to_numpy())
    assert c["auc"] == pytest.approx(per_class_auc(z["y_true"], expit(z["logits"]), shared), abs=1e-12)
    own = json.loads(run.file("metrics.json").read_text())["test_auc"]
    assert c["source_auc"] == pytest.approx({f: own[f] for f in shared}, abs=1e-12)
    assert c["positives"] == {f: int(raw[col].sum()) for f, col in zip(shared, columns)}
    (rows,) = [v for k, v in markdown_tables(run.file("report.md").read_text()).items()
               if k and k.startswith("Cross-dataset test")]
    for row in rows:
        name = row["finding"]
        own_v, other = ((c["source_mean_auc"], c["mean_auc"]) if name == "Mean" else
                        (c["source_auc"][name], c["auc"][name]))
        assert (row["AUC, nih test"], row["AUC, chexpert"]) == (f"{own_v:.4f}", f"{other:.4f}"), name


def test_finished_configuration_is_not_rerun(finished_run, capsys):
    """A finished configuration is returned as it is (Python, --config RUN/config.json, and the
    experiment grid), not trained again."""
    run, opts, cfg = finished_run
    stamps = {n: run.file(n).stat().st_mtime_ns for n in ("DONE", "report.md", "metrics.json",
                                                           "checkpoints/best.keras")}
    again = mlrfnet.run(cfg, opts=opts)
    assert again.path == run.path and again.finished
    assert "finished earlier" in capsys.readouterr().out
    back, back_opts = mlrfnet.from_command_line(["--config", str(run.file("config.json")),
                                                 "--out", str(opts.out)])
    assert back == cfg
    assert mlrfnet.run(back, opts=back_opts).path == run.path
    [grid] = mlrfnet.run_many(cfg, opts, [{"ablation": "full"}])
    assert grid.path == run.path
    assert {n: run.file(n).stat().st_mtime_ns for n in stamps} == stamps


@pytest.mark.parametrize("ablation", list(mlrfnet.ABLATIONS))
def test_each_ablation_builds_its_model(ablation):
    cfg, _ = mlrfnet.from_command_line(["--quick", "--ablation", ablation])
    model = mlrfnet.build_model(cfg, 5)
    names = {layer.name for layer in model.layers}
    assert model.output.shape == (None, 5)
    assert ("csra_u2" in names) == (ablation != "no_mrfc")
    assert ("eca_u4" in names) == (ablation != "no_eca")
    assert type(mlrfnet.build_loss(cfg)).__name__ == {
        "bce": "MaskedBinaryLoss", "focal": "MaskedBinaryLoss"}.get(ablation, "BiasedFocalLoss")


def test_uncertainty_policies():
    labels = ("Atelectasis", "Cardiomegaly", "Edema", "No Finding")
    y = np.array([[np.nan, np.nan, np.nan, np.nan], [1, 0, 1, 0]], np.float32)
    np.testing.assert_array_equal(mlrfnet.apply_uncertainty(y, labels, "ones")[0], [1, 1, 1, 1])
    np.testing.assert_array_equal(mlrfnet.apply_uncertainty(y, labels, "zeros")[0], [0, 0, 0, 0])
    # mixed: U-Ones for Atelectasis and Edema, U-Zeros for the others
    np.testing.assert_array_equal(mlrfnet.apply_uncertainty(y, labels, "mixed")[0], [1, 0, 1, 0])
    for policy in mlrfnet.POLICIES:
        np.testing.assert_array_equal(mlrfnet.apply_uncertainty(y, labels, policy)[1], y[1])
    assert np.isnan(y[0]).all()  # the input is not modified


def test_chexpert_policies_share_one_cache(tmp_path):
    """The three policies read one cache (uncertain kept as NaN) and differ only where the raw
    label was uncertain; evaluation uses the five competition observations of valid.csv."""
    from cxr_keras.data.datasets.chexpert import COMPETITION_LABELS

    caches, targets = set(), {}
    for policy in mlrfnet.POLICIES:
        cfg, opts = mlrfnet.from_command_line(
            ["--dataset", "phantom-chexpert", "--quick", "--out", str(tmp_path), "--workers", "1",
             "--uncertain", policy, "--phantom-n", "120"])
        data = mlrfnet.Data(cfg, opts)
        caches.add(str(data.cache.path))
        targets[policy] = data.targets(cfg, "train")
        assert data.eval_labels == list(COMPETITION_LABELS) and len(data.labels) == 14
    assert len(caches) == 1
    raw = data.cache.targets(data.cache.rows("train"))
    unc = np.isnan(raw)
    assert unc.any() and not np.isnan(targets["mixed"]).any()
    np.testing.assert_array_equal(targets["ones"][unc], 1)
    np.testing.assert_array_equal(targets["zeros"][unc], 0)
    for t in targets.values():
        np.testing.assert_array_equal(t[~unc], raw[~unc])


def test_youden_thresholds_against_brute_force():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 3)) < 0.3).astype(float)
    p = np.clip(y * 0.3 + rng.random((300, 3)) * 0.7, 0, 1)
    thr = youden_thresholds(y, p)
    for j in range(3):
        def j_stat(t):
            pred = p[:, j] >= t
            pos = y[:, j] == 1
            return pred[pos].mean() + (~pred[~pos]).mean() - 1
        best = max(j_stat(t) for t in np.unique(p[:, j]))
        assert j_stat(thr[j]) == pytest.approx(best)


def test_experiment_grid_variants():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "experiments" / "mlrfnet" / "tables_5_11.py"
    spec = importlib.util.spec_from_file_location("tables_5_11", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    nih = mod.variants("nih", None)
    assert [v["ablation"] for v in nih] == list(mlrfnet.ABLATIONS)
    chexpert = mod.variants("chexpert", None)
    assert {v["uncertain"] for v in chexpert if v["ablation"] == "full"} == set(mlrfnet.POLICIES)
    assert all(v["uncertain"] == "mixed" for v in chexpert if v["ablation"] != "full")
    assert len(chexpert) == 3 + len(mlrfnet.ABLATIONS) - 1


def test_full_size_model_parameters_and_levels():
    """Paper-size MLRFNet at 224: the Res2Net-50 trunk (25,699,120 PyTorch parameters with its
    1000-class fc, so 25,699,120 - 2,049,000 without) + three ECA kernels (3 each) + three
    bias-free CSRA heads (512 + 1024 + 2048 inputs x 14 classes)."""
    import keras

    from cxr_keras.models import gradcam_layers
    from cxr_keras.models import mlrfnet as build

    model = build(14, weights=None)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 25_699_120 - 2048 * 1000 - 1000 + 3 * 3 + (512 + 1024 + 2048) * 14
    assert model.output.shape == (None, 14)
    shapes = {lv: tuple(model.get_layer(n).output.shape[1:]) for lv, n in gradcam_layers(model).items()}
    assert shapes == {"u2": (28, 28, 512), "u3": (14, 14, 1024), "u4": (7, 7, 2048)}
    x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype("float32")
    # P_sum is the sum of the three CSRA outputs
    parts = keras.Model(model.input, [model.get_layer(f"csra_{lv}").output for lv in ("u2", "u3", "u4")])
    np.testing.assert_allclose(model.predict_on_batch(x), sum(parts.predict_on_batch(x)), rtol=1e-5,
                               atol=1e-5)


def test_every_config_field_is_reachable_from_the_command_line():
    cfg, opts = mlrfnet.from_command_line(
        ["--quick", "--ablation", "densenet121", "--uncertain", "ones", "--split", "random",
         "--set", "lr=3e-4", "--set", "lambdas=[0.4,0.3,0.2]", "--set", "temperature=max",
         "--set", "max_boxes=null", "--epochs", "3", "--root", "chexpert=/data", "--out", "x"])
    assert (cfg.backbone, cfg.backbone_options) == ("densenet121", {"blocks": (1, 2, 2, 1)})
    assert (cfg.uncertain, cfg.split, cfg.lr) == ("ones", "random", 3e-4)
    assert cfg.lambdas == (0.4, 0.3, 0.2)
    assert (cfg.temperature, cfg.max_boxes, cfg.epochs) == ("max", None, 3)
    assert cfg.batch_size == mlrfnet.QUICK["batch_size"] and cfg.weights is None  # preset
    assert str(opts.out) == "x" and str(opts.root("chexpert")) == "/data"
    for name, value in asdict(mlrfnet.Config()).items():
        text = json.dumps(list(value) if isinstance(value, tuple) else value)
        got, _ = mlrfnet.from_command_line(["--set", f"{name}={text}"])
        assert getattr(got, name) == value, name


@pytest.mark.parametrize("argv,message", [
    (["--set", "loss=focal"], "loss='focal' is not the ablation 'full'"),
    (["--ablation", "bce", "--set", "use_eca=false"], "use_eca=False is not the ablation 'bce'"),
    (["--quick", "--weights", "w.h5"], "reduced backbone .* takes no weights"),
    (["--set", "uncertain=maybe"], "uncertain must be one of"),
    (["--set", "ablation=no_csra"], "unknown ablation 'no_csra'"),
    (["--test-dataset", "nih"], "test_dataset must be None or a dataset other than the training one"),
])
def test_bad_settings_are_named(argv, message):
    from cxr_keras.io import DataError

    with pytest.raises(DataError, match=message):
        mlrfnet.from_command_line(argv)


def test_grid_variants_switch_the_ablation():
    """A variant's ablation replaces the model and loss of the configuration it starts from (a
    reduced backbone stays reduced, in its own family)."""
    cfg, _ = mlrfnet.from_command_line(["--quick", "--ablation", "bce"])
    dense = mlrfnet.variant(cfg, ablation="densenet121", uncertain="zeros")
    assert (dense.loss, dense.backbone, dense.uncertain) == ("bfl", "densenet121", "zeros")
    assert dense.backbone_options == {"blocks": (1, 2, 2, 1)}
    back = mlrfnet.variant(dense, ablation="focal")
    assert (back.loss, back.backbone) == ("focal", "res2net50")
    assert back.backbone_options == mlrfnet.QUICK["backbone_options"]


def test_the_run_exports_raw_pixels_in_every_format(finished_run, tmp_path):
    """MLRFNet (Res2Net + ECA + CSRA): the cache, centre crop, ImageNet; sigmoid of its logits."""
    from _exports import assert_exports_answer_raw_pixels, spec

    run, _, cfg = finished_run
    meta = assert_exports_answer_raw_pixels(
        run.path, tmp_path / "export",
        spec(cfg.cache_size, cfg.crop))
    assert meta["activation"] == "sigmoid" and len(meta["labels"]) == meta["output_shape"][-1]
