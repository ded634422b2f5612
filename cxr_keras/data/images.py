"""Reading and writing radiograph files: PNG (8/16 bit), JPEG, DICOM, RGB images of grey content.

:func:`read_image` always returns a 2-D ``uint8`` array (grey, 0 = black); every failure raises
:class:`~cxr_keras.io.DataError` naming the file.

Decompression bombs: the size a file declares (PNG IHDR, JPEG SOF, DICOM Rows x Columns x
frames) is checked against :func:`max_pixels` before anything is decoded. The default,
50 megapixels (about 7,000 x 7,000), is 2.5 times the largest radiograph of the supported
datasets (Montgomery, 4,892 x 4,020); set ``CXR_MAX_PIXELS`` to change it.
"""

from __future__ import annotations

import os
import struct
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np

from ..io import DataError, atomic_path

DICOM_SUFFIXES = (".dcm", ".dicom")
DEFAULT_MAX_PIXELS = 50_000_000
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-15 (not DHT, JPG, DAC)


def max_pixels() -> int:
    """The largest image (height x width, all frames) decoded: ``CXR_MAX_PIXELS`` or 50e6."""
    text = os.environ.get("CXR_MAX_PIXELS", "").strip()
    try:
        return int(float(text)) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise DataError(f"CXR_MAX_PIXELS must be a number of pixels, got {text!r}") from None


def check_pixels(h: int, w: int, path, frames: int = 1) -> None:
    """Refuse an image declaring more than :func:`max_pixels` pixels (before decoding it)."""
    limit = max_pixels()
    if h * w * max(frames, 1) > limit:
        what = f"{w} x {h}" + (f" x {frames} frames" if frames > 1 else "")
        raise DataError(f"{path}: declares {what} pixels, more than the limit of {limit:,} "
                        f"(CXR_MAX_PIXELS); refused before decoding (a decompression bomb or a "
                        f"corrupt header)")


def declared_size(data) -> tuple[int, int] | None:
    """``(height, width)`` from a PNG IHDR or a JPEG SOF header without decoding, or None when
    the header holds none (the decoder then fails on its own). ``data``: bytes or uint8 array."""
    n = len(data)
    if n >= 24 and bytes(data[:8]) == _PNG and bytes(data[12:16]) == b"IHDR":
        w, h = struct.unpack_from(">II", data, 16)
        return h, w
    if n < 4 or bytes(data[:2]) != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None  # not at a marker: corrupt
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        elif marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            h, w = struct.unpack_from(">HH", data, i + 5)
            return h, w
        else:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return None


def read_image(path) -> np.ndarray:
    """Decode ``path`` to a grey ``uint8`` array (H, W).

    PNG/JPEG of 8 or 16 bits (16-bit scaled by 1/257), RGB or RGBA of grey content (converted
    with the usual luma weights), and DICOM (see :func:`read_dicom`).
    """
    path = Path(path)
    if not path.exists():
        what = "symlink loop or dangling symlink" if path.is_symlink() else "missing image file"
        raise DataError(f"{what}: {path}")
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:  # a folder, no permission, an I/O error
        raise DataError(f"cannot read image file {path}: {e}") from None
    return decode_bytes(data, path)


def decode_bytes(data, path) -> np.ndarray:
    """Decode the bytes of an image file, as :func:`read_image` does with the file itself.

    ``data`` is ``bytes`` or a 1-D ``uint8`` array (not copied); ``path`` picks the format
    (DICOM by its suffix, anything else by content) and names the file in errors. Lets a caller
    that also needs the file's bytes (checksums) read them only once.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return _decode_dicom(BytesIO(bytes(data)), path)
    if not isinstance(data, np.ndarray):
        data = np.frombuffer(data, dtype=np.uint8)
    img = imdecode_checked(data, path, "image")
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        else:
            img = img[..., 0]
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"unsupported pixel type {img.dtype} in {path}")
    return np.ascontiguousarray(img)


def imdecode_checked(data: np.ndarray, path, what: str = "image") -> np.ndarray:
    """``cv2.imdecode(data, IMREAD_UNCHANGED)`` of a PNG or JPEG whose declared size is within
    :func:`max_pixels`; any other content (empty, another format, corrupt) is a DataError."""
    if data.size == 0:
        raise DataError(f"empty {what} file (0 bytes): {path}")
    if bytes(data[:2]) != b"\xff\xd8" and bytes(data[:8]) != _PNG:
        dicom = " (it holds a DICOM: name it .dcm)" if bytes(data[128:132]) == b"DICM" else ""
        raise DataError(f"{what} file is not a PNG or JPEG{dicom}: {path}")
    size = declared_size(data)
    if size is not None:
        check_pixels(*size, path)
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # OpenCV's own limits and some corrupt headers raise
        raise DataError(f"cannot decode {what} file {path}: {str(e).strip()}") from None
    if img is None or img.size == 0:
        raise DataError(f"cannot decode {what} file (corrupt, truncated or not an image): {path}")
    return img


def read_dicom(path) -> np.ndarray:
    """Decode a DICOM file to grey ``uint8``.

    Takes the first frame of a multi-frame file, applies Rescale Slope/Intercept, then the file's
    first Window Center/Width if present with its VOI LUT Function (LINEAR, LINEAR_EXACT or
    SIGMOID, DICOM PS3.3 C.11.2.1.2-3; a LINEAR width of 1 is a threshold), else the full min-max
    range, scaled to 0..255; and inverts MONOCHROME1 so that air is dark as in MONOCHROME2. A
    Modality or VOI LUT Sequence is not applied (rescale / window attributes only).
    """
    path = Path(path)
    return _decode_dicom(str(path), path)


def _decode_dicom(source, path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(source)
    except Exception as e:  # pydicom raises a variety of errors for broken files
        raise DataError(f"cannot read DICOM file {path}: {e}") from e
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"DICOM file without pixel data: {path}")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as e:
        raise DataError(f"cannot read DICOM file {path}: bad Rows / Columns / NumberOfFrames ({e})") from None
    if rows <= 0 or cols <= 0:
        raise DataError(f"DICOM file declares an empty image ({cols} x {rows}): {path}")
    check_pixels(rows, cols, path, frames)
    try:
        arr = ds.pixel_array.astype(np.float64)
        return _dicom_to_uint8(ds, arr, path)
    except DataError:
        raise
    except Exception as e:  # pydicom raises a variety of errors for broken files and attributes
        raise DataError(f"cannot read DICOM file {path}: {type(e).__name__}: {e}") from e


def _dicom_to_uint8(ds, arr: np.ndarray, path) -> np.ndarray:
    # pydicom gives (frames, rows, cols[, samples]) when NumberOfFrames > 1, and a samples axis
    # last when SamplesPerPixel > 1: decide by those attributes, not by the array's shape.
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]  # the first frame
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1:
        arr = arr[..., :3].mean(axis=-1)  # the grey of RGB
    if arr.ndim != 2:
        raise DataError(f"cannot read DICOM file {path}: pixel data of shape {arr.shape} is not one "
                        f"grey image")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    arr = arr * slope + intercept
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    function = str(getattr(ds, "VOILUTFunction", "") or "LINEAR").strip().upper()
    if center is not None and width is not None and (width >= 1 if function not in _VOI_NONLINEAR
                                                     else width > 0):
        scaled = _voi_window(arr, center, width, function) * 255.0
    else:  # no (valid) window: the full range
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.clip((arr - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * 255.0
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        scaled = 255.0 - scaled
    return np.round(scaled).astype(np.uint8)


_VOI_NONLINEAR = ("LINEAR_EXACT", "SIGMOID")


def _voi_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The VOI window of DICOM PS3.3 C.11.2.1.2.1 (LINEAR, the default and any unknown value),
    C.11.2.1.3.2 (LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID), as a fraction 0..1 of the output."""
    if function == "SIGMOID":
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width == 1:  # LINEAR with width 1 is a threshold: x <= c - 0.5 -> ymin, else ymax
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(value):
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def write_image(path, img: np.ndarray, *, rgb: bool = False, bits: int = 8, quality: int = 95) -> Path:
    """Write a grey ``uint8`` image atomically as PNG or JPEG (chosen by the suffix).

    ``rgb=True`` stores three identical channels (datasets that ship RGB files of grey content);
    ``bits=16`` stores a 16-bit PNG (values times 257).
    """
    path = Path(path)
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"write_image expects a 2-D uint8 array, got {img.dtype} {img.shape}")
    out = img
    if bits == 16:
        out = img.astype(np.uint16) * 257
    if rgb:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix.lower() if path.suffix else ".png", out, params)
    if not ok:
        raise DataError(f"cannot encode image for {path}")
    with atomic_path(path, durable=False) as tmp:  # images can be written again
        buf.tofile(tmp)
    return path


def write_dicom(path, img: np.ndarray, *, monochrome1: bool = False, patient_id: str = "",
                sop_uid: str | None = None, bits: int = 12) -> Path:
    """Write a grey ``uint8`` image as a minimal valid DICOM (CR, explicit VR little endian).

    Pixel values are stored on ``bits`` bits with a rescale slope/intercept of 1/0 and a window
    covering the range; ``monochrome1=True`` stores inverted pixels tagged MONOCHROME1 (as some
    PediCXR files are), so a correct reader recovers the same picture.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    maxval = (1 << bits) - 1
    pix = np.round(img.astype(np.float64) / 255.0 * maxval).astype(np.uint16)
    if monochrome1:
        pix = (maxval - pix).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = patient_id
    ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = (maxval + 1) / 2.0, float(maxval + 1)
    ds.PixelData = pix.tobytes()
    with atomic_path(path, durable=False) as tmp:  # images can be written again
        if int(pydicom.__version__.split(".")[0]) >= 3:
            pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
        else:  # pydicom 2.4 (setup.cfg's lower bound): no enforce_file_format, encoding by hand
            ds.is_little_endian, ds.is_implicit_VR = True, False
            pydicom.dcmwrite(str(tmp), ds, write_like_original=False)
    return Path(path)
