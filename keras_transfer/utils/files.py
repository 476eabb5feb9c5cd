"""Every file-system call on a user's paths (data folders, label tables, model folders,
feature caches, backups) goes through here, so that any file system TensorFlow reads and
writes works where a local folder does: `gs://` buckets on a Colab TPU, `ram://` in tests.

A local path is handled by `os`, `shutil` and `open` exactly as before this module existed
(symbolic links, `fsync`, atomic `os.replace`). A path with a scheme (`gs://...`,
`s3://...`, `hdfs://...`, `ram://...`; `is_remote`) goes through `tf.io.gfile`, imported
only then, and its errors become the built-in ones (`FileNotFoundError`, `OSError`), so a
caller has one `except` for both. A remote file system has no symbolic links and no
`fsync`; a file renamed onto another (`replace`) replaces it whole, but a folder is never
renamed (object stores copy folders object by object): folders are copied instead
(`upload_folder`).

```python
from keras_transfer.utils import files

files.is_remote("gs://bucket/run")  # -> True
with files.open_file("gs://bucket/run/labels.txt", encoding="utf-8") as f:
    names = f.read().splitlines()
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO
from typing import Any

__all__ = [
    "Entry",
    "abspath",
    "copy_file",
    "exists",
    "getsize",
    "is_remote",
    "isdir",
    "isfile",
    "islink",
    "lexists",
    "listdir",
    "local_output",
    "makedirs",
    "open_file",
    "readable",
    "realpath",
    "relpath",
    "remove",
    "remove_empty_dir",
    "replace",
    "rmtree",
    "scandir",
    "upload_folder",
    "walk",
]

# `gs://bucket/x`, `s3://...`, `ram://...`: a URL scheme, two slashes (a Windows drive
# `C:\` has neither).
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names a file system of `tf.io.gfile` (it has a scheme, `gs://`)."""
    return bool(_SCHEME.match(os.fspath(path))) if isinstance(path, str | os.PathLike) else False


def _gfile():
    import tensorflow as tf  # noqa: PLC0415 (only for remote paths: local ones never pay it)

    return tf.io.gfile


@contextlib.contextmanager
def _remote(path: str) -> Iterator[None]:
    """TensorFlow's errors on `path` as the built-in ones, naming the path."""
    import tensorflow as tf  # noqa: PLC0415

    try:
        yield
    except tf.errors.NotFoundError as error:
        raise FileNotFoundError(errno.ENOENT, f"Not found ({error.message})", path) from None
    except tf.errors.PermissionDeniedError as error:
        raise PermissionError(errno.EACCES, f"Permission denied ({error.message})", path) from None
    except tf.errors.AlreadyExistsError as error:
        raise FileExistsError(errno.EEXIST, error.message, path) from None
    except tf.errors.UnimplementedError as error:
        scheme = os.fspath(path).split("://", 1)[0]
        raise OSError(
            errno.ENOSYS,
            f"TensorFlow cannot do this on {scheme}:// paths ({error.message}). gs:// is "
            "built into TensorFlow; s3:// and hdfs:// need `pip install tensorflow-io`",
            path,
        ) from None
    except tf.errors.OpError as error:
        raise OSError(errno.EIO, error.message, path) from None


def exists(path: str | os.PathLike) -> bool:
    """`os.path.exists`."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.exists(path)
    with _remote(path):
        return _gfile().exists(path)


def lexists(path: str | os.PathLike) -> bool:
    """`os.path.lexists` (on a remote file system, which has no links: `exists`)."""
    path = os.fspath(path)
    return os.path.lexists(path) if not is_remote(path) else exists(path)


def isdir(path: str | os.PathLike) -> bool:
    """`os.path.isdir`."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.isdir(path)
    with _remote(path):
        return _gfile().isdir(path)


def isfile(path: str | os.PathLike) -> bool:
    """`os.path.isfile`."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.isfile(path)
    with _remote(path):
        return _gfile().exists(path) and not _gfile().isdir(path)


def islink(path: str | os.PathLike) -> bool:
    """`os.path.islink`; False on a remote file system."""
    path = os.fspath(path)
    return os.path.islink(path) if not is_remote(path) else False


def getsize(path: str | os.PathLike) -> int:
    """`os.path.getsize`."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.getsize(path)
    with _remote(path):
        return int(_gfile().stat(path).length)


def listdir(path: str | os.PathLike) -> list[str]:
    """`os.listdir` (names, in no particular order)."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.listdir(path)
    with _remote(path):
        # Object stores name a "folder" `name/`.
        return [name.rstrip("/") for name in _gfile().listdir(path)]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry of a folder (`scandir`): its name, path and whether it is a folder
    (following a symbolic link)."""

    name: str
    path: str
    folder: bool

    def is_dir(self) -> bool:
        return self.folder


def scandir(path: str | os.PathLike) -> list[Entry]:
    """The entries of a folder, as `os.scandir` sees them."""
    path = os.fspath(path)
    if not is_remote(path):
        with os.scandir(path) as entries:
            return [Entry(e.name, e.path, e.is_dir()) for e in entries]
    return [
        Entry(name, posixpath.join(path, name), isdir(posixpath.join(path, name)))
        for name in listdir(path)
    ]


def walk(top: str | os.PathLike, followlinks: bool = False) -> Iterator[tuple[str, list, list]]:
    """`os.walk(top, followlinks=followlinks)`, top-down: pruning the folder list in place
    skips those folders, on a remote file system too."""
    top = os.fspath(top)
    if not is_remote(top):
        yield from os.walk(top, followlinks=followlinks)
        return
    with _remote(top):
        for root, folders, names in _gfile().walk(top):
            # The same list object, so that in-place pruning reaches gfile's walk.
            folders[:] = [name.rstrip("/") for name in folders]
            yield root, folders, names


def makedirs(path: str | os.PathLike, exist_ok: bool = True) -> None:
    """`os.makedirs(path, exist_ok=exist_ok)`."""
    path = os.fspath(path)
    if not is_remote(path):
        os.makedirs(path, exist_ok=exist_ok)
        return
    with _remote(path):
        if not exist_ok and _gfile().exists(path):
            raise FileExistsError(errno.EEXIST, "File exists", path)
        _gfile().makedirs(path)


def remove(path: str | os.PathLike) -> None:
    """`os.remove`."""
    path = os.fspath(path)
    if not is_remote(path):
        os.remove(path)
        return
    with _remote(path):
        _gfile().remove(path)


def rmtree(path: str | os.PathLike, ignore_errors: bool = False) -> None:
    """`shutil.rmtree`."""
    path = os.fspath(path)
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    try:
        with _remote(path):
            _gfile().rmtree(path)
    except OSError:
        if not ignore_errors:
            raise


def remove_empty_dir(path: str | os.PathLike) -> bool:
    """Deletes the folder `path` if it is empty (`os.rmdir`); True if it did."""
    path = os.fspath(path)
    try:
        if not is_remote(path):
            os.rmdir(path)
            return True
        if isdir(path) and not listdir(path):
            rmtree(path)
            return True
    except OSError:
        pass
    return False


def replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """`os.replace` for files: `target` becomes `source`'s content whole (a remote file
    system's rename replaces the object at once; object stores copy it first)."""
    source, target = os.fspath(source), os.fspath(target)
    if not (is_remote(source) or is_remote(target)):
        os.replace(source, target)
        return
    with _remote(target):
        _gfile().rename(source, target, overwrite=True)


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """`shutil.copyfile` (any two file systems)."""
    source, target = os.fspath(source), os.fspath(target)
    if not (is_remote(source) or is_remote(target)):
        shutil.copyfile(source, target)
        return
    with _remote(target):
        _gfile().copy(source, target, overwrite=True)


def upload_folder(source: str, target: str) -> None:
    """Copies the local folder `source` into the (remote) folder `target`, file by file."""
    for root, _, names in os.walk(source):
        here = os.path.relpath(root, source)
        folder = target if here == "." else posixpath.join(target, *here.split(os.sep))
        makedirs(folder)
        for name in names:
            copy_file(os.path.join(root, name), posixpath.join(folder, name))


def abspath(path: str | os.PathLike) -> str:
    """`os.path.abspath`; a remote path is already absolute (and kept as it is)."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def realpath(path: str | os.PathLike) -> str:
    """`os.path.realpath`; a remote path has no links to resolve: itself."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.realpath(path)


def relpath(path: str | os.PathLike, start: str | os.PathLike) -> str:
    """`os.path.relpath`; for a remote path under `start`, the part after it."""
    path, start = os.fspath(path), os.fspath(start)
    if not is_remote(path):
        return os.path.relpath(path, start)
    if path.rstrip("/") == start.rstrip("/"):
        return "."
    prefix = start.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def open_file(
    path: str | os.PathLike,
    mode: str = "r",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    buffered: bool = True,
) -> IO[Any]:
    """`open(path, mode, encoding=encoding, newline=newline)` for `r`, `rb`, `w` and `wb`.

    On a remote file system a text file is read whole and decoded, a binary one read as a
    stream (seekable: a header costs its bytes only); a file written is kept in memory and
    written at `close` (seekable: zip writers need it), or, with `buffered=False`, streamed
    straight to the file system (sequential writes only: files larger than memory).
    """
    path = os.fspath(path)
    if not is_remote(path):
        return open(path, mode, encoding=encoding, newline=newline)  # noqa: SIM115
    if mode not in ("r", "rb", "w", "wb"):
        raise ValueError(f"open_file on a remote path takes r, rb, w or wb, got {mode!r}.")
    if mode == "r":
        with _remote(path), _gfile().GFile(path, "rb") as f:
            content = f.read()
        return io.StringIO(content.decode(encoding or "utf-8"), newline=newline)
    if mode == "rb":
        with _remote(path):
            if not _gfile().exists(path) or _gfile().isdir(path):
                raise FileNotFoundError(errno.ENOENT, "No such file", path)
            return _RemoteFile(path, _gfile().GFile(path, "rb"))
    if not buffered:
        _truncate(path)
        return _RemoteFile(path, _gfile().GFile(path, mode))
    if mode == "w":
        return _RemoteTextWriter(path, encoding or "utf-8")
    return _RemoteBinaryWriter(path)


def _truncate(path: str) -> None:
    # Writing replaces a file, as `open(path, "w")` does; TensorFlow's ram:// file system
    # (2.21) would append to it instead.
    with _remote(path):
        if _gfile().exists(path):
            _gfile().remove(path)


def _write_remote(path: str, content: bytes) -> None:
    _truncate(path)
    with _remote(path), _gfile().GFile(path, "wb") as f:
        f.write(content)


def readable(path: str | os.PathLike) -> str | IO[bytes]:
    """What a reader taking a path or a file (`np.load`, `zipfile`) reads `path` from: the
    path itself when local; a remote file's bytes, in memory."""
    path = os.fspath(path)
    if not is_remote(path):
        return path
    with open_file(path, "rb") as f:
        return io.BytesIO(f.read())


class _RemoteFile:
    """A `tf.io.gfile.GFile` whose errors are the built-in ones."""

    def __init__(self, path: str, file: Any):
        self.path, self.file = path, file

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.file, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            with _remote(self.path):
                return attribute(*args, **kwargs)

        return call

    def seekable(self) -> bool:
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with _remote(self.path):
            self.file.close()


class _RemoteBinaryWriter(io.BytesIO):
    """Bytes kept in memory, written to the remote file at `close` (not after an error
    inside a `with` block: no partial file)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def __exit__(self, kind, *rest: Any) -> None:
        if kind is not None:
            super().close()
            return
        self.close()

    def close(self) -> None:
        if not self.closed:
            content = self.getvalue()
            super().close()
            _write_remote(self.path, content)


class _RemoteTextWriter(io.StringIO):
    """Text kept in memory, encoded and written to the remote file at `close`."""

    def __init__(self, path: str, encoding: str):
        super().__init__()
        self.path, self.encoding_name = path, encoding

    def __exit__(self, kind, *rest: Any) -> None:
        if kind is not None:
            super().close()
            return
        self.close()

    def close(self) -> None:
        if not self.closed:
            content = self.getvalue().encode(self.encoding_name)
            super().close()
            _write_remote(self.path, content)


@contextlib.contextmanager
def local_output(path: str | os.PathLike) -> Iterator[str]:
    """A local path to write `path` through, for writers that only take local paths
    (matplotlib, converters): `path` itself when local; else a temporary file, copied to
    `path` when the block ends without an error, then deleted."""
    path = os.fspath(path)
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="keras_transfer_") as scratch:
        local = os.path.join(scratch, posixpath.basename(path.rstrip("/")))
        yield local
        if os.path.isdir(local):
            upload_folder(local, path)
        else:
            copy_file(local, path)
