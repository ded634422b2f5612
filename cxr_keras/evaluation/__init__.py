"""Evaluation: metrics, DeLong's test, calibration, report tables. Figures live in
``cxr_keras.evaluation.plots``, ``multiclass_plots`` and ``calibration.plot_reliability_diagram``
(imported on demand so that matplotlib is only loaded when a figure is drawn); each returns a
``matplotlib.figure.Figure`` and writes a file only when given a path."""

from cxr_keras.evaluation.calibration import brier_score, calibration_metrics, expected_calibration_error
from cxr_keras.evaluation.delong import delong_covariance, delong_test
from cxr_keras.evaluation.metrics import bootstrap_ci, mean_auc, per_class_auc, threshold_metrics
from cxr_keras.evaluation.multiclass import binomial_interval, delong_ovr, mcnemar_test, multiclass_metrics
from cxr_keras.evaluation.report import comparison_table
from cxr_keras.evaluation.segmentation import segmentation_metrics, wilcoxon_paired

__all__ = ["per_class_auc", "mean_auc", "threshold_metrics", "bootstrap_ci", "delong_test",
           "delong_covariance", "comparison_table", "multiclass_metrics", "binomial_interval", "mcnemar_test",
           "delong_ovr", "segmentation_metrics", "wilcoxon_paired", "expected_calibration_error",
           "brier_score", "calibration_metrics"]
