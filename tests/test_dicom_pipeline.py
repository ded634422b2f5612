"""DICOM through pydicom's own display pipeline: the files of ``write_dicom`` (every variant) and
small files written here with plain pydicom, decoded by ``read_image`` and compared with

- a reference computed here from pydicom's own functions (``apply_modality_lut``,
  ``apply_voi_lut``), scaled over the VOI output range of PS3.3 C.11.2 as written below, and the
  inversion rule written here (MONOCHROME1 or Presentation LUT Shape INVERSE: one inversion);
- values computed by hand for 2 x 4 images (a VOI LUT sequence with a first mapped value after a
  rescale, a Modality LUT sequence, each inversion case).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from cxr_keras.data.datasets import pedicxr
from cxr_keras.data.images import can_compress_dicom, decode_bytes, read_image, write_dicom
from cxr_keras.io import DataError

try:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space
except ImportError:  # pydicom 2.4
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut, convert_color_space

PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3


def _plain(path, pixels, *, photometric="MONOCHROME2", bits_stored=12, **attributes):
    """A minimal DX file written with pydicom only; ``attributes`` set as they are (sequences
    built by the caller)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[:2]
    colour = pixels.ndim == 3
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    for k, v in attributes.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype("u1" if colour else "<u2").tobytes()
    if PYDICOM3:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(path), ds, write_like_original=False)
    return path


def _lut_item(descriptor, data):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new(0x00283002, "US", list(descriptor))  # LUT Descriptor: entries, first mapped, bits
    item.add_new(0x00283006, "OW", np.asarray(data, "<u2").tobytes())  # LUT Data
    return item


def _reference(path) -> np.ndarray:
    """The decoded grey image from pydicom's own functions and the rules written here."""
    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if ds.SamplesPerPixel > 1:
        assert ds.PhotometricInterpretation in ("RGB", "YBR_RCT", "YBR_ICT")  # decoded to RGB
        y = arr.astype(np.float64) @ [0.299, 0.587, 0.114] / (2**ds.BitsStored - 1)
    else:
        m = apply_modality_lut(arr, ds)
        if "VOILUTSequence" in ds:  # C.11.2.1.1: output range 0 .. 2**bits - 1
            out = apply_voi_lut(m if m.dtype.kind in "iu" else np.floor(m).astype(int), ds)
            y = out / (2.0 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1)
        elif "WindowCenter" in ds:  # C.11.2.1.2: ymin .. ymax, the range the modality stage outputs
            if "ModalityLUTSequence" in ds:  # C.11.1.1.1: unsigned on the LUT's bits
                lo, hi = 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
            else:
                lo, hi = 0.0, 2.0 ** ds.BitsStored - 1  # unsigned stored values here
                slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
                lo, hi = lo * slope + intercept, hi * slope + intercept
            with np.errstate(over="ignore"):
                y = (apply_voi_lut(m, ds) - lo) / (hi - lo)
        else:
            y = (m - m.min()) / (m.max() - m.min())
    invert = ds.PhotometricInterpretation == "MONOCHROME1" or ds.get("PresentationLUTShape") == "INVERSE"
    y = np.clip(y, 0, 1) * 255.0
    return np.round(255.0 - y if invert else y).astype(np.uint8)


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal(120, 60, (40, 36)), 0, 255).astype(np.uint8)
    img[:4], img[-4:] = 0, 255  # the full range (min-max variants give the same picture)
    return img


VARIANTS = {
    "default": {},
    "monochrome1": {"monochrome1": True},
    "monochrome1_inverse": {"monochrome1": True, "presentation_inverse": True},
    "monochrome2_inverse": {"presentation_inverse": True},
    "modality_lut": {"modality": "lut"},
    "voi_lut": {"voi": "lut"},
    "sigmoid": {"voi": "sigmoid"},
    "no_voi": {"voi": None},
    "modality_lut_voi_lut_mono1": {"modality": "lut", "voi": "lut", "monochrome1": True},
    "modality_lut_sigmoid": {"modality": "lut", "voi": "sigmoid"},
    "frames": {"frames": 3, "voi": "lut"},
    "rgb": {"rgb": True},
    "rle": {"compression": "rle", "voi": "sigmoid"},
    "jpeg2000": {"compression": "jpeg2000", "monochrome1": True, "presentation_inverse": True},
    "jpegls": {"compression": "jpegls", "frames": 2, "modality": "lut"},
    "jpeg2000_rgb": {"compression": "jpeg2000", "rgb": True},
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_writer_variant_decodes_as_pydicom_and_to_the_picture(name, picture, tmp_path):
    options = VARIANTS[name]
    if "compression" in options and not can_compress_dicom(options["compression"]):
        pytest.skip(f"{options['compression']}: needs pydicom >= 3 and its plugin (the dicom extra)")
    path = write_dicom(tmp_path / f"{name}.dcm", picture, **options)
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == picture.shape
    np.testing.assert_array_equal(got, _reference(path))
    assert np.abs(got.astype(int) - picture).max() <= 1  # the phantom stays the same picture
    np.testing.assert_array_equal(decode_bytes(path.read_bytes(), path), got)


def test_writer_variants_store_what_they_say(picture, tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "a.dcm", picture, modality="lut", voi="lut", frames=2))
    assert "ModalityLUTSequence" in ds and "RescaleSlope" not in ds and "VOILUTSequence" in ds
    assert ds.NumberOfFrames == 2 and "WindowCenter" not in ds
    raw = ds.pixel_array[0]  # a reader that skips the modality LUT sees a negative
    assert np.corrcoef(raw.ravel().astype(float), picture.ravel().astype(float))[0, 1] < -0.9
    ds = pydicom.dcmread(write_dicom(tmp_path / "s.dcm", picture, voi="sigmoid", monochrome1=True,
                                     presentation_inverse=True))
    assert ds.VOILUTFunction == "SIGMOID" and ds.PresentationLUTShape == "INVERSE"
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    with pytest.raises(ValueError, match="rgb"):
        write_dicom(tmp_path / "x.dcm", picture, rgb=True, monochrome1=True)


def test_voi_lut_sequence_after_rescale_by_hand(tmp_path):
    raw = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.uint16)
    lut = [0, 10, 20, 40, 80, 120, 200, 255]  # 8 entries from input 10, 8 bits
    path = _plain(tmp_path / "v.dcm", raw, RescaleSlope=2, RescaleIntercept=4,
                  VOILUTSequence=pydicom.Sequence([_lut_item([8, 10, 8], lut)]),
                  WindowCenter=2048, WindowWidth=4096)  # the LUT wins over the window
    # modality 2x + 4: 4, 6, 8, 10 | 12, 14, 16, 18; inputs < 10 -> the first entry, 10 + k ->
    # entry k, past the end -> the last; the output range of an 8-bit LUT is 0..255 already
    np.testing.assert_array_equal(read_image(path), [[0, 0, 0, 0], [20, 80, 200, 255]])
    np.testing.assert_array_equal(read_image(path), _reference(path))
    # a 12-bit LUT: the output range 0..4095 is scaled to 0..255
    path = _plain(tmp_path / "v12.dcm", raw,
                  VOILUTSequence=pydicom.Sequence([_lut_item([4, 2, 12], [0, 1000, 4095, 2048])]))
    # inputs 0, 1 -> entry 0; 2..5 -> 0, 1000, 4095, 2048; 6, 7 -> 2048. x 255 / 4095
    np.testing.assert_array_equal(read_image(path), [[0, 0, 0, 62], [255, 128, 128, 128]])


def test_eight_bit_voi_lut_with_more_than_256_entries(tmp_path):
    raw = np.array([[0, 255, 256, 1000, 4095]], np.uint16)
    seq = pydicom.Sequence([_lut_item([4096, 0, 8], np.arange(4096) // 16)])  # x // 16, 0..255
    # entries past 255 are reached (pydicom 3.0.2's own apply_voi wraps them: 0, 15, 0, 14, 15)
    np.testing.assert_array_equal(read_image(_plain(tmp_path / "l8.dcm", raw, VOILUTSequence=seq)),
                                  [[0, 15, 16, 62, 255]])


def test_modality_lut_sequence_by_hand(tmp_path):
    raw = np.array([[0, 1], [2, 3]], np.uint16)
    seq = pydicom.Sequence([_lut_item([4, 0, 16], [1000, 500, 250, 0])])
    # no VOI: min-max of the LUT's output 1000, 500, 250, 0 (x 255 / 1000: 255, 127.5, 63.75, 0)
    np.testing.assert_array_equal(read_image(_plain(tmp_path / "m.dcm", raw, ModalityLUTSequence=seq)),
                                  [[255, 128], [64, 0]])
    # with a window on the LUT's values: C.11.2.1.2.1 over [-0.5, 999.5] (c 499.5, w 1001);
    # ((x - 499) / 1000 + 0.5) x 255: 1000 -> 255, 500 -> 127.76, 250 -> 64.00, 0 -> 0.26
    path = _plain(tmp_path / "mw.dcm", raw, ModalityLUTSequence=seq, WindowCenter=499.5, WindowWidth=1001)
    np.testing.assert_array_equal(read_image(path), [[255, 128], [64, 0]])
    np.testing.assert_array_equal(read_image(path), _reference(path))


@pytest.mark.parametrize("photometric,shape,inverted", [
    ("MONOCHROME2", None, False), ("MONOCHROME2", "IDENTITY", False), ("MONOCHROME2", "INVERSE", True),
    ("MONOCHROME1", None, True), ("MONOCHROME1", "INVERSE", True), ("MONOCHROME1", "IDENTITY", True)])
def test_one_inversion_for_monochrome1_or_presentation_lut_shape_inverse(tmp_path, photometric, shape,
                                                                        inverted):
    raw = np.array([[0, 1365], [2730, 4095]], np.uint16)
    extra = {"PresentationLUTShape": shape} if shape else {}
    path = _plain(tmp_path / "p.dcm", raw, photometric=photometric, WindowCenter=2048, WindowWidth=4096, **extra)
    # LINEAR over 0..4095: x / 4095 x 255 = 0, 85, 170, 255; inverted at most once
    want = np.array([[0, 85], [170, 255]])
    np.testing.assert_array_equal(read_image(path), 255 - want if inverted else want)
    np.testing.assert_array_equal(read_image(path), _reference(path))


def test_ybr_full_colour_is_converted_then_luma(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [100, 100, 100]]], np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    got = read_image(_plain(tmp_path / "y.dcm", ybr, photometric="YBR_FULL"))
    want = rgb.astype(float) @ [0.299, 0.587, 0.114]  # 76.2, 149.7, 29.1, 100
    assert np.abs(got.astype(float) - want).max() <= 1.5  # YBR is rounded to 8 bits


def test_missing_decoder_plugin_names_the_extra_and_the_file(picture, tmp_path, monkeypatch):
    if not PYDICOM3 or not can_compress_dicom("jpeg2000"):
        pytest.skip("needs pydicom >= 3 and pylibjpeg-openjpeg to write the file")
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "j2k-file.dcm", picture, compression="jpeg2000")
    decoder = get_decoder(JPEG2000Lossless)
    # pydicom's state when no plugin for the syntax is installed: no available plugin
    monkeypatch.setattr(decoder, "_available", {})
    for call in (lambda: read_image(path), lambda: decode_bytes(path.read_bytes(), path)):
        with pytest.raises(DataError) as e:
            call()
        text = str(e.value)
        assert "j2k-file.dcm" in text and "JPEG 2000" in text and 'pip install "cxr-keras[dicom]"' in text


def test_transfer_syntax_without_any_decoder_names_the_file(tmp_path):
    path = _plain(tmp_path / "odd.dcm", np.zeros((2, 2), np.uint16))
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(str(path))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom decodes no video
    ds.PixelData = encapsulate([b"\0" * 16])
    ds["PixelData"].VR = "OB"
    ds.save_as(str(path))
    with pytest.raises(DataError, match="odd.dcm"):
        read_image(path)


def test_pedicxr_phantom_variants_keep_labels_and_pictures(tmp_path, monkeypatch):
    pedicxr.write_phantom(tmp_path / "v", n=24, size=48, seed=2, workers=1, progress=False)
    monkeypatch.setattr(pedicxr, "dicom_variant", lambda i, mono1, codec: {"monochrome1": mono1})
    pedicxr.write_phantom(tmp_path / "p", n=24, size=48, seed=2, workers=1, progress=False)
    for name in pedicxr.LABEL_FILES.values():
        assert (tmp_path / "v" / name).read_bytes() == (tmp_path / "p" / name).read_bytes()
    files = sorted((tmp_path / "v").glob("*/*.dicom"))
    assert len(files) == 24 and len(list((tmp_path / "p").glob("*/*.dicom"))) == 24
    kinds = set()
    for f in files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        kinds |= {k for k in ("VOILUTSequence", "ModalityLUTSequence", "NumberOfFrames",
                              "PresentationLUTShape") if k in ds}
        kinds |= {"sigmoid"} if ds.get("VOILUTFunction") == "SIGMOID" else set()
        kinds |= {"compressed"} if ds.file_meta.TransferSyntaxUID.is_compressed else set()
        got = read_image(f)
        np.testing.assert_array_equal(got, _reference(f))
        plain = read_image(tmp_path / "p" / f.relative_to(tmp_path / "v"))
        assert np.abs(got.astype(int) - plain).max() <= 1
    want = {"VOILUTSequence", "ModalityLUTSequence", "NumberOfFrames", "PresentationLUTShape", "sigmoid"}
    if can_compress_dicom("jpegls") or can_compress_dicom("jpeg2000"):
        want.add("compressed")
    assert want <= kinds, want - kinds
