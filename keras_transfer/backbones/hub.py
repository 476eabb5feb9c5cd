"""TF Hub and TF2 SavedModel backbones as Keras 3 layers.

`hub.KerasLayer` is a tf_keras layer: a Keras 3 model cannot hold it, and inside a subclassed
Keras 3 model its variables are neither trained nor saved. `keras.layers.TFSMLayer` tracks
the variables but `fit` fails on their TF names (`conv1/kernel:0`), it passes no `training`
flag and no regularization losses, and it refuses to load in safe mode. `HubBackbone` wraps
the module's own `tf.Variable`s as Keras variables (no copies: the module's graph reads and
the optimizer writes the same resource), so that `fit` trains them, a frozen layer leaves them
bit-identical, `.keras` files save them and `MirroredStrategy` mirrors them.

Saving: the `.keras` file stores the handle (path or URL) in the layer config and the module's
variable values (fine-tuned or not) as the layer's weights. Loading loads the SavedModel again
from the handle, then assigns the saved values. A handle that no longer resolves raises
`HubModuleUnavailableError` naming the handle and the remedies.

Safe mode: loading a SavedModel executes its graph, which can run any TF op (file I/O
included). As for `keras.layers.TFSMLayer`, `keras.saving.load_model(..., safe_mode=True)`
(the default) refuses to load a `HubBackbone` unless this process already loaded the same
SavedModel successfully through user code (`HubBackbone(...)`, `create_backbone("hub:...")`)
or `trust(handle)` was called. "The same" is checked on the content, not the handle string:
the real path of the folder (symbolic links resolved) and a SHA-256 digest of its
`saved_model.pb` and variables index, so a SavedModel replaced after it was trusted is
refused. The file must also ask for the same `signature`, `tags`, `arguments` and
`load_options` as the trusted load (`trust` covers any). Pass `safe_mode=False` when you
trust both the `.keras` file and the SavedModel it points to.

Cache: remote handles are downloaded to `TFHUB_CACHE_DIR`, by default a per-user folder
(`~/.cache/tfhub_modules`, under `XDG_CACHE_HOME` when set) instead of tensorflow_hub's
shared `/tmp/tfhub_modules`, where another local user could plant a SavedModel. A cache
folder owned by another user or writable by group or others is refused (`UnsafeCacheError`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import socket
import stat
import urllib.parse
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_transfer import _keras_compat
from keras_transfer.backbones import registry as backbones_lib

__all__ = [
    "HubBackbone",
    "HubBlock",
    "HubModuleUnavailableError",
    "HubVariableGroup",
    "UnsafeCacheError",
    "cache_dir",
    "create_hub_backbone",
    "hub_block_names",
    "resolve_handle",
    "trust",
]

# SavedModels this process may load in safe mode: `(real path, content digest, call
# settings)` of each successful load by user code, and `(real path, digest, None)` for
# `trust(handle)` (any call settings).
_TRUSTED_HANDLES: set[tuple[str, str, str | None]] = set()

# Input sizes image models are commonly published at, to read the size from a handle.
_KNOWN_SIZES = (96, 128, 160, 192, 224, 240, 256, 260, 299, 300, 320, 331, 380, 384, 456, 480)
# Rank-1 variables that Keras initialises to ones / zeros, by the last part of the name.
_ONES_NAME = re.compile(r"(gamma|moving_variance|scale)")
_ZEROS_NAME = re.compile(r"(beta|bias|moving_mean|offset)")
_BATCH_NORM_NAME = re.compile(
    r"(?i)(batch_?norm|batch_normalization|(^|[/_])bn\d*([/_]|$)|moving_(mean|variance))"
)
# Parts of a layer name that split one depthwise-separable unit into two layers.
_SEPARABLE_PART = re.compile(r"(?i)_?(dw|pw|depthwise|pointwise)(?=_|$)")


class HubModuleUnavailableError(RuntimeError):
    """A hub handle or SavedModel path could not be resolved or fetched."""


class UnsafeCacheError(PermissionError):
    """The hub cache folder can be written by another user, who could plant a SavedModel."""


# ---------------------------------------------------------------------------------------
# Resolving handles
# ---------------------------------------------------------------------------------------


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


def _offline_help(handle: str) -> str:
    cached = os.path.join(cache_dir(), hashlib.sha1(handle.encode("utf8")).hexdigest())
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
    cached = os.path.join(cache, hashlib.sha1(handle.encode("utf8")).hexdigest())
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


def _load_options(load_options: Any) -> tf.saved_model.LoadOptions | None:
    if load_options is None or isinstance(load_options, tf.saved_model.LoadOptions):
        return load_options
    if isinstance(load_options, Mapping):
        return tf.saved_model.LoadOptions(**load_options)
    raise TypeError(
        "load_options must be a tf.saved_model.LoadOptions or a dict of its arguments "
        f"(e.g. {{'experimental_io_device': '/job:localhost'}}), got {load_options!r}."
    )


def _options_config(load_options: Any) -> dict[str, Any] | None:
    if load_options is None:
        return None
    if isinstance(load_options, Mapping):
        return dict(load_options)
    # Only the I/O device matters for reloading (TPU VMs); the other options are defaults.
    device = load_options.experimental_io_device
    return {"experimental_io_device": device} if device else None


# ---------------------------------------------------------------------------------------
# Trust
# ---------------------------------------------------------------------------------------


def _saved_model_digest(path: str) -> str:
    """SHA-256 of the files that define what loading runs: the graph (`saved_model.pb`)
    and the variables index (names, shapes and checksums of the values)."""
    digest = hashlib.sha256()
    for name in ("saved_model.pb", "saved_model.pbtxt", "variables/variables.index"):
        file = os.path.join(path, name)
        digest.update(name.encode())
        if not tf.io.gfile.exists(file):
            digest.update(b"\0missing")
            continue
        with tf.io.gfile.GFile(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
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
            "load_options": _options_config(load_options),
        },
        sort_keys=True,
        default=repr,
    )


def _local_folder(handle: str) -> str | None:
    """The folder a handle loads from, without fetching anything (None: not available)."""
    if not _is_remote(handle):
        return os.path.expanduser(handle)
    cached = os.path.join(cache_dir(), hashlib.sha1(handle.encode("utf8")).hexdigest())
    return cached if tf.io.gfile.exists(os.path.join(cached, "saved_model.pb")) else None


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
    path = resolve_handle(os.fspath(handle))
    digest = _saved_model_digest(path)
    _TRUSTED_HANDLES.add((_real_path(path), digest, None))
    return digest


def _refuse_untrusted(config: Mapping[str, Any]) -> None:
    """Raises unless this process trusts the SavedModel and call settings of `config`."""
    handle = config["handle"]
    folder = _local_folder(handle)
    why = "this process has not loaded it through user code"
    if folder is not None and tf.io.gfile.exists(os.path.join(folder, "saved_model.pb")):
        real, digest = _real_path(folder), _saved_model_digest(folder)
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


# ---------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------


def _variable_name(tf_name: str) -> str:
    # Keras variable names may not contain '/', and a ':0' suffix breaks the name scopes
    # the optimizer opens for its slot variables (the `TFSMLayer` failure in `fit`).
    return re.sub(r":\d+$", "", tf_name).replace("/", ".")


def _accepts_training(fn: Any) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "training" in parameters


def _input_spec_of(fn: Any, signature: str | None) -> Any:
    """The `tf.TensorSpec` (or dict of specs) the module's call takes, when it says."""
    try:
        if signature is not None:
            return fn.structured_input_signature[1]
        concrete = fn.concrete_functions[0] if hasattr(fn, "concrete_functions") else None
        if concrete is not None:
            args, kwargs = concrete.structured_input_signature
            return args[0] if args else next(iter(kwargs.values()))
    except (AttributeError, IndexError, StopIteration, TypeError):
        pass
    return None


@keras.saving.register_keras_serializable(package="keras_transfer")
class HubBackbone(keras.layers.Layer):
    """A TF2 SavedModel (a TF Hub model, a Kaggle model or a local folder) as a Keras 3 layer.

    The module's variables become this layer's weights: `fit` trains them when the layer is
    trainable, a frozen layer never changes them, `.keras` files save them (the handle is
    stored in the config and loaded again at load time) and `model.export()` includes them.
    When the module's `__call__` takes `training`, the layer passes `training=True` only when
    it is trainable and its batch-norm variables (if any) are too: a frozen batch norm runs
    in inference mode, as in Keras. The module's regularization losses are added while the
    layer is trainable. Inputs are cast to the module's dtype and outputs to the layer's
    compute dtype, so a `mixed_float16` / `mixed_bfloat16` policy works around a float32
    module.

    Args:
        handle: a local SavedModel folder, or a `https://tfhub.dev/...` /
            `https://www.kaggle.com/models/...` handle (cached in `TFHUB_CACHE_DIR`).
        trainable: whether the module's variables are trained (default False, as in
            `hub.KerasLayer`; `create_backbone("hub:...")` builds it trainable and
            `keras_transfer.freeze` / `unfreeze` then set it per block).
        arguments: extra keyword arguments for every call of the module.
        signature: call this signature (e.g. `"serving_default"`) instead of `__call__`.
            Signatures take keyword inputs and return dicts; pass `output_key` to pick one
            output (a signature with one output needs none).
        output_key: the key of the output to return when the module returns a dict.
        block_pattern: regex over the module's variable names whose first group (or whole
            match) names a variable's block; variables that match nothing join the block
            before them. `None` groups by layer name (see `hub_block_names`).
        frozen_variables: names of module variables (as in `variable_name`) that stay
            frozen while the layer is trainable: what `keras_transfer.unfreeze` sets per
            block, saved in the config so that a reloaded model keeps it.
        load_options: `tf.saved_model.LoadOptions` or a dict of its arguments; on TPU VMs
            reading local files use `{"experimental_io_device": "/job:localhost"}`.
        tags: SavedModel tags to load (TF1-style models); `None` for TF2 SavedModels.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:
    ```python
    layer = HubBackbone("/path/to/mobilenet_v1_100_224_feature_vector", trainable=True)
    inputs = keras.Input((224, 224, 3))  # RGB in [0, 1]
    model = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))
    ```
    """

    def __init__(
        self,
        handle: str,
        trainable: bool = False,
        arguments: Mapping[str, Any] | None = None,
        signature: str | None = None,
        output_key: str | None = None,
        block_pattern: str | None = None,
        frozen_variables: Sequence[str] | None = None,
        load_options: tf.saved_model.LoadOptions | Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        **kwargs,
    ):
        super().__init__(trainable=trainable, **kwargs)
        self.handle = os.fspath(handle)
        self.arguments = dict(arguments or {})
        self.signature = signature
        self.output_key = output_key
        self.block_pattern = block_pattern
        self.load_options = _options_config(load_options)
        self.tags = list(tags) if tags is not None else None
        if block_pattern is not None:
            re.compile(block_pattern)  # Fail here, not at the first get_blocks.

        path = resolve_handle(self.handle)
        # The content this process is about to run: trusted below, once the load succeeded.
        trusted = (
            _real_path(path),
            _saved_model_digest(path),
            _call_settings(signature, self.tags, self.arguments, self.load_options),
        )
        self._module = tf.saved_model.load(
            path, tags=self.tags, options=_load_options(load_options)
        )
        self._function = self._module_function()
        self._accepts_training = signature is None and _accepts_training(self._function)
        self._module_input_spec = _input_spec_of(self._function, signature)

        trainable_ids, module_variables = self._module_variables()
        # Keras variables that wrap the module's own tf.Variables: no copies. Their paths
        # are `<layer>/<block>/<variable>`, so path regexes (per-layer learning rates) can
        # address blocks like layers.
        tf_names = [re.sub(r":\d+$", "", v.name) for v in module_variables]
        self._block_of = hub_block_names(tf_names, block_pattern)
        self._ordered_weights: list[keras.Variable] = []
        self._name_of: dict[int, str] = {}
        with keras.name_scope(self.name, caller=self):
            for variable, tf_name, block in zip(
                module_variables, tf_names, self._block_of, strict=True
            ):
                with keras.name_scope(re.sub(r"[^0-9A-Za-z_.\-]", "_", block)):
                    keras_variable = keras.Variable(
                        initializer=variable,
                        trainable=id(variable) in trainable_ids,
                        autocast=False,
                        name=_variable_name(tf_name),
                    )
                _keras_compat.track_variable(self, keras_variable)
                self._ordered_weights.append(keras_variable)
                self._name_of[id(keras_variable)] = tf_name
        self._batch_norm_variables = [
            v for v in self._ordered_weights if _BATCH_NORM_NAME.search(self._name_of[id(v)])
        ]
        self._regularization_losses = list(getattr(self._module, "regularization_losses", []))
        if frozen_variables:
            unknown = sorted(set(frozen_variables) - set(tf_names))
            if unknown:
                raise ValueError(
                    f"frozen_variables {unknown[:5]} are not variables of {self.handle!r}."
                )
            frozen = set(frozen_variables)
            for variable in _keras_compat.own_trainable_variables(self):
                if self._name_of[id(variable)] in frozen:
                    variable.trainable = False
        self.built = True
        # Constructed by user code or, from a config, after the safe-mode check passed.
        _TRUSTED_HANDLES.add(trusted)

    @property
    def frozen_variables(self) -> list[str]:
        """Module variables frozen while the layer is trainable (set per block)."""
        if not self.trainable:
            return []
        return [
            self._name_of[id(v)]
            for v in _keras_compat.own_trainable_variables(self)
            if not v.trainable
        ]

    # -- loading ------------------------------------------------------------------------

    def _module_function(self):
        if self.signature is not None:
            signatures = getattr(self._module, "signatures", {})
            if self.signature not in signatures:
                raise ValueError(
                    f"The SavedModel {self.handle!r} has no signature {self.signature!r}. "
                    f"Its signatures: {sorted(signatures)}."
                )
            return signatures[self.signature]
        if callable(self._module):
            # The restored `__call__` (an instance attribute) carries the argument spec
            # and the traced concrete functions.
            return self._module.__call__
        signatures = sorted(getattr(self._module, "signatures", {}))
        raise ValueError(
            f"The SavedModel {self.handle!r} is not callable (no __call__). Pass "
            f"signature= one of {signatures} (with output_key= for its dict outputs)."
        )

    def _module_variables(self) -> tuple[set[int], list[tf.Variable]]:
        """The module's variables in its own order, and the ids of the trainable ones."""
        module = self._module
        if hasattr(module, "variables"):
            variables = list(module.variables)
            if hasattr(module, "trainable_variables"):
                trainable = {id(v) for v in module.trainable_variables}
            else:
                trainable = {id(v) for v in variables if v.trainable}
        else:
            # No `variables` list (a plain tf.Module or a bare signature): use what the
            # called function captures.
            functions = getattr(self._function, "concrete_functions", None) or [self._function]
            variables = []
            for function in functions:
                variables.extend(function.variables)
            trainable = {id(v) for v in variables if v.trainable}
        unique: dict[int, tf.Variable] = {}
        for variable in variables:
            unique.setdefault(id(variable), variable)
        return trainable, list(unique.values())

    # -- calling ------------------------------------------------------------------------

    @property
    def module(self):
        """The loaded SavedModel object."""
        return self._module

    @property
    def module_training(self) -> bool:
        """Whether `training=True` calls reach the module in training mode."""
        if not (self.trainable and self._accepts_training):
            return False
        if not self._batch_norm_variables:
            return True
        return any(v.trainable for v in self._batch_norm_variables)

    def _cast_inputs(self, inputs):
        spec = self._module_input_spec
        if isinstance(inputs, Mapping):
            specs = spec if isinstance(spec, Mapping) else {}
            return {k: self._cast(x, specs.get(k)) for k, x in inputs.items()}
        if isinstance(spec, Mapping):
            spec = next(iter(spec.values())) if len(spec) == 1 else None
        return self._cast(inputs, spec)

    def _cast(self, x, spec):
        x = tf.convert_to_tensor(x)
        dtype = getattr(spec, "dtype", None)
        if dtype is None and x.dtype.is_floating:
            dtype = tf.float32  # SavedModels with untyped inputs are float32 in practice.
        return tf.cast(x, dtype) if dtype is not None and x.dtype != dtype else x

    def call(self, inputs, training=None):
        inputs = self._cast_inputs(inputs)
        kwargs = dict(self.arguments)
        if self.signature is not None:
            if isinstance(inputs, Mapping):
                kwargs.update(inputs)
            else:
                names = list(self._module_input_spec or {})
                if len(names) != 1:
                    raise ValueError(
                        f"Signature {self.signature!r} takes inputs {names}: pass a dict."
                    )
                kwargs[names[0]] = inputs
            outputs = self._function(**kwargs)
        elif self._accepts_training:
            module_training = bool(training) and self.module_training
            outputs = self._function(inputs, training=module_training, **kwargs)
        else:
            outputs = self._function(inputs, **kwargs)
        outputs = self._select_output(outputs)
        if self.trainable and self._regularization_losses:
            self.add_loss(
                tf.add_n([tf.cast(loss(), tf.float32) for loss in self._regularization_losses])
            )
        return tf.nest.map_structure(self._cast_output, outputs)

    def _cast_output(self, x):
        if x.dtype.is_floating and x.dtype != self.compute_dtype:
            return tf.cast(x, self.compute_dtype)
        return x

    def _select_output(self, outputs):
        if not isinstance(outputs, Mapping):
            if self.output_key is not None:
                raise ValueError(
                    f"output_key={self.output_key!r} was given but {self.handle!r} returns a "
                    f"{type(outputs).__name__}, not a dict."
                )
            return outputs
        if self.output_key is None:
            if len(outputs) == 1:
                return next(iter(outputs.values()))
            return dict(outputs)
        if self.output_key not in outputs:
            raise ValueError(
                f"output_key={self.output_key!r} is not an output of {self.handle!r}. "
                f"Outputs: {sorted(outputs)}."
            )
        return outputs[self.output_key]

    # -- re-initialising ---------------------------------------------------------------

    def reinitialize(self, seed: int | None = None) -> None:
        """Replaces every module variable's value with a fresh random one, as Keras
        initialises a new layer: kernels (rank >= 2) Glorot-uniform, biases, BatchNorm
        offsets and moving means zeros, BatchNorm scales and moving variances ones.

        For a from-scratch baseline of the same architecture: rebuilding the layer from its
        config loads the pretrained SavedModel again, so the values must be replaced.

        Args:
            seed: seed of the kernel initialisers.

        Raises:
            ValueError: a variable of rank 0 or 1 whose name says nothing of its role (not
                a bias, beta, gamma or moving statistic); nothing is changed then.
        """
        values = []
        unknown = []
        for index, variable in enumerate(self._ordered_weights):
            name = self._name_of[id(variable)].rsplit("/", 1)[-1]
            shape, dtype = tuple(variable.shape), variable.dtype
            if len(shape) >= 2:
                initializer = keras.initializers.GlorotUniform(
                    seed=None if seed is None else seed + index
                )
                values.append(initializer(shape, dtype=dtype))
            elif _ONES_NAME.search(name):
                values.append(keras.ops.ones(shape, dtype=dtype))
            elif _ZEROS_NAME.search(name):
                values.append(keras.ops.zeros(shape, dtype=dtype))
            else:
                unknown.append(self._name_of[id(variable)])
        if unknown:
            raise ValueError(
                f"Cannot re-initialise {self.handle!r}: no rule for the variable(s) {unknown[:5]} "
                "(rank < 2, and the name is not a bias, beta, gamma or moving mean/variance). "
                "Build the from-scratch model from Keras layers instead."
            )
        for variable, value in zip(self._ordered_weights, values, strict=True):
            variable.assign(value)

    # -- blocks ---------------------------------------------------------------------------

    def variable_name(self, variable: keras.Variable) -> str:
        """The module's own name for one of this layer's weights (without `:0`)."""
        return self._name_of[id(variable)]

    def blocks(self) -> list[HubBlock]:
        """The module's variables grouped into blocks, input side first."""
        grouped: dict[str, list[keras.Variable]] = {}
        for variable, block_name in zip(self._ordered_weights, self._block_of, strict=True):
            grouped.setdefault(block_name, []).append(variable)
        return [
            HubBlock(name, (HubVariableGroup(self, name, tuple(group)),), index)
            for index, (name, group) in enumerate(grouped.items())
        ]

    # -- saving -------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "handle": self.handle,
                "arguments": self.arguments,
                "signature": self.signature,
                "output_key": self.output_key,
                "block_pattern": self.block_pattern,
                "frozen_variables": self.frozen_variables,
                "load_options": self.load_options,
                "tags": self.tags,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        if _keras_compat.in_safe_mode():
            _refuse_untrusted(config)
        try:
            return cls(**config)
        except HubModuleUnavailableError as error:
            raise HubModuleUnavailableError(
                f"Cannot rebuild the HubBackbone layer {config.get('name')!r}: the model file "
                f"stores the SavedModel's handle, not its graph, and {error} Restore the "
                "SavedModel at that path (the saved weights are then assigned to it)."
            ) from None


# ---------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------


def _common_prefix(paths: list[list[str]]) -> int:
    """How many leading name components all variables share (at least one left over)."""
    if not paths:
        return 0
    shortest = min(len(p) for p in paths)
    count = 0
    while count < shortest - 1 and len({p[count] for p in paths}) == 1:
        count += 1
    return count


def hub_block_names(variable_names: Sequence[str], block_pattern: str | None = None) -> list[str]:
    """The block of each variable, from its name.

    The default groups by layer: it drops the name components all variables share (a model
    scope such as `MobilenetV1/`), keeps the first remaining component up to its first
    number token (`Conv2d_13_pointwise` -> `Conv2d_13`, `conv_dw_13_bn` -> `conv_dw_13`,
    `conv1_bn` -> `conv1`, `block1a_se_reduce` -> `block1a`), and joins the two halves of a depthwise-separable unit
    (`conv_dw_13` + `conv_pw_13`). With `block_pattern`, the first group of the first match
    (or the match) names the block; a variable that matches nothing joins the block before.
    """
    names = [re.sub(r":\d+$", "", n) for n in variable_names]
    if block_pattern is not None:
        pattern = re.compile(block_pattern)
        blocks, previous = [], None
        for name in names:
            match = pattern.search(name)
            if match:
                previous = match.group(1) if match.groups() and match.group(1) else match.group(0)
            blocks.append(previous or "stem")
        return blocks
    paths = [n.split("/") for n in names]
    skip = _common_prefix(paths)
    blocks, keys = [], {}
    for path in paths:
        block = _layer_block(path[skip])
        key = _SEPARABLE_PART.sub("", block)
        # The first layer of a unit names it (`conv_dw_13` for `conv_dw_13` + `conv_pw_13`).
        blocks.append(keys.setdefault(key, block))
    return blocks


def _layer_block(layer_name: str) -> str:
    tokens = layer_name.split("_")
    # `Conv2d_13_pointwise`, `conv_dw_13_bn`, `Mixed_5b`: up to the first number token.
    for i, token in enumerate(tokens[1:], start=1):
        if re.fullmatch(r"\d+[a-z]?", token):
            return "_".join(tokens[: i + 1])
    # `conv1_bn`, `block1a_se_reduce`: the numbered first token.
    if re.search(r"\d", tokens[0]):
        return tokens[0]
    return re.sub(r"(?i)_(bn|batchnorm|relu\d*)$", "", layer_name)


class HubVariableGroup:
    """The variables of one block of a `HubBackbone`, seen like a layer.

    A SavedModel is one Keras layer, so a block of it is a set of that layer's variables.
    This gives block consumers the layer attributes they read (`name`, `weights`,
    `trainable_weights`, `trainable`); setting `trainable` sets the variables'.
    """

    def __init__(self, layer: HubBackbone, name: str, variables: tuple[keras.Variable, ...]):
        self.layer = layer
        self.name = name
        self.variables = variables

    @property
    def weights(self) -> list[keras.Variable]:
        return list(self.variables)

    @property
    def trainable(self) -> bool:
        return self.layer.trainable and any(v.trainable for v in self._trainable_candidates)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        for variable in self._trainable_candidates:
            variable.trainable = bool(value)

    @property
    def trainable_weights(self) -> list[keras.Variable]:
        return [v for v in self.variables if v.trainable] if self.layer.trainable else []

    @property
    def non_trainable_weights(self) -> list[keras.Variable]:
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.variables if id(v) not in trainable]

    @property
    def _trainable_candidates(self) -> list[keras.Variable]:
        # Variables the module itself marks non-trainable (moving averages) stay so.
        candidates = {id(v) for v in _keras_compat.own_trainable_variables(self.layer)}
        return [v for v in self.variables if id(v) in candidates]

    @property
    def output(self):
        raise ValueError(
            f"Cannot cut a TF Hub backbone at block {self.name!r}: a SavedModel is one layer "
            "and only its final output is available. Use the whole backbone."
        )

    def __repr__(self) -> str:
        return f"HubVariableGroup({self.name!r}, {len(self.variables)} variables)"


class HubBlock(backbones_lib.Block):
    """A block of a `HubBackbone`: a group of the module's variables (see `hub_block_names`).

    Its only "layer" is a `HubVariableGroup`; `set_trainable` sets its variables, keeping
    batch-norm variables frozen unless `train_bn` (the module then also runs its batch norm
    in inference mode, see `HubBackbone`).
    """

    @property
    def group(self) -> HubVariableGroup:
        return self.layers[0]

    @property
    def variables(self) -> list[keras.Variable]:
        return list(self.group.variables)

    @property
    def output(self):
        return self.group.output

    def set_trainable(self, trainable: bool, train_bn: bool = False) -> None:
        layer = self.group.layer
        if trainable and not layer.trainable:
            # Keras' `Layer.trainable` setter resets every variable: turn the layer on with
            # all its variables frozen, then enable this block's.
            layer.trainable = True
            for variable in _keras_compat.own_trainable_variables(layer):
                variable.trainable = False
        for variable in self.group._trainable_candidates:
            is_batch_norm = bool(_BATCH_NORM_NAME.search(layer.variable_name(variable)))
            variable.trainable = bool(trainable and (train_bn or not is_batch_norm))

    def __repr__(self) -> str:
        return f"HubBlock({self.name!r}, {len(self.variables)} variables)"


def _hub_layer(model: keras.Model) -> HubBackbone | None:
    if isinstance(model, HubBackbone):
        return model
    for layer in getattr(model, "layers", []):
        if isinstance(layer, HubBackbone):
            return layer
    return None


backbones_lib.register_block_finder(
    lambda model: _hub_layer(model) is not None, lambda model: _hub_layer(model).blocks()
)


# ---------------------------------------------------------------------------------------
# create_backbone("hub:...")
# ---------------------------------------------------------------------------------------


def _size_from(handle: str, spec: Any) -> int:
    shape = getattr(spec, "shape", None)
    if shape is not None and shape.rank == 4 and shape[1] and shape[1] == shape[2]:
        return int(shape[1])
    sizes = [int(s) for s in re.findall(r"(?<![0-9])(\d{2,3})(?![0-9])", handle)]
    sizes = [s for s in sizes if s in _KNOWN_SIZES]
    return sizes[-1] if sizes else 224


def create_hub_backbone(
    handle: str,
    input_shape: Sequence[int | None] | None = None,
    *,
    default_size: int | None = None,
    preprocessing: str | None = "auto",
    trainable: bool = True,
    **kwargs: Any,
) -> backbones_lib.Backbone:
    """A `Backbone` around a TF2 SavedModel image model (what `create_backbone("hub:...")` builds).

    Args:
        handle: local SavedModel folder or TF Hub / Kaggle handle.
        input_shape: `(height, width, channels)`; defaults to the model's size.
        default_size: the input size the model was trained at. By default read from the
            module's input signature, else from the handle (`..._224_...`), else 224.
        preprocessing: `ImagePreprocessing` mode the classifier puts in front. `"auto"`:
            `"unit"` (x / 255, the TF Hub image convention of [0, 1] inputs) for modules
            taking float images, else `None`.
        trainable: whether the backbone starts trainable (freeze / unfreeze change it).
        **kwargs: `HubBackbone` arguments (`arguments`, `signature`, `output_key`,
            `block_pattern`, `load_options`, `tags`, `name`).

    Returns:
        A `Backbone` named `"hub:<handle>"`; its model is `Input -> HubBackbone`.
    """
    kwargs.setdefault("name", "hub_backbone")
    layer = HubBackbone(handle, trainable=trainable, **kwargs)
    spec = layer._module_input_spec
    if isinstance(spec, Mapping) and len(spec) == 1:
        spec = next(iter(spec.values()))
    size = int(default_size) if default_size else _size_from(layer.handle, spec)
    is_image = spec is None or (
        getattr(spec, "shape", None) is not None and spec.shape.rank == 4 and spec.dtype.is_floating
    )
    if input_shape is None:
        input_shape = (size, size, 3) if is_image else tuple(spec.shape[1:])
    if preprocessing == "auto":
        preprocessing = "unit" if is_image else None
    input_dtype = "float32" if is_image or spec is None else spec.dtype.name
    inputs = keras.Input(shape=tuple(input_shape), dtype=input_dtype, name="inputs")
    model = keras.Model(inputs, layer(inputs), name=f"hub_{_short_name(layer.handle)}")
    return backbones_lib.Backbone(f"hub:{layer.handle}", model, size, preprocessing)


def _short_name(handle: str) -> str:
    parts = [p for p in re.split(r"[/\\]", handle.rstrip("/")) if p and not p.isdigit()]
    return re.sub(r"[^0-9A-Za-z_]", "_", parts[-1] if parts else "model")


backbones_lib.register_backbone_prefix("hub:", create_hub_backbone)
