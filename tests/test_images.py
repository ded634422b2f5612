"""Decoding against independent references: DICOM files written here with plain pydicom (not our
writer) and decoded by ``read_image``, compared with pixels computed by hand from the raw values
(modality rescale, the VOI window functions of DICOM PS3.3 C.11.2.1.2, MONOCHROME1 inversion,
scaled to ``read_image``'s 0..255 ``uint8``); 8/16-bit and RGB PNGs written with plain OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest

from cxr_keras.data.images import decode_bytes, read_image
from cxr_keras.io import DataError


def _dicom(path, pixels, *, photometric="MONOCHROME2", slope=None, intercept=None, center=None,
           width=None, voi_function=None, bits_stored=16):
    """A minimal DX file in explicit VR little endian, written with pydicom only. ``pixels``:
    (rows, cols) or (frames, rows, cols) uint16 / int16 (signed: PixelRepresentation 1)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    ds.PixelData = pixels.astype("<i2" if ds.PixelRepresentation else "<u2").tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    else:  # pydicom 2.4, setup.cfg's lower bound
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(path), ds, write_like_original=False)
    return path


def _linear(x, c, w):
    """PS3.3 C.11.2.1.2.1 (LINEAR) with ymin = 0, ymax = 255, as floats (before rounding)."""
    x = np.asarray(x, np.float64)
    if w == 1:  # the standard's threshold case: the middle branch is empty
        return np.where(x <= c - 0.5, 0.0, 255.0)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 255.0, y))


def test_rescale_then_narrow_window(tmp_path):
    raw = np.array([[0, 100, 200, 300], [400, 500, 600, 700], [800, 900, 1000, 4095]], np.uint16)
    path = _dicom(tmp_path / "a.dcm", raw, slope=2, intercept=-1024, center=40, width=400)
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (3, 4)
    # modality values 2x - 1024: -1024 ... -224 (<= -160: 0), -24, 176, 376 ... (> 239: 255);
    # -24 -> ((-24 - 39.5) / 399 + 0.5) * 255 = 86.92, 176 -> ((176 - 39.5) / 399 + 0.5) * 255 = 214.74
    np.testing.assert_array_equal(got, [[0, 0, 0, 0], [0, 87, 215, 255], [255, 255, 255, 255]])
    # the same through the formula on a full ramp of raw values (the window's whole width)
    ramp = np.arange(400, 700, dtype=np.uint16).reshape(15, 20)
    path = _dicom(tmp_path / "ramp.dcm", ramp, slope=2, intercept=-1024, center=40, width=400)
    np.testing.assert_array_equal(read_image(path), np.round(_linear(2.0 * ramp - 1024, 40, 400)))
    # decode_bytes (the cache's route) reads the same file's bytes identically
    np.testing.assert_array_equal(decode_bytes(path.read_bytes(), path), read_image(path))


def test_signed_pixels_with_fractional_slope(tmp_path):
    raw = np.array([[-1000, -500], [0, 500]], np.int16)
    path = _dicom(tmp_path / "s.dcm", raw, slope=0.5, intercept=100, center=0, width=1001)
    # modality: -400, -150, 100, 350; window [-500.5, 499.5]: ((x + 0.5) / 1000 + 0.5) * 255
    # = 25.63, 89.38, 153.13, 216.88
    np.testing.assert_array_equal(read_image(path), [[26, 89], [153, 217]])


def test_no_window_uses_the_full_range(tmp_path):
    raw = np.array([[0, 1000], [3000, 4000]], np.uint16)
    # no VOI attributes: the documented min-max stretch of the rescaled values
    np.testing.assert_array_equal(read_image(_dicom(tmp_path / "n.dcm", raw)), [[0, 64], [191, 255]])
    path = _dicom(tmp_path / "r.dcm", raw, slope=3, intercept=-500)  # linear: same picture
    np.testing.assert_array_equal(read_image(path), [[0, 64], [191, 255]])


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    raw = np.array([[0, 1023], [2048, 4095]], np.uint16)
    path = _dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1", center=2048, width=4096,
                  bits_stored=12)
    # linear: (x - 2047.5) / 4095 + 0.5 -> 0, 0.2498, 0.5001, 1 (x 255: 0, 63.70, 127.53, 255);
    # MONOCHROME1 shows the low end white: 255 - y = 255, 191.30, 127.47, 0
    np.testing.assert_array_equal(read_image(path), [[255, 191], [127, 0]])
    m2 = _dicom(tmp_path / "m2.dcm", raw, center=2048, width=4096, bits_stored=12)
    np.testing.assert_array_equal(read_image(m2), [[0, 64], [128, 255]])


def test_multi_frame_reads_the_first_frame(tmp_path):
    frame0 = np.array([[0, 10, 20, 30, 40], [50, 60, 70, 80, 90]], np.uint16)
    frames = np.stack([frame0, frame0 + 4000, np.full_like(frame0, 7)])
    got = read_image(_dicom(tmp_path / "mf.dcm", frames))
    # the first frame, stretched over its own range 0..90: x * 255 / 90
    np.testing.assert_array_equal(got, [[0, 28, 57, 85, 113], [142, 170, 198, 227, 255]])
    with_window = read_image(_dicom(tmp_path / "mfw.dcm", frames, center=45, width=91))
    np.testing.assert_array_equal(with_window, np.round(_linear(frame0, 45, 91)))


def test_multi_frame_with_three_columns_is_not_colour(tmp_path):
    # (frames, rows, 3) must not be mistaken for one RGB frame: SamplesPerPixel is 1
    frame0 = np.array([[0, 50, 100], [150, 200, 250]], np.uint16)
    frames = np.stack([frame0, 1000 - frame0])
    got = read_image(_dicom(tmp_path / "mf3.dcm", frames))
    np.testing.assert_array_equal(got, [[0, 51, 102], [153, 204, 255]])  # x * 255 / 250


def test_window_width_one_is_a_threshold(tmp_path):
    raw = np.array([[99, 100], [101, 4000]], np.uint16)
    # PS3.3 C.11.2.1.2.1 with w = 1: x <= c - 0.5 -> ymin, else ymax (c = 100.5: threshold 100)
    got = read_image(_dicom(tmp_path / "t.dcm", raw, center=100.5, width=1))
    np.testing.assert_array_equal(got, [[0, 0], [255, 255]])


def test_voi_lut_function_linear_exact_and_sigmoid(tmp_path):
    raw = np.array([[0, 25, 52], [75, 100, 200]], np.uint16)
    exact = read_image(_dicom(tmp_path / "le.dcm", raw, center=50, width=100, voi_function="LINEAR_EXACT"))
    # C.11.2.1.3.2: ((x - c) / w + 0.5) * 255 inside (c - w/2, c + w/2]: 0, 63.75, 132.6, 191.25,
    # 255, 255 (LINEAR, the default, would give 0, 64.39, 133.94, 193.18, 255, 255)
    np.testing.assert_array_equal(exact, [[0, 64, 133], [191, 255, 255]])
    sig = read_image(_dicom(tmp_path / "sg.dcm", raw, center=50, width=100, voi_function="SIGMOID"))
    # C.11.2.1.3.1: 255 / (1 + exp(-4 (x - c) / w)): 30.40, 68.58, 132.60, 186.42, 224.60, 254.37
    want = 255.0 / (1.0 + np.exp(-4.0 * (raw.astype(np.float64) - 50) / 100))
    np.testing.assert_array_equal(sig, np.round(want))
    assert sig.tolist() == [[30, 69, 133], [186, 225, 254]]


def test_multi_valued_window_takes_the_first_pair(tmp_path):
    raw = np.array([[0, 100], [200, 300]], np.uint16)
    path = _dicom(tmp_path / "mv.dcm", raw, center=[150, 1000], width=[201, 5000])
    # first pair c = 150, w = 201: window [49.5, 249.5]; ((x - 149.5) / 200 + 0.5) * 255
    # = <= 49.5: 0, 100 -> 64.39, 200 -> 191.89, 300 -> 255
    np.testing.assert_array_equal(read_image(path), [[0, 64], [192, 255]])


def test_broken_dicom_names_the_file(tmp_path):
    path = _dicom(tmp_path / "b.dcm", np.zeros((4, 4), np.uint16))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="b.dcm"):
        read_image(path)


# ----------------------------------------------------------------------------- PNG (plain OpenCV)

def test_16_bit_png_is_divided_by_257_and_rounded(tmp_path):
    img = np.array([[0, 257, 300], [65535, 385, 386]], np.uint16)
    assert cv2.imwrite(str(tmp_path / "a.png"), img)
    # 0, 1, 1.167, 255, 1.498, 1.502
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), [[0, 1, 1], [255, 1, 2]])


def test_rgb_png_of_grey_content_is_that_grey(tmp_path):
    grey = np.array([[0, 17, 128], [200, 254, 255]], np.uint8)
    assert cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([grey] * 3))
    assert cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([grey] * 3 + [np.full_like(grey, 255)]))
    for name in ("rgb.png", "rgba.png"):
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.ndim == 2
        np.testing.assert_array_equal(got, grey)
