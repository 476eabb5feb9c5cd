"""Resolving TF Hub handles to local SavedModel folders, and the per-user download cache.

Remote handles are downloaded to `TFHUB_CACHE_DIR`, by default a per-user folder
(`~/.cache/tfhub_modules`, under `XDG_CACHE_HOME` when set) instead of tensorflow_hub's
shared `/tmp/tfhub_modules`, where another local user could plant a SavedModel. A cache
folder owned by another user or writable by group or others is refused (`UnsafeCacheError`).
A handle that cannot be fetched raises `HubModuleUnavailableError` with offline remedies.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import urllib.parse

import tensorflow as tf

__all__ = [
    "HubModuleUnavailableError",
    "UnsafeCacheError",
    "cache_dir",
    "local_folder",
    "resolve_handle",
]


class HubModuleUnavailableError(RuntimeError):
    """A hub handle or SavedModel path could not be resolved or fetched."""


class UnsafeCacheError(PermissionError):
    """The hub cache folder can be written by another user, who could plant a SavedModel."""


def _is_remote(handle: str) -> bool:
    return handle.startswith(("http://", "https://", "gs://"))


def cache_dir() -> str:
    """Where remote handles are cached: `TFHUB_CACHE_DIR` if set, else a per-user folder,
    `$XDG_CACHE_HOME/tfhub_modules` or `~/.cache/tfhub_modules`."""
    configured = os.environ.get("TFHUB_CACHE_DIR")
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfhub_modules")


def _check_private(path: str, what: str) -> None:
    info = os.stat(path)
    user = os.geteuid()
    if info.st_uid not in (user, 0):
        raise UnsafeCacheError(
            f"The TF Hub cache {what} {path!r} is owned by another user (uid {info.st_uid}; "
            f"you are uid {user}): a SavedModel found there could run any code in this "
            "process. Point TFHUB_CACHE_DIR at a folder of your own (or unset it for "
            "~/.cache/tfhub_modules)."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCacheError(
            f"The TF Hub cache {what} {path!r} is writable by other users (mode "
            f"{stat.filemode(info.st_mode)}): one could plant a SavedModel there that runs in "
            f"this process. Make it private (chmod go-w {path!r}) or point TFHUB_CACHE_DIR at "
            "a folder of your own (or unset it for ~/.cache/tfhub_modules)."
        )


def _checked_cache_dir() -> str:
    """The cache folder, created private (0700) if missing, refused if others can write it."""
    path = cache_dir()
    if not os.path.exists(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
    _check_private(path, "folder")
    return path


def _cache_entry(cache: str, handle: str) -> str:
    # tensorflow_hub's layout: one folder per handle, named by the SHA-1 of the handle.
    return os.path.join(cache, hashlib.sha1(handle.encode("utf8")).hexdigest())


def _offline_help(handle: str) -> str:
    cached = _cache_entry(cache_dir(), handle)
    return (
        "Offline remedies: download the model once on a machine with network access and pass "
        "its local SavedModel folder ('hub:/path/to/saved_model', the folder with "
        "saved_model.pb), or point TFHUB_CACHE_DIR at a tensorflow_hub cache that holds it "
        f"(this handle would be cached at {cached})."
    )


def resolve_handle(handle: str, timeout: float = 10.0) -> str:
    """The local SavedModel folder of a hub handle (URL, Kaggle handle or local path).

    URLs go through `tensorflow_hub`'s resolver and cache (`TFHUB_CACHE_DIR`). When the
    model is not cached and the host cannot be reached within `timeout` seconds, this
    raises `HubModuleUnavailableError` at once instead of waiting on retries and locks.
    """
    handle = os.fspath(handle)
    if not _is_remote(handle):
        path = os.path.expanduser(handle)
        if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            what = "does not exist" if not tf.io.gfile.exists(path) else "has no saved_model.pb"
            raise HubModuleUnavailableError(
                f"The SavedModel {handle!r} {what}. Pass the folder that contains "
                "saved_model.pb (and variables/), or a https://tfhub.dev/... or "
                "https://www.kaggle.com/models/... handle."
            )
        return path
    cache = _checked_cache_dir()
    cached = _cache_entry(cache, handle)
    if tf.io.gfile.exists(os.path.join(cached, "saved_model.pb")):
        _check_private(cached, "entry")
        return cached
    if handle.startswith(("http://", "https://")):
        parsed = urllib.parse.urlparse(handle)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        except OSError as error:
            raise HubModuleUnavailableError(
                f"Cannot fetch {handle!r}: {parsed.hostname} is unreachable ({error}). "
                + _offline_help(handle)
            ) from None
    import tensorflow_hub as hub  # Only remote handles need it (it imports tf_keras).

    previous_timeout = socket.getdefaulttimeout()
    previous_cache = os.environ.get("TFHUB_CACHE_DIR")
    socket.setdefaulttimeout(timeout)
    # tensorflow_hub reads the variable at each resolve; its own default is /tmp/tfhub_modules.
    os.environ["TFHUB_CACHE_DIR"] = cache
    try:
        return hub.resolve(handle)
    except Exception as error:  # urllib, tf.errors and hub's own errors all end here.
        raise HubModuleUnavailableError(
            f"Cannot fetch {handle!r}: {error}. " + _offline_help(handle)
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
        if previous_cache is None:
            os.environ.pop("TFHUB_CACHE_DIR", None)
        else:
            os.environ["TFHUB_CACHE_DIR"] = previous_cache


def local_folder(handle: str) -> str | None:
    """The folder a handle loads from, without fetching anything (None: not available)."""
    if not _is_remote(handle):
        return os.path.expanduser(handle)
    cached = _cache_entry(cache_dir(), handle)
    return cached if tf.io.gfile.exists(os.path.join(cached, "saved_model.pb")) else None
