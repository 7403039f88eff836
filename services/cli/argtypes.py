"""argparse ``type=`` converters shared by the ``visionq`` commands and ``visionq bench``.

Each raises ``argparse.ArgumentTypeError`` with a message that names the value (argparse
then exits 2 with it), never a bare ValueError (argparse would print the function's name).
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


def port(text: str) -> int:
    """A TCP port, 0-65535 (0: any free one, where the option says so)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port")
    return value


def seconds(text: str) -> float:
    """A positive, finite number of seconds (refuses 0, negatives, inf and nan)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive, finite number of seconds")
    return value
