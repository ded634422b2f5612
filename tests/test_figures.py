"""Figures a notebook can show: every plotting function returns a ``matplotlib.figure.Figure``
with its axes and data, writes a file only when given a path, leaves pyplot's list of open
figures alone, and importing a plotting module switches no backend."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

MODULES = ("cxr_keras.evaluation.plots", "cxr_keras.evaluation.multiclass_plots",
           "cxr_keras.evaluation.calibration", "cxr_keras.explain.figures")


@pytest.mark.parametrize("name", MODULES)
def test_importing_a_plotting_module_switches_no_backend(name, monkeypatch):
    """The module's code runs afresh (beside the imported copy) with ``matplotlib.use`` and
    ``pyplot.switch_backend`` watched: neither is called and the backend in use stays."""
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()           # resolved first (this may pick one)
    calls = []
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(plt, "switch_backend", lambda *a, **k: calls.append(a))
    spec = importlib.util.find_spec(name)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert calls == [] and matplotlib.get_backend() == backend


def test_the_package_never_chooses_a_backend():
    """Nor does any function, at import or later (a notebook keeps its inline backend)."""
    import cxr_keras

    root = Path(cxr_keras.__file__).parent
    offenders = [str(f.relative_to(root)) for f in root.rglob("*.py")
                 if re.search(r"matplotlib\.use\(|switch_backend\(", f.read_text())]
    assert offenders == []


def _figures():
    """(name, call) of every plotting function of the package, on tiny inputs."""
    from cxr_keras.evaluation import calibration, multiclass_plots, plots
    from cxr_keras.explain.figures import overlay_grid

    rng = np.random.default_rng(0)
    y = (rng.random((40, 3)) < 0.4).astype(float)
    s = np.clip(y * 0.5 + rng.random((40, 3)) * 0.5, 0, 1)
    cls = rng.integers(0, 3, 40)
    proba = rng.dirichlet(np.ones(3), 40)
    img = rng.random((2, 16, 16, 1))
    mask = np.zeros((16, 16))
    mask[4:12, 4:12] = 1
    return [
        ("roc", lambda p: plots.plot_roc_curves(y, s, ["a", "b", "c"], p)),
        ("auc_diff", lambda p: plots.plot_auc_differences({1.0: {"a": 0.8}, 0.5: {"a": 0.7}}, p)),
        ("curves", lambda p: plots.plot_training_curves({"loss": [1.0, 0.5]}, p)),
        ("recon", lambda p: plots.plot_reconstructions(img, img, (img > 0.5) * 1.0, p)),
        ("cm", lambda p: multiclass_plots.plot_confusion_matrix(np.eye(3), ["a", "b", "c"], p)),
        ("roc_pr", lambda p: multiclass_plots.plot_roc_pr(cls, proba, ["a", "b", "c"], p)),
        ("polar", lambda p: multiclass_plots.plot_polar({"m": {"f1": 0.8, "mcc": 0.7},
                                                         "n": {"f1": 0.9, "mcc": 0.6}}, path=p)),
        ("mask", lambda p: multiclass_plots.plot_mask_overlay(img[0], mask, mask, p)),
        ("gradcam", lambda p: overlay_grid((img[..., 0] * 255).astype(np.uint8), img[..., 0],
                                           ["a", "b"], p)),
        ("reliability", lambda p: calibration.plot_reliability_diagram(y, s, ["a", "b", "c"], p)),
    ]


@pytest.mark.parametrize("name", ["roc", "auc_diff", "curves", "recon", "cm", "roc_pr", "polar", "mask",
                                  "gradcam", "reliability"])
def test_a_plot_returns_a_figure_and_writes_only_when_given_a_path(name, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    draw = dict(_figures())[name]
    monkeypatch.chdir(tmp_path)
    open_before = plt.get_fignums()
    fig = draw(None)
    assert isinstance(fig, Figure) and fig.axes
    drawn = [a for ax in fig.axes for a in (*ax.lines, *ax.images, *ax.patches, *ax.collections)]
    assert drawn, f"{name}: empty axes"
    assert list(tmp_path.iterdir()) == []                  # nothing written without a path
    assert plt.get_fignums() == open_before                # not registered with pyplot
    assert isinstance(draw(tmp_path / "f.png"), Figure)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
