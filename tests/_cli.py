"""Subprocess helpers: the installed ``cxr-keras`` console script and fresh Pythons, each started
in a temporary folder (never the checkout), as a user runs them."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def console_script() -> str:
    """Path of the installed ``cxr-keras`` command (this Python's scripts folder, else PATH)."""
    for scheme in (None, f"{os.name}_user"):
        folder = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        found = shutil.which("cxr-keras", path=folder)
        if found:
            return found
    found = shutil.which("cxr-keras")
    assert found, "the cxr-keras console script is not installed (pip install \".[test]\")"
    return found


def cli(*args, cwd, env=None, timeout=600, popen=False):
    """Run ``cxr-keras ARGS`` from ``cwd``; a CompletedProcess (text), or the Popen if asked."""
    cmd = [console_script(), *map(str, args)]
    env = dict(os.environ, **(env or {}))
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def python(code: str, *args, cwd, env=None, timeout=600):
    """Run ``python -c code ARGS`` from ``cwd`` (a folder that holds no package)."""
    assert Path(cwd).is_dir(), cwd
    env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
