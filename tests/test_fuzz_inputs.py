"""Hostile and malformed inputs, fuzzed (Hypothesis).

Every reader's metadata files (CSV, list, JSON, text) and every image decoder get mutated input:
random bytes, empty files, truncation, BOM and CRLF, deleted / duplicated lines and columns,
random cells (unicode, huge numbers, blanks), paths leaving the dataset folder (``..``,
absolute), and image files replaced by folders, symlink loops and symlinks out of the folder.
Each case must end in a table whose paths all lie inside the dataset folder, or in a
:class:`~cxr_keras.io.DataError` naming the file at fault -- never another exception type, never
a hang (Hypothesis ``deadline``), never a file outside the folder opened (an audit hook watches
every ``open``; a sentinel file sits next to the dataset folder).

CI runs the ``ci`` profile (few, derandomised examples per reader, about 30 s in all). A longer
session: ``CXR_FUZZ_EXAMPLES=500 pytest tests/test_fuzz_inputs.py`` (examples per test, random
seeds).
"""

import json
import os
import shutil
import struct
import sys
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxr_keras.data import datasets
from cxr_keras.data.images import decode_bytes, imdecode_checked, read_image, write_dicom
from cxr_keras.io import DataError

# The readers this fuzz was written against; a newer reader is fuzzed when it has a phantom.
KNOWN = ("nih", "chexpert", "pedicxr", "kermany", "montgomery", "lungmasks", "mura", "tbx11k")
EXAMPLES = int(os.environ.get("CXR_FUZZ_EXAMPLES", "0") or 0)
_COMMON = dict(database=None, print_blob=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=10, deadline=5000, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=max(EXAMPLES, 1), deadline=5000, **_COMMON)
FUZZ = settings.get_profile("long" if EXAMPLES else "ci")

META_SUFFIXES = (".csv", ".txt", ".json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
SENTINEL = "SENTINEL_outside.png"


# ----------------------------------------------------------------------------- sentinel watch

_WATCH: dict = {"on": False, "opened": []}


def _audit(event, args):
    if _WATCH["on"] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _WATCH["opened"].append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # permanent for the process, idle unless _WATCH["on"]


def _run_watched(fn, *args):
    _WATCH["opened"].clear()
    _WATCH["on"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args)
    finally:
        _WATCH["on"] = False


def _assert_sentinel_untouched(sentinel: Path):
    bad = [p for p in _WATCH["opened"] if Path(p).name == SENTINEL or Path(p).resolve() == sentinel]
    assert not bad, f"a file outside the dataset folder was opened: {bad}"


# ----------------------------------------------------------------------------- phantom bases

@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """``name -> folder`` of one tiny phantom per dataset, written on first use."""
    top, made = tmp_path_factory.mktemp("fuzz_bases"), {}

    def get(name):
        if name not in made:
            module = datasets.get(name)
            if not hasattr(module, "write_phantom"):
                pytest.skip(f"{name}: no phantom writer to fuzz from")
            try:
                module.write_phantom(top / name, n=12, size=32, seed=0, workers=1, progress=False)
            except Exception as e:  # a new reader whose phantom cannot be this small
                if name in KNOWN:
                    raise
                pytest.skip(f"{name}: no tiny phantom ({type(e).__name__}: {e})")
            made[name] = top / name
        return made[name]
    return get


def _files(base: Path, suffixes) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in base.rglob("*")
                  if p.is_file() and p.suffix.lower() in suffixes)


def _readers(name):
    """The reader entry points of dataset ``name`` that take only the root."""
    module = datasets.get(name)
    return [module.load_table] + [getattr(module, f) for f in ("load_boxes",) if hasattr(module, f)]


# ----------------------------------------------------------------------------- mutations

def _hostile(original: str, depth: int, absolute: bool, sentinel: Path) -> str:
    """A path aimed at the sentinel: absolute, or the original cell followed by ``..``s."""
    if absolute:
        return str(sentinel)
    return original.rstrip("/") + "/" + "../" * depth + "outside/" + SENTINEL


cells = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "nan", "NaN", "-1", "-1.0", "2", "1e400", "-1e400", "inf",
                     "99999999999999999999999", "0x10", "1,0", '"', "\"\"", "None", "null",
                     "\u00e9", "\u202e", "\ufeff", "\x00", "No Finding|Cancer", "../", "/"]),
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)

text_ops = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
    st.tuples(st.just("empty")),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("bom_crlf"), st.booleans(), st.booleans()),
    st.tuples(st.just("drop_line"), st.integers(0, 40)),
    st.tuples(st.just("dup_line"), st.integers(0, 40)),
    st.tuples(st.just("cell"), st.integers(0, 40), st.integers(0, 20), cells),
    st.tuples(st.just("drop_column"), st.integers(0, 20)),
    st.tuples(st.just("hostile"), st.integers(0, 40), st.integers(0, 20), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("append"), st.text(max_size=60)),
    st.tuples(st.just("json"), st.integers(0, 200), json_values),
    st.tuples(st.just("json_hostile"), st.integers(0, 200), st.integers(0, 9), st.booleans()),
)

tree_ops = st.one_of(
    st.tuples(st.just("img_empty"), st.integers(0, 1000)),
    st.tuples(st.just("img_dir"), st.integers(0, 1000)),
    st.tuples(st.just("img_loop"), st.integers(0, 1000)),
    st.tuples(st.just("img_out"), st.integers(0, 1000)),
    st.tuples(st.just("img_gone"), st.integers(0, 1000)),
    st.tuples(st.just("img_add"), st.integers(0, 1000), st.text(min_size=1, max_size=20)),
)


def _split_lines(text):
    return text.split("\n")


def _json_paths(obj, prefix=()):
    """Every (container, key) of a JSON document, depth first."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((obj, k))
            out.extend(_json_paths(v))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((obj, i))
            out.extend(_json_paths(v))
    return out


def _apply_text(path: Path, op, sentinel: Path):
    kind = op[0]
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    lines = _split_lines(text)
    if kind == "bytes":
        path.write_bytes(op[1])
        return
    if kind == "empty":
        path.write_bytes(b"")
        return
    if kind == "truncate":
        path.write_bytes(raw[:int(op[1] * len(raw))])
        return
    if kind == "bom_crlf":
        out = ("\r\n" if op[2] else "\n").join(lines)
        path.write_bytes((b"\xef\xbb\xbf" if op[1] else b"") + out.encode("utf-8"))
        return
    if kind in ("json", "json_hostile"):
        try:
            doc = json.loads(text)
        except ValueError:
            return
        slots = _json_paths(doc)
        if not slots:
            return
        container, key = slots[op[1] % len(slots)]
        if kind == "json":
            container[key] = op[2]
        else:
            container[key] = _hostile(str(container[key]), op[2], op[3], sentinel)
        path.write_text(json.dumps(doc), encoding="utf-8")
        return
    if kind == "append":
        path.write_text(text + op[1], encoding="utf-8", errors="surrogatepass")
        return
    i = op[1] % len(lines)
    if kind == "drop_line":
        del lines[i]
    elif kind == "dup_line":
        lines.insert(i, lines[i])
    elif kind == "cell":
        fields = lines[i].split(",")
        fields[op[2] % len(fields)] = op[3]
        lines[i] = ",".join(fields)
    elif kind == "drop_column":
        lines = [",".join(f for j, f in enumerate(line.split(",")) if j != op[1] % max(1, len(line.split(","))))
                 for line in lines]
    elif kind == "hostile":
        fields = lines[i].split(",")
        j = op[2] % len(fields)
        fields[j] = _hostile(fields[j], op[3], op[4], sentinel)
        lines[i] = ",".join(fields)
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")


def _apply_tree(root: Path, images: list, op, sentinel: Path) -> Path | None:
    if not images:
        return None
    target = root / images[op[1] % len(images)]
    kind = op[0]
    if kind == "img_add":
        name = "".join(c for c in op[2] if c not in "/\x00") or "x"
        target = target.parent / name
        if target.exists() or target.is_symlink():
            return None
        target.write_bytes(b"not an image")
        return target
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    if kind == "img_empty":
        target.write_bytes(b"")
    elif kind == "img_dir":
        target.mkdir()
    elif kind == "img_loop":
        target.symlink_to(target.name)  # points at itself
    elif kind == "img_out":
        target.symlink_to(sentinel)
    return target


# ----------------------------------------------------------------------------- the reader fuzz

@pytest.fixture
def case_dirs(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / SENTINEL
    cv2.imwrite(str(sentinel), np.full((32, 32), 7, np.uint8))
    return tmp_path / "case", sentinel.resolve()


@pytest.mark.parametrize("name", datasets.NAMES)
@FUZZ
@given(data=st.data())
def test_readers_end_in_a_table_inside_the_root_or_a_data_error(name, data, bases, case_dirs):
    base = bases(name)
    case, sentinel = case_dirs
    # the case folder sits beside "outside": ../../SENTINEL... from the dataset folders reach it
    shutil.rmtree(case, ignore_errors=True)
    shutil.copytree(base, case, symlinks=True)
    meta = _files(case, META_SUFFIXES)
    images = _files(case, IMAGE_SUFFIXES)
    ops = data.draw(st.lists(text_ops if meta else tree_ops, min_size=1, max_size=3)
                    if not meta else st.lists(st.one_of(text_ops, text_ops, tree_ops), min_size=1, max_size=3))
    touched = []
    for op in ops:
        if op[0].startswith("img_"):
            t = _apply_tree(case, images, op, sentinel)
        else:
            t = case / meta[data.draw(st.integers(0, len(meta) - 1))]
            _apply_text(t, op, sentinel)
        if t is not None:
            touched.append(t)
    for reader in _readers(name):
        try:
            df = _run_watched(reader, case)
        except DataError as e:
            msg = str(e)
            named = [t.name for t in touched if t.name in msg] or ([str(case)] if str(case) in msg else [])
            assert named, f"{reader.__name__}: DataError names no file: {msg!r} (touched {touched})"
        else:
            top = str(case.resolve()) + os.sep
            cols = ["path"] + df.attrs.get("mask_columns", []) + (["image"] if reader.__name__ == "load_boxes"
                                                                   else [])
            for col in cols:
                if col in df.columns and col != "image":
                    for p in df[col]:
                        assert not p or str(p).startswith(top), f"{col} {p} lies outside {top}"
        finally:
            _assert_sentinel_untouched(sentinel)


@pytest.mark.parametrize("name, meta, row", [("chexpert", "CheXpert-v1.0-small/train.csv", 1),
                                             ("tbx11k", "TBX11K/lists/TBX11K_train.txt", 0)])
def test_a_path_escaping_the_root_is_refused_naming_file_and_line(name, meta, row, bases, case_dirs):
    """The fuzz's worst case, at every depth: the first image path of a metadata file pointed at
    the sentinel beside the dataset folder (one of the depths reaches it)."""
    case, sentinel = case_dirs
    shutil.copytree(bases(name), case)
    path = case / meta
    lines = path.read_text().split("\n")
    fields = lines[row].split(",")
    refused = 0
    for depth in range(0, 9):
        fields[0] = _hostile(lines[row].split(",")[0], depth, depth == 0, sentinel)
        path.write_text("\n".join(lines[:row] + [",".join(fields)] + lines[row + 1:]))
        with pytest.raises(DataError) as e:
            _run_watched(datasets.get(name).load_table, case)
        _assert_sentinel_untouched(sentinel)
        if "missing" in str(e.value):  # not deep enough to leave the folder: a missing image
            continue
        assert f"{path.name}: line {row + 1}" in str(e.value)
        refused += "leads outside" in str(e.value)
    assert refused >= 3


def test_mura_path_escaping_the_root_is_refused(bases, case_dirs):
    case, _ = case_dirs
    shutil.copytree(bases("mura"), case)
    mura = case / "MURA-v1.1"
    study = "MURA-v1.1/../../patient00001/../"  # six parts, as the reader wants, leading out
    (mura / "train_image_paths.csv").write_text(study + "x.png\n")
    (mura / "train_labeled_studies.csv").write_text(study + ",0\n")
    with pytest.raises(DataError, match=r"train_image_paths.csv: line 1: path .* leads outside"):
        datasets.get("mura").load_table(case)


def test_a_symlink_out_of_the_root_is_refused(bases, case_dirs):
    case, sentinel = case_dirs
    shutil.copytree(bases("kermany"), case)
    target = next((case / "chest_xray" / "train" / "NORMAL").iterdir())
    target.unlink()
    target.symlink_to(sentinel)
    with pytest.raises(DataError, match="outside the dataset folder"):
        datasets.get("kermany").load_table(case)


def test_pedicxr_image_id_with_a_folder_is_refused(bases, case_dirs):
    case, _ = case_dirs
    shutil.copytree(bases("pedicxr"), case)
    path = case / "image_labels_train.csv"
    lines = path.read_text().split("\n")
    lines[1] = "../../x" + lines[1][lines[1].index(","):]
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match="image_labels_train.csv: line 2, column 'image_id'"):
        datasets.get("pedicxr").load_table(case)


# What the longer fuzz sessions found (each a raw exception before its fix), replayed as plain cases.
FOUND = [
    ("nih", "test_list.txt", ("bytes", b"\x80abc"), r"test_list.txt: line 1: not UTF-8"),
    ("tbx11k", "TBX11K/lists/TBX11K_val.txt", ("append", "\udc80"), r"TBX11K_val.txt: line \d+: not UTF-8"),
    ("nih", "Data_Entry_2017_v2020.csv", ("cell", 1, 3, "1/x"), r"_v2020.csv: row 2 .*'Patient ID'"),
    ("nih", "Data_Entry_2017_v2020.csv", ("cell", 2, 3, ""), r"_v2020.csv: row 3 .*'Patient ID'"),
    ("nih", "Data_Entry_2017_v2020.csv", ("cell", 1, 1, ""), r"_v2020.csv: row 2 .*unknown label ''"),
    ("mura", "MURA-v1.1/train_image_paths.csv", ("cell", 0, 0, "nan"), r"train_image_paths.csv: line 1: expected"),
    ("tbx11k", "TBX11K/annotations/json/TBX11K_train.json", ("json", 2, [1]), r"images\[0\]: field 'id' must be"),
    ("tbx11k", "TBX11K/annotations/json/TBX11K_train.json", ("json_nan",),
     r"annotations\[0\]: field 'bbox' has a non-finite"),
]


@pytest.mark.parametrize("name, rel, op, match", FOUND)
def test_what_the_fuzz_found(name, rel, op, match, bases, case_dirs):
    case, sentinel = case_dirs
    shutil.copytree(bases(name), case)
    path = case / rel
    if op[0] == "json_nan":  # JSON has no NaN, but Python's json reads and writes one
        doc = json.loads(path.read_text())
        doc["annotations"][0]["bbox"][0] = float("nan")
        path.write_text(json.dumps(doc))
    else:
        _apply_text(path, op, sentinel)
    with pytest.raises(DataError, match=match):
        _run_watched(datasets.get(name).load_table, case)


# ----------------------------------------------------------------------------- image decoding

def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(w: int, h: int, depth: int = 8) -> bytes:
    """A PNG whose header declares ``w`` x ``h`` pixels, with one tiny (valid CRC) IDAT."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def _with_sof_size(jpeg: bytes, h: int, w: int) -> bytes:
    data = bytearray(jpeg)
    i = 2
    while i + 9 <= len(data):
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data[i + 5:i + 9] = struct.pack(">HH", h, w)
            return bytes(data)
        i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return bytes(data)


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory):
    """Bytes of DICOMs: normal, MONOCHROME1, without pixel data, declaring 100k x 100k."""
    import pydicom
    d = tmp_path_factory.mktemp("fuzz_dicoms")
    img = (np.arange(24 * 20) % 256).astype(np.uint8).reshape(24, 20)
    out = {"normal": write_dicom(d / "a.dcm", img).read_bytes(),
           "mono1": write_dicom(d / "b.dcm", img, monochrome1=True).read_bytes()}
    ds = pydicom.dcmread(d / "a.dcm")
    del ds.PixelData
    ds.save_as(d / "c.dcm")
    out["no_pixels"] = (d / "c.dcm").read_bytes()
    ds = pydicom.dcmread(d / "a.dcm")
    ds.Rows, ds.Columns = 50000, 50000
    ds.save_as(d / "e.dcm")
    out["huge"] = (d / "e.dcm").read_bytes()
    return out


@st.composite
def image_bytes(draw, dicoms):
    kind = draw(st.sampled_from(["png", "jpg", "dicom", "bytes", "empty", "bomb_png", "bomb_jpg"]))
    if kind == "empty":
        return kind, b""
    if kind == "bytes":
        return kind, draw(st.binary(max_size=300))
    if kind == "bomb_png":
        w, h = draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1))
        return kind, png_declaring(w, h, draw(st.sampled_from([1, 8, 16])))
    if kind == "dicom":
        data = dicoms[draw(st.sampled_from(sorted(dicoms)))]
    else:
        h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        channels = draw(st.sampled_from([1, 3, 4]))
        sixteen = kind == "png" and draw(st.booleans())
        seed = draw(st.integers(0, 2**16))
        arr = np.random.default_rng(seed).integers(0, 65535 if sixteen else 255, (h, w, channels))
        arr = arr.astype(np.uint16 if sixteen else np.uint8)
        if kind == "bomb_jpg":
            arr = arr.astype(np.uint8)
        ok, buf = cv2.imencode(".png" if kind == "png" else ".jpg", arr if channels > 1 else arr[..., 0])
        assert ok
        data = buf.tobytes()
        if kind == "bomb_jpg":
            data = _with_sof_size(data, draw(st.integers(1, 65535)), draw(st.integers(1, 65535)))
    mutation = draw(st.sampled_from(["none", "truncate", "flip", "prefix"]))
    if mutation == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif mutation == "flip":
        arr = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            arr[draw(st.integers(0, len(arr) - 1))] = draw(st.integers(0, 255))
        data = bytes(arr)
    elif mutation == "prefix":
        data = draw(st.binary(min_size=1, max_size=16)) + data
    return kind, data


@FUZZ
@given(data=st.data(), suffix=st.sampled_from(IMAGE_SUFFIXES + (".txt", "")))
def test_image_decoding_ends_in_a_grey_image_or_a_data_error(data, suffix, dicoms, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_MAX_PIXELS", "1000000")  # 1e6 (1000 x 1000) keeps every case fast
    kind, blob = data.draw(image_bytes(dicoms))
    path = tmp_path / f"case{suffix}"
    path.write_bytes(blob)
    for fn, arg in ((read_image, path), (lambda p: decode_bytes(path.read_bytes(), p), path),
                    (lambda p: imdecode_checked(np.frombuffer(path.read_bytes(), np.uint8), p, "mask"), path)):
        try:
            img = fn(arg)
        except DataError as e:
            assert path.name in str(e), f"DataError names no file: {e}"
        else:
            assert isinstance(img, np.ndarray) and img.size <= 1_000_000 * 4
            if fn is read_image:
                assert img.dtype == np.uint8 and img.ndim == 2


@pytest.mark.parametrize("make", [
    lambda: png_declaring(100_000, 100_000),
    lambda: png_declaring(100_000, 100_000, 16),
    lambda: _with_sof_size(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes(), 65535, 65535),
])
def test_decompression_bombs_are_refused_before_decoding(make, tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(make())

    def never(*a, **k):
        raise AssertionError("the decoder was called on a decompression bomb")
    monkeypatch.setattr(cv2, "imdecode", never)
    with pytest.raises(DataError, match=r"bomb\.png: declares .* more than the limit"):
        read_image(path)


def test_dicom_bomb_and_dicom_without_pixels(dicoms, tmp_path):
    (tmp_path / "huge.dcm").write_bytes(dicoms["huge"])
    with pytest.raises(DataError, match=r"huge\.dcm: declares 50000 x 50000"):
        read_image(tmp_path / "huge.dcm")
    (tmp_path / "empty.dcm").write_bytes(dicoms["no_pixels"])
    with pytest.raises(DataError, match=r"without pixel data: .*empty\.dcm"):
        read_image(tmp_path / "empty.dcm")


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.zeros((30, 40), np.uint8))
    monkeypatch.setenv("CXR_MAX_PIXELS", "1000")
    with pytest.raises(DataError, match="40 x 30 pixels, more than the limit of 1,000"):
        read_image(path)
    monkeypatch.setenv("CXR_MAX_PIXELS", "1200")
    assert read_image(path).shape == (30, 40)


@pytest.mark.parametrize("case", ["loop", "folder", "wrong_ext", "dicom_as_png", "sixteen"])
def test_files_that_are_not_what_their_names_say(case, tmp_path, dicoms):
    path = tmp_path / "x.png"
    if case == "loop":
        path.symlink_to(path.name)
    elif case == "folder":
        path.mkdir()
    elif case == "wrong_ext":  # a JPEG named .png decodes by content
        cv2.imwrite(str(tmp_path / "y.jpg"), np.full((5, 6), 200, np.uint8))
        (tmp_path / "y.jpg").rename(path)
    elif case == "dicom_as_png":
        path.write_bytes(dicoms["normal"])
    elif case == "sixteen":  # 16-bit where 8-bit is usual: scaled, not wrapped
        cv2.imwrite(str(path), np.full((5, 6), 65535, np.uint16))
    if case in ("wrong_ext", "sixteen"):
        img = read_image(path)
        assert img.dtype == np.uint8 and img.shape == (5, 6) and img.min() >= 190
        return
    match = {"loop": "symlink loop", "folder": "cannot read image file", "dicom_as_png": "name it .dcm"}[case]
    with pytest.raises(DataError, match=match):
        read_image(path)
