"""What every paper recipe shares: the standard command-line options and the data set-up
(phantom or a real copy on disk -> a resized cache), reused across runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._argtypes import positive_int
from ..io import DataError, write_text
from ..training.run_folder import config_hash


def add_standard_args(p: argparse.ArgumentParser, default_dataset: str):
    from ..cli import EXIT_CODES

    p.epilog = EXIT_CODES
    p.add_argument("--dataset", default="phantom",
                   help=f"'phantom' (synthetic {default_dataset} in its official layout) or "
                        f"'{default_dataset}' (the real data under --data-root)")
    p.add_argument("--data-root", default=None, help="root of the real dataset")
    p.add_argument("--cache", default=None, help="cache folder (default: under --out/_data)")
    p.add_argument("--out", default="runs", help="folder under which the run folder is written")
    p.add_argument("--quick", action="store_true", help="a few-minute CPU run on small images")
    p.add_argument("--seed", type=int, default=0, help="random seed (data, weights, order)")
    p.add_argument("--deterministic", action="store_true", help="deterministic TF kernels")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "on", "off"],
                   help="mixed float16 (auto: on with a GPU, off on CPU)")
    p.add_argument("--xla", default="auto", choices=["auto", "on", "off"],
                   help="XLA compilation (auto: on with a GPU, off on CPU)")
    p.add_argument("--force", action="store_true", help="rerun a finished configuration")
    p.add_argument("--workers", type=positive_int, default=None, help="processes for data preparation")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=2, help="Keras fit verbosity (0, 1, 2)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard logs (needs `pip install tensorboard`)")
    return p


def switch(value):
    return {"auto": "auto", "on": True, "off": False}[value]


def start_distributed(args) -> dict | None:
    """``--distributed``: join the processes (:func:`cxr_keras.training.multihost.initialize`).
    Process 0 writes under ``--out`` as usual; process i > 0 writes its own copy of the data and
    run folder under ``--out/_workers/process<i>`` (nothing there is needed afterwards)."""
    if not getattr(args, "distributed", False):
        return None
    from ..training import multihost

    info = multihost.initialize()
    if info["process_id"] > 0:
        args.out = str(Path(args.out) / "_workers" / f"process{info['process_id']}")
    print(f"distributed: process {info['process_id']} of {info['num_processes']}, "
          f"{info['devices']} devices in all; writing under {args.out}", flush=True)
    return info


def apply_args(cfg, args, names=(), overrides=None):
    """Copy ``--dataset``, ``--seed``, ``--deterministic``, ``--mixed-precision`` and ``--xla``
    (the last two only when not "auto", so that a preset's choice stands), then the options
    ``names`` that were given, then ``overrides``, onto ``cfg``."""
    cfg.dataset, cfg.seed, cfg.deterministic = args.dataset, args.seed, args.deterministic
    if args.mixed_precision != "auto":
        cfg.mixed_precision = switch(args.mixed_precision)
    if args.xla != "auto":
        cfg.xla = switch(args.xla)
    for name in names:
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    for k, v in (overrides or {}).items():
        setattr(cfg, k, v)
    return cfg


def dataset_root(dataset: str, args, *, phantom_n: int, phantom_size: int, data_root=None,
                 progress: bool = True) -> Path:
    """The folder holding ``dataset``: a phantom copy written (once) under ``--out/_data`` when
    ``--dataset phantom``, else ``data_root`` (default ``--data-root``)."""
    from ..data import write_phantom

    if args.dataset == "phantom":
        root = Path(args.out) / "_data" / f"phantom-{dataset}-n{phantom_n}-s{phantom_size}-seed{args.seed}"
        if not (root / ".complete").exists():
            write_phantom(dataset, root, n=phantom_n, size=phantom_size, seed=args.seed,
                          workers=args.workers, progress=progress)
            write_text(root / ".complete", "phantom written\n")
        return root
    data_root = data_root if data_root is not None else args.data_root
    if not data_root:
        raise DataError(f"--dataset {args.dataset} needs the {dataset} folder (--data-root or the "
                        "recipe's own --*-root option)")
    return Path(data_root)


def cached(dataset: str, root, args, *, cache_size: int, table_options: dict | None = None,
           table_fn=None, tag: str = "", cache=None, progress: bool = True) -> Path:
    """A complete cache of ``dataset`` under ``root`` at ``cache_size`` (built once, resumable),
    at ``cache`` or under ``--out/_data``.

    ``table_fn(table) -> table`` may filter or re-split the reader's table first; ``tag`` names
    that change so that different tables never share a cache.
    """
    from ..data import load_table
    from ..data.cache import Cache, build_cache

    table_options = table_options or {}
    key = config_hash({"root": str(Path(root).resolve()), "options": table_options, "tag": tag})
    cache = (Path(cache) if cache is not None
             else Path(args.out) / "_data" / f"cache-{Path(root).name}-{cache_size}-{key}")
    try:
        Cache(cache)
    except DataError:
        table = load_table(dataset, root, **table_options)
        if table_fn is not None:
            table = table_fn(table)
        build_cache(table, cache, size=cache_size, workers=args.workers, progress=progress)
    return cache


def prepare_data(dataset: str, args, *, phantom_n: int, phantom_size: int, cache_size: int,
                 table_options: dict | None = None, progress: bool = True) -> Path:
    """Return a complete cache for ``dataset`` (a phantom copy is written first if asked).

    Phantom data and caches live under ``--out/_data`` and are reused by later runs with the
    same parameters; an interrupted preparation resumes.
    """
    if args.dataset not in ("phantom", dataset):
        raise DataError(f"--dataset must be 'phantom' or '{dataset}', got {args.dataset!r}")
    root = dataset_root(dataset, args, phantom_n=phantom_n, phantom_size=phantom_size,
                        progress=progress)
    return cached(dataset, root, args, cache_size=cache_size, table_options=table_options,
                  cache=args.cache, progress=progress)


def run_or_reuse(run, cfg, args, tag: str):
    """``run(cfg, args)``, or the run folder of the same configuration when it already finished
    (``out/<tag>-<config hash>``), so that an experiment grid can be started again."""
    from dataclasses import asdict

    from ..training import RunFolder

    try:
        return run(cfg, args)
    except DataError as e:
        if "finished run" not in str(e):
            raise
        return RunFolder(Path(args.out) / f"{tag}-{config_hash(asdict(cfg))}")


# ------------------------------------------------------------------ with RunOptions (lifecycle)


def phantom_or_real_root(dataset: str, cfg, opts, *, phantom_n: int, phantom_size: int,
                         root=None) -> Path:
    """The folder holding ``dataset``: a phantom copy written (once) under ``opts.out/_data``
    when ``cfg.dataset`` is a phantom one, else ``root`` (default: ``opts.root(dataset)``)."""
    from ..data import write_phantom

    if cfg.dataset == "phantom" or cfg.dataset.startswith("phantom-"):
        folder = (Path(opts.out) / "_data"
                  / f"phantom-{dataset}-n{phantom_n}-s{phantom_size}-seed{cfg.seed}")
        if not (folder / ".complete").exists():
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
    from ..data import load_table
    from ..data.cache import Cache, build_cache

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
        build_cache(table, cache, size=cache_size, workers=opts.workers, progress=opts.progress)
    return cache


def prepared_cache(dataset: str, cfg, opts, *, phantom_n: int, phantom_size: int,
                   cache_size: int, table_options: dict | None = None) -> Path:
    """A complete cache for the recipe's main ``dataset`` (phantom copy written first if
    ``cfg.dataset`` asks for one); reused by later runs with the same parameters."""
    root = phantom_or_real_root(dataset, cfg, opts, phantom_n=phantom_n, phantom_size=phantom_size)
    return cache_of(dataset, root, opts, cache_size=cache_size, table_options=table_options,
                    cache=opts.cache)
