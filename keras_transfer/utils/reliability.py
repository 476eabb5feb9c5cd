"""Nothing silent, nothing lost, below the training floor: atomic file writes and copies, a
free-space check before a large write, and the finite-weights check that `saving.save_model`
uses. The callbacks built on them (divergence and empty-epoch guards, atomic training
backups) live in `keras_transfer.training.callbacks`."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

__all__ = [
    "NonFiniteWeightsError",
    "check_finite_weights",
    "check_free_space",
    "copy_atomically",
    "non_finite_variables",
    "write_atomically",
]


class NonFiniteWeightsError(FloatingPointError):
    """A model holds NaN or infinite weights and must not be saved as a result."""


def non_finite_variables(model: keras.Model) -> list[str]:
    """Paths of the model's variables holding NaN or infinite values."""
    bad = []
    for variable in model.variables:
        value = keras.ops.convert_to_numpy(variable.value)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            bad.append(variable.path)
    return bad


def check_finite_weights(model: keras.Model) -> None:
    """Raises `NonFiniteWeightsError` naming the variables if any is NaN or infinite."""
    bad = non_finite_variables(model)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteWeightsError(
            f"The model has {len(bad)} variable(s) with NaN/inf values ({shown}); refusing to "
            "save it as a result. Training diverged: restore a checkpoint and lower the "
            "learning rate or clip gradients."
        )


def write_atomically(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Calls `write(temporary_path)` then renames the file onto `path`.

    The temporary file sits beside `path` (same file system, so the rename is atomic) and
    ends with `path`'s name, so extension checks such as Keras' `.keras` still pass. Its
    name is random and it is created exclusively (`tempfile.mkstemp`, `O_EXCL`), so a
    symbolic link planted in the folder is never written through. A killed or failed write
    leaves the previous file at `path` untouched and removes the temporary file.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".partial-", suffix=f"-{name}", dir=directory)
    try:
        # mkstemp creates the file 0600; the result gets the permissions of a new file.
        os.fchmod(descriptor, 0o666 & ~_umask())
        os.close(descriptor)
        write(temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _sync_folder(directory)
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_folder(directory: str) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def copy_atomically(source: str, target: str) -> None:
    """Makes `target` a copy of `source` without a moment where it is partial: a hard link
    (no data copied) where the file system has them, else a copy, then a rename."""
    directory, name = os.path.split(os.path.abspath(target))
    descriptor, temporary = tempfile.mkstemp(prefix=".partial-", suffix=f"-{name}", dir=directory)
    os.close(descriptor)
    try:
        os.remove(temporary)
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)


def check_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Raises `OSError(ENOSPC)` naming `folder` and the bytes needed when the file system of
    `folder` has less than `needed_bytes` free, before anything is written."""
    folder = os.fspath(folder)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OSError(
            errno.ENOSPC,
            f"Not enough disk space for {what} in {folder!r}: it needs about "
            f"{needed_bytes:,} bytes and {free:,} bytes are free. Free some space, or point it "
            "at a folder on a disk with room.",
        )
