"""argparse value types that refuse out-of-range numbers as usage errors (exit 2, the option and
the value named) instead of failing later inside training."""

from __future__ import annotations

import argparse


def _number(kind, test, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what  # argparse names the type in its message
    return parse


positive_int = _number(int, lambda v: v > 0, "an integer > 0")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")
open_fraction = _number(float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")
