"""The ``cxr-keras`` command line (``cxr-keras --version``; ``cxr-keras COMMAND --help``).

    cxr-keras phantom DATASET --out DIR [--n N] [--size S] [--seed K]
    cxr-keras data check DATASET --root DIR
    cxr-keras data list
    cxr-keras prepare DATASET --root DIR --out CACHE [--size 256] [--skip-bad] [--option KEY=VALUE]
    cxr-keras run PAPER [paper options]          (cxr-keras run fzlpr --help)
    cxr-keras export RUN_DIR [--out DIR] [--format savedmodel,onnx,litert]
    cxr-keras predict MODEL IMAGES_DIR --out CSV [--tta] [--on-error skip]
    cxr-keras convert ARCH CHECKPOINT --out FILE.weights.h5 [--include-top]
                                      (ARCH: res2net50, resnet50, resnet18, resnet34, vit_small)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import traceback

from . import __version__
from ._argtypes import positive_int
from .io import DataError

PAPERS = ("fzlpr", "multiloss", "mlrfnet", "dual_mae", "mtpret")
EXIT_CODES = """exit codes:
  0  done
  1  `data check`: the dataset copy is not usable
  2  usage or data error (a wrong option, a missing or malformed file; the message names it)
  3  internal error (a bug): the traceback is written to a file that the message names
  130 interrupted (Ctrl-C); run the same command again to resume"""
USER_ERRORS = (DataError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)


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
                  resize=args.resize, wait=args.wait)
    print(f"cache ready at {out}")
    return 0


def cmd_run(args, rest):
    if args.paper is None:
        asked = rest in (["-h"], ["--help"])
        print(f"usage: cxr-keras run PAPER [options]; PAPER is one of: {', '.join(PAPERS)}; "
              "see cxr-keras run PAPER --help", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    if args.paper not in PAPERS:
        raise DataError(f"unknown paper {args.paper!r}; known: {', '.join(PAPERS)}")
    recipe = importlib.import_module(f"cxr_keras.recipes.{args.paper}")
    return recipe.main(rest)


def cmd_export(args):
    from .export import export_run

    out = export_run(args.run_dir, args.out, formats=args.format)
    print(f"exported {args.format} to {out}")
    return 0


def cmd_predict(args):
    from .inference.predict import predict_folder

    out = predict_folder(args.model, args.images, args.out, tta=args.tta, batch_size=args.batch_size,
                         size=args.size, on_error=args.on_error, progress=True)
    print(f"wrote predictions to {out}")
    return 0


def cmd_convert(args):
    from .convert import convert_checkpoint

    out = convert_checkpoint(args.arch, args.checkpoint, args.out, include_top=args.include_top)
    print(f"wrote Keras weights of {args.arch} to {out}")
    return 0


def build_parser():
    from .convert import FROM_STATE_DICT

    p = argparse.ArgumentParser(prog="cxr-keras", description=__doc__, epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"cxr-keras {__version__}")
    p.add_argument("--traceback", action="store_true",
                   help="on an error, print the full Python traceback (also CXR_TRACEBACK=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_, **kw):
        return sub.add_parser(name, help=help_, description=help_, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    ph = command("phantom", "write a phantom dataset in its official layout")
    ph.add_argument("dataset", help="dataset whose layout to write (cxr-keras data list)")
    ph.add_argument("--out", required=True, help="folder to write the dataset root into")
    ph.add_argument("--n", type=positive_int, default=200, help="number of images (default 200)")
    ph.add_argument("--size", type=positive_int, default=256, help="image side in pixels (default 256)")
    ph.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ph.add_argument("--workers", type=positive_int, default=None,
                    help="processes to render with (default: every core)")
    ph.set_defaults(func=cmd_phantom)

    da = command("data", "check a dataset copy against its manifest, or list manifests")
    da.add_argument("action", choices=["check", "list"],
                    help="check: verify a copy (exit 1 if unusable); list: the known datasets")
    da.add_argument("dataset", nargs="?", help="dataset name, for check")
    da.add_argument("--root", help="root folder of the copy, for check")
    da.set_defaults(func=cmd_data)

    pr = command("prepare", "build the resized image cache of a dataset")
    pr.add_argument("dataset", help="dataset name (cxr-keras data list)")
    pr.add_argument("--root", required=True, help="root folder of the dataset copy")
    pr.add_argument("--out", required=True, help="cache folder to write (resumable)")
    pr.add_argument("--size", type=positive_int, default=256, help="cached image side (default 256)")
    pr.add_argument("--shard-size", type=positive_int, default=256, help="images per shard (default 256)")
    pr.add_argument("--workers", type=positive_int, default=None,
                    help="decoding processes (default: every core)")
    pr.add_argument("--skip-bad", action="store_true", help="skip unreadable files, list them")
    pr.add_argument("--overwrite", action="store_true",
                    help="rebuild a cache that was built from other files or options")
    pr.add_argument("--resize", choices=["squash", "pad"], default="squash",
                    help="squash to a square (default) or pad to a square first")
    pr.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a reader option, e.g. --option val_by=patient (repeatable)")
    pr.add_argument("--wait", action="store_true",
                    help="wait for another process building the same cache (default: stop, naming it)")
    pr.set_defaults(func=cmd_prepare)

    ru = command("run", "run a paper's experiment (cxr-keras run PAPER --help)", add_help=False)
    ru.add_argument("paper", nargs="?", help=f"one of: {', '.join(PAPERS)}")
    ru.set_defaults(func=None)

    ex = command("export", "export a run's best model: raw pixels in, probabilities out")
    ex.add_argument("run_dir", help="a finished run folder")
    ex.add_argument("--out", default=None, help="the export folder (default: RUN_DIR/export)")
    ex.add_argument("--format", default="savedmodel",
                    help="comma-separated: savedmodel, onnx (extra [onnx]), litert; or all "
                         "(default savedmodel)")
    ex.set_defaults(func=cmd_export)

    pd_ = command("predict", "predict a folder of images with a .keras or an exported model")
    pd_.add_argument("model", help="a .keras file, an export folder, its savedmodel folder, "
                                   "model.onnx or model.tflite")
    pd_.add_argument("images", help="folder of images (PNG, JPEG, DICOM), searched recursively")
    pd_.add_argument("--out", required=True, help="CSV file of per-image probabilities")
    pd_.add_argument("--tta", action="store_true",
                     help="average the test-time augmentation views (flip, zooms)")
    pd_.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default 16)")
    pd_.add_argument("--size", type=positive_int, default=None, help="input side (default: the model's)")
    pd_.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                     help="an unreadable image stops the run (default) or is skipped, named on "
                          "stderr and in OUT.errors.csv")
    pd_.set_defaults(func=cmd_predict)

    co = command("convert", "convert a PyTorch checkpoint to Keras .weights.h5")
    co.add_argument("arch", choices=sorted(FROM_STATE_DICT), help="the checkpoint's architecture")
    co.add_argument("checkpoint", help=".safetensors, .npz or (with torch) .pth/.pt/.bin")
    co.add_argument("--out", required=True, help="the Keras weights file (name.weights.h5)")
    co.add_argument("--include-top", action="store_true", help="keep the fc classifier")
    co.set_defaults(func=cmd_convert)
    return p


def _internal_error(exc) -> int:
    """Keep the traceback of a bug in a file and say where, not on the user's screen."""
    fd, path = tempfile.mkstemp(prefix="cxr-keras-traceback-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        traceback.print_exception(exc, file=f)
    print(f"cxr-keras: internal error: {type(exc).__name__}: {exc}\n"
          f"  the traceback is in {path} (or run with --traceback); please report it",
          file=sys.stderr)
    return 3


def main(argv=None):
    """Run the command line; returns the exit code (see ``EXIT_CODES``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    show_traceback = args.traceback or os.environ.get("CXR_TRACEBACK") == "1"
    try:
        if args.command == "run":
            return cmd_run(args, rest)
        if rest:
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        return args.func(args)
    except KeyboardInterrupt:
        print("cxr-keras: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if show_traceback:
            raise
        print(f"cxr-keras: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: keep the traceback, exit 3
        if show_traceback:
            raise
        return _internal_error(e)


if __name__ == "__main__":
    sys.exit(main())
