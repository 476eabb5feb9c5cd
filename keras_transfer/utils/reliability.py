"""Nothing silent, nothing lost, below the training floor: atomic file writes and copies (one
file, or a set of files replaced together), an exclusive lock on an output folder, a
free-space check before a large write, and the finite-weights check that
`saving.save_model` uses. The callbacks built on them (divergence and empty-epoch guards,
atomic training backups) live in `keras_transfer.training.callbacks`.

Paths on a remote file system (`gs://...`, `files.is_remote`) work too: a file is written
under a temporary name beside its path, then renamed onto it (`tf.io.gfile.rename`, which
replaces the object whole), without the `fsync` calls a local disk gets; the folder lock is
the lock file's content (there is no `flock`)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_transfer.utils import files

__all__ = [
    "LOCK_FILE",
    "FolderLock",
    "FolderLockedError",
    "NonFiniteWeightsError",
    "check_finite_weights",
    "check_free_space",
    "copy_atomically",
    "file_sha256",
    "non_finite_variables",
    "write_atomically",
    "write_files_atomically",
]

logger = logging.getLogger("keras_transfer")


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


def file_sha256(
    path: str | os.PathLike, opener: Callable[[str, str], Any] = files.open_file
) -> str:
    """The SHA-256 hex digest of a file's bytes, read in chunks of 1 MiB (a model file of
    gigabytes never sits in memory whole).

    Args:
        path: the file.
        opener: `opener(path, "rb")` opens it: `files.open_file` (any file system), or
            e.g. `tf.io.gfile.GFile`.

    Example:
    ```python
    from keras_transfer.utils import reliability

    reliability.file_sha256("run/model.keras")  # -> "3f5a..." (64 hex digits)
    ```
    """
    digest = hashlib.sha256()
    with opener(os.fspath(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Calls `write(temporary_path)` then renames the file onto `path`.

    The temporary file sits beside `path` (same file system, so the rename is atomic) and
    ends with `path`'s name, so extension checks such as Keras' `.keras` still pass. Its
    name is random and it is created exclusively (`tempfile.mkstemp`, `O_EXCL`), so a
    symbolic link planted in the folder is never written through. A killed or failed write
    leaves the previous file at `path` untouched and removes the temporary file.
    """
    path = os.fspath(path)
    if files.is_remote(path):
        write_files_atomically({path: write})
        return
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


def write_files_atomically(writes: Mapping[str | os.PathLike, Callable[[str], Any]]) -> None:
    """Replaces a set of files together: `{path: write}` calls every `write(temporary)`
    (each temporary beside its path, synced), and only once all succeeded renames them onto
    their paths, one after the other, then syncs the folders.

    A failure or a kill during the writes (the slow part: a model, its results) leaves every
    previous file untouched and no temporary behind; only a kill during the renames
    themselves (microseconds) leaves some files new and some old. Temporaries are named like
    `write_atomically`'s.
    """
    if any(files.is_remote(path) for path in writes):
        _write_remote_files(writes)
        return
    staged: dict[str, str] = {}
    try:
        for path, write in writes.items():
            path = os.path.abspath(os.fspath(path))
            directory, name = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(
                prefix=".partial-", suffix=f"-{name}", dir=directory
            )
            staged[path] = temporary
            os.fchmod(descriptor, 0o666 & ~_umask())
            os.close(descriptor)
            write(temporary)
            with open(temporary, "rb") as f:
                os.fsync(f.fileno())
        for path, temporary in staged.items():
            os.replace(temporary, path)
        for directory in sorted({os.path.dirname(path) for path in staged}):
            _sync_folder(directory)
    finally:
        for temporary in staged.values():
            if os.path.lexists(temporary):
                os.remove(temporary)


def _write_remote_files(writes: Mapping[str | os.PathLike, Callable[[str], Any]]) -> None:
    """`write_files_atomically` on a remote file system: each file written to a temporary
    name beside its path, then all renamed (there is no `fsync`)."""
    staged: dict[str, str] = {}
    try:
        for path, write in writes.items():
            path = os.fspath(path)
            directory, name = path.rsplit("/", 1)
            files.makedirs(directory)
            staged[path] = f"{directory}/.partial-{uuid.uuid4().hex[:12]}-{name}"
            write(staged[path])
        for path, temporary in staged.items():
            files.replace(temporary, path)
    finally:
        for temporary in staged.values():
            if files.exists(temporary):
                files.remove(temporary)


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
    if files.is_remote(source) or files.is_remote(target):
        write_atomically(target, lambda temporary: files.copy_file(source, temporary))
        return
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
    `folder` has less than `needed_bytes` free, before anything is written. A remote
    file system (a bucket) reports no free space: not checked."""
    folder = os.fspath(folder)
    if files.is_remote(folder):
        return
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OSError(
            errno.ENOSPC,
            f"Not enough disk space for {what} in {folder!r}: it needs about "
            f"{needed_bytes:,} bytes and {free:,} bytes are free. Free some space, or point it "
            "at a folder on a disk with room.",
        )


# --- an exclusive lock on an output folder -------------------------------------------------

LOCK_FILE = ".keras_transfer.lock"


class FolderLockedError(RuntimeError):
    """Another live process holds the lock of the folder a run wants to write.

    Attributes:
        folder: the locked folder.
        holder: what the lock file says about its holder (`pid`, `host`), possibly empty.
        exit_code: 2, the exit code of the command line: the command as given cannot run
            now, whatever is retried.
    """

    exit_code = 2

    def __init__(self, folder: str, holder: dict[str, Any], detail: str = ""):
        self.folder = folder
        self.holder = holder
        pid, host = holder.get("pid", "unknown"), holder.get("host", "unknown host")
        super().__init__(
            f"{folder!r} is in use by another run (PID {pid} on {host}){detail}: two runs "
            "in one folder would mix their backups and outputs.\n"
            "Wait for that run to end (or stop it), or give this run another folder."
        )


class FolderLock:
    """An exclusive lock on an output folder: one run writes there at a time.

    The lock is the file `LOCK_FILE` in the folder, holding the holder's PID and host
    name (for the refusal message), and an `fcntl.flock` on it where the platform and
    file system have one: the kernel releases a killed process's lock, so the file that
    a `kill -9` leaves behind is taken over by the next run. Without `flock` (Windows,
    some network file systems) the file's content is the lock: a lock whose PID is not
    running on this host is stale and taken over; one of another host is not.

    `acquire` creates the folder if needed; `release` deletes the lock file, and the
    folder too if `acquire` created it and nothing else was written there, so a run that
    fails before writing anything leaves no folder behind.

    On a remote file system (`gs://...`) there is no `flock` either, and no exclusive
    creation: the lock file's content is the lock, as above, checked then written, so two
    runs started within the same moment may both get it.

    Example:

    ```python
    with FolderLock("runs/one"):  # FolderLockedError if another run holds it
        ...  # write the run's files
    ```
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self._descriptor: int | None = None
        self._created_folder = False

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def acquire(self) -> None:
        """Takes the lock, or raises `FolderLockedError` naming the holder's PID."""
        if self.held:
            return
        if not files.isdir(self.folder):
            files.makedirs(self.folder)
            self._created_folder = True
        if files.is_remote(self.folder):
            self._acquire_remote()
            return
        try:
            for _ in range(10):  # a holder releasing meanwhile deletes the file: try again
                if self._try_acquire():
                    return
            raise FolderLockedError(self.folder, _read_holder(self.path))
        except BaseException:
            self._remove_created_folder()
            raise

    def release(self) -> None:
        """Deletes the lock file and lets go of the lock (then, if `acquire` created the
        folder and it is empty, deletes it)."""
        if self._descriptor is None:
            return
        try:
            if files.lexists(self.path):
                files.remove(self.path)
        finally:
            if self._descriptor >= 0:
                os.close(self._descriptor)
            self._descriptor = None
            self._remove_created_folder()

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def _try_acquire(self) -> bool:
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            locked = _flock(descriptor)
            if locked is None:  # no flock here: the file's content is the lock
                os.close(descriptor)
                descriptor = -1
                return self._acquire_by_content()
            if not locked:
                holder = _read_holder(self.path)
                detail = ""
                if holder.get("host") == socket.gethostname() and not _pid_running(holder):
                    detail = (
                        ", which is no longer running: a process it started still holds the "
                        f"lock; stop it, or delete {self.path!r}"
                    )
                raise FolderLockedError(self.folder, holder, detail)
            if not _same_file(descriptor, self.path):
                return False  # the holder deleted the file while releasing it
            previous = _read_holder(self.path)
            if previous.get("pid"):
                logger.info(
                    "%s: taking over the lock left by PID %s on %s, which ended without "
                    "releasing it",
                    self.folder,
                    previous["pid"],
                    previous.get("host", "unknown host"),
                )
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, _holder_text(), 0)
            os.fsync(descriptor)
            self._descriptor, descriptor = descriptor, -1
            return True
        finally:
            if descriptor >= 0:
                os.close(descriptor)

    def _acquire_remote(self) -> None:
        # The holder's PID in the file is the lock; `_descriptor` -1: held, no descriptor.
        try:
            holder = _read_holder(self.path)
            if holder:
                if holder.get("host") != socket.gethostname() or _pid_running(holder):
                    detail = (
                        f", says {self.path!r} (if that run is gone, e.g. with its machine, "
                        "delete that file)"
                    )
                    raise FolderLockedError(self.folder, holder, detail)
                logger.info("%s: removing the stale lock of PID %s", self.folder, holder.get("pid"))
            with files.open_file(self.path, "wb") as f:
                f.write(_holder_text())
            self._descriptor = -1
        except BaseException:
            self._remove_created_folder()
            raise

    def _acquire_by_content(self) -> bool:
        # Without flock, the lock file holds the PID: created exclusively while no live
        # process's PID is in it.
        if os.path.exists(self.path) and os.path.getsize(self.path):
            holder = _read_holder(self.path)
            if holder.get("host") != socket.gethostname() or _pid_running(holder):
                raise FolderLockedError(self.folder, holder)
            logger.info("%s: removing the stale lock of PID %s", self.folder, holder.get("pid"))
        if os.path.lexists(self.path):
            os.remove(self.path)
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        os.write(descriptor, _holder_text())
        os.fsync(descriptor)
        self._descriptor = descriptor
        return True

    def _remove_created_folder(self) -> None:
        if self._created_folder:
            self._created_folder = False
            files.remove_empty_dir(self.folder)


def _flock(descriptor: int) -> bool | None:
    """True if the exclusive lock was taken, False if another holds it, None if the
    platform or file system has no `flock`."""
    try:
        import fcntl  # noqa: PLC0415 (POSIX only)
    except ImportError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


def _same_file(descriptor: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def _holder_text() -> bytes:
    return (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode()


def _read_holder(path: str) -> dict[str, Any]:
    try:
        with files.open_file(path, encoding="utf-8") as f:
            holder = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_running(holder: dict[str, Any]) -> bool:
    """Whether the holder's PID is a running process (of this host); True when unknown."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or a platform without signal 0
    return True
