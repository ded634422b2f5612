"""The numbers dual-MAE reports (Yoon & Kang, IEEE Access 2024), printed beside ours.

Classes in the paper's column order; values are means over three seeds, ``_STD`` the standard
deviations. Table 5 is only partly legible in our copy: the text gives AUC and precision at every
fraction and all four metrics at 50% and 100% (None where it gives nothing).
"""

CLASSES = ("No finding", "Bronchitis", "Brocho-pneumonia", "Bronchiolitis", "Pneumonia",
           "Other disease")

# method name in the paper -> (backbone, initialisation) in the recipe
METHODS = {
    "ResNet-34 (random)": ("resnet34", "scratch"),
    "ViT-S (random)": ("vit_s", "scratch"),
    "ResNet-34 (IN)": ("resnet34", "imagenet"),
    "ViT-S (IN)": ("vit_s", "imagenet"),
    "ResNet-34 (X-ray)": ("resnet34", "xray"),
    "ViT-S (X-ray)": ("vit_s", "xray"),
    "MAE (X-ray)": ("vit_s", "mae"),
    "dual-MAE (X-ray)": ("vit_s", "dual_mae"),
}
NAME_OF = {v: k for k, v in METHODS.items()}

# Table 2: mean AUC against the pretraining mask ratio
TABLE2 = {
    "mae": {0.65: 0.698, 0.70: 0.681, 0.75: 0.733, 0.80: 0.731, 0.85: 0.735, 0.90: 0.734, 0.95: 0.726},
    "dual_mae": {0.65: 0.699, 0.70: 0.747, 0.75: 0.752, 0.80: 0.741, 0.85: 0.746, 0.90: 0.740,
                 0.95: 0.697},
}
MASK_RATIO = {"mae": 0.85, "dual_mae": 0.75}  # the ratios the paper keeps after Table 2


def _row(values):
    return dict(zip(CLASSES + ("Mean",), values))


# Table 3: test AUC per class, mean (std) over three seeds
TABLE3 = {
    "ResNet-34 (random)": _row([0.681, 0.647, 0.732, 0.669, 0.692, 0.596, 0.669]),
    "ViT-S (random)": _row([0.650, 0.641, 0.702, 0.663, 0.639, 0.576, 0.645]),
    "ResNet-34 (IN)": _row([0.702, 0.661, 0.770, 0.686, 0.742, 0.624, 0.697]),
    "ViT-S (IN)": _row([0.646, 0.642, 0.680, 0.663, 0.632, 0.568, 0.638]),
    "ResNet-34 (X-ray)": _row([0.722, 0.674, 0.781, 0.703, 0.760, 0.570, 0.712]),
    "ViT-S (X-ray)": _row([0.673, 0.660, 0.718, 0.679, 0.662, 0.588, 0.669]),
    "MAE (X-ray)": _row([0.747, 0.710, 0.805, 0.692, 0.813, 0.643, 0.735]),
    "dual-MAE (X-ray)": _row([0.765, 0.712, 0.828, 0.709, 0.833, 0.665, 0.752]),
}
TABLE3_STD = {
    "ResNet-34 (random)": _row([0.005, 0.005, 0.011, 0.010, 0.005, 0.005, 0.003]),
    "ViT-S (random)": _row([0.006, 0.003, 0.01, 0.014, 0.01, 0.003, 0.005]),
    "ResNet-34 (IN)": _row([0.045, 0.042, 0.034, 0.035, 0.03, 0.026, 0.032]),
    "ViT-S (IN)": _row([0.002, 0.003, 0.017, 0.011, 0.022, 0.005, 0.006]),
    "ResNet-34 (X-ray)": _row([0.014, 0.023, 0.029, 0.022, 0.031, 0.112, 0.023]),
    "ViT-S (X-ray)": _row([0.005, 0.011, 0.001, 0.007, 0.002, 0.007, 0.005]),
    "MAE (X-ray)": _row([0.010, 0.003, 0.005, 0.012, 0.017, 0.017, 0.010]),
    "dual-MAE (X-ray)": _row([0.001, 0.003, 0.000, 0.007, 0.008, 0.006, 0.003]),
}

# Table 4: mean AUC, sensitivity, precision, F1 (threshold rule not stated)
_T4 = ("auc", "sensitivity", "precision", "f1")
TABLE4 = {
    "ResNet-34 (random)": dict(zip(_T4, (0.669, 0.680, 0.510, 0.560))),
    "ViT-S (random)": dict(zip(_T4, (0.645, 0.649, 0.504, 0.539))),
    "ResNet-34 (IN)": dict(zip(_T4, (0.697, 0.698, 0.518, 0.591))),
    "ViT-S (IN)": dict(zip(_T4, (0.638, 0.674, 0.489, 0.559))),
    "ResNet-34 (X-ray)": dict(zip(_T4, (0.712, 0.746, 0.520, 0.599))),
    "ViT-S (X-ray)": dict(zip(_T4, (0.669, 0.674, 0.510, 0.557))),
    "MAE (X-ray)": dict(zip(_T4, (0.735, 0.740, 0.550, 0.602))),
    "dual-MAE (X-ray)": dict(zip(_T4, (0.752, 0.715, 0.563, 0.593))),
}

# Table 5: dual-MAE against the labelled fraction (from the text; None = not given)
TABLE5 = {
    0.01: dict(auc=0.573, sensitivity=None, precision=0.475, f1=None),
    0.10: dict(auc=0.620, sensitivity=None, precision=0.479, f1=None),
    0.50: dict(auc=0.733, sensitivity=0.730, precision=0.554, f1=0.599),
    1.00: dict(auc=0.752, sensitivity=0.715, precision=0.563, f1=0.593),
}

# Table 6: mean AUC against the labelled fraction. The ResNet-34 (random) row is garbled in our
# copy ("0.639 0.551 ... 0.667"); the text says every method but ViT-S (IN), MAE and dual-MAE is
# below 0.6 at 10%, so 0.551 is the 10% value.
TABLE6 = {
    "ResNet-34 (random)": {0.10: 0.551, 0.50: 0.639, 1.00: 0.667},
    "ViT-S (random)": {0.10: 0.560, 0.50: 0.579, 1.00: 0.644},
    "ResNet-34 (IN)": {0.10: 0.589, 0.50: 0.639, 1.00: 0.694},
    "ViT-S (IN)": {0.10: 0.623, 0.50: 0.661, 1.00: 0.655},
    "ResNet-34 (X-ray)": {0.10: 0.569, 0.50: 0.670, 1.00: 0.694},
    "ViT-S (X-ray)": {0.10: 0.576, 0.50: 0.611, 1.00: 0.654},
    "MAE (X-ray)": {0.10: 0.636, 0.50: 0.686, 1.00: 0.732},
    "dual-MAE (X-ray)": {0.10: 0.620, 0.50: 0.733, 1.00: 0.752},
}
