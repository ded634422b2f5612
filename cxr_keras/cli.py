"""The ``cxr-keras`` command line.

    cxr-keras phantom DATASET --out DIR [--n N] [--size S] [--seed K]
    cxr-keras data check DATASET --root DIR
    cxr-keras data list
    cxr-keras prepare DATASET --root DIR --out CACHE [--size 256] [--skip-bad] [--option KEY=VALUE]
    cxr-keras run PAPER [paper options]          (cxr-keras run fzlpr --help)
    cxr-keras export RUN_DIR [--out DIR]
    cxr-keras predict MODEL IMAGES_DIR --out CSV [--tta]
    cxr-keras convert ARCH CHECKPOINT --out FILE.weights.h5 [--include-top]
                                      (ARCH: res2net50, resnet50, resnet18, resnet34, vit_small)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from .io import DataError

PAPERS = ("fzlpr", "multiloss", "mlrfnet", "dual_mae", "mtpret")
DISTRIBUTED = ("fzlpr",)  # recipes that take --distributed (multi-host, JAX)


def _options(pairs):
    """Parse ``KEY=VALUE`` pairs; values are JSON when they parse as JSON, else strings."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise DataError(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_phantom(args):
    from .data import write_phantom

    out = write_phantom(args.dataset, args.out, n=args.n, size=args.size, seed=args.seed,
                        workers=args.workers)
    print(f"wrote a {args.n}-image phantom {args.dataset} at {out}")
    return 0


def cmd_data(args):
    from .data import manifests

    if args.action == "list":
        for name in manifests.available():
            man = manifests.load_manifest(name)
            print(f"{name:14s} {man.get('title', '')}")
        return 0
    if not args.dataset or not args.root:
        raise DataError("usage: cxr-keras data check DATASET --root DIR")
    result = manifests.check(args.dataset, args.root)
    print(result.format())
    return 0 if result.usable else 1


def cmd_prepare(args):
    from .data.cache import prepare

    out = prepare(args.dataset, args.root, args.out, size=args.size,
                  table_options=_options(args.option), workers=args.workers,
                  skip_bad=args.skip_bad, shard_size=args.shard_size, overwrite=args.overwrite,
                  resize=args.resize)
    print(f"cache ready at {out}")
    return 0


def cmd_run(args, rest):
    if args.paper is None:
        print(f"usage: cxr-keras run PAPER [options]; PAPER is one of: {', '.join(PAPERS)}; "
              "see cxr-keras run PAPER --help")
        return 0 if rest in ([], ["-h"], ["--help"]) else 2
    if args.paper not in PAPERS:
        raise DataError(f"unknown paper {args.paper!r}; known: {', '.join(PAPERS)}")
    if "--distributed" in rest and args.paper not in DISTRIBUTED:
        raise DataError(f"--distributed is implemented for {', '.join(DISTRIBUTED)} so far, not "
                        f"{args.paper}: run it on one host (MirroredStrategy uses every local GPU)")
    recipe = importlib.import_module(f"cxr_keras.recipes.{args.paper}")
    return recipe.main(rest)


def cmd_export(args):
    from .export import export_run

    out = export_run(args.run_dir, args.out)
    print(f"exported SavedModel to {out}")
    return 0


def cmd_predict(args):
    from .inference.predict import predict_folder

    out = predict_folder(args.model, args.images, args.out, tta=args.tta, batch_size=args.batch_size,
                         size=args.size)
    print(f"wrote predictions to {out}")
    return 0


def cmd_convert(args):
    from .convert import convert_checkpoint

    out = convert_checkpoint(args.arch, args.checkpoint, args.out, include_top=args.include_top)
    print(f"wrote Keras weights of {args.arch} to {out}")
    return 0


def build_parser():
    from .convert import FROM_STATE_DICT

    p = argparse.ArgumentParser(prog="cxr-keras", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    ph = sub.add_parser("phantom", help="write a phantom dataset in its official layout")
    ph.add_argument("dataset")
    ph.add_argument("--out", required=True)
    ph.add_argument("--n", type=int, default=200)
    ph.add_argument("--size", type=int, default=256)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--workers", type=int, default=None)
    ph.set_defaults(func=cmd_phantom)

    da = sub.add_parser("data", help="check a dataset copy against its manifest, or list manifests")
    da.add_argument("action", choices=["check", "list"])
    da.add_argument("dataset", nargs="?")
    da.add_argument("--root")
    da.set_defaults(func=cmd_data)

    pr = sub.add_parser("prepare", help="build the resized image cache of a dataset")
    pr.add_argument("dataset")
    pr.add_argument("--root", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--size", type=int, default=256)
    pr.add_argument("--shard-size", type=int, default=256)
    pr.add_argument("--workers", type=int, default=None)
    pr.add_argument("--skip-bad", action="store_true", help="skip unreadable files, list them")
    pr.add_argument("--overwrite", action="store_true")
    pr.add_argument("--resize", choices=["squash", "pad"], default="squash")
    pr.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a reader option, e.g. --option val_by=patient (repeatable)")
    pr.set_defaults(func=cmd_prepare)

    ru = sub.add_parser("run", help="run a paper's experiment", add_help=False)
    ru.add_argument("paper", nargs="?", help=f"one of: {', '.join(PAPERS)}")
    ru.set_defaults(func=None)

    ex = sub.add_parser("export", help="export a run's best model as a SavedModel")
    ex.add_argument("run_dir")
    ex.add_argument("--out", default=None)
    ex.set_defaults(func=cmd_export)

    pd_ = sub.add_parser("predict", help="predict a folder of images with a .keras or SavedModel")
    pd_.add_argument("model")
    pd_.add_argument("images")
    pd_.add_argument("--out", required=True)
    pd_.add_argument("--tta", action="store_true")
    pd_.add_argument("--batch-size", type=int, default=16)
    pd_.add_argument("--size", type=int, default=None, help="input side (default: the model's)")
    pd_.set_defaults(func=cmd_predict)

    co = sub.add_parser("convert", help="convert a PyTorch checkpoint to Keras .weights.h5")
    co.add_argument("arch", choices=sorted(FROM_STATE_DICT))
    co.add_argument("checkpoint", help=".safetensors, .npz or (with torch) .pth/.pt/.bin")
    co.add_argument("--out", required=True, help="the Keras weights file (name.weights.h5)")
    co.add_argument("--include-top", action="store_true", help="keep the fc classifier")
    co.set_defaults(func=cmd_convert)
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, rest)
        if rest:
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        return args.func(args)
    except DataError as e:
        print(f"cxr-keras: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
