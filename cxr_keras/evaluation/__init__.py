"""Evaluation: metrics, DeLong's test, report tables. Figures live in ``cxr_keras.evaluation.plots``
(imported on demand so that matplotlib is only loaded when a figure is drawn)."""

from cxr_keras.evaluation.delong import delong_covariance, delong_test
from cxr_keras.evaluation.metrics import bootstrap_ci, mean_auc, per_class_auc, threshold_metrics
from cxr_keras.evaluation.multiclass import binomial_interval, delong_ovr, mcnemar_test, multiclass_metrics
from cxr_keras.evaluation.report import comparison_table
from cxr_keras.evaluation.segmentation import segmentation_metrics, wilcoxon_paired

__all__ = ["per_class_auc", "mean_auc", "threshold_metrics", "bootstrap_ci", "delong_test",
           "delong_covariance", "comparison_table", "multiclass_metrics", "binomial_interval", "mcnemar_test",
           "delong_ovr", "segmentation_metrics", "wilcoxon_paired"]
