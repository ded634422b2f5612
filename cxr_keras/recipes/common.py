"""The data set-up every paper recipe shares: phantom or a real copy on disk -> a resized cache,
written once and reused across runs (with the recipe's :class:`~.lifecycle.RunOptions`)."""

from __future__ import annotations

from pathlib import Path

from ..data import load_table, write_phantom
from ..data.cache import Cache, build_cache
from ..io import DataError, write_text
from ..locking import FolderLock
from ..training.run_folder import config_hash


def phantom_or_real_root(dataset: str, cfg, opts, *, phantom_n: int, phantom_size: int,
                         root=None) -> Path:
    """The folder holding ``dataset``: a phantom copy written (once) under ``opts.out/_data``
    when ``cfg.dataset`` is a phantom one, else ``root`` (default: ``opts.root(dataset)``)."""
    if cfg.dataset == "phantom" or cfg.dataset.startswith("phantom-"):
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
    try:
        Cache(cache)
    except DataError:
        table = load_table(dataset, root, **table_options)
        if table_fn is not None:
            table = table_fn(table)
        build_cache(table, cache, size=cache_size, workers=opts.workers, progress=opts.progress,
                    wait=_waits(opts))
    return cache


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
