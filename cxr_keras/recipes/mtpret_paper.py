"""The numbers MTPret reports (Liao et al. 2024), printed beside ours.

Transcribed from Tables I-VII of the paper. The paper gives percentages; they are written below
as in the paper (so they can be checked against it line by line) and stored as fractions in
[0, 1], rounded to 4 decimals (79.05 -> 0.7905). Results are on each task's test split, except
CheXpert and DeepCovid, which have no test split (Table I): there the held-out split is the one
Table I calls validation. "Average" is the paper's own mean of the five CheXpert observations.

Inconsistencies noted in the paper (values below are transcribed as printed):
- Table V's "DAM [33]" rows for ResNet-18 and ResNet-50 are identical, digit for digit, to the
  ImageNet rows of Table IV; only the DenseNet-121 DAM row is new. The DenseNet-121 DAM average
  (88.54) is above MTPret ResNet-18 (88.52), so "MTPret surpasses DAM" holds only for ResNet-50.
- Sec. III-F1 says MTPret beats Scratch on NIHCC by 14.01% (ResNet-18) and 7.70% (ResNet-50);
  Table II gives 8.05 (79.05 - 71.00) and 14.01 (80.06 - 66.05): the 14.01 belongs to
  ResNet-50, and 7.70 is the ImageNet gap for ResNet-50.
- Sec. III-G1 quotes [29] at 77.06% NIHCC mAUC "(2.94%↓)"; Table II gives a gap of 1.99
  (ResNet-18) or 3.00 (ResNet-50). The other gaps quoted there match Tables II/III.
- Sec. III-A says NIHCC is 85.46% of the pretraining images: 112 120 / 131 200 counts only the
  five pretraining-only datasets, not the Pneumonia/MURA/Lung/TBX images also used to pretrain.
- Table I's dataset totals add up to 407 589 (NIHCC counted once), not the 424 746 it prints
  (and Sec. III-A repeats). Each dataset's train + val + test does match its own total.
- Table VII, ResNet-50 SimCLR: the five AUCs average 87.058, printed as 87.07 (every other
  "Average" in Tables IV, V and VII is the rounded mean).
- Sec. III-F2 refers to "MTPret++", meaning MTPret-- (no MTPret++ exists).
The Table II / III / IV / VI / VII cross-checks (shared cells) all agree.
"""

METHODS = ("Scratch", "ImageNet", "SD-SimCLR", "MD-SimCLR", "SD-MoCo", "MD-MoCo", "MD-MoCo++",
           "MTPret--", "MTPret")
BACKBONES = ("resnet18", "resnet50")
BACKBONE_NAMES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}

TASKS = ("nih", "pneumonia", "mura", "lung", "tbx", "chexpert", "deepcovid")
TASK_NAMES = {
    "nih": "NIHCC",
    "pneumonia": "Pneumonia",
    "mura": "MURA",
    "lung": "Chest X-ray Masks and Labels",
    "tbx": "TBX",
    "chexpert": "CheXpert",
    "deepcovid": "DeepCovid",
}
MAIN_METRIC = {"nih": "mauc", "pneumonia": "auc", "mura": "auc", "lung": "dice", "tbx": "map",
               "chexpert": "auc", "deepcovid": "auc"}

CHEXPERT_OBSERVATIONS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                         "Pleural Effusion")

# Table I: (train, validation, test) image counts; None where the paper has N/A. NIHCC is the
# multilabel-classification row (all 112 120 images are also in pretraining, unlabelled).
SPLITS = {
    "nih": (78484, 11212, 22424),
    "pneumonia": (4686, 585, 585),
    "mura": (32013, 3997, 3995),
    "lung": (718, 89, 89),
    "tbx": (640, 80, 80),
    "chexpert": (223414, 234, None),
    "deepcovid": (2084, 3100, None),
}


def _row(values, keys):
    """Percentages in the paper's column order -> {key: fraction}."""
    assert len(values) == len(keys), (values, keys)
    return {k: round(v / 100, 4) for k, v in zip(keys, values)}


def _table(rows, keys):
    return {bb: {name: _row(v, keys) for name, v in by_name.items()}
            for bb, by_name in rows.items()}


# Table II: main metric per task (rows of the paper are tasks; columns are METHODS).
_T2 = {
    "resnet18": {
        "nih": (71.00, 70.84, 74.68, 75.58, 76.52, 77.97, 78.02, 75.27, 79.05),
        "pneumonia": (96.59, 96.16, 98.44, 96.73, 98.46, 98.49, 99.39, 99.51, 99.60),
        "mura": (86.66, 88.10, 87.19, 87.37, 88.06, 88.29, 88.15, 88.40, 88.52),
        "lung": (95.24, 95.26, 95.18, 95.01, 95.29, 95.31, 95.25, 95.14, 95.37),
        "tbx": (30.71, 29.46, 31.92, 36.36, 34.27, 36.00, 35.95, 34.70, 36.71),
        "chexpert": (82.90, 82.79, 85.76, 85.81, 88.11, 88.18, 87.43, 87.45, 88.52),
        "deepcovid": (96.80, 98.98, 99.11, 99.71, 99.64, 99.95, 99.92, 99.89, 99.94),
    },
    "resnet50": {
        "nih": (66.05, 72.36, 77.62, 78.05, 77.83, 79.31, 79.74, 77.20, 80.06),
        "pneumonia": (96.58, 98.75, 91.80, 92.14, 99.29, 99.52, 99.49, 99.58, 99.72),
        "mura": (86.24, 87.92, 87.32, 86.64, 87.70, 87.95, 87.99, 87.15, 88.41),
        "lung": (93.52, 94.08, 94.26, 94.38, 94.26, 94.33, 95.05, 95.04, 95.27),
        "tbx": (23.93, 35.61, 33.26, 35.25, 33.28, 36.78, 36.52, 35.14, 37.83),
        "chexpert": (77.57, 79.26, 77.95, 79.66, 87.40, 87.23, 88.73, 88.61, 89.22),
        "deepcovid": (98.13, 98.91, 98.93, 98.44, 99.38, 99.76, 99.75, 99.71, 99.91),
    },
}
TABLE2 = {bb: {m: {t: round(rows[t][i] / 100, 4) for t in TASKS} for i, m in enumerate(METHODS)}
          for bb, rows in _T2.items()}

# Table III: lung segmentation (Dice, mIoU) and TBX detection (mAP, AP Active, AP Latent).
_T3_KEYS = ("dice", "miou", "map", "ap_active", "ap_latent")
TABLE3 = _table({
    "resnet18": {
        "Scratch": (95.24, 94.00, 30.71, 56.71, 4.72),
        "ImageNet": (95.26, 94.10, 29.46, 56.27, 2.66),
        "SD-SimCLR": (95.18, 93.97, 31.92, 50.69, 13.14),
        "MD-SimCLR": (95.01, 93.77, 36.36, 66.40, 6.31),
        "SD-MoCo": (95.29, 94.10, 34.27, 56.29, 12.24),
        "MD-MoCo": (95.31, 94.14, 36.00, 67.17, 4.84),
        "MD-MoCo++": (95.25, 94.03, 35.95, 65.19, 6.70),
        "MTPret--": (95.14, 93.90, 34.70, 63.43, 5.97),
        "MTPret": (95.37, 94.22, 36.71, 64.84, 8.59),
    },
    "resnet50": {
        "Scratch": (93.52, 92.03, 23.93, 44.85, 3.01),
        "ImageNet": (94.08, 92.65, 35.61, 58.81, 12.42),
        "SD-SimCLR": (94.26, 92.88, 33.26, 57.89, 8.62),
        "MD-SimCLR": (94.38, 93.00, 35.25, 57.15, 13.36),
        "SD-MoCo": (94.26, 92.86, 33.28, 62.23, 4.32),
        "MD-MoCo": (94.33, 93.04, 36.78, 64.37, 9.18),
        "MD-MoCo++": (95.05, 93.79, 36.52, 62.22, 10.82),
        "MTPret--": (95.04, 93.82, 35.14, 57.32, 12.97),
        "MTPret": (95.27, 94.10, 37.83, 63.46, 12.21),
    },
}, _T3_KEYS)

# Tables IV, V, VII: CheXpert AUC per observation, then the paper's "Average".
_CX_KEYS = CHEXPERT_OBSERVATIONS + ("Average",)
TABLE4 = _table({
    "resnet18": {
        "Scratch": (79.73, 77.12, 87.98, 86.29, 83.40, 82.90),
        "ImageNet": (77.55, 77.93, 89.28, 86.76, 82.45, 82.79),
        "SD-SimCLR": (81.73, 82.84, 89.65, 87.66, 86.91, 85.76),
        "MD-SimCLR": (81.69, 82.91, 89.45, 88.13, 86.90, 85.81),
        "SD-MoCo": (83.07, 83.91, 92.11, 91.47, 90.00, 88.11),
        "MD-MoCo": (81.74, 84.35, 90.90, 92.59, 91.30, 88.18),
        "MD-MoCo++": (79.94, 80.85, 91.60, 93.48, 91.26, 87.43),
        "MTPret--": (82.24, 82.43, 91.31, 91.77, 89.50, 87.45),
        "MTPret": (82.37, 84.92, 93.22, 91.68, 90.42, 88.52),
    },
    "resnet50": {
        "Scratch": (73.43, 71.39, 83.99, 82.90, 76.15, 77.57),
        "ImageNet": (73.38, 75.47, 87.67, 80.42, 79.39, 79.26),
        "SD-SimCLR": (73.68, 73.92, 83.13, 83.48, 75.54, 77.95),
        "MD-SimCLR": (71.49, 75.08, 88.46, 82.47, 80.80, 79.66),
        "SD-MoCo": (83.34, 87.30, 89.06, 88.65, 88.65, 87.40),
        "MD-MoCo": (82.78, 84.77, 90.48, 89.48, 88.64, 87.23),
        "MD-MoCo++": (81.28, 85.71, 90.85, 93.94, 91.88, 88.73),
        "MTPret--": (82.04, 86.25, 92.30, 91.68, 90.76, 88.61),
        "MTPret": (82.57, 84.89, 93.38, 92.10, 93.15, 89.22),
    },
}, _CX_KEYS)

# Table V: MTPret against DAM [33] (deep AUC maximization). See the docstring on the DAM rows.
TABLE5 = _table({
    "densenet121": {"DAM": (82.52, 87.51, 88.27, 92.87, 91.51, 88.54)},
    "resnet18": {"DAM": (77.55, 77.93, 89.28, 86.76, 82.45, 82.79),
                 "MTPret": (82.37, 84.92, 93.22, 91.68, 90.42, 88.52)},
    "resnet50": {"DAM": (73.38, 75.47, 87.67, 80.42, 79.39, 79.26),
                 "MTPret": (82.57, 84.89, 93.38, 92.10, 93.15, 89.22)},
}, _CX_KEYS)

# Table VI: Deep-Covid, MTPret against other self-supervised methods.
TABLE6 = _table({
    "resnet18": {
        "SimCLR": (99.67, 89.23, 99.90, 99.02),
        "MoCo-CXR": (97.81, 93.85, 97.90, 99.48),
        "MTPret": (99.71, 94.00, 99.90, 99.94),
    },
    "resnet50": {
        "SimCLR": (98.43, 89.23, 98.63, 99.37),
        "MoCo": (99.77, 89.23, 100.00, 99.42),
        "SwAV": (99.74, 87.69, 100.00, 98.90),
        "MoCo-CXR": (99.77, 89.23, 100.00, 99.70),
        "MTPret": (99.77, 93.00, 100.00, 99.91),
    },
}, ("accuracy", "specificity", "sensitivity", "auc"))

# Table VII: CheXpert AUC, MTPret against other self-supervised methods.
TABLE7 = _table({
    "resnet18": {
        "SimCLR": (80.25, 84.48, 92.40, 86.23, 90.17, 86.71),
        "MoCo-CXR": (84.20, 81.42, 92.61, 89.02, 91.54, 87.76),
        "MTPret": (82.37, 84.92, 93.22, 91.68, 90.42, 88.52),
    },
    "resnet50": {
        "SimCLR": (79.59, 86.47, 91.74, 86.92, 90.57, 87.07),
        "MoCo": (83.86, 79.79, 89.08, 87.36, 90.12, 86.04),
        "SwAV": (85.62, 85.73, 92.12, 88.56, 91.09, 88.62),
        "MoCo-CXR": (81.75, 83.56, 90.98, 85.49, 90.03, 86.36),
        "MTPret": (82.57, 84.89, 93.38, 92.10, 93.15, 89.22),
    },
}, _CX_KEYS)
