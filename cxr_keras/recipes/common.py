"""What the paper recipes share besides the lifecycle: the data set-up (phantom or a real copy on
disk -> a resized cache, written once and reused across runs, with the recipe's
:class:`~.lifecycle.RunOptions`), and the small pieces of training and evaluation every
multi-label recipe repeats."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..data import load_table, write_phantom
from ..data.cache import Cache, build_cache
from ..io import DataError, write_text
from ..locking import FolderLock
from ..training.run_folder import config_hash


def phantom_or_real_root(dataset: str, cfg, opts, *, phantom_n, phantom_size: int,
                         root=None) -> Path:
    """The folder holding ``dataset``: a phantom copy of ``phantom_n`` images (or a dict of them
    by dataset) written (once) under ``opts.out/_data`` when ``cfg.dataset`` is a phantom one,
    else ``root`` (default: ``opts.root(dataset)``)."""
    if cfg.dataset == "phantom" or cfg.dataset.startswith("phantom-"):
        if isinstance(phantom_n, dict):
            if dataset not in phantom_n:
                raise DataError(f"phantom_n has no size for {dataset!r} (it has {sorted(phantom_n)}); "
                                f"add one, e.g. --set 'phantom_n={{..., \"{dataset}\": 60}}'")
            phantom_n = phantom_n[dataset]
        folder = (Path(opts.out) / "_data"
                  / f"phantom-{dataset}-n{phantom_n}-s{phantom_size}-seed{cfg.seed}")
        if not (folder / ".complete").exists():
            with FolderLock(folder, "phantom dataset", wait=_waits(opts)):
                if not (folder / ".complete").exists():  # (another process may have written it)
                    write_phantom(dataset, folder, n=phantom_n, size=phantom_size, seed=cfg.seed,
                                  workers=opts.workers, progress=opts.progress)
                    write_text(folder / ".complete", "phantom written\n")
        return folder
    root = root if root is not None else opts.root(dataset)
    if root is None:
        raise DataError(f"dataset {cfg.dataset!r} needs the {dataset} folder (data_root / "
                        f"--data-root, or --root {dataset}=DIR)")
    return Path(root)


def complete_cache(path) -> bool:
    """Whether ``path`` holds a complete image cache (one that :class:`Cache` opens)."""
    try:
        Cache(path)
        return True
    except DataError:
        return False


def cache_of(dataset: str, root, opts, *, cache_size: int, table_options: dict | None = None,
             table_fn=None, tag: str = "", cache=None) -> Path:
    """A complete cache of ``dataset`` under ``root`` at ``cache_size`` (built once, resumable),
    at ``cache`` or under ``opts.out/_data``. ``table_fn(table) -> table`` may filter or re-split
    the reader's table first; ``tag`` names that change so that different tables never share a
    cache."""
    table_options = table_options or {}
    key = config_hash({"root": str(Path(root).resolve()), "options": table_options, "tag": tag})
    cache = (Path(cache) if cache is not None
             else Path(opts.out) / "_data" / f"cache-{Path(root).name}-{cache_size}-{key}")
    if not complete_cache(cache):
        table = load_table(dataset, root, **table_options)
        if table_fn is not None:
            table = table_fn(table)
        build_cache(table, cache, size=cache_size, workers=opts.workers, progress=opts.progress,
                    wait=_waits(opts))
    return cache


def pooled_cache(sources: dict, opts, *, name: str, dataset: str, cache_size: int) -> Path:
    """One unlabelled cache of the images of several datasets (every image ``train``, ``source``
    naming its dataset: :func:`~cxr_keras.data.tables.pooled_table`), built once at
    ``opts.out/_data/cache-<name>-<cache_size>-<hash>``. ``sources``: source name -> (reader,
    its folder, reader options, the split kept or None for all)."""
    from ..data.tables import pooled_table

    keys = {n: [str(Path(root).resolve()), dict(options), split]
            for n, (_, root, options, split) in sources.items()}
    path = Path(opts.out) / "_data" / f"cache-{name}-{cache_size}-{config_hash(keys)}"
    if complete_cache(path):
        return path
    tables = {}
    for n, (reader, root, options, split) in sources.items():
        t = load_table(reader, root, **dict(options))
        tables[n] = t if split is None else t[t["split"] == split]
    table = pooled_table(tables, dataset=dataset, root=opts.out, labelled=False, split="train")
    build_cache(table, path, size=cache_size, workers=opts.workers)
    return path


def _waits(opts) -> bool:
    """Wait for another writer when asked, and always for a process of the same distributed job."""
    from ..training import multihost

    return opts.wait or multihost.joined() is not None


def prepared_cache(dataset: str, cfg, opts, *, phantom_n: int, phantom_size: int,
                   cache_size: int, table_options: dict | None = None) -> Path:
    """A complete cache for the recipe's main ``dataset`` (phantom copy written first if
    ``cfg.dataset`` asks for one); reused by later runs with the same parameters."""
    root = phantom_or_real_root(dataset, cfg, opts, phantom_n=phantom_n, phantom_size=phantom_size)
    return cache_of(dataset, root, opts, cache_size=cache_size, table_options=table_options,
                    cache=opts.cache)


def crop_pipelines(cache, preset: str, crop: int, *, splits=("train", "val", "test"), targets=None,
                   drop_remainder: bool = False, preset_options: dict | None = None,
                   **kw) -> SimpleNamespace:
    """The pipelines of a cache (a :class:`Cache` or its folder) through augmentation ``preset``
    with a ``crop``-pixel crop (random in training, centre else): ``cache``, ``labels``, one per
    split and the ``options`` they share. ``targets(split)``: a split's labels (default: the
    cache's); ``drop_remainder``: full batches only, in training; ``preset_options``: further
    preset fields; ``kw``: :func:`~cxr_keras.data.pipeline.make_dataset`'s (batch_size, seed,
    normalization). An error names the cache where its images are smaller than the crop."""
    from ..data.augment import PRESETS
    from ..data.pipeline import make_dataset

    cache = cache if isinstance(cache, Cache) else Cache(cache)
    if cache.size < crop:
        raise DataError(f"the cache {cache.path} has {cache.size}px images, smaller than the "
                        f"{crop}px crop: build it with cache_size {crop} or more")
    options = dict(kw, preset=replace(PRESETS[preset], crop=crop / cache.size, **(preset_options or {})))
    out = SimpleNamespace(cache=cache, labels=list(cache.labels), options=options)
    for split in splits:
        training = split == "train"
        setattr(out, split, make_dataset(cache, split, training=training,
                                         drop_remainder=drop_remainder and training,
                                         targets=None if targets is None else targets(split),
                                         **options))
    return out


def full_batches(images: int, batch: int, what: str) -> int:
    """Steps per epoch of ``images`` in full batches of ``batch``; an error naming ``what`` (e.g.
    "the training split") where there is not one full batch."""
    steps = int(images) // int(batch)
    if steps == 0:
        raise DataError(f"{what} has {images} images, fewer than one batch of {batch}")
    return steps


def auc_metric(num_labels: int):
    """Keras' mean AUC over ``num_labels`` labels from logits, named ``auc`` (``val_auc``)."""
    import keras

    return keras.metrics.AUC(multi_label=True, num_labels=num_labels, from_logits=True, name="auc")


def predict_and_save(model, run_dir, labels, **datasets) -> list:
    """``[(logits, y_true), ...]`` of ``model`` on each dataset (float64), in the order given,
    each saved as ``predictions/<name>.npz`` with the ``labels``."""
    from ..inference.batches import predict_dataset

    out = []
    for name, ds in datasets.items():
        logits, y = predict_dataset(model, ds, np.float64)
        run_dir.save_predictions(name, y_true=y, logits=logits, labels=np.array(labels))
        out.append((logits, y))
    return out


def curves_and_calibration(run_dir, test_y, test_prob, labels, *, stages, roc_title: str,
                           curves_title: str = "Training curves") -> tuple[dict, dict, list]:
    """What every multi-label run reports beside its paper's tables: ROC curves on test
    (``plots/roc_test.png``), the training curves of ``stages`` (their histories end to end,
    ``plots/training_curves.png``) and calibration on test (:func:`~cxr_keras.evaluation.
    calibration.calibration_section`). Returns (history, calibration, its report lines)."""
    from ..evaluation.calibration import calibration_section
    from ..evaluation.plots import plot_roc_curves, plot_training_curves
    from ..training import read_history

    history = {}
    for stage in stages:
        for k, v in read_history(run_dir.file("logs", f"history_{stage}.csv")).items():
            history.setdefault(k, []).extend(v)
    calibration, calibration_md = calibration_section(test_y, test_prob, labels, run_dir)
    plot_roc_curves(test_y, test_prob, labels, run_dir.file("plots", "roc_test.png"),
                    title=roc_title)
    plot_training_curves(history, run_dir.file("plots", "training_curves.png"), title=curves_title)
    return history, calibration, calibration_md
