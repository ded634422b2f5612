"""The one run lifecycle every paper recipe goes through, and the command line over it.

A recipe holds what its paper says (a ``Config`` dataclass, its models, losses, evaluation and
report); this module holds the rest, once:

1. **configure** the runtime (seeds, determinism, mixed precision, XLA) and, with
   ``distributed=True``, join the processes (multi-host data parallel on JAX);
2. **open or resume** the run folder named after the configuration (``out/<tag>-<hash>``): a
   finished folder (``DONE``) is returned as it is, unless ``force``;
3. **prepare** the data (phantom or a real copy on disk -> a resized cache, reused);
4. **train** the stages (each resumable);
5. **evaluate and report** on process 0 only, the others waiting;
6. **mark done**.

Python::

    from cxr_keras.recipes import fzlpr
    run = fzlpr.run(fzlpr.Config(loss="fzlpr", tau=0.2), out="runs")   # phantom data
    run.metrics()["test_mean_auc"]

Command line: every ``Config`` field can be set, ``--set stage2_lr=3e-5 --set crop=224`` (JSON
values; a tuple field also takes a comma list, ``--set cls_losses=cce,focal``) or ``--config FILE``
(JSON or TOML: a mapping of fields; a run folder's ``config.json`` reproduces that run),
besides the recipe's own shortcut options. Unknown fields and values of the wrong type are errors
naming the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .._argtypes import nonnegative_int, positive_int
from ..io import DataError
from ..locking import FolderLock
from ..training import RunFolder

FULL_CONFIG = "recipe_config.json"  # beside a config.json that names a folder by part of a Config


@dataclass
class RecipeConfig:
    """The fields every recipe's ``Config`` has (its own come after): where the data comes from
    ("phantom", or a real dataset's name) and how the run executes."""
    dataset: str = "phantom"
    seed: int = 0
    deterministic: bool = False
    mixed_precision: object = "auto"   # "auto", True, False or "bfloat16"
    xla: object = "auto"               # "auto", True or False
    extra: dict = field(default_factory=dict)


@dataclass
class RunOptions:
    """How a run is executed; nothing here changes its numbers (the ``Config`` does).

    ``data_root``: the dataset's folder (``None``: phantom data); ``roots``: folders of further
    datasets, by reader name (papers that read several); ``cache``: where the resized cache goes
    (default under ``out/_data``); ``force``: rerun a finished configuration; ``workers``:
    processes for data preparation; ``distributed``: multi-host data parallel (JAX); ``wait``:
    wait for another process writing the same run folder or cache instead of stopping.
    """
    out: str | Path = "runs"
    data_root: str | Path | None = None
    roots: dict = field(default_factory=dict)
    cache: str | Path | None = None
    force: bool = False
    workers: int | None = None
    verbose: int = 2
    tensorboard: bool = False
    distributed: bool = False
    progress: bool = True
    wait: bool = False

    def root(self, reader: str) -> Path | None:
        """The folder of dataset ``reader``: its own ``roots`` entry, else ``data_root``."""
        found = self.roots.get(reader, self.data_root)
        return None if found is None else Path(found)


def options(out="runs", data_root=None, **kwargs) -> RunOptions:
    """A :class:`RunOptions` from keyword arguments (unknown ones are named)."""
    known = {f.name for f in dataclasses.fields(RunOptions)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"unknown run option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return RunOptions(out=out, data_root=data_root, **kwargs)


# ------------------------------------------------------------------ configuration from data


def _allows_none(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _coerce(key: str, value, hint):
    """``value`` as the field's type, or a DataError naming ``key``."""
    if hint in (object, typing.Any):
        return value
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if _allows_none(hint):
                return None
        errors = []
        for option in typing.get_args(hint):
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except DataError as e:
                errors.append(str(e))
        raise DataError(f"setting {key!r}: {value!r} is not {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is tuple or typing.get_origin(hint) is tuple:
        if isinstance(value, str):  # "a,b,c" (a command-line list); each item JSON where it parses
            value = [_json_or_text(v.strip()) for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    elif hint is dict or typing.get_origin(hint) is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise DataError(f"setting {key!r}: {value!r} is not a valid {name}")


def with_settings(cfg, settings: dict, source: str = "--set"):
    """A copy of the dataclass ``cfg`` with ``settings`` (field -> value) applied, each value
    checked against the field's type (JSON lists become tuples where the field is a tuple)."""
    hints = typing.get_type_hints(type(cfg))
    unknown = sorted(k for k in settings if k not in hints)
    if unknown:
        raise DataError(f"{source}: unknown setting(s) {', '.join(map(repr, unknown))} for "
                        f"{type(cfg).__module__.rsplit('.', 1)[-1]}; known: {', '.join(hints)}")
    return dataclasses.replace(cfg, **{k: _coerce(k, v, hints[k]) for k, v in settings.items()})


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_set(pairs) -> dict:
    """``["KEY=VALUE", ...]`` -> dict; a value is JSON when it parses as JSON, else a string."""
    out = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = _json_or_text(text)
    return out


def comma_list(text, option: str, *, of=str, known=None, what: str = "item") -> list:
    """The items of a comma-separated option value (None or blank: none), each converted by
    ``of``; an error naming ``option`` for one that does not convert or is not ``known``."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    try:
        items = [of(t) for t in items]
    except ValueError as e:
        raise DataError(f"{option} takes comma-separated {of.__name__} values, got {text!r}") from e
    unknown = [t for t in items if known is not None and t not in known]
    if unknown:
        raise DataError(f"{option}: unknown {what}(s) {unknown}; known: {', '.join(map(str, known))}")
    return items


def read_config_file(path) -> dict:
    """A mapping of Config fields from a JSON or TOML file (by its suffix)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                try:
                    import tomli as tomllib
                except ImportError:
                    raise DataError(f"--config {path}: reading TOML needs Python 3.11 or "
                                    "`pip install tomli`; or give the settings as JSON") from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, TypeError) as e:
        raise DataError(f"--config {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------ the command line


def parser(paper: str, doc: str, default_dataset: str, config_cls=None,
           shortcuts: dict | None = None) -> argparse.ArgumentParser:
    """``cxr-keras run <paper>``'s parser: :func:`add_run_args`, then one option per entry of
    ``shortcuts`` (Config field -> help text, or a dict of ``add_argument`` keywords with
    ``help``), named after the field (``stage2_lr`` -> ``--stage2-lr``), typed by the field's
    annotation unless the entry gives a ``type``."""
    p = argparse.ArgumentParser(prog=f"cxr-keras run {paper}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, default_dataset)
    hints = typing.get_type_hints(config_cls) if shortcuts else {}
    for name, spec in (shortcuts or {}).items():
        spec = {"help": spec} if isinstance(spec, str) else dict(spec)
        hint = hints[name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: as X
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if hint is bool:
            spec.setdefault("action", "store_true")
        elif "choices" not in spec:
            spec.setdefault("type", {int: nonnegative_int, float: float}.get(hint, str))
        given = next((a for a in p._actions if a.dest == name), None)
        if given is not None:  # a standard option (--dataset): the recipe's choices and help
            vars(given).update(choices=spec.get("choices"), help=spec["help"])
        else:
            p.add_argument("--" + name.replace("_", "-"), default=None, **spec)
    return p


def add_run_args(p: argparse.ArgumentParser, default_dataset: str) -> argparse.ArgumentParser:
    """The options every recipe takes: data, run folder, runtime, and any Config field."""
    from ..cli import EXIT_CODES

    p.epilog = EXIT_CODES
    p.add_argument("--dataset", default=None,
                   help=f"'phantom' (default: synthetic {default_dataset} in its official layout, "
                        f"written under --out/_data) or '{default_dataset}' (the real data under "
                        "--data-root)")
    p.add_argument("--data-root", default=None, help="root folder of the real dataset")
    p.add_argument("--root", action="append", default=[], metavar="READER=DIR",
                   help="root folder of a further dataset the paper reads, e.g. --root "
                        "chexpert=/data (repeatable)")
    p.add_argument("--cache", default=None, help="cache folder (default: under --out/_data)")
    p.add_argument("--out", default="runs", help="folder under which run folders are written")
    p.add_argument("--quick", action="store_true",
                   help="the paper's reduced CPU preset (small images, networks and epochs)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="settings from a JSON or TOML file (e.g. a run folder's config.json)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="settings",
                   help="set any Config field, e.g. --set stage2_lr=3e-5 (repeatable; JSON "
                        "values: --set backbone_blocks=[1,2,2,1])")
    p.add_argument("--seed", type=int, default=None, help="random seed (data, weights, order)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels (bit-identical reruns; slower on GPU)")
    p.add_argument("--mixed-precision", default=None, choices=["auto", "on", "off", "bfloat16"],
                   help="mixed precision (auto: float16 with a GPU, off on CPU; on: float16; "
                        "bfloat16: mixed bfloat16, ~1.3x faster training on CPUs with AVX512_BF16, "
                        "but no ONNX export)")
    p.add_argument("--xla", default=None, choices=["auto", "on", "off"],
                   help="XLA compilation (auto: on with a GPU or on the JAX backend, off on CPU with TensorFlow)")
    p.add_argument("--force", action="store_true", help="rerun a finished configuration")
    p.add_argument("--wait", action="store_true",
                   help="wait for another process writing the same run folder or cache (default: "
                        "stop at once, naming it)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="processes for data preparation (default: every core)")
    p.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2],
                   help="Keras fit verbosity")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard logs (needs `pip install tensorboard`)")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host data parallel on the JAX backend: the same command on every "
                        "process, with KERAS_BACKEND=jax and CXR_COORDINATOR / "
                        "CXR_NUM_PROCESSES / CXR_PROCESS_ID (or Keras' KERAS_DISTRIBUTION_* "
                        "variables, or a cluster JAX detects)")
    return p


_SWITCH = {"auto": "auto", "on": True, "off": False, "bfloat16": "bfloat16"}


def config_from_args(config_cls, args, quick: dict | None = None, shortcuts=(), translate=None):
    """The Config a command line asks for: defaults, then the ``--quick`` preset, then
    ``--config FILE``, then the recipe's shortcut options given (``shortcuts``: argparse dests
    that are Config fields; ``translate(args) -> {field: value}`` for shortcuts that convert
    their value or set several fields), the standard ones (``--dataset``, ``--seed``, ...), then
    ``--set``."""
    cfg = config_cls()
    if args.quick and quick:
        cfg = with_settings(cfg, quick, "--quick")
    if args.config:
        path = Path(args.config)
        if path.name == "config.json" and (path.parent / FULL_CONFIG).exists():
            path = path.parent / FULL_CONFIG  # a stage folder named by part of its Config
        cfg = with_settings(cfg, read_config_file(path), f"--config {path}")
    given = {name: getattr(args, name) for name in shortcuts if getattr(args, name) is not None}
    if translate is not None:
        given.update(translate(args))
    for name in ("dataset", "seed", "deterministic"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    for name in ("mixed_precision", "xla"):
        if getattr(args, name) is not None:
            given[name] = _SWITCH[getattr(args, name)]
    cfg = with_settings(cfg, given, "the command line")
    return with_settings(cfg, parse_set(args.settings), "--set")


def options_from_args(args, root_aliases: dict | None = None) -> RunOptions:
    """The :class:`RunOptions` of a command line; ``root_aliases`` maps a reader to the argparse
    dest of a recipe's own ``--xxx-root`` option, which fills ``roots`` like ``--root``."""
    roots = {reader: getattr(args, dest) for reader, dest in (root_aliases or {}).items()
             if getattr(args, dest, None) is not None}
    for pair in args.root:
        reader, sep, folder = pair.partition("=")
        if not sep or not reader or not folder:
            raise DataError(f"--root expects READER=DIR, got {pair!r}")
        roots[reader] = folder
    return RunOptions(out=args.out, data_root=args.data_root, roots=roots, cache=args.cache,
                      force=args.force, workers=args.workers, verbose=args.verbose,
                      tensorboard=args.tensorboard, distributed=args.distributed, wait=args.wait)


# ------------------------------------------------------------------ the lifecycle


def join_processes(opts: RunOptions) -> RunOptions:
    """With ``distributed``: join the processes (once per Python process: a command that opens
    several run folders joins at the first), and return the options with which this process
    runs: ``distributed`` done (False), and for process i > 0 its own copy of the data and run
    folders under ``out/_workers/process<i>`` (nothing there is needed afterwards)."""
    if not opts.distributed:
        return opts
    from ..training import multihost

    info = multihost.joined() or multihost.initialize()
    out = Path(opts.out)
    if info["process_id"] > 0:
        out = out / "_workers" / f"process{info['process_id']}"
    print(f"distributed: process {info['process_id']} of {info['num_processes']}, "
          f"{info['devices']} devices in all; writing under {out}", flush=True)
    return dataclasses.replace(opts, out=out, distributed=False)


def open_run(out, tag: str, config: dict, force: bool = False) -> RunFolder:
    """The run folder ``out/<tag>-<hash of config>``: new, resumed, or finished (check
    ``run.finished``); ``force`` empties a finished or partial one first."""
    return RunFolder.for_config(out, tag, config, force=force)


def fit_options(runtime, opts: RunOptions, seed: int) -> dict:
    """The :func:`~cxr_keras.training.fit_stage` arguments a run's execution sets: the ``seed``,
    XLA (the runtime's), Keras verbosity and TensorBoard (the options')."""
    return dict(seed=seed, jit_compile=runtime.jit_compile, verbose=opts.verbose,
                tensorboard=opts.tensorboard)


def execute(tag: str, cfg, opts: RunOptions, *, prepare, train, evaluate, config: dict | None = None):
    """Run one configuration through the lifecycle (module docstring); returns its RunFolder.

    ``prepare(cfg, opts) -> data``; ``train(cfg, run, data, runtime, opts) -> state`` (inside the
    runtime's scope, every process); ``evaluate(cfg, run, data, state, opts)`` (process 0 only,
    without distribution: load checkpoints there). ``config``: what names the run folder
    (default: every field of ``cfg``); when it is part of the Config (a stage folder shared by
    runs that differ elsewhere), the whole Config is written beside it as ``recipe_config.json``,
    which ``--config RUN/config.json`` then reads. One process at a time writes a run folder
    (:mod:`cxr_keras.locking`; ``opts.wait`` waits for another).
    """
    opts = join_processes(opts)
    partial = config is not None
    config = dataclasses.asdict(cfg) if config is None else config
    with FolderLock(RunFolder.path_for(opts.out, tag, config), "run folder", wait=opts.wait):
        return _execute_locked(tag, cfg, opts, prepare, train, evaluate, config, partial)


def execute_stages(tag: str, cfg, opts: RunOptions, stages: tuple, asked: tuple, *, folders,
                   prepare, train, evaluate):
    """:func:`execute` for a recipe of several stages in one run folder, each reading what the
    one before wrote: only the ``asked`` stages of ``stages`` run (``train`` and ``evaluate`` get
    ``stages=asked``); a single stage may be rerun on a finished run (``DONE`` stands once the last
    stage ran), and ``force`` empties the first stage asked and every later one
    (``folders(path, stage)``: that stage's paths in the run folder ``path``) -- earlier stages
    and their metrics are kept."""
    import shutil

    opts = join_processes(opts)  # (first: process i > 0 has its own folder)
    path = RunFolder.path_for(opts.out, tag, dataclasses.asdict(cfg))
    with FolderLock(path, "run folder", wait=opts.wait):  # (execute's own lock: the same one)
        if opts.force:
            for stage in stages[stages.index(asked[0]):]:
                for folder in folders(path, stage):
                    shutil.rmtree(folder, ignore_errors=True)
        if opts.force or tuple(asked) != tuple(stages):
            (path / "DONE").unlink(missing_ok=True)
        run = execute(tag, cfg, dataclasses.replace(opts, distributed=False, force=False),
                      prepare=prepare, train=functools.partial(train, stages=asked),
                      evaluate=functools.partial(evaluate, stages=asked))
        if stages[-1] not in asked:
            run.file("DONE").unlink(missing_ok=True)
        return run


def stage_function(run, name: str):
    """``run`` with ``stage=name``: the function that runs that stage alone of a recipe of
    several (:func:`execute_stages`), named after it."""
    def one_stage(cfg=None, out="runs", data_root=None, **options):
        return run(cfg, out, data_root, stage=name, **options)

    one_stage.__name__ = one_stage.__qualname__ = name
    one_stage.__doc__ = f"The {name} stage alone: :func:`run` with ``stage={name!r}``."
    return one_stage


def _execute_locked(tag, cfg, opts, prepare, train, evaluate, config, partial):
    from ..training import configure, multihost

    run = open_run(opts.out, tag, config, force=opts.force)
    # every process's copy is marked done together: they agree, or one would train alone
    multihost.agree(f"whether {run.path.name} is finished (1) or not (0)", int(run.finished))
    if run.finished:
        print(f"finished earlier: {run.path} (--force to run it again)", flush=True)
        return run
    print(f"run folder: {run.path}", flush=True)
    if partial:  # the folder is named by part of the Config: keep all of it beside
        run.write_json(FULL_CONFIG, dataclasses.asdict(cfg))
    runtime = configure(cfg.seed, cfg.deterministic, cfg.mixed_precision, cfg.xla)
    if multihost.joined() and not runtime.jit_compile:
        # eager JAX cannot update metrics (e.g. IoU's scatter) from a batch spread over processes
        print("distributed: XLA on (eager steps cannot run across processes)", flush=True)
        runtime = dataclasses.replace(runtime, jit_compile=True)
    data = prepare(cfg, opts)
    with runtime.scope():
        state = train(cfg, run, data, runtime, opts)
    if multihost.is_chief():
        with multihost.local(), runtime.precision():  # the dtype policy of training, no strategy
            evaluate(cfg, run, data, state, opts)
    multihost.barrier(f"{tag} evaluated")  # the others wait: JAX's exit would not wait so long
    run.mark_done()  # on every process: a rerun finds every copy finished
    if multihost.is_chief():
        print(f"report: {run.file('report.md')}", flush=True)
    return run


IMAGENET_SKIPPED = ("ImageNet rows skipped: --quick trains reduced networks (pass full-size runs "
                    "with --imagenet-weights or the default download)")


def write_summary(path, text) -> None:
    """Write a command's summary of several runs (``text()``: its tables), on process 0 only
    (the only one whose run folders hold their metrics)."""
    from ..io import write_text
    from ..training import multihost

    if multihost.is_chief():
        write_text(path, text())
        print(f"wrote {path}", flush=True)


def setup(cfg, resolve, real: tuple, out="runs", data_root=None, opts: RunOptions | None = None,
          kwargs: dict | None = None, join: bool = False):
    """(Config, RunOptions) of a recipe's Python entry point: ``cfg`` resolved and bound to its
    data (:func:`bind_data`; ``real``: the real datasets it takes), ``opts`` (default: from
    ``out``, ``data_root`` and the options ``kwargs``); ``join``: the processes joined
    (:func:`join_processes`: once, so pass the result on to every later call)."""
    opts = opts or options(out, data_root, **(kwargs or {}))
    cfg = bind_data(resolve(cfg), opts, real)
    return cfg, join_processes(opts) if join else opts


def bind_data(cfg, opts: RunOptions, real: tuple):
    """``cfg`` as it runs on ``opts``' data: "phantom" becomes ``real[0]`` when a data folder is
    given; checked (:func:`check_dataset`); for real data, the folders go into ``cfg.extra`` so
    that runs on two copies of a dataset never share a run folder."""
    if cfg.dataset == "phantom" and (opts.data_root is not None or opts.roots):
        cfg = dataclasses.replace(cfg, dataset=real[0])
    check_dataset(cfg, opts, real)
    if cfg.dataset == "phantom" or cfg.dataset.startswith("phantom-"):
        return cfg
    folders = dict(data_root=str(opts.data_root), cache=str(opts.cache),
                   roots={k: str(v) for k, v in opts.roots.items()})
    return dataclasses.replace(cfg, extra=dict(cfg.extra, **folders))


def check_choices(cfg, **known) -> None:
    """Each field of ``cfg`` named in ``known`` (field -> its choices) holds one of its choices;
    else an error naming the field, the choices and the value."""
    for name, choices in known.items():
        value = getattr(cfg, name)
        if value not in choices:
            raise DataError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_dataset(cfg, opts: RunOptions, real: tuple) -> None:
    """``cfg.dataset`` is "phantom" (no data root needed) or one of ``real`` (needs one)."""
    if cfg.dataset == "phantom" or cfg.dataset.startswith("phantom-"):
        return
    if cfg.dataset not in real:
        raise DataError(f"dataset must be 'phantom' or one of {', '.join(real)}, got {cfg.dataset!r}")
    if opts.data_root is None and not opts.roots:
        raise DataError(f"dataset {cfg.dataset!r} needs its folder: data_root (--data-root)")
