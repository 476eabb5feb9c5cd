"""Safe mode for `HubBackbone`: which SavedModels this process trusts to load from a file.

Loading a SavedModel executes its graph, which can run any TF op (file I/O included). As for
`keras.layers.TFSMLayer`, `keras.saving.load_model(..., safe_mode=True)` (the default) refuses
to load a `HubBackbone` unless this process already loaded the same SavedModel successfully
through user code (`HubBackbone(...)`, `create_backbone("hub:...")`) or `trust(handle)` was
called. "The same" is checked on the content, not the handle string: the real path of the
folder (symbolic links resolved) and a SHA-256 digest of its `saved_model.pb` and variables
index, so a SavedModel replaced after it was trusted is refused. The file must also ask for
the same `signature`, `tags`, `arguments` and `load_options` as the trusted load (`trust`
covers any). Pass `safe_mode=False` when you trust both the `.keras` file and the SavedModel
it points to.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from keras_transfer.backbones.hub import cache
from keras_transfer.utils import reliability

__all__ = [
    "clear_trusted",
    "load_fingerprint",
    "load_options_config",
    "refuse_untrusted",
    "saved_model_digest",
    "trust",
    "trust_load",
]

# SavedModels this process may load in safe mode: `(real path, content digest, call
# settings)` of each successful load by user code, and `(real path, digest, None)` for
# `trust(handle)` (any call settings).
_TRUSTED_HANDLES: set[tuple[str, str, str | None]] = set()


def load_options_config(load_options: Any) -> dict[str, Any] | None:
    """The JSON form of `load_options` that a layer config stores and trust compares."""
    if load_options is None:
        return None
    if isinstance(load_options, Mapping):
        return dict(load_options)
    # Only the I/O device matters for reloading (TPU VMs); the other options are defaults.
    device = load_options.experimental_io_device
    return {"experimental_io_device": device} if device else None


def saved_model_digest(path: str) -> str:
    """SHA-256 of the files that define what loading runs: the graph (`saved_model.pb`)
    and the variables index (names, shapes and checksums of the values)."""
    digest = hashlib.sha256()
    for name in ("saved_model.pb", "saved_model.pbtxt", "variables/variables.index"):
        file = os.path.join(path, name)
        digest.update(name.encode())
        if not tf.io.gfile.exists(file):
            digest.update(b"\0missing")
            continue
        # Each file's own digest: the names and digests together fix the content.
        digest.update(reliability.file_sha256(file, tf.io.gfile.GFile).encode())
    return digest.hexdigest()


def _real_path(path: str) -> str:
    return path if "://" in path else os.path.realpath(path)


def _call_settings(signature, tags, arguments, load_options) -> str:
    """What, besides the files, decides which code a load runs: one comparable string."""
    return json.dumps(
        {
            "signature": signature,
            "tags": list(tags) if tags is not None else None,
            "arguments": dict(arguments or {}),
            "load_options": load_options_config(load_options),
        },
        sort_keys=True,
        default=repr,
    )


def load_fingerprint(
    path: str,
    signature: str | None,
    tags: Any,
    arguments: Mapping[str, Any] | None,
    load_options: Any,
) -> tuple[str, str, str]:
    """What loading the SavedModel folder `path` with these settings runs: its real folder,
    the digest of its graph and variables index, and the call settings. Taken before the
    load; `trust_load` trusts it once the load succeeded."""
    return (
        _real_path(path),
        saved_model_digest(path),
        _call_settings(signature, tags, arguments, load_options),
    )


def trust_load(fingerprint: tuple[str, str, str]) -> None:
    """Trusts a SavedModel that user code loaded successfully, for the same call settings
    (`fingerprint` from `load_fingerprint`)."""
    _TRUSTED_HANDLES.add(fingerprint)


def trust(handle: str) -> str:
    """Lets `keras.saving.load_model(..., safe_mode=True)` load `.keras` files whose
    `HubBackbone` names this SavedModel, as it is now.

    Trust is on content: the SavedModel's real folder and a digest of its graph and
    variables index. If the SavedModel is replaced afterwards, safe mode refuses it again.
    Unlike the trust a successful load gives, this covers any `signature`, `tags`,
    `arguments` and `load_options` a file asks for. It lasts for this process.

    Args:
        handle: a local SavedModel folder or a hub handle (fetched into the cache if needed).

    Returns:
        The SHA-256 digest trusted.

    Example:

    ```python
    keras_transfer.backbones.hub.trust("/models/mobilenet_v1_100_224_feature_vector")
    model = keras.saving.load_model("model.keras")  # safe_mode=True
    ```
    """
    path = cache.resolve_handle(os.fspath(handle))
    digest = saved_model_digest(path)
    _TRUSTED_HANDLES.add((_real_path(path), digest, None))
    return digest


def clear_trusted() -> None:
    """Forgets every SavedModel this process trusts (its loads and `trust` calls): safe mode
    refuses them again until they are loaded by user code or trusted again."""
    _TRUSTED_HANDLES.clear()


def refuse_untrusted(config: Mapping[str, Any]) -> None:
    """Raises unless this process trusts the SavedModel and call settings of `config`."""
    handle = config["handle"]
    folder = cache.local_folder(handle)
    why = "this process has not loaded it through user code"
    if folder is not None and tf.io.gfile.exists(os.path.join(folder, "saved_model.pb")):
        real, digest = _real_path(folder), saved_model_digest(folder)
        settings = _call_settings(
            config.get("signature"),
            config.get("tags"),
            config.get("arguments"),
            config.get("load_options"),
        )
        if {(real, digest, None), (real, digest, settings)} & _TRUSTED_HANDLES:
            return
        loaded = [s for p, d, s in _TRUSTED_HANDLES if (p, d) == (real, digest)]
        if loaded:
            trusted = json.loads(loaded[0])
            asked = json.loads(settings)
            changed = ", ".join(
                f"{key} {asked[key]!r} (loaded with {trusted[key]!r})"
                for key in asked
                if asked[key] != trusted[key]
            )
            why = f"the file asks for other settings than this process loaded it with: {changed}"
        elif any(p == real for p, _, _ in _TRUSTED_HANDLES):
            why = (
                "its saved_model.pb or variables index changed since this process loaded it "
                f"(it was replaced; digest now {digest[:12]}...)"
            )
    raise ValueError(
        f"This model contains a HubBackbone that loads the SavedModel {handle!r}; loading it "
        f"runs that SavedModel's graph, and {why}, so safe mode refuses it. If you trust the "
        "file and that SavedModel, load with keras.saving.load_model(..., safe_mode=False), "
        f"or call keras_transfer.backbones.hub.trust({handle!r}) first."
    )
