"""Quiet start-up for the `keras-transfer` command: TensorFlow's C++ lines hidden.

Importing TensorFlow prints lines such as "oneDNN custom operations are on", "Could not
find cuda drivers" and, on a machine without a GPU, "failed call to cuInit: ... ERROR",
which a person reads as a failure. `TF_CPP_MIN_LOG_LEVEL` only works if set before
TensorFlow is imported, and some of these lines are written before TensorFlow reads it, so
the command also sends the process's stderr to /dev/null while TensorFlow is imported.
Nothing here imports TensorFlow or the rest of the package: `keras_transfer/__init__.py`
calls `quiet_tensorflow_for_the_command` first.

A user who set `TF_CPP_MIN_LOG_LEVEL`, or who passes `--verbose`, sees everything.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["COMMAND_NAME", "invoked_as_command", "quiet_tensorflow_for_the_command"]

COMMAND_NAME = "keras-transfer"
LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"


def invoked_as_command(argv: Sequence[str] | None = None) -> bool:
    """Whether this process is `keras-transfer ...` or `python -m keras_transfer ...`
    (while Python looks for `-m`'s module, `sys.argv[0]` is `"-m"`)."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return False
    program = os.path.basename(str(argv[0])).lower()
    return argv[0] == "-m" or program.startswith(COMMAND_NAME)


def _wants_verbose(argv: Sequence[str]) -> bool:
    for argument in argv[1:]:
        if argument == "--verbose" or (
            argument.startswith("--verbose=") and argument.split("=", 1)[1] not in ("0", "false")
        ):
            return True
    return False


def quiet_tensorflow_for_the_command(argv: Sequence[str] | None = None) -> bool:
    """In the command, unless the user asked otherwise: sets `TF_CPP_MIN_LOG_LEVEL=3` and
    imports TensorFlow with stderr silenced. Returns whether it did."""
    argv = sys.argv if argv is None else argv
    if not invoked_as_command(argv) or LOG_LEVEL_ENV in os.environ or "tensorflow" in sys.modules:
        return False
    # `python -m keras_transfer` has "-m" for now: the flags are not visible yet, so the
    # command line is read from /proc when it can be.
    if argv[:1] == ["-m"]:
        argv = _process_arguments() or argv
    if _wants_verbose(argv):
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


def _process_arguments() -> list[str] | None:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
    except OSError:
        return None
    arguments = [part.decode(errors="replace") for part in parts if part]
    # python -m keras_transfer <args>: the program is what follows the module name.
    if "-m" in arguments:
        return arguments[arguments.index("-m") + 1 :]
    return None
