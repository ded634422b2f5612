"""Numbers reported by Li et al. 2023 (MLRFNet, IEEE Access), transcribed from Tables 5-11.

NIH labels use the Data_Entry spelling; CheXpert the CSV's observation names. "Mean" is the
paper's own average. Rows of other methods are the paper's comparison rows (SOTA baselines).
"""

NIH_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
              "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
              "Pleural_Thickening", "Hernia")
CHEXPERT_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def _row(values, labels):
    return dict(zip(list(labels) + ["Mean"], values))


# Table 5: test AUC on ChestX-Ray14.
TABLE5 = {name: _row(v, NIH_LABELS) for name, v in {
    "DCNN": (0.700, 0.810, 0.759, 0.661, 0.693, 0.669, 0.658, 0.799, 0.703, 0.805, 0.833, 0.786, 0.684, 0.872, 0.745),
    "SSGE": (0.792, 0.892, 0.840, 0.714, 0.848, 0.812, 0.733, 0.885, 0.753, 0.848, 0.948, 0.827, 0.795, 0.932, 0.830),
    "LLAGNet": (0.783, 0.885, 0.834, 0.703, 0.841, 0.790, 0.729, 0.877, 0.754, 0.851, 0.939, 0.832, 0.798, 0.916, 0.824),
    "CheXGCN": (0.786, 0.893, 0.832, 0.699, 0.840, 0.800, 0.739, 0.876, 0.751, 0.850, 0.944, 0.834, 0.795, 0.929, 0.826),
    "A3Net": (0.779, 0.895, 0.836, 0.710, 0.834, 0.777, 0.737, 0.878, 0.759, 0.855, 0.933, 0.838, 0.791, 0.938, 0.826),
    "ConsultNet": (0.785, 0.899, 0.835, 0.699, 0.838, 0.775, 0.738, 0.871, 0.763, 0.850, 0.924, 0.831, 0.776, 0.922, 0.822),
    "CheXGAT": (0.787, 0.879, 0.837, 0.699, 0.839, 0.793, 0.741, 0.879, 0.755, 0.851, 0.945, 0.842, 0.794, 0.931, 0.827),
    "MXT": (0.798, 0.896, 0.842, 0.719, 0.856, 0.809, 0.758, 0.879, 0.759, 0.849, 0.906, 0.847, 0.800, 0.913, 0.830),
    "PCAN": (0.785, 0.897, 0.837, 0.706, 0.834, 0.786, 0.730, 0.871, 0.763, 0.854, 0.921, 0.817, 0.791, 0.943, 0.824),
    "F-PCAM": (0.777, 0.890, 0.836, 0.703, 0.833, 0.796, 0.732, 0.876, 0.745, 0.847, 0.933, 0.824, 0.793, 0.905, 0.821),
    "PCSANet": (0.807, 0.910, 0.879, 0.698, 0.824, 0.750, 0.750, 0.850, 0.802, 0.888, 0.890, 0.812, 0.768, 0.915, 0.825),
    "MLRFNet": (0.833, 0.915, 0.884, 0.717, 0.858, 0.799, 0.760, 0.900, 0.826, 0.905, 0.941, 0.821, 0.810, 0.963, 0.853),
}.items()}

# Table 6: AUC on the CheXpert validation set (valid.csv), by uncertainty policy.
# Our policy names: "ones" (U-Ones), "zeros" (U-Zeros), "mixed" (U-O&U-Z).
TABLE6 = [
    ("Ensemble", "ones", (0.858, 0.832, 0.899, 0.941, 0.934, 0.893)),
    ("ConsultNet", "ones", (0.847, 0.868, 0.923, 0.924, 0.926, 0.898)),
    ("PCAN", "ones", (0.848, 0.865, 0.908, 0.912, 0.940, 0.895)),
    ("DCNN", "U-O&CT&LSR", (0.825, 0.855, 0.937, 0.930, 0.923, 0.894)),
    ("MLRFNet", "ones", (0.861, 0.935, 0.930, 0.835, 0.923, 0.897)),
    ("Ensemble", "zeros", (0.811, 0.840, 0.932, 0.929, 0.931, 0.889)),
    ("ConsultNet", "zeros", (0.804, 0.874, 0.940, 0.894, 0.923, 0.889)),
    ("DCNN", "zeros", (0.745, 0.813, 0.882, 0.921, 0.930, 0.858)),
    ("MLRFNet", "zeros", (0.851, 0.950, 0.914, 0.824, 0.922, 0.892)),
    ("F-PCAM", "mixed", (0.954, 0.857, 0.924, 0.940, 0.930, 0.901)),
    ("MLRFNet", "mixed", (0.848, 0.867, 0.937, 0.937, 0.930, 0.904)),
]
TABLE6 = [(name, policy, _row(v, CHEXPERT_LABELS)) for name, policy, v in TABLE6]
MLRFNET_CHEXPERT = {policy: row for name, policy, row in TABLE6 if name == "MLRFNet"}

# Table 7: mean thresholded metrics on the ChestX-Ray14 test set, in percent.
TABLE7 = {name: dict(zip(("accuracy", "sensitivity", "specificity", "f1"), v)) for name, v in {
    "LLAGNet": (76.7, 74.3, 76.9, 73.7),
    "CheXGCN": (76.8, 74.6, 77.0, 73.9),
    "SSGE": (77.2, 74.9, 77.3, 74.1),
    "PCAN": (77.5, 75.3, 77.6, 74.3),
    "PCSANet": (77.0, 74.5, 77.1, 73.8),
    "MLRFNet": (79.3, 76.2, 79.6, 75.9),
}.items()}

# Table 8: cost of one image at test time (GPU not stated) and mean AUC.
TABLE8 = {name: dict(zip(("gflops", "seconds_per_image", "auc"), v)) for name, v in {
    "SSGE": (17.74, 0.059, 0.830),
    "CheXGCN": (17.86, 0.061, 0.826),
    "LLAGNet": (34.96, 0.094, 0.824),
    "PCAN": (2.86, 0.054, 0.830),
    "PCSANet": (3.92, 0.072, 0.825),
    "MLRFNet": (4.29, 0.046, 0.853),
}.items()}

# Tables 9-11: mean AUC of the ablations (CheXpert with the mixed policy; NIH test set).
ABLATIONS = {
    # name: (table, description, {"chexpert": auc, "nih": auc})
    "full": ("9-11", "MLRFNet (ECA + MRFC, Res2Net50, BFL)", {"chexpert": 0.904, "nih": 0.853}),
    "no_mrfc": ("9", "ECA, MRFC replaced by GAP + FC", {"chexpert": 0.882, "nih": 0.845}),
    "no_eca": ("9", "without ECA", {"chexpert": 0.900, "nih": 0.848}),
    "resnet50": ("10", "ResNet50 backbone", {"chexpert": 0.885, "nih": 0.844}),
    "densenet121": ("10", "DenseNet121 backbone", {"chexpert": 0.892, "nih": 0.846}),
    "bce": ("11", "binary cross-entropy loss", {"chexpert": 0.884, "nih": 0.846}),
    "focal": ("11", "focal loss", {"chexpert": 0.894, "nih": 0.849}),
}
