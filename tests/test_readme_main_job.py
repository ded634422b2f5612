"""The README's main job, run the way a newcomer runs it: the third command of the README's first
lines (``cxr-keras run fzlpr --dataset phantom --quick``), through the installed console script,
from an empty folder, with TensorFlow's default CPU kernels (oneDNN on, as users have it; the
suite turns it off, see conftest.py). Then its run folder: every artefact, learning set against a
permutation null computed here, and a report whose cells are the run's metrics."""

import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from _cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_first_commands():
    """The commands of the README's first code block (install, tests, main job)."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_starts_with_install_tests_and_main_job():
    install, tests, main_job = readme_first_commands()[:3]
    assert install == 'pip install ".[test]"'
    assert tests.startswith("python -m pytest")
    assert main_job.startswith("cxr-keras run ")


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("newcomer")
    assert not any(folder.iterdir())
    argv = shlex.split(readme_first_commands()[2])
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    res = cli(*argv[1:], cwd=folder, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = [d for d in (folder / "runs").iterdir() if d.name.startswith("fzlpr-")]
    return folder, argv, run, res


def _mean_auc(y, p):
    aucs = [roc_auc_score(y[:, j], p[:, j]) for j in range(y.shape[1])
            if 0 < np.nansum(y[:, j]) < np.sum(np.isfinite(y[:, j]))]
    return float(np.mean(aucs))


def test_run_folder_has_every_artefact(main_job):
    folder, _, run, res = main_job
    (printed,) = [line[len("report: "):] for line in res.stdout.splitlines()
                  if line.startswith("report: ")]
    assert (folder / printed).resolve() == (run / "report.md").resolve(), printed
    for rel in ("config.json", "metrics.json", "report.md", "DONE", "checkpoints/best.keras",
                "predictions/val.npz", "predictions/test.npz", "plots/roc_test.png",
                "plots/gradcam.png", "plots/training_curves.png", "logs/history_stage2.csv"):
        assert (run / rel).exists(), rel
    with np.load(run / "predictions" / "test.npz", allow_pickle=False) as z:
        assert {"y_true", "prob_original", "prob_hflip", "prob_zoom_in", "prob_zoom_out"} <= set(z.files)
        assert z["y_true"].shape == z["prob_original"].shape


def test_training_learned_beyond_a_permutation_null(main_job):
    """Mean test AUC over the 14 findings against the same statistic with the images' label rows
    shuffled (200 permutations, computed here with sklearn): above the null's 99th percentile
    (p < 0.01); and the three easiest phantom findings far above chance."""
    _, _, run, _ = main_job
    with np.load(run / "predictions" / "test.npz", allow_pickle=False) as z:
        y, p, labels = z["y_true"], z["prob_original"], list(z["labels"])
    observed = _mean_auc(y, p)
    rng = np.random.default_rng(0)
    null = [_mean_auc(y[rng.permutation(len(y))], p) for _ in range(200)]
    baseline = np.percentile(null, 99)
    assert observed > baseline, (f"mean AUC {observed:.3f} vs permutation null 99th percentile "
                                 f"{baseline:.3f} (max {max(null):.3f})")
    easy = np.mean([roc_auc_score(y[:, labels.index(k)], p[:, labels.index(k)])
                    for k in ("Effusion", "Emphysema", "Cardiomegaly")])
    assert easy > 0.7, f"easy findings mean AUC {easy:.3f}; chance 0.5"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_mean_auc"] == pytest.approx(observed, abs=1e-6)


def _table(report: str, title: str) -> dict:
    """``item -> (paper, ours)`` of the report's markdown table under ``### title``."""
    section = report.split(f"### {title}", 1)[1]
    rows = {}
    for line in section.splitlines()[3:]:
        if not line.startswith("|"):
            break
        item, paper, ours, _ = [c.strip() for c in line.strip("|").split("|")]
        rows[item] = (paper, ours)
    return rows


def test_report_cells_are_the_metrics_beside_the_papers(main_job):
    _, _, run, _ = main_job
    report = (run / "report.md").read_text()
    m = json.loads((run / "metrics.json").read_text())
    table2 = _table(report, "Table 2 / 4: test AUC per label")
    assert table2["Average"] == ("0.8045", f"{m['test_mean_auc']:.4f}")  # paper's Table 2 FZLPR
    for label, auc in m["test_auc"].items():
        assert table2[label][1] == f"{auc:.4f}", label
    table1 = _table(report, "Table 1: validation mean AUC")
    assert table1["validation mean AUC"] == ("0.8344", f"{m['val_mean_auc']:.4f}")
    table3 = _table(report, "Table 3: test mean AUC with TTA (HF: horizontal flip, Z: zoom +-10%)")
    assert table3["+hflip+zoom"][0] == "0.8096"
    for step, values in m["tta_auc"].items():
        assert table3[step][1] == f"{values['mean']:.4f}", step
    assert "phantom" in report


def test_running_it_again_says_it_is_finished(main_job):
    """Finished is a state of the run folder: the same command again returns it untouched."""
    folder, argv, run, _ = main_job
    mtime = (run / "checkpoints" / "best.keras").stat().st_mtime
    res = cli(*argv[1:], cwd=folder, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"finished earlier: {Path('runs') / run.name}" in res.stdout, res.stdout[-2000:]
    assert (run / "checkpoints" / "best.keras").stat().st_mtime == mtime
