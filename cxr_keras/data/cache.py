"""A resized ``uint8`` image cache in shards: built in parallel, resumable, with checksums.

Decoding a 1024x1024 PNG costs several milliseconds; doing it once per image instead of once per
epoch is what makes training on NIH-sized sets practical. :func:`build_cache` (or
:func:`prepare`, which reads the dataset first) writes::

    CACHE/
      cache.json                      what was built, from what, and whether it is complete
      shards/shard-00000.images.npy   uint8 (k, size, size), grey, bicubic (cv2.INTER_CUBIC)
      shards/shard-00000.masks.npy    uint8 (k, size, size) in {0, 1}, nearest neighbour; only
                                      when the table has mask columns (OR of the row's masks)
      shards/shard-00000.json         n, sha256 of the .npy files, per row: sha1 of the source
                                      file, original height/width, status ok/bad and error
      index.csv                       one row per table row, in table order
      report.txt                      counts, bad files with their errors, elapsed, images/s

Shard ``i`` holds table rows ``[i * shard_size, (i + 1) * shard_size)``. Every file is written
atomically, and a shard's ``.json`` marker is written last: a shard is done when its marker exists
and the checksums in it match the ``.npy`` files. Building again into the same folder with the
same sources (same ordered image and mask paths, size and resize mode: the *fingerprint*) reuses
the finished shards and rebuilds the missing, unfinished or corrupt ones (and those holding rows
marked bad, in case the file was fixed); labels and splits are not part of the fingerprint, since
``index.csv`` is rewritten from the table on every build.

Resizing: ``resize="squash"`` resizes straight to ``size x size``, ignoring the aspect ratio,
which is what the papers reproduced here do. ``resize="pad"`` keeps the aspect ratio: the image is
resized bicubically so that its longer side is ``size`` and centred on a black square (letterbox);
:func:`resize_geometry` maps original pixel coordinates (e.g. ``boxes``) into the cache's frame.
Masks go through the same geometry with nearest-neighbour interpolation, each mask file with its
own shape, so a mask stored at another resolution than its image still lines up in "squash" mode.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import cv2
import numpy as np

from ..io import DataError, atomic_path, write_json, write_text
from ..locking import FolderLock
from ..progress import Progress, default_workers
from .images import DICOM_SUFFIXES, decode_bytes, imdecode_checked

# pandas is imported inside the functions that need it: spawned workers import this module, and
# pandas alone costs them a quarter of a second at start-up.

FORMAT = 1
RESIZE_MODES = ("squash", "pad")
META_FILE = "cache.json"
INDEX_FILE = "index.csv"
REPORT_FILE = "report.txt"
SHARD_DIR = "shards"
RESUME_HINT = "run `cxr-keras prepare` again to resume"


def shard_stem(shard: int) -> str:
    return f"shard-{int(shard):05d}"


def resize_geometry(orig_h: int, orig_w: int, size: int, resize: str = "squash"):
    """Return ``(scale_x, scale_y, offset_x, offset_y)``: original pixel ``(x, y)`` lands at
    ``(x * scale_x + offset_x, y * scale_y + offset_y)`` in the cached ``size x size`` image."""
    if resize == "squash" or orig_h == orig_w:
        return size / orig_w, size / orig_h, 0.0, 0.0
    nh, nw = _padded_shape(orig_h, orig_w, size)
    return nw / orig_w, nh / orig_h, float((size - nw) // 2), float((size - nh) // 2)


def _padded_shape(h: int, w: int, size: int):
    s = size / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def _resize_into(img: np.ndarray, dst: np.ndarray, resize: str, interpolation: int) -> None:
    """Resize ``img`` into the square ``dst`` (written in place, no intermediate copy)."""
    size = dst.shape[0]
    h, w = img.shape
    if resize == "squash" or h == w:
        r = cv2.resize(img, (size, size), dst=dst, interpolation=interpolation)
        if not np.may_share_memory(r, dst):  # OpenCV allocated anew (should not happen)
            dst[...] = r
        return
    nh, nw = _padded_shape(h, w, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    dst[...] = 0
    dst[top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh), interpolation=interpolation)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"missing image file: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read image file {path}: {e}") from None


def _decode_mask(data: bytes, path: str) -> np.ndarray:
    """A mask file as 0/1 ``uint8``: any non-zero pixel (of any channel, at any bit depth) is 1."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return (decode_bytes(data, path) > 0).view(np.uint8)
    m = imdecode_checked(np.frombuffer(data, dtype=np.uint8), path, "mask")
    if m.ndim == 3:
        m = m[..., :3].max(axis=2)
    return (m > 0).view(np.uint8)


def _sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _shard_files(cache_dir, shard: int):
    d = Path(cache_dir) / SHARD_DIR
    stem = shard_stem(shard)
    return d / f"{stem}.images.npy", d / f"{stem}.masks.npy", d / f"{stem}.json"


def _shard_state(cache_dir, shard: int, n: int, has_masks: bool):
    """``(problems, marker)``: what is wrong with a shard (empty list if it is done and intact)."""
    images, masks, marker = _shard_files(cache_dir, shard)
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{marker}: missing (shard not finished)"], None
    except (OSError, ValueError) as e:
        return [f"{marker}: unreadable ({e})"], None
    if not isinstance(meta, dict) or meta.get("n") != n or len(meta.get("rows") or ()) != n:
        return [f"{marker}: describes {meta.get('n') if isinstance(meta, dict) else '?'} rows, "
                f"expected {n}"], None
    problems = []
    checks = [(images, meta.get("images_sha256"))]
    if has_masks:
        checks.append((masks, meta.get("masks_sha256")))
    elif meta.get("masks_sha256") is not None:
        problems.append(f"{marker}: lists masks, but this cache has none")
    for path, expected in checks:
        try:
            found = _sha256_file(path)
        except OSError:
            problems.append(f"{path}: missing")
            continue
        if found != expected:
            problems.append(f"{path}: sha256 {found} does not match {expected} in {marker.name}")
    return problems, meta


def _init_worker():
    cv2.setNumThreads(1)


def _build_shard(job: dict) -> dict:
    """Build (or reuse) one shard. Runs in a worker process; returns its rows' metadata."""
    out, shard, start = job["out"], job["shard"], job["start"]
    paths, mask_paths, size = job["paths"], job["masks"], job["size"]
    resize, has_masks = job["resize"], job["has_masks"]
    k = len(paths)
    problems, meta = _shard_state(out, shard, k, has_masks)
    if not problems and not any(r.get("status") != "ok" for r in meta["rows"]):
        return {"shard": shard, "n": k, "rows": meta["rows"], "built": False}
    t0 = time.perf_counter()
    images_path, masks_path, marker = _shard_files(out, shard)
    marker.unlink(missing_ok=True)  # not done until the new marker is written

    images = np.zeros((k, size, size), np.uint8)
    masks = np.zeros((k, size, size), np.uint8) if has_masks else None
    scratch = np.empty((size, size), np.uint8) if has_masks else None
    rows = []
    for j, path in enumerate(paths):
        sha1 = None
        try:
            data = _read_bytes(path)
            sha1 = hashlib.sha1(data).hexdigest()
            img = decode_bytes(data, path)
            _resize_into(img, images[j], resize, cv2.INTER_CUBIC)
            if has_masks:
                for mp in mask_paths[j]:
                    _resize_into(_decode_mask(_read_bytes(mp), mp), scratch, resize, cv2.INTER_NEAREST)
                    np.bitwise_or(masks[j], scratch, out=masks[j])
            rows.append({"source_sha1": sha1, "orig_h": int(img.shape[0]), "orig_w": int(img.shape[1]),
                         "status": "ok", "error": None})
        except (DataError, cv2.error) as e:
            if not job["skip_bad"]:
                raise DataError(f"row {start + j}: {e} (fix or remove the file, or pass skip_bad=True "
                                f"/ --skip-bad to cache the row as a blank image with status 'bad')"
                                ) from None
            images[j] = 0
            if has_masks:
                masks[j] = 0
            rows.append({"source_sha1": sha1, "orig_h": 0, "orig_w": 0, "status": "bad",
                         "error": str(e)})

    with atomic_path(images_path) as tmp:
        np.save(tmp, images)
        images_sha = _sha256_file(tmp)
    masks_sha = None
    if has_masks:
        with atomic_path(masks_path) as tmp:
            np.save(tmp, masks)
            masks_sha = _sha256_file(tmp)
    else:
        masks_path.unlink(missing_ok=True)
    write_json(marker, {"n": k, "images_sha256": images_sha, "masks_sha256": masks_sha, "rows": rows})
    return {"shard": shard, "n": k, "rows": rows, "built": True, "seconds": time.perf_counter() - t0}


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != ""


def fingerprint(paths, mask_paths, size: int, resize: str) -> str:
    """sha256 of the ordered source paths (images and their masks), the size and resize mode."""
    h = hashlib.sha256()
    for p, ms in zip(paths, mask_paths):
        h.update(p.encode("utf-8", "surrogateescape"))
        for m in ms:
            h.update(b"\x1f" + m.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    h.update(f"size={int(size)};resize={resize}".encode())
    return h.hexdigest()


def _clear(out: Path) -> None:
    """Remove what a previous build wrote (only the cache's own files)."""
    d = out / SHARD_DIR
    if d.is_dir():
        for pattern in ("shard-*.npy", "shard-*.json", ".shard-*"):
            for f in d.glob(pattern):
                f.unlink(missing_ok=True)
    for name in (META_FILE, INDEX_FILE, REPORT_FILE):
        (out / name).unlink(missing_ok=True)


def _run_jobs(jobs, workers: int, bar: Progress):
    """Run the shard jobs on ``workers`` cores: this process plus ``workers - 1`` spawned ones.

    All jobs go to the pool in order; meanwhile this process takes shards from the end of the list,
    cancelling the pool's futures that have not started, until the two meet. So no core waits for
    the pool's start-up (a few tenths of a second per spawned worker: interpreter, NumPy, OpenCV).
    """
    results = [None] * len(jobs)

    def finish(i, r):
        results[i] = r
        bar.update(r["n"])

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one process per core: no OpenCV thread pool on top
    try:
        if workers <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                finish(i, _build_shard(job))
            return results
        # spawn, not fork: forking a process that has started TensorFlow's threads can deadlock.
        pool = ProcessPoolExecutor(max_workers=workers - 1, initializer=_init_worker,
                                   mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(_build_shard, job): i for i, job in enumerate(jobs)}
            by_index = list(futures)
            tail = len(jobs) - 1

            def collect():
                for fut in [f for f in futures if f.done()]:
                    finish(futures.pop(fut), fut.result())

            while tail >= 0 and by_index[tail].cancel():  # not started by the pool: ours
                futures.pop(by_index[tail])
                finish(tail, _build_shard(jobs[tail]))
                tail -= 1
                collect()
            for fut in as_completed(list(futures)):
                finish(futures.pop(fut), fut.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # finished shards stay: resumable
            raise
        pool.shutdown(wait=True)
        return results
    finally:
        cv2.setNumThreads(before)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _boxes_json(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "[]"  # the contract is a list per row; a missing one means no boxes
    return json.dumps(_jsonable(v))


def _is_scalar_column(s) -> bool:
    if s.dtype.kind in "biufcmM":
        return True
    return not s.map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray))).any()


def build_cache(table, out, size: int = 256, shard_size: int = 256, workers=None,
                skip_bad: bool = False, resize: str = "squash", progress: bool = True,
                overwrite: bool = False, wait: bool = False) -> Path:
    """Decode, resize and store every image of ``table`` (see the module docstring) under ``out``.

    ``table`` follows the contract of :mod:`cxr_keras.data.tables`. ``workers`` processes (default:
    one per core) build whole shards; the progress bar counts images. A corrupt, truncated or
    missing source raises :class:`DataError` naming the file and the row, unless ``skip_bad``:
    then the row is cached as a black image with status ``"bad"`` and listed in ``cache.json``
    and ``report.txt``. Re-running resumes (same sources) or raises (different sources) unless
    ``overwrite=True``, which deletes the previous cache's files first. One process at a time
    builds a cache (:mod:`cxr_keras.locking`): another is refused, naming it, or waits (``wait``)
    and then resumes what is there. Returns ``Path(out)``.
    """
    with FolderLock(out, "cache", wait=wait):
        return _build_cache(table, out, size, shard_size, workers, skip_bad, resize, progress,
                            overwrite)


def _build_cache(table, out, size, shard_size, workers, skip_bad, resize, progress, overwrite):
    import pandas as pd

    t0 = time.perf_counter()
    out = Path(out)
    size, shard_size = int(size), int(shard_size)
    if size < 1 or shard_size < 1:
        raise DataError(f"size and shard_size must be positive, got size={size}, shard_size={shard_size}")
    if resize not in RESIZE_MODES:
        raise DataError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if not isinstance(table, pd.DataFrame) or "path" not in table.columns:
        raise DataError("build_cache needs a DataFrame with a 'path' column (see cxr_keras.data.tables)")
    n = len(table)
    if n == 0:
        raise DataError("build_cache: the table has no rows")
    attrs = dict(table.attrs)
    labels, classes = attrs.get("labels"), attrs.get("classes")
    mask_cols = list(attrs.get("mask_columns") or [])
    wanted = (list(labels or []) + (["label"] if classes is not None else []) + mask_cols
              + (["boxes"] if attrs.get("box_classes") is not None else []))
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise DataError(f"build_cache: table attrs name column(s) {missing} that the table lacks")

    paths = [str(p) for p in table["path"]]
    if mask_cols:
        mask_paths = [[str(v) for v in vals if _present(v)]
                      for vals in zip(*(table[c].tolist() for c in mask_cols))]
    else:
        mask_paths = [[] for _ in range(n)]
    fp = fingerprint(paths, mask_paths, size, resize)
    num_shards = (n + shard_size - 1) // shard_size

    meta_path = out / META_FILE
    old = None
    if meta_path.exists() and not overwrite:
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{meta_path}: unreadable ({e}); pass overwrite=True (--overwrite) "
                            f"to rebuild the cache from scratch") from None
        if old.get("format") != FORMAT or old.get("fingerprint") != fp:
            raise DataError(
                f"{out} holds a cache of other sources (different image list, size or resize mode: "
                f"fingerprint {str(old.get('fingerprint'))[:12]}, this build {fp[:12]}); pass "
                f"overwrite=True (--overwrite) to replace it, or choose another folder")
        if old.get("shard_size") != shard_size:
            raise DataError(f"{out} was built with shard_size={old.get('shard_size')}, not {shard_size}; "
                            f"use the same shard_size to resume, or overwrite=True (--overwrite)")
    if old is None:
        _clear(out)  # also drops shards left without a cache.json: they cannot be trusted
    else:
        for f in (out / SHARD_DIR).glob(".shard-*"):  # temporaries of a killed build
            f.unlink(missing_ok=True)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)

    meta = {
        "format": FORMAT, "dataset": attrs.get("dataset"), "root": attrs.get("root"),
        "size": size, "n": n, "shard_size": shard_size, "num_shards": num_shards,
        "labels": list(labels) if labels is not None else None,
        "classes": list(classes) if classes is not None else None,
        "has_masks": bool(mask_cols),
        "box_classes": list(attrs["box_classes"]) if attrs.get("box_classes") is not None else None,
        "fingerprint": fp, "resize": resize, "complete": False, "bad": [],
        "created": (old or {}).get("created") or datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"),
        "elapsed_s": None, "table_attrs": _jsonable(attrs),
    }
    write_json(meta_path, meta)

    jobs = [{"out": str(out), "shard": s, "start": s * shard_size,
             "paths": paths[s * shard_size:(s + 1) * shard_size],
             "masks": mask_paths[s * shard_size:(s + 1) * shard_size],
             "size": size, "resize": resize, "has_masks": bool(mask_cols), "skip_bad": bool(skip_bad)}
            for s in range(num_shards)]
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, num_shards)
    bar = Progress(n, f"cache {attrs.get('dataset') or ''} {size}px".replace("  ", " "),
                   enabled=progress)
    results = _run_jobs(jobs, workers, bar)
    rows = [r for res in results for r in res["rows"]]

    # index.csv, in table order
    pos = np.arange(n)
    idx = pd.DataFrame({"shard": pos // shard_size, "offset": pos % shard_size, "path": paths,
                        "source_sha1": [r["source_sha1"] for r in rows],
                        "orig_h": np.array([r["orig_h"] for r in rows], np.int64),
                        "orig_w": np.array([r["orig_w"] for r in rows], np.int64),
                        "status": [r["status"] for r in rows]})
    for c in ("split", "patient_id"):
        if c in table.columns:
            idx[c] = table[c].to_numpy()
    for c in (labels or []):
        idx[c] = table[c].to_numpy(np.float32)
    if classes is not None:
        idx["label"] = table["label"].to_numpy(np.int64)
    if "boxes" in table.columns:
        idx["boxes"] = [_boxes_json(v) for v in table["boxes"]]
    for c in mask_cols:
        idx[c] = table[c].to_numpy()
    for c in table.columns:  # anything else scalar (age, view, ...) rides along at the end
        if c not in idx.columns and _is_scalar_column(table[c]):
            idx[c] = table[c].to_numpy()
    dtypes = {c: (str(idx[c].dtype) if idx[c].dtype.kind in "biuf" else "str") for c in idx.columns}
    if "boxes" in idx.columns:
        dtypes["boxes"] = "str"
    with atomic_path(out / INDEX_FILE) as tmp:
        idx.to_csv(tmp, index=False)

    bad = [{"row": i, "path": paths[i], "error": r["error"]} for i, r in enumerate(rows)
           if r["status"] != "ok"]
    elapsed = time.perf_counter() - t0
    built = [res for res in results if res["built"]]
    n_built = sum(res["n"] for res in built)
    meta.update(complete=True, bad=bad, elapsed_s=round(elapsed, 3), index_dtypes=dtypes)

    lines = [f"Image cache {out.resolve()}",
             f"dataset: {meta['dataset']}   root: {meta['root']}",
             f"rows: {n}   ok: {n - len(bad)}   bad: {len(bad)}",
             f"images: {size}x{size} uint8 grey, {resize}, bicubic"
             + (f"; masks: nearest, OR of {mask_cols}" if mask_cols else "; no masks"),
             f"shards: {num_shards} of up to {shard_size} rows; built this run: {len(built)}, "
             f"reused: {num_shards - len(built)}",
             f"workers: {workers}   elapsed: {elapsed:.2f} s   "
             f"{n_built / max(elapsed, 1e-9):.1f} images/s ({n_built} images built this run)"]
    if bad:
        lines.append(f"bad files ({len(bad)}), cached as black images with status 'bad':")
        lines += [f"  row {b['row']}: {b['path']}: {b['error']}" for b in bad]
    write_text(out / REPORT_FILE, "\n".join(lines) + "\n")
    write_json(meta_path, meta)  # last: complete=true only once everything else is in place
    return out


def prepare(dataset: str, root, out, size: int = 256, table_options=None, **build_kw) -> Path:
    """Read ``dataset`` under ``root`` (:func:`cxr_keras.data.load_table` with ``table_options``)
    and cache it under ``out`` with :func:`build_cache` (``build_kw``: shard_size, workers,
    skip_bad, resize, progress, overwrite, wait)."""
    from . import load_table

    table = load_table(dataset, root, **(table_options or {}))
    return build_cache(table, out, size=size, **build_kw)


class Cache:
    """A complete cache built by :func:`build_cache`, read through memory maps.

    ``Cache(path, verify=True)`` also checks every shard's checksums (reads everything once).
    """

    def __init__(self, path, verify: bool = False):
        import pandas as pd

        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.exists():
            raise DataError(f"no image cache at {self.path} ({META_FILE} is missing); "
                            f"build one with `cxr-keras prepare`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{meta_path}: unreadable ({e}); {RESUME_HINT} with --overwrite") from None
        if meta.get("format") != FORMAT:
            raise DataError(f"{meta_path}: cache format {meta.get('format')!r}, this version reads "
                            f"{FORMAT}; rebuild with `cxr-keras prepare --overwrite`")
        if not meta.get("complete"):
            raise DataError(f"image cache {self.path} is incomplete (its build was interrupted); "
                            f"{RESUME_HINT}")
        self.meta = meta
        self.size = int(meta["size"])
        self.labels = meta.get("labels")
        self.classes = meta.get("classes")
        self.box_classes = meta.get("box_classes")
        self.has_masks = bool(meta.get("has_masks"))
        index_path = self.path / INDEX_FILE
        if not index_path.exists():
            raise DataError(f"{index_path} is missing; {RESUME_HINT}")
        dtypes = dict(meta.get("index_dtypes") or {})
        dtypes.update({c: "str" for c in ("path", "source_sha1", "status", "split")})
        try:
            index = pd.read_csv(index_path, dtype=dtypes, keep_default_na=False,
                                na_values=[""])
        except Exception as e:  # pandas raises many types; name the file
            raise DataError(f"{index_path}: cannot parse ({e}); {RESUME_HINT}") from None
        if len(index) != meta["n"]:
            raise DataError(f"{index_path}: {len(index)} rows, cache.json says {meta['n']}; {RESUME_HINT}")
        if "boxes" in index.columns:
            index["boxes"] = [json.loads(s) if isinstance(s, str) else [] for s in index["boxes"]]
        self.index = index
        self._maps = {}
        if verify:
            problems = self.verify()
            if problems:
                raise DataError(f"image cache {self.path} is corrupt: " + "; ".join(problems)
                                + f". {RESUME_HINT[0].upper() + RESUME_HINT[1:]}: damaged shards are rebuilt")

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return (f"Cache({str(self.path)!r}, dataset={self.meta.get('dataset')!r}, n={len(self)}, "
                f"size={self.size}, shards={self.meta['num_shards']})")

    @property
    def num_shards(self) -> int:
        return int(self.meta["num_shards"])

    def _shard_len(self, shard: int) -> int:
        ss = int(self.meta["shard_size"])
        return min(ss, int(self.meta["n"]) - shard * ss)

    def verify(self) -> list:
        """Recompute every shard's ``.npy`` sha256 and compare with its ``.json``; list problems."""
        problems = []
        for s in range(self.num_shards):
            problems += _shard_state(self.path, s, self._shard_len(s), self.has_masks)[0]
        return problems

    def rows(self, split=None, include_bad: bool = False):
        """Index rows of ``split`` (a name or a list of names; None: all), without bad rows unless
        ``include_bad``. The DataFrame's index is the row's position in the table."""
        df = self.index
        if split is not None:
            if "split" not in df.columns:
                raise DataError(f"image cache {self.path} has no split column")
            wanted = [split] if isinstance(split, str) else list(split)
            df = df[df["split"].isin(wanted)]
        if not include_bad:
            df = df[df["status"] == "ok"]
        return df

    def _map(self, kind: str, shard: int):
        key = (kind, int(shard))
        if key not in self._maps:
            if not 0 <= int(shard) < self.num_shards:
                raise DataError(f"image cache {self.path} has shards 0..{self.num_shards - 1}, not {shard}")
            f = _shard_files(self.path, shard)[0 if kind == "images" else 1]
            try:
                self._maps[key] = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"{f}: cannot open ({e}); {RESUME_HINT}") from None
        return self._maps[key]

    def images(self, shard: int) -> np.memmap:
        """The shard's images, ``uint8 (k, size, size)``, memory-mapped read-only."""
        return self._map("images", shard)

    def masks(self, shard: int) -> np.memmap:
        """The shard's masks, ``uint8 (k, size, size)`` in {0, 1}, memory-mapped read-only."""
        if not self.has_masks:
            raise DataError(f"image cache {self.path} has no masks (its table had no mask columns)")
        return self._map("masks", shard)

    def _as_rows(self, rows):
        if rows is None:
            return self.index
        if hasattr(rows, "columns"):
            return rows
        return self.index.loc[np.asarray(rows)]

    def load(self, rows):
        """Gather ``(images, masks)`` for ``rows`` (DataFrame with shard/offset columns, or index
        labels), in their order: ``uint8 (N, size, size)``, masks likewise or None."""
        rows = self._as_rows(rows)
        shard = rows["shard"].to_numpy(np.int64)
        offset = rows["offset"].to_numpy(np.int64)
        n, s = len(rows), self.size
        images = np.empty((n, s, s), np.uint8)
        masks = np.empty((n, s, s), np.uint8) if self.has_masks else None
        order = np.argsort(shard, kind="stable")
        bounds = np.flatnonzero(np.diff(shard[order])) + 1
        for sel in np.split(order, bounds) if n else []:
            sh = int(shard[sel[0]])
            images[sel] = self.images(sh)[offset[sel]]
            if masks is not None:
                masks[sel] = self.masks(sh)[offset[sel]]
        return images, masks

    def targets(self, rows) -> np.ndarray:
        """Float32 multi-hot ``(N, L)`` (NaN kept: ignore) for labelled caches, or int64 ``(N,)``
        class indices for multi-class ones."""
        rows = self._as_rows(rows)
        if self.labels:
            return rows[list(self.labels)].to_numpy(np.float32)
        if self.classes is not None:
            return rows["label"].to_numpy(np.int64)
        raise DataError(f"image cache {self.path} has neither label columns nor classes")
