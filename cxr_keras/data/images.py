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
    """Decode a DICOM file to grey ``uint8`` through pydicom's own display pipeline.

    1. Pixels: the first frame when NumberOfFrames > 1, decoded by pydicom from any transfer
       syntax it has a decoder for; compressed ones (JPEG, JPEG-LS, JPEG 2000) need the plugins of
       the ``dicom`` extra (``pip install "cxr-keras[dicom]"``, named in the error when missing).
    2. Colour (SamplesPerPixel > 1): YBR_FULL / YBR_FULL_422 converted to RGB by pydicom's
       ``convert_color_space``, then grey as the BT.601 luma (0.299 R + 0.587 G + 0.114 B, as for
       PNG and JPEG), scaled from 0 .. 2**BitsStored - 1; colour images have no modality or VOI
       stage (DICOM PS3.3 C.11.1, C.11.2 apply to grey images).
    3. Grey: ``apply_modality_lut`` (Modality LUT Sequence, else Rescale Slope / Intercept), then
       ``apply_voi_lut`` with the first view: a VOI LUT Sequence when present (it wins over a
       window, as in pydicom), else the first Window Center / Width with VOILUTFunction LINEAR
       (the default, also for an unknown value), LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2-3).
       The VOI output is scaled to 0..255 over its output range: 0 .. 2**n - 1 for a LUT whose
       descriptor gives n bits per entry; for a window, the range pydicom maps the window onto
       (what it returns for -inf and +inf: the stored bit range through the rescale, or the
       Modality LUT's bit range). A window that is invalid (width < 1 for LINEAR, <= 0 otherwise,
       not a number) is ignored; with no VOI the modality output's own min-max range is used.
    4. Polarity, one inversion at most: the grey is inverted (255 - y) when Photometric
       Interpretation is MONOCHROME1 *or* Presentation LUT Shape (2050,0020) is INVERSE, so that
       air is dark. In an image object the two describe the same inversion: the General Image
       and DX Image modules (PS3.3 C.7.6.1, C.8.11.3) require INVERSE with MONOCHROME1 and
       IDENTITY with MONOCHROME2, and the Presentation LUT (C.11.6) is the last step, applied to
       the VOI output. So MONOCHROME1 + INVERSE is inverted once (not twice), MONOCHROME2 +
       INVERSE is inverted (what the shape says), and the non-conformant MONOCHROME1 + IDENTITY
       is inverted (the Photometric Interpretation, a type 1 attribute that defines the stored
       values, is trusted over the type 3 shape). A Presentation LUT Sequence is not applied.
    """
    path = Path(path)
    return _decode_dicom(str(path), path)


def _pydicom_pixels():
    """pydicom's pixel functions: ``pydicom.pixels`` (pydicom >= 3) or
    ``pydicom.pixel_data_handlers.util`` (2.4, setup.cfg's lower bound)."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space
    except ImportError:  # pydicom 2.4
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut, convert_color_space
    return apply_modality_lut, apply_voi_lut, convert_color_space


DICOM_EXTRA = 'pip install "cxr-keras[dicom]"'


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
        arr, photometric = _first_frame(ds, frames, path)
        return _dicom_to_uint8(ds, arr, photometric, path)
    except DataError:
        raise
    except Exception as e:  # pydicom raises a variety of errors for broken files and attributes
        raise DataError(f"cannot read DICOM file {path}: {type(e).__name__}: {e}") from e


def _missing_decoder(path, tsyntax, detail: str = "") -> DataError:
    return DataError(f"cannot decode DICOM file {path}: its transfer syntax {tsyntax.name} ({tsyntax}) "
                     f"needs a decoder plugin that is not installed; install the 'dicom' extra: "
                     f"{DICOM_EXTRA}" + (f" ({detail})" if detail else ""))


def _first_frame(ds, frames: int, path) -> tuple[np.ndarray, str]:
    """The first frame as pydicom decodes it, and its Photometric Interpretation after decoding
    (pydicom 3 may convert YBR to RGB): (rows, cols) or (rows, cols, samples)."""
    from pydicom.uid import UID

    tsyntax = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2.4: the pixel data handlers
        try:
            arr = ds.pixel_array
        except (NotImplementedError, RuntimeError) as e:  # no handler, or its package missing
            if tsyntax.is_compressed:
                raise _missing_decoder(path, tsyntax, str(e).strip().splitlines()[0]) from None
            raise
        return (arr[0] if frames > 1 else arr), str(ds.PhotometricInterpretation)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DataError(f"cannot decode DICOM file {path}: pydicom has no decoder for its transfer "
                        f"syntax {tsyntax.name} ({tsyntax})") from None
    if not decoder.is_available:
        raise _missing_decoder(path, tsyntax, "; ".join(decoder.missing_dependencies))
    arr, meta = decoder.as_array(ds, index=0)
    return arr, str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))


def _dicom_to_uint8(ds, arr: np.ndarray, photometric: str, path) -> np.ndarray:
    apply_modality_lut, apply_voi_lut, convert_color_space = _pydicom_pixels()
    photometric = photometric.strip().upper()
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples > 1:  # decided by the header, not by the array's shape
        if arr.ndim != 3:
            raise DataError(f"cannot read DICOM file {path}: SamplesPerPixel {samples} but pixel "
                            f"data of shape {arr.shape}")
        rgb = arr[..., :3]
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            rgb = convert_color_space(rgb, photometric, "RGB")
        grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        top = float((1 << int(ds.BitsStored)) - 1)
        scaled = np.clip(grey / top, 0.0, 1.0) * 255.0
    else:
        if arr.ndim != 2:
            raise DataError(f"cannot read DICOM file {path}: pixel data of shape {arr.shape} is "
                            f"not one grey image")
        scaled = _grey_display(ds, arr, photometric, apply_modality_lut, apply_voi_lut) * 255.0
    shape = str(getattr(ds, "PresentationLUTShape", "") or "").strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":  # one inversion (read_dicom, step 4)
        scaled = 255.0 - scaled
    return np.round(scaled).astype(np.uint8)


_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def _grey_display(ds, arr, photometric, apply_modality_lut, apply_voi_lut) -> np.ndarray:
    """Modality then VOI stage of a grey image, as a fraction 0..1 of the VOI output range."""
    values = apply_modality_lut(arr, ds)
    voi = _voi_kind(ds) if photometric in ("MONOCHROME1", "MONOCHROME2") else None
    if voi == "lut":
        if not np.issubdtype(values.dtype, np.integer):  # rescaled: LUT inputs are integers
            values = np.floor(values).astype(np.int64)
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        bits = int(descriptor[2])
        if bits == 8 and int(descriptor[0] or 65536) > 256:
            # pydicom (3.0.2) indexes an 8-bit LUT with uint8 indices, which wrap past entry 255;
            # the same entries read as 16-bit values (LUT Data holds one entry per 16-bit word)
            ds.VOILUTSequence[0].LUTDescriptor = [int(descriptor[0]), int(descriptor[1]), 16]
        out = apply_voi_lut(values, ds, index=0).astype(np.float64)
        lo, hi = 0.0, float((1 << bits) - 1)
    elif voi == "window":
        with np.errstate(over="ignore"):  # SIGMOID far outside its window
            out = apply_voi_lut(values, ds, index=0, prefer_lut=False)
            lo, hi = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0,
                                                      prefer_lut=False))
    else:
        out = values.astype(np.float64)
        lo, hi = float(out.min()), float(out.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi == lo:
        lo, hi = float(out.min()), float(out.max())  # degenerate range (slope 0): min-max
    return np.clip((out - lo) / (hi - lo if hi != lo else 1e-6), 0.0, 1.0)


def _voi_kind(ds) -> str | None:
    """``"lut"``, ``"window"`` or None: which VOI stage ``apply_voi_lut`` will apply, after
    normalising the window attributes (an unknown VOILUTFunction becomes LINEAR, the default; an
    invalid window is removed from this in-memory dataset)."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        function = "LINEAR"
    if "VOILUTFunction" in ds:
        ds.VOILUTFunction = function
    valid = (center is not None and width is not None and np.isfinite(center) and np.isfinite(width)
             and (width >= 1 if function == "LINEAR" else width > 0))
    if not valid:
        for keyword in ("WindowCenter", "WindowWidth"):
            if keyword in ds:
                delattr(ds, keyword)
        return None
    return "window"


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


DICOM_COMPRESSIONS = {"rle": "RLELossless", "jpeg2000": "JPEG2000Lossless", "jpegls": "JPEGLSLossless"}


def can_compress_dicom(compression: str) -> bool:
    """Whether :func:`write_dicom` can write ``compression`` (a key of
    :data:`DICOM_COMPRESSIONS`) here: RLE always; JPEG 2000 and JPEG-LS with pydicom >= 3 and
    the encoder's plugin installed (pylibjpeg-openjpeg; pyjpegls). Reading any of them back
    needs a decoder too (the ``dicom`` extra; RLE: none)."""
    try:
        import pydicom.uid
        from pydicom.pixels import get_decoder, get_encoder
    except ImportError:  # pydicom 2.4: its own RLE encoder only
        return compression == "rle"
    uid = getattr(pydicom.uid, DICOM_COMPRESSIONS[compression])
    return get_encoder(uid).is_available and get_decoder(uid).is_available


def write_dicom(path, img: np.ndarray, *, monochrome1: bool = False, patient_id: str = "",
                sop_uid: str | None = None, bits: int = 12, modality: str = "rescale",
                voi: str = "window", presentation_inverse: bool = False, frames: int = 1,
                rgb: bool = False, compression: str | None = None) -> Path:
    """Write a grey ``uint8`` image as a minimal valid DICOM (DX, explicit VR little endian),
    which :func:`read_dicom` decodes back to (about) the same picture, whatever the options.

    Grey pixels are stored on ``bits`` bits. The options exercise the display pipeline:

    - ``monochrome1=True``: inverted pixels tagged MONOCHROME1 (as some PediCXR files are);
      ``presentation_inverse=True``: Presentation LUT Shape INVERSE (with MONOCHROME1 the DX
      form of the same one inversion, with MONOCHROME2 an inversion of its own).
    - ``modality``: ``"rescale"`` (slope 1, intercept 0) or ``"lut"`` (a Modality LUT Sequence
      of 16-bit entries that reverses the stored values: a reader that skips it sees a negative).
    - ``voi``: ``"window"`` (LINEAR over the whole range), ``"sigmoid"`` (VOILUTFunction SIGMOID;
      the values are stored through its inverse, so the picture is recovered within a grey
      level), ``"lut"`` (a VOI LUT Sequence of 16-bit entries squaring the square-root-coded
      values) or ``None`` (no VOI: the reader stretches min-max, the same picture only when
      ``img`` spans 0..255).
    - ``frames``: NumberOfFrames; frame 0 is ``img``, the others its negative.
    - ``rgb=True``: SamplesPerPixel 3, 8-bit RGB of grey content (no modality or VOI stage; the
      grey options above are refused).
    - ``compression``: None, ``"rle"``, ``"jpeg2000"`` or ``"jpegls"`` (lossless; see
      :func:`can_compress_dicom`).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"write_dicom expects a 2-D uint8 array, got {img.dtype} {img.shape}")
    if modality not in ("rescale", "lut"):
        raise ValueError(f"modality must be 'rescale' or 'lut', got {modality!r}")
    if voi not in ("window", "sigmoid", "lut", None):
        raise ValueError(f"voi must be 'window', 'sigmoid', 'lut' or None, got {voi!r}")
    if compression is not None and compression not in DICOM_COMPRESSIONS:
        raise ValueError(f"compression must be None or one of {sorted(DICOM_COMPRESSIONS)}, got {compression!r}")
    if rgb and (monochrome1 or modality != "rescale" or voi != "window" or presentation_inverse):
        raise ValueError("rgb=True stores colour without modality / VOI / inversion options")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
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
    ds.PixelRepresentation = 0
    if rgb:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        pix = np.repeat(img[..., None], 3, axis=-1)
        others = 255 - pix
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
        pix = _grey_to_stored(ds, img, bits, modality, voi, inverted=monochrome1 or presentation_inverse)
        others = _grey_to_stored(ds.copy(), img, bits, modality, voi,
                                 inverted=not (monochrome1 or presentation_inverse))
        if presentation_inverse:
            ds.PresentationLUTShape = "INVERSE"
    if frames > 1:
        ds.NumberOfFrames = frames
        pix = np.stack([pix] + [others] * (frames - 1))
    pix = np.ascontiguousarray(pix)
    ds.PixelData = pix.tobytes()
    if compression is not None:
        if not can_compress_dicom(compression):
            raise DataError(f"cannot write {path} with {compression} compression: it needs pydicom >= 3 "
                            f"and the encoder and decoder plugins ({DICOM_EXTRA})")
        uid = getattr(pydicom.uid, DICOM_COMPRESSIONS[compression])
        if int(pydicom.__version__.split(".")[0]) >= 3:
            ds.compress(uid, pix, generate_instance_uid=False)
        else:  # pydicom 2.4: RLE only
            ds.compress(uid, pix)
    with atomic_path(path, durable=False) as tmp:  # images can be written again
        if int(pydicom.__version__.split(".")[0]) >= 3:
            pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
        else:  # pydicom 2.4 (setup.cfg's lower bound): no enforce_file_format, encoding by hand
            ds.is_little_endian, ds.is_implicit_VR = True, False
            pydicom.dcmwrite(str(tmp), ds, write_like_original=False)
    return Path(path)


def _grey_to_stored(ds, img: np.ndarray, bits: int, modality: str, voi, inverted: bool) -> np.ndarray:
    """The stored values that the modality and VOI stages written into ``ds`` (by this function)
    turn back into ``img`` (or its negative when ``inverted``: a stage after VOI inverts it)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    maxval = (1 << bits) - 1
    v = img.astype(np.float64) / 255.0
    if inverted:
        v = 1.0 - v
    if voi == "sigmoid":  # y = 1 / (1 + exp(-4 (x - c) / w)) inverted, y kept off 0 and 1
        c = maxval / 2.0
        y = np.clip(v, 0.25 / 255, 1 - 0.25 / 255)
        w = 4.0 * c / np.log((1 - 0.25 / 255) / (0.25 / 255))
        m = np.round(c + w / 4.0 * np.log(y / (1.0 - y)))
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = f"{c:.1f}", f"{w:.4f}", "SIGMOID"
    elif voi == "lut":  # VOI LUT: output = 65535 (i / maxval)^2 on the square-root-coded values
        m = np.round(maxval * np.sqrt(v))
        item = Dataset()
        item.add_new(0x00283002, "US", [maxval + 1 if maxval < 65535 else 0, 0, 16])  # LUT Descriptor
        lut = np.round(65535.0 * (np.arange(maxval + 1) / maxval) ** 2).astype("<u2")
        item.add_new(0x00283006, "OW", lut.tobytes())  # LUT Data
        ds.VOILUTSequence = Sequence([item])
    else:
        m = np.round(v * maxval)
        if voi == "window":
            ds.WindowCenter, ds.WindowWidth = (maxval + 1) / 2.0, float(maxval + 1)
    m = np.clip(m, 0, maxval)
    if modality == "lut":  # stored s = maxval - m, Modality LUT[s] = maxval - s
        item = Dataset()
        item.add_new(0x00283002, "US", [maxval + 1 if maxval < 65535 else 0, 0, 16])  # LUT Descriptor
        item.add_new(0x00283006, "OW", (maxval - np.arange(maxval + 1)).astype("<u2").tobytes())
        item.ModalityLUTType = "US"  # unspecified
        ds.ModalityLUTSequence = Sequence([item])
        return (maxval - m).astype(np.uint16)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    return m.astype(np.uint16)
