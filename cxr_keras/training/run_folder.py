"""One folder per experiment run.

    RUN/
      config.json        the resolved configuration (every default written out)
      checkpoints/       best.keras (by the monitored metric), stage markers, backup/ for resuming
      logs/              history.csv per stage, tensorboard/
      predictions/       *.npz (no pickle): y_true, y_score, labels
      metrics.json       every number the report shows
      plots/             *.png
      report.md          our numbers beside the paper's
      DONE               written last, when the run finished

The folder name is derived from the configuration, so running the same command again finds the
same folder and resumes an interrupted run instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..io import DataError, atomic_path, write_json, write_text


def config_hash(config: dict) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class RunFolder:
    def __init__(self, path):
        self.path = Path(path)
        for sub in ("checkpoints", "logs", "predictions", "plots"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def path_for(out, name: str, config: dict) -> Path:
        """``out/<name>-<hash of config>``: the folder a configuration's run lives in."""
        return Path(out) / f"{name}-{config_hash(config)}"

    @classmethod
    def for_config(cls, out, name: str, config: dict, force: bool = False) -> "RunFolder":
        """The run folder ``out/<name>-<hash of config>``: new, partly done (it resumes) or
        finished (:attr:`finished`, returned as it is); ``force`` empties it first."""
        path = cls.path_for(out, name, config)
        if force and path.exists():  # start over: checkpoints, stage markers, logs, results
            import shutil

            for sub in ("checkpoints", "logs", "predictions", "plots"):
                shutil.rmtree(path / sub, ignore_errors=True)
            for name in ("DONE", "metrics.json", "report.md", "config.json"):
                (path / name).unlink(missing_ok=True)
        run = cls(path)
        old = path / "config.json"
        if old.exists() and json.loads(old.read_text()) != json.loads(json.dumps(config, default=str)):
            raise DataError(f"{old} differs from this configuration; choose another --out")
        if not run.finished:
            run.write_json("config.json", config)
        return run

    @property
    def finished(self) -> bool:
        """The run finished (``DONE`` written last)."""
        return (self.path / "DONE").exists()

    # paths
    def file(self, *parts) -> Path:
        return self.path.joinpath(*parts)

    def sub(self, *parts, config: dict | None = None) -> "RunFolder":
        """The run folder of a part of this run (a sub-model) at ``parts`` below it; ``config``
        is written as its ``config.json`` unless one is there (what ``cxr-keras export`` records
        as the model's preprocessing)."""
        sub = RunFolder(self.path.joinpath(*parts))
        if config and not sub.file("config.json").exists():
            sub.write_json("config.json", config)
        return sub

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    # writers (all atomic)
    def write_json(self, name, obj) -> Path:
        return write_json(self.path / name, obj)

    def write_text(self, name, text) -> Path:
        return write_text(self.path / name, text)

    def save_predictions(self, name: str, **arrays) -> Path:
        dest = self.path / "predictions" / f"{name}.npz"
        for k, v in arrays.items():
            if np.asarray(v).dtype == object:
                raise DataError(f"prediction array {k!r} has dtype object (would need pickle)")
        with atomic_path(dest) as tmp:
            np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        return dest

    def load_predictions(self, name: str) -> dict:
        with np.load(self.path / "predictions" / f"{name}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def update_metrics(self, **entries) -> dict:
        path = self.path / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else {}
        metrics.update(entries)
        write_json(path, metrics)
        return metrics

    def metrics(self) -> dict:
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def mark_done(self):
        write_text(self.path / "DONE", time.strftime("%Y-%m-%d %H:%M:%S\n"))
