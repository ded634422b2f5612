"""What every paper recipe shares: the standard command-line options and the data set-up
(phantom or a real copy on disk -> a resized cache), reused across runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import DataError, write_text
from ..training.run_folder import config_hash


def add_standard_args(p: argparse.ArgumentParser, default_dataset: str):
    p.add_argument("--dataset", default="phantom",
                   help=f"'phantom' (synthetic {default_dataset} in its official layout) or "
                        f"'{default_dataset}' (the real data under --data-root)")
    p.add_argument("--data-root", default=None, help="root of the real dataset")
    p.add_argument("--cache", default=None, help="cache folder (default: under --out/_data)")
    p.add_argument("--out", default="runs", help="folder under which the run folder is written")
    p.add_argument("--quick", action="store_true", help="a few-minute CPU run on small images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic TF kernels")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--xla", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--force", action="store_true", help="rerun a finished configuration")
    p.add_argument("--workers", type=int, default=None, help="processes for data preparation")
    p.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (0, 1, 2)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard logs (needs `pip install tensorboard`)")
    return p


def switch(value):
    return {"auto": "auto", "on": True, "off": False}[value]


def prepare_data(dataset: str, args, *, phantom_n: int, phantom_size: int, cache_size: int,
                 table_options: dict | None = None, progress: bool = True) -> Path:
    """Return a complete cache for ``dataset`` (a phantom copy is written first if asked).

    Phantom data and caches live under ``--out/_data`` and are reused by later runs with the
    same parameters; an interrupted preparation resumes.
    """
    from ..data import write_phantom
    from ..data.cache import Cache, prepare

    out = Path(args.out) / "_data"
    table_options = table_options or {}
    if args.dataset == "phantom":
        root = out / f"phantom-{dataset}-n{phantom_n}-s{phantom_size}-seed{args.seed}"
        if not (root / ".complete").exists():
            write_phantom(dataset, root, n=phantom_n, size=phantom_size, seed=args.seed,
                          workers=args.workers, progress=progress)
            write_text(root / ".complete", "phantom written\n")
    elif args.dataset == dataset:
        if not args.data_root:
            raise DataError(f"--dataset {dataset} needs --data-root pointing at your copy")
        root = Path(args.data_root)
    else:
        raise DataError(f"--dataset must be 'phantom' or '{dataset}', got {args.dataset!r}")
    tag = config_hash({"root": str(root.resolve()), "options": table_options})
    cache = Path(args.cache) if args.cache else out / f"cache-{root.name}-{cache_size}-{tag}"
    try:
        Cache(cache)
    except DataError:
        prepare(dataset, root, cache, size=cache_size, table_options=table_options,
                workers=args.workers, progress=progress)
    return cache
