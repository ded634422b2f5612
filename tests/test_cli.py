"""The command line as users meet it: ``--version``, help on every option of every subcommand,
documented exit codes, and user mistakes answered with a message, never a traceback."""

import argparse
import importlib

import pytest

from cxr_keras import __version__
from cxr_keras.cli import EXIT_CODES, PAPERS, build_parser, main

from _cli import cli


def _undocumented(parser, name):
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                missing += _undocumented(subparser, f"{name} {sub}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_of_every_subcommand_has_help():
    missing = _undocumented(build_parser(), "cxr-keras")
    for paper in PAPERS:
        recipe = importlib.import_module(f"cxr_keras.recipes.{paper}")
        missing += _undocumented(recipe.build_parser(), f"cxr-keras run {paper}")
    assert not missing, f"options without help: {missing}"


def test_help_documents_the_exit_codes(capsys):
    for argv in (["--help"], ["phantom", "--help"], ["data", "--help"], ["run", "fzlpr", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "exit codes:" in out and "2  usage or data error" in out, argv
    assert "1  `data check`" in EXIT_CODES


def test_console_script_version_and_exit_codes(tmp_path):
    """Run in parallel through the installed script: --version; a usable and an unusable copy in
    `data check` (0 / 1); usage and data errors (2) with a message and no traceback."""
    (tmp_path / "empty").mkdir()
    cases = {
        "version": (["--version"], 0, f"cxr-keras {__version__}"),
        "unusable copy": (["data", "check", "nih", "--root", tmp_path / "empty"], 1, "usable: NO"),
        "unknown paper": (["run", "nopaper"], 2, "unknown paper 'nopaper'"),
        "no paper": (["run"], 2, "PAPER is one of"),
        "unknown option": (["phantom", "nih", "--out", tmp_path, "--bogus"], 2, "--bogus"),
        "bad value": (["run", "fzlpr", "--tau", "-1"], 2, "a number > 0"),
        "bad count": (["phantom", "nih", "--out", tmp_path, "--n", "0"], 2, "an integer > 0"),
        "missing run": (["export", tmp_path / "nowhere"], 2, "nowhere"),
        "unknown dataset": (["data", "check", "nope", "--root", tmp_path], 2, "no manifest"),
    }
    procs = {k: cli(*argv, cwd=tmp_path, popen=True) for k, (argv, _, _) in cases.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        _, code, text = cases[name]
        assert proc.returncode == code, f"{name}: exit {proc.returncode}\n{err[-2000:]}"
        assert text in out + err, f"{name}: {text!r} not in\n{(out + err)[-2000:]}"
        assert "Traceback" not in err, f"{name}: {err[-2000:]}"


def test_a_bug_exits_3_with_its_traceback_in_a_file(monkeypatch, capsys):
    import cxr_keras.cli as cli_module

    def broken(args):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(cli_module, "cmd_data", broken)
    assert main(["data", "list"]) == 3
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: something inside broke" in err
    path = err.split("the traceback is in ")[1].split(" ")[0]
    with open(path) as f:
        assert "Traceback" in f.read()
    with pytest.raises(RuntimeError):
        main(["--traceback", "data", "list"])
