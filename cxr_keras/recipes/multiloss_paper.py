"""Numbers reported by Rajaraman, Zamzmi & Antani, "Multi-loss ensemble deep learning for chest
X-ray classification" (``multiloss``), transcribed from papers/002_44961040ea0b185f.txt.

The converted text lost most cells of Tables 2 and 3 and the top-5 row of Table 4; what the text
states elsewhere (Sec. 3.2 and the Table 5 row) is transcribed here, and a missing cell is absent
(the reports print "-"). Metrics are test-set values on Kermany (n = 624) and Montgomery (n = 138).
"""

# Table 1: segmentation on Montgomery (mean +- std over images).
TABLE1 = {
    "bce": {"IoU": (0.8186, 0.0384), "Dice": (0.9571, 0.0361), "Accuracy": (0.9720, 0.0096)},
    "bce_dice": {"IoU": (0.8465, 0.0401), "Dice": (0.9601, 0.0396), "Accuracy": (0.9732, 0.0104)},
    "focal": {"IoU": (0.2601, 0.0621), "Dice": (0.9189, 0.0527), "Accuracy": (0.7788, 0.0485)},
    "tversky": {"IoU": (0.9360, 0.0368), "Dice": (0.9624, 0.0225), "Accuracy": (0.9912, 0.0102)},
    "focal_tversky": {"IoU": (0.9510, 0.0415), "Dice": (0.9637, 0.0271),
                      "Accuracy": (0.9925, 0.0130)},
    "ensemble": {"IoU": (0.9518, 0.0462), "Dice": (0.9652, 0.0309), "Accuracy": (0.9927, 0.0117)},
}
TABLE1_TOP3 = ("focal_tversky", "tversky", "bce_dice")

SEGMENTATION_TITLES = {
    "bce": "BCE", "bce_dice": "Weighted BCE-Dice", "focal": "Focal", "tversky": "Tversky",
    "focal_tversky": "Focal Tversky", "ensemble": "Bitwise-AND ensemble (top-3)",
}

METRICS = ("Accuracy", "AUROC", "AUPRC", "Precision", "Recall", "F-score", "MCC")

# Table 2: only the best model's row survives in the text (Sec. 3.2).
TABLE2 = {
    "cal_cce": {"Accuracy": 0.9343, "AUROC": 0.9928, "AUPRC": 0.9869, "Precision": 0.9345,
                "Recall": 0.9343, "F-score": 0.9338, "MCC": 0.8996},
}
TOP3 = ("cal_cce", "cce_entropy", "cal_neg_entropy")
TOP5 = TOP3 + ("ls_focal", "cal_hinge")

# Table 3: cells lost; the text gives the winning method and its SLSQP weights (top-5 order).
TABLE3 = {}
TABLE3_BEST = "weighted averaging, top-5"
TABLE3_TOP5_WEIGHTS = (0.40560531, 0.192276399, 0.00356809023, 0.3985502, 1.10927275e-16)

# Table 4: model-level ensembles (top-5 row lost), then their SLSQP-weighted average (Table 5).
TABLE4 = {
    "model-level top-3": {"Accuracy": 0.9327, "AUROC": 0.9933, "AUPRC": 0.9881,
                          "Precision": 0.9334, "Recall": 0.9327, "F-score": 0.933, "MCC": 0.897},
}
TABLE4_WEIGHTS = (0.3764, 0.6236)

# Table 5: comparison with the literature (MCC interval: the paper's "exact Clopper-Pearson",
# numerically the normal approximation, see evaluation.multiclass.binomial_interval).
TABLE5 = {
    "Rajaraman et al. 2018": {"Accuracy": 0.918, "AUROC": 0.939, "Precision": 0.92, "Recall": 0.9,
                              "F-score": 0.91, "MCC": 0.87, "MCC 95% CI": (0.8436, 0.8964)},
    "Proposed (weighted model-level top-3 + top-5)": {
        "Accuracy": 0.9391, "AUROC": 0.9933, "AUPRC": 0.9881, "Precision": 0.9396,
        "Recall": 0.9391, "F-score": 0.9392, "MCC": 0.9068, "MCC 95% CI": (0.8839, 0.9297)},
}
FINAL = TABLE5["Proposed (weighted model-level top-3 + top-5)"]

CLASSES = ("normal", "bacterial", "viral")
COUNTS = {"train": {"normal": 1349, "bacterial": 2538, "viral": 1345},
          "test": {"normal": 234, "bacterial": 242, "viral": 148}, "montgomery": 138}
