"""`HubBackbone`: a TF2 SavedModel (TF Hub, Kaggle or a local folder) as a Keras 3 layer.

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
`HubModuleUnavailableError` naming the handle and the remedies. In safe mode, loading refuses
SavedModels this process does not trust (see `keras_transfer.backbones.hub.safe_mode`).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_transfer import _keras_compat
from keras_transfer.backbones.hub import blocks as blocks_lib
from keras_transfer.backbones.hub import cache
from keras_transfer.backbones.hub import safe_mode
from keras_transfer.utils import backend

__all__ = ["HubBackbone"]

# Rank-1 variables that Keras initialises to ones / zeros, by the last part of the name.
_ONES_NAME = re.compile(r"(gamma|moving_variance|scale)")
_ZEROS_NAME = re.compile(r"(beta|bias|moving_mean|offset)")


def _load_options(load_options: Any) -> tf.saved_model.LoadOptions | None:
    if load_options is None or isinstance(load_options, tf.saved_model.LoadOptions):
        return load_options
    if isinstance(load_options, Mapping):
        return tf.saved_model.LoadOptions(**load_options)
    raise TypeError(
        "load_options must be a tf.saved_model.LoadOptions or a dict of its arguments "
        f"(e.g. {{'experimental_io_device': '/job:localhost'}}), got {load_options!r}."
    )


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


# A SavedModel is a TensorFlow graph: it runs only where Keras runs on TensorFlow.
_NEEDS_TENSORFLOW = (
    "A TF Hub SavedModel backbone",
    "set KERAS_BACKEND=tensorflow, or use a keras.applications backbone",
)


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
        backend.require_tensorflow(*_NEEDS_TENSORFLOW)
        super().__init__(trainable=trainable, **kwargs)
        self.handle = os.fspath(handle)
        self.arguments = dict(arguments or {})
        self.signature = signature
        self.output_key = output_key
        self.block_pattern = block_pattern
        self.load_options = safe_mode.load_options_config(load_options)
        self.tags = list(tags) if tags is not None else None
        if block_pattern is not None:
            re.compile(block_pattern)  # Fail here, not at the first get_blocks.

        path = cache.resolve_handle(self.handle)
        # The content this process is about to run: trusted below, once the load succeeded.
        fingerprint = safe_mode.load_fingerprint(
            path, signature, self.tags, self.arguments, self.load_options
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
        self._block_of = blocks_lib.hub_block_names(tf_names, block_pattern)
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
            v
            for v in self._ordered_weights
            if blocks_lib.is_batch_norm_variable(self._name_of[id(v)])
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
        safe_mode.trust_load(fingerprint)

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
    def module_input_spec(self) -> Any:
        """The `tf.TensorSpec` (or dict of specs) the module's call takes, or `None` when
        the SavedModel does not say."""
        return self._module_input_spec

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

    def blocks(self) -> list[blocks_lib.HubBlock]:
        """The module's variables grouped into blocks, input side first."""
        grouped: dict[str, list[keras.Variable]] = {}
        for variable, block_name in zip(self._ordered_weights, self._block_of, strict=True):
            grouped.setdefault(block_name, []).append(variable)
        return [
            blocks_lib.HubBlock(
                name, (blocks_lib.HubVariableGroup(self, name, tuple(group)),), index
            )
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
            safe_mode.refuse_untrusted(config)
        try:
            return cls(**config)
        except cache.HubModuleUnavailableError as error:
            raise cache.HubModuleUnavailableError(
                f"Cannot rebuild the HubBackbone layer {config.get('name')!r}: the model file "
                f"stores the SavedModel's handle, not its graph, and {error} Restore the "
                "SavedModel at that path (the saved weights are then assigned to it)."
            ) from None
