"""argparse ``type=`` converters shared by the ``visionq`` commands and ``visionq bench``.

Each raises ``argparse.ArgumentTypeError`` with a message that names the value (argparse
then exits 2 with it), never a bare ValueError (argparse would print the function's name).
"""

from __future__ import annotations

import argparse


def _int_in(text: str, low: int, high: int | None, what: str) -> int:
    """``text`` as an integer in [low, high] (no upper bound when None), else the error."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_in(text, 1, None, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_in(text, 0, None, "a non-negative integer")


def port(text: str) -> int:
    """A TCP port, 0-65535 (0: any free one, where the option says so)."""
    return _int_in(text, 0, 65535, "a TCP port")


def seconds(text: str) -> float:
    """A positive, finite number of seconds (refuses 0, negatives, inf and nan)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive, finite number of seconds")
    return value
