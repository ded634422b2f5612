"""Label harmonisation (cxr_keras.data.harmonise) on hand-written tables: every expected cell is
written out here, not recomputed by the mapping."""

import numpy as np
import pandas as pd
import pytest

from cxr_keras.data import VOCABULARY, harmonise
from cxr_keras.data.findings import CLASS_MAPPINGS, EXTRA_FINDINGS, MAPPINGS, canonical_names, kleene_or
from cxr_keras.io import DataError

nan = np.nan


def table(dataset, labels, rows, **extra):
    """A reader-shaped table: path, split, the label columns, attrs as finish_table sets them."""
    df = pd.DataFrame(rows, columns=list(labels)).astype("float32")
    df.insert(0, "path", [f"/img/{i}.png" for i in range(len(df))])
    df.insert(1, "split", "test")
    for k, v in extra.items():
        df[k] = v
    df.attrs = {"dataset": dataset, "root": "/img", "labels": list(labels)}
    return df


def test_default_vocabulary_is_torchxrayvisions():
    # torchxrayvision datasets.default_pathologies, in its order
    assert VOCABULARY == (
        "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
        "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass",
        "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum")


def test_nih_effusion_and_chexpert_pleural_effusion_land_in_one_column():
    nih = table("nih", ["Effusion", "Pleural_Thickening", "Mass"], [[1, 0, 0], [0, 1, 1]],
                patient_id=["p1", "p2"])
    chx = table("chexpert", ["Pleural Effusion", "Lung Opacity", "Support Devices"],
                [[0, 1, 1], [1, nan, 0], [nan, 0, 1]])
    vocab = ("Effusion", "Pleural_Thickening", "Lung Opacity", "Mass")
    a, b = harmonise(nih, vocab), harmonise(chx, vocab)
    assert list(a.columns) == ["path", "split", "patient_id", *vocab]
    assert list(b.columns) == ["path", "split", *vocab]
    np.testing.assert_array_equal(a[list(vocab)].to_numpy(), [[1, 0, nan, 0], [0, 1, nan, 1]])
    np.testing.assert_array_equal(b[list(vocab)].to_numpy(),
                                  [[0, nan, 1, nan], [1, nan, nan, nan], [nan, nan, 0, nan]])
    both = pd.concat([a, b], ignore_index=True)
    np.testing.assert_array_equal(both["Effusion"], [1, 0, 0, 1, nan])
    assert a.attrs["labels"] == b.attrs["labels"] == list(vocab)
    assert b.attrs["harmonised"] == {"vocabulary": list(vocab),
                                     "sources": {"Effusion": ["Pleural Effusion"],
                                                 "Lung Opacity": ["Lung Opacity"]},
                                     "dropped": ["Support Devices"]}
    assert a["Effusion"].dtype == np.float32
    assert nih.attrs["labels"] == ["Effusion", "Pleural_Thickening", "Mass"]  # input untouched


def test_default_vocabulary_on_full_nih_and_chexpert_columns():
    nih = table("nih", MAPPINGS["nih"], [[1] * 14])
    chx = table("chexpert", MAPPINGS["chexpert"], [[1] * 14])
    a, b = harmonise(nih), harmonise(chx)
    assert a.attrs["labels"] == b.attrs["labels"] == list(VOCABULARY)
    labelled_a = [v for v in VOCABULARY if a[v].notna().all()]
    labelled_b = [v for v in VOCABULARY if b[v].notna().all()]
    assert labelled_a == ["Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema",
                          "Emphysema", "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening",
                          "Cardiomegaly", "Nodule", "Mass", "Hernia"]
    assert labelled_b == ["Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion",
                          "Pneumonia", "Cardiomegaly", "Lung Lesion", "Fracture", "Lung Opacity",
                          "Enlarged Cardiomediastinum"]
    assert sorted(set(labelled_a) & set(labelled_b)) == [
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia",
        "Pneumothorax"]
    assert b.attrs["harmonised"]["dropped"] == ["No Finding", "Pleural Other", "Support Devices"]
    assert a.attrs["harmonised"]["dropped"] == []


def test_pedicxr_pneumonia_columns_are_ored_in_three_valued_logic():
    cols = ["No finding", "Brocho-pneumonia", "Pneumonia", "Other disease", "Diagphramatic hernia"]
    ped = table("pedicxr", cols, [[0, 1, 0, 0, 0], [0, 0, 0, 1, 1], [1, 0, 0, 0, 0]])
    out = harmonise(ped, ("Pneumonia", "Hernia", "No Finding", "Bronchitis"))
    np.testing.assert_array_equal(out[["Pneumonia", "Hernia", "No Finding", "Bronchitis"]].to_numpy(),
                                  [[1, 0, 0, nan], [0, 1, 0, nan], [0, 0, 1, nan]])
    assert out.attrs["harmonised"]["sources"]["Pneumonia"] == ["Brocho-pneumonia", "Pneumonia"]
    assert out.attrs["harmonised"]["dropped"] == ["Other disease"]
    # 1 wins over NaN; 0 beside NaN is not a known negative; all 0 is 0; all NaN is NaN
    np.testing.assert_array_equal(kleene_or([[1, nan], [0, nan], [0, 0], [nan, nan], [0, 1]]),
                                  [1, nan, 0, nan, 1])


def test_multiclass_tables_become_findings():
    ker = pd.DataFrame({"path": ["a", "b", "c"], "split": "train", "patient_id": ["1", "2", "3"],
                        "label": [0, 2, 1], "subtype": ["normal", "viral", "bacterial"]})
    ker.attrs = {"dataset": "kermany", "classes": ["normal", "bacterial", "viral"]}
    out = harmonise(ker, ("Pneumonia", "Effusion", "No Finding"))
    assert list(out.columns) == ["path", "split", "patient_id", "Pneumonia", "Effusion",
                                 "No Finding", "subtype"]
    np.testing.assert_array_equal(out[["Pneumonia", "Effusion", "No Finding"]].to_numpy(),
                                  [[0, nan, 1], [1, nan, 0], [1, nan, 0]])
    assert "classes" not in out.attrs and out.attrs["harmonised"]["sources"] == {
        "Pneumonia": ["label"], "No Finding": ["label"]}
    tb = pd.DataFrame({"path": ["a", "b", "c"], "split": "val", "label": [2, 0, 1]})
    tb.attrs = {"dataset": "tbx11k", "classes": ["healthy", "sick_non_tb", "tb"]}
    out = harmonise(tb, ("Tuberculosis", "No Finding"))
    np.testing.assert_array_equal(out[["Tuberculosis", "No Finding"]].to_numpy(),
                                  [[1, 0], [0, 1], [0, 0]])
    assert harmonise(tb)["Pneumonia"].isna().all()  # the default vocabulary has no Tuberculosis
    assert harmonise(tb).attrs["harmonised"]["dropped"] == ["label"]


def test_harmonised_table_maps_by_identity():
    chx = table("chexpert", ["Pleural Effusion", "Edema"], [[1, 0]])
    once = harmonise(chx)
    twice = harmonise(once, ("Edema", "Effusion"))
    np.testing.assert_array_equal(twice[["Edema", "Effusion"]].to_numpy(), [[0, 1]])
    assert twice.attrs["harmonised"]["sources"] == {"Edema": ["Edema"], "Effusion": ["Pleural Effusion"]}


def test_every_mapping_lands_on_a_known_name():
    known = set(VOCABULARY) | set(EXTRA_FINDINGS)
    for table_ in MAPPINGS.values():
        assert {v for v in table_.values() if v is not None} <= known
    for table_ in CLASS_MAPPINGS.values():
        assert {f for fs in table_.values() for f in fs} <= known
    # every reader's own columns and classes are mapped
    from cxr_keras.data.datasets import chexpert, kermany, montgomery, nih, pedicxr, tbx11k
    assert set(MAPPINGS["nih"]) == set(nih.LABELS)
    assert set(MAPPINGS["chexpert"]) == set(chexpert.LABELS)
    assert set(MAPPINGS["pedicxr"]) == set(pedicxr.COLUMNS)
    assert set(CLASS_MAPPINGS["kermany"]) == set(kermany.THREE + kermany.BINARY)
    assert set(CLASS_MAPPINGS["tbx11k"]) == set(tbx11k.CLASSES)
    assert set(CLASS_MAPPINGS["montgomery"]) == set(montgomery.CLASSES)
    assert canonical_names("chexpert", ["Pleural Effusion", "No Finding"]) == {
        "Pleural Effusion": "Effusion", "No Finding": "No Finding"}


@pytest.mark.parametrize("make,kwargs,message", [
    (lambda: table("nih", ["Effusion", "Pleural Effusion"], [[1, 0]]), {},
     r"nih has no mapping for column\(s\) \['Pleural Effusion'\]"),
    (lambda: table("mura", ["x"], [[1]]), {}, "'mura' has no chest finding"),
    (lambda: table("vindr", ["x"], [[1]]), {}, "no label mapping for dataset 'vindr'; known: nih"),
    (lambda: table("nih", ["Effusion"], [[1]]), {"vocabulary": ("Efusion", "Effusion", "Effusion")},
     r"unknown finding\(s\) \['Efusion'\], repeated \['Effusion'\]"),
    (lambda: table("nih", ["Effusion"], [[1]]), {"vocabulary": "Effusion"}, "the string .Effusion."),
    (lambda: pd.DataFrame({"path": ["a"], "label": [3]}).pipe(
        lambda d: d.attrs.update(dataset="kermany", classes=["normal", "pneumonia"]) or d), {},
     r"'label' holds value\(s\) \[3\] outside 0..1"),
    (lambda: pd.DataFrame({"path": ["a"], "label": [0]}).pipe(
        lambda d: d.attrs.update(dataset="tbx11k", classes=["healthy", "latent"]) or d), {},
     r"tbx11k has no mapping for class\(es\) \['latent'\]"),
    (lambda: pd.DataFrame({"path": ["a"], "Effusion": [1.0]}), {}, "no attrs\\['dataset'\\]"),
])
def test_errors_name_the_problem(make, kwargs, message):
    with pytest.raises(DataError, match=message):
        harmonise(make(), **kwargs)
