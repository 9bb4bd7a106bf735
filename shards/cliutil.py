"""Small pieces shared by every command line in shards and distsim: argparse value types, the
one-line rendering of an error, and one line for any failure to write a file."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def one_line(err: BaseException) -> str:
    """An error as one line: an OSError names its file, any message's whitespace collapses."""
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        text = str(err)
    return " ".join(text.split())


@contextmanager
def written(what: str | Path) -> Iterator[None]:
    """Any failure to write inside becomes ``OSError("could not write WHAT (why)")``: each
    library says a full disk its own way (an OSError without the file's name, torch.save's
    RuntimeError), and a user needs to hear which file."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        raise OSError(f"could not write {what} ({one_line(err)})") from None
