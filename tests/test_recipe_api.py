"""The one recipe lifecycle (cxr_keras.recipes.lifecycle): a paper runs from Python with a Config,
every Config field is reachable from the command line (--set, --config JSON/TOML), the run folder's
config.json reproduces the run, and "finished" is a state of the run folder."""

import json
from dataclasses import asdict, replace

import pytest
from _reports import check_calibration

from cxr_keras.io import DataError
from cxr_keras.recipes import fzlpr, lifecycle

TINY = dict(fzlpr.QUICK, phantom_n=48, phantom_size=192, cache_size=168, crop=160,
            backbone_blocks=(1, 1, 1, 1), batch_size=16, stage1_epochs=1, stage2_epochs=1,
            bootstrap=20, gradcam_images=2)


def test_every_config_field_is_reachable_from_the_command_line():
    cfg, opts = fzlpr.from_command_line(
        ["--quick", "--set", "stage2_lr=3e-5", "--set", "crop=224", "--set", "weights=null",
         "--set", "backbone_blocks=[2,2,2,2]", "--set", "val_by=patient", "--tau", "0.4",
         "--out", "elsewhere", "--root", "chexpert=/data"])
    assert (cfg.stage2_lr, cfg.crop, cfg.weights) == (3e-5, 224, None)
    assert cfg.backbone_blocks == (2, 2, 2, 2) and cfg.val_by == "patient" and cfg.tau == 0.4
    assert cfg.stage1_epochs == fzlpr.QUICK["stage1_epochs"]          # the preset stands
    assert str(opts.out) == "elsewhere" and opts.roots == {"chexpert": "/data"}
    # every field can be set
    for name, value in asdict(fzlpr.Config()).items():
        text = json.dumps(list(value) if isinstance(value, tuple) else value)
        got, _ = fzlpr.from_command_line(["--set", f"{name}={text}"])
        if name not in ("tau", "backbone_blocks"):                   # resolve() adjusts these
            assert getattr(got, name) == value, name


@pytest.mark.parametrize("argv,message", [
    (["--set", "stage3_lr=1"], "unknown setting(s) 'stage3_lr'"),
    (["--set", "crop=big"], "setting 'crop': 'big' is not a valid int"),
    (["--set", "stage2_lr=[1]"], "setting 'stage2_lr'"),
    (["--set", "noequals"], "--set expects KEY=VALUE"),
    (["--set", "loss=l2"], "loss must be one of"),
    (["--root", "nih"], "--root expects READER=DIR"),
])
def test_bad_settings_name_the_key(argv, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        fzlpr.from_command_line(argv)


def test_config_files_json_and_toml(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"stage2_lr": 2e-5, "backbone_blocks": [1, 2, 2, 1],
                                                  "weights": None}))
    (tmp_path / "b.toml").write_text('stage2_lr = 4e-5\nloss = "bce"\ncrop = 176\n')
    (tmp_path / "c.json").write_text("[1, 2]")
    (tmp_path / "d.json").write_text("{not json")
    a, _ = fzlpr.from_command_line(["--config", str(tmp_path / "a.json")])
    assert a.stage2_lr == 2e-5 and a.backbone_blocks == (1, 2, 2, 1) and a.weights is None
    b, _ = fzlpr.from_command_line(["--config", str(tmp_path / "b.toml"), "--set", "crop=192"])
    assert (b.stage2_lr, b.loss, b.tau, b.crop) == (4e-5, "bce", None, 192)
    with pytest.raises(DataError, match="reduced DenseNet .* takes no weights"):
        fzlpr.from_command_line(["--set", "backbone_blocks=[1,1,1,1]"])
    with pytest.raises(DataError, match="expected a mapping"):
        fzlpr.from_command_line(["--config", str(tmp_path / "c.json")])
    with pytest.raises(DataError, match="d.json: not valid json"):
        fzlpr.from_command_line(["--config", str(tmp_path / "d.json")])
    with pytest.raises(DataError, match="no such file"):
        fzlpr.from_command_line(["--config", str(tmp_path / "nope.json")])


def test_options_are_named_and_checked():
    with pytest.raises(TypeError, match="unknown run option"):
        lifecycle.options("runs", None, epochs=3)
    opts = lifecycle.options("runs", "/data/nih", roots={"chexpert": "/data"})
    assert str(opts.root("nih")) == "/data/nih" and str(opts.root("chexpert")) == "/data"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    cfg = fzlpr.Config(**TINY)
    return out, cfg, fzlpr.run(cfg, out=out, workers=1, verbose=0)


def test_python_api_runs_a_paper_with_a_config(tiny_run):
    out, cfg, run = tiny_run
    assert run.finished and run.path.parent == out
    m = run.metrics()
    assert m["loss"] == "fzlpr" and 0 <= m["test_mean_auc"] <= 1
    for name in ("config.json", "report.md", "checkpoints/best.keras", "predictions/test.npz"):
        assert run.file(name).exists(), name
    check_calibration(run, m["test_calibration"], "Calibration (test)")


def test_finished_is_a_state_and_config_json_reproduces_the_run(tiny_run, capsys):
    out, cfg, run = tiny_run
    mtime = run.file("report.md").stat().st_mtime
    again = fzlpr.run(cfg, out=out, workers=1, verbose=0)
    assert again.path == run.path and run.file("report.md").stat().st_mtime == mtime
    assert "finished earlier" in capsys.readouterr().out
    # the run folder's config.json, given back, names the same folder
    back, opts = fzlpr.from_command_line(["--config", str(run.file("config.json")),
                                          "--out", str(out)])
    assert back == replace(cfg, backbone_blocks=tuple(cfg.backbone_blocks))
    assert fzlpr.run(back, opts=replace(opts, workers=1, verbose=0)).path == run.path


def test_shortcut_options_and_data_binding(tmp_path):
    """A recipe's own options are typed by its Config (lists split on commas); a data folder turns
    "phantom" into the real dataset, recorded in the Config so two copies never share a folder."""
    from cxr_keras.recipes import multiloss

    cfg, _ = multiloss.from_command_line(["--seg-losses", "bce, focal", "--cls-epochs", "3",
                                          "--set", "top_k=3,5", "--weights", "none"])
    assert (cfg.seg_losses, cfg.cls_epochs, cfg.top_k, cfg.weights) == (("bce", "focal"), 3, (3, 5), None)
    with pytest.raises(SystemExit):
        multiloss.from_command_line(["--cls-epochs", "-1"])
    opts = lifecycle.options(tmp_path, data_root=tmp_path / "nih")
    bound = lifecycle.bind_data(fzlpr.Config(), opts, ("nih",))
    assert bound.dataset == "nih" and bound.extra["data_root"] == str(tmp_path / "nih")
    assert lifecycle.bind_data(fzlpr.Config(), lifecycle.options(tmp_path), ("nih",)) == fzlpr.Config()
    with pytest.raises(DataError, match="needs its folder"):
        lifecycle.bind_data(fzlpr.Config(dataset="nih"), lifecycle.options(tmp_path), ("nih",))


def test_the_run_exports_raw_pixels_in_every_format(tiny_run, tmp_path):
    """fzlpr: the 168 px cache, centre crop 160, ImageNet; the run's 14 findings."""
    from _exports import assert_exports_answer_raw_pixels, spec

    _, cfg, run = tiny_run
    meta = assert_exports_answer_raw_pixels(
        run.path, tmp_path / "export",
        spec(cfg.cache_size, cfg.crop))
    assert len(meta["labels"]) == 14 and meta["activation"] == "sigmoid"
