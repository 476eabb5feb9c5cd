"""Quiet start-up for the `keras-transfer` command: TensorFlow's C++ lines hidden.

Importing TensorFlow prints lines such as "oneDNN custom operations are on", "Could not
find cuda drivers" and, on a machine without a GPU, "failed call to cuInit: ... ERROR",
which a person reads as a failure. `TF_CPP_MIN_LOG_LEVEL` only works if set before
TensorFlow is imported, and some of these lines are written before TensorFlow reads it, so
the command sends the process's stderr to /dev/null while TensorFlow is imported.

Only the command's entry point (`apps/command.py`) calls this, once it knows a subcommand
needs TensorFlow: importing `keras_transfer` itself reads no `sys.argv` and leaves stderr
alone. A user who set `TF_CPP_MIN_LOG_LEVEL`, or who passes `--verbose` (level 3), sees
everything.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["COMMAND_NAME", "quiet_tensorflow", "wants_tensorflow_messages"]

COMMAND_NAME = "keras-transfer"
LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"


def wants_tensorflow_messages(argv: Sequence[str]) -> bool:
    """Whether the command line asks for TensorFlow's own messages: `--verbose` alone or
    `--verbose=3` (levels 1 and 2 only choose Keras' progress display)."""
    for argument in argv[1:]:
        if argument == "--verbose" or argument == "--verbose=3":
            return True
    return False


def quiet_tensorflow(argv: Sequence[str]) -> bool:
    """Unless the user asked otherwise: sets `TF_CPP_MIN_LOG_LEVEL=3` and imports TensorFlow
    with stderr silenced. Returns whether it did."""
    if (
        LOG_LEVEL_ENV in os.environ
        or "tensorflow" in sys.modules
        or wants_tensorflow_messages(argv)
    ):
        return False
    os.environ[LOG_LEVEL_ENV] = "3"
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return True
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return True
