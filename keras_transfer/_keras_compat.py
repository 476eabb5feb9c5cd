"""Every private Keras / TensorFlow API that keras_transfer uses, and only here.

Each entry says why no public API does the job and on which versions it was checked.
`missing_internals()` lists the entries a Keras or TensorFlow release has removed or
changed; `tests/test_keras_compat.py` fails with that list, so an upgrade that breaks one
fails loudly in CI instead of mis-training silently.

Checked on: keras 3.15.0 with tensorflow 2.21.0, and keras 3.15.1 with tensorflow 2.19.1
(the oldest supported pair). Keras 3.10.0 also has every entry, but before 3.15 Keras does not
save the weights of layers held in nested lists; features that need a newer Keras than the one
installed ask `require_keras` first, so they fail with a message naming the version instead of
silently or deep inside Keras.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "KERAS_VERSION",
    "BackupSaveHook",
    "OptimizerHooks",
    "SymbolicBuildHook",
    "base_learning_rate",
    "capture_call_outputs",
    "flatten_layers",
    "has_standard_weight_decay",
    "in_safe_mode",
    "keras_at_least",
    "merge_call",
    "missing_internals",
    "moving_average_variables",
    "own_trainable_variables",
    "patch_symbolic_build",
    "release_numbers",
    "require_keras",
    "reset_fit_initial_epoch",
    "sync_compiled_trainable_state",
    "track_variable",
    "uses_weight_decay",
    "variable_index",
    "wrapper_optimizer_classes",
]


# -- versions ------------------------------------------------------------------------------


def release_numbers(version: str) -> tuple[int, ...]:
    """`"3.10.0rc1"` -> `(3, 10, 0)`: the leading release numbers of a version string."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


KERAS_VERSION: tuple[int, ...] = release_numbers(keras.__version__)


def keras_at_least(version: str) -> bool:
    """Whether the installed Keras is `version` (e.g. `"3.12"`) or newer."""
    return KERAS_VERSION >= release_numbers(version)


def require_keras(version: str, feature: str) -> None:
    """Raises a `RuntimeError` naming `feature`, the Keras it needs and the installed one,
    unless Keras is at least `version`."""
    if not keras_at_least(version):
        raise RuntimeError(
            f"{feature} needs Keras {version} or newer; this is Keras {keras.__version__}. "
            f'Upgrade it: pip install "keras>={version}" (keras_transfer supports Keras 3.15+ '
            "on TensorFlow 2.19-2.21)."
        )


def wrapper_optimizer_classes() -> tuple[type, ...]:
    """The `keras.optimizers` classes that wrap other optimizers, as far as this Keras has them.

    Why here: `keras.optimizers.MultiOptimizer` is new in Keras 3.15; naming it directly
    would make an older Keras fail at import instead of at the version check.
    """
    names = ("LossScaleOptimizer", "MultiOptimizer")
    return tuple(
        getattr(keras.optimizers, name) for name in names if hasattr(keras.optimizers, name)
    )


# -- layers and models --------------------------------------------------------------------


def flatten_layers(
    layer: keras.layers.Layer, include_self: bool = True, recursive: bool = True
) -> list:
    """Every layer nested in `layer`, at any depth (only its direct sublayers with
    `recursive=False`), including layers held as attributes, in the order they were set.

    Why private: `Model.layers` lists only direct children, and layers tracked as attributes
    of a custom layer (a head's Dense layers) have no public listing at all.
    """
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def own_trainable_variables(layer: keras.layers.Layer) -> list:
    """The trainable variables `layer` created itself, without its sublayers' ones.

    Why private: `layer.trainable_weights` includes sublayers and is empty while the layer
    is frozen; regularizers and hub blocks need a layer's own candidates either way.
    """
    return list(layer._trainable_variables)


def track_variable(layer: keras.layers.Layer, variable: keras.Variable) -> None:
    """Makes `layer` own a variable it did not create with `add_weight`.

    Why private: HubBackbone wraps the SavedModel's existing variables; `add_weight` would
    create new ones and copy, losing the link to the module's graph.
    """
    layer._track_variable(variable)


def sync_compiled_trainable_state(model: keras.Model) -> None:
    """Tells Keras the current `trainable` flags are the ones the train step was built with.

    Why private: after `make_train_function(force=True)` inside `fit` (gradual unfreezing),
    Keras' "trainable state changed since compile" warning compares against the flags of
    the last `compile`; nothing public updates them without recompiling.
    """
    if hasattr(model, "_compiled_trainable_state"):
        model._compiled_trainable_state = {
            layer: layer.trainable for layer in flatten_layers(model)
        }


def reset_fit_initial_epoch(model: keras.Model) -> None:
    """Forgets the epoch a `BackupAndRestore` restored in an earlier `fit` of `model`.

    Why private: `BackupAndRestore` sets `model._initial_epoch` and Keras never clears it,
    so a second `fit` on the same model would start at the first fit's restored epoch.
    """
    if hasattr(model, "_initial_epoch"):
        model._initial_epoch = None


def in_safe_mode() -> bool:
    """Whether the current `keras.saving.load_model` call runs with `safe_mode=True`.

    Why private: a layer's `from_config` cannot see the `safe_mode` argument otherwise, and
    HubBackbone must refuse to run an untrusted SavedModel graph under it.
    """
    from keras.src.saving import serialization_lib

    return serialization_lib.in_safe_mode() is not False


class SymbolicBuildHook:
    """Mixin for a `keras.Model` subclass: lets it choose the data Keras builds it from.

    Why private: Keras 3's TensorFlow trainer builds an unbuilt model in
    `_maybe_symbolic_build` from a batch reduced across replicas, which fails under
    `MultiWorkerMirroredStrategy`; no public hook replaces the batch. The subclass
    implements `symbolic_build_inputs(iterator, data_batch) -> (iterator, data_batch)`.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        iterator, data_batch = self.symbolic_build_inputs(iterator, data_batch)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def patch_symbolic_build(model: keras.Model, choose: Callable[[Any, Any], tuple]) -> None:
    """`SymbolicBuildHook` for one model instance whose class cannot change.

    `choose(iterator, data_batch) -> (iterator, data_batch)` runs before Keras' own build.
    """
    original = model._maybe_symbolic_build

    def maybe_symbolic_build(iterator=None, data_batch=None):
        iterator, data_batch = choose(iterator, data_batch)
        return original(iterator=iterator, data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build


class BackupSaveHook:
    """Mixin for a `keras.callbacks.BackupAndRestore` subclass: routes the private
    `_save_model` (called by its public `on_epoch_end` / `on_train_batch_end`) to the
    subclass's `save_backup()`.

    Why private: Keras writes the backup in place, so a kill or a full disk mid-write
    leaves a half-written file that blocks every resume; no public hook replaces the write.
    """

    def _save_model(self):
        self.save_backup()


# -- optimizers -----------------------------------------------------------------------------


class OptimizerHooks:
    """Mixin for an optimizer subclass: routes Keras' private per-step hooks to methods
    with public names, so the subclass needs no private names of its own.

    Why private: decoupled weight decay and the EMA update run in `_apply_weight_decay`
    and `_update_model_variables_moving_average`, called from `apply`; a per-variable
    learning rate must change both, and `apply` has no public hook for either. The
    subclass implements `apply_weight_decay(variables)` and
    `update_moving_averages(variables)`, and may call the parent's versions below.
    """

    def _apply_weight_decay(self, variables):
        self.apply_weight_decay(variables)

    def _update_model_variables_moving_average(self, trainable_variables):
        self.update_moving_averages(trainable_variables)

    def parent_apply_weight_decay(self, variables) -> None:
        super()._apply_weight_decay(variables)

    def parent_update_moving_averages(self, trainable_variables) -> None:
        super()._update_model_variables_moving_average(trainable_variables)


def has_standard_weight_decay(optimizer_class: type) -> bool:
    """Whether `optimizer_class` decays weights the way `keras.optimizers.Adam` does (the
    base optimizer's decoupled decay), which `OptimizerHooks` can scale per variable."""
    return optimizer_class._apply_weight_decay is keras.optimizers.Adam._apply_weight_decay


def uses_weight_decay(optimizer: keras.optimizers.Optimizer, variable: Any) -> bool:
    """Whether `optimizer` decays `variable` (honours `exclude_from_weight_decay`)."""
    return optimizer._use_weight_decay(variable)


def variable_index(optimizer: keras.optimizers.Optimizer, variable: Any) -> int:
    """The position of `variable` in the list the optimizer was built on.

    Why private: the slot lists are indexed by it and nothing public exposes it.
    """
    return optimizer._get_variable_index(variable)


def moving_average_variables(optimizer: keras.optimizers.Optimizer) -> list:
    """The EMA copies (`use_ema=True`), one per built variable (`None` where absent)."""
    return optimizer._model_variables_moving_average


def base_learning_rate(optimizer: keras.optimizers.Optimizer) -> Any:
    """The learning-rate variable or `LearningRateSchedule` the optimizer was given.

    Why private: `optimizer.learning_rate` evaluates a schedule at the current step and so
    hides whether there is one.
    """
    return optimizer._learning_rate


def merge_call(
    optimizer: keras.optimizers.Optimizer, function: Callable[..., Any], *args: Any
) -> Any:
    """Runs `function(distribution, *args)` in the cross-replica context of the optimizer's
    `tf.distribute` strategy, as Keras' own weight decay does.

    Why private: updating mirrored variables from inside a replica needs a merge call; Keras'
    optimizer uses the same TensorFlow internal for its weight decay.
    """
    return tf.__internal__.distribute.interim.maybe_merge_call(
        function, optimizer._distribution_strategy, *args
    )


@contextlib.contextmanager
def capture_call_outputs(layers: Sequence[keras.layers.Layer]) -> Iterator[dict[int, Any]]:
    """While active, `captured[i]` is the last output of `layers[i]`'s `call`.

    For the outputs of layers nested inside a composite layer (a transformer block inside a
    KerasHub encoder layer), which no functional graph exposes: the recording `call` is set
    on each instance and the class's own `call` is back afterwards.

    Why private: it relies on `Layer.__call__` dispatching through `self.call` (looked up on
    the instance), which Keras does not document.
    """
    captured: dict[int, Any] = {}
    saved = []
    for index, layer in enumerate(layers):
        saved.append(layer.__dict__.get("call"))
        original = layer.call

        def recording(*args, _index=index, _call=original, **kwargs):
            outputs = _call(*args, **kwargs)
            captured[_index] = outputs
            return outputs

        # `object.__setattr__`: a function is nothing for the layer's tracker to track.
        object.__setattr__(layer, "call", recording)
    try:
        yield captured
    finally:
        for layer, previous in zip(layers, saved):
            if previous is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", previous)


# -- the check --------------------------------------------------------------------------


def _has_parameters(function: Any, names: tuple[str, ...]) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters for name in names)


def missing_internals() -> list[str]:
    """The private APIs above that this Keras / TensorFlow no longer has in the form used.

    An empty list means every entry was found. Instance attributes are checked on small
    objects built here.

    The TensorFlow trainer's and `tf.distribute`'s entries are checked when Keras runs on
    TensorFlow, the only backend that uses them (other backends' `keras.Model` lacks them).
    """
    problems = []

    def need(condition: Callable[[], bool], what: str) -> None:
        try:
            ok = condition()
        except Exception as error:  # noqa: BLE001 - any failure means the API changed
            ok = False
            what = f"{what} ({type(error).__name__}: {error})"
        if not ok:
            problems.append(what)

    layer_cls, model_cls = keras.layers.Layer, keras.Model
    need(
        lambda: _has_parameters(layer_cls._flatten_layers, ("include_self", "recursive")),
        "keras.layers.Layer._flatten_layers(include_self=...)",
    )
    need(lambda: hasattr(layer_cls, "_track_variable"), "keras.layers.Layer._track_variable")
    dense = keras.layers.Dense(1)
    dense.build((None, 2))
    need(
        lambda: len(dense._trainable_variables) == 2,
        "keras.layers.Layer._trainable_variables (a built Dense has 2)",
    )
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    # Keras 3.15 added the "trainable state changed since compile" warning and this attribute;
    # before it there is nothing to keep in sync.
    need(
        lambda: hasattr(model, "_compiled_trainable_state") or not keras_at_least("3.15"),
        "Model._compiled_trainable_state (Keras 3.15+)",
    )
    need(lambda: hasattr(model, "_initial_epoch"), "Model._initial_epoch (BackupAndRestore)")
    need(
        lambda: callable(
            __import__("keras.src.saving.serialization_lib", fromlist=["x"]).in_safe_mode
        ),
        "keras.src.saving.serialization_lib.in_safe_mode",
    )
    need(
        lambda: callable(keras.callbacks.BackupAndRestore._save_model),
        "keras.callbacks.BackupAndRestore._save_model (its epoch/batch-end save)",
    )
    optimizer_cls = keras.optimizers.Optimizer
    for name, parameters in (
        ("_apply_weight_decay", ("variables",)),
        ("_update_model_variables_moving_average", ("trainable_variables",)),
        ("_use_weight_decay", ("variable",)),
        ("_get_variable_index", ("variable",)),
    ):
        need(
            lambda name=name, parameters=parameters: _has_parameters(
                getattr(optimizer_cls, name), parameters
            ),
            f"keras.optimizers.Optimizer.{name}{parameters}",
        )
    adam = keras.optimizers.Adam(1e-3, use_ema=True)
    adam.build([dense.kernel])
    need(
        lambda: len(adam._model_variables_moving_average) == 1,
        "Optimizer._model_variables_moving_average (one per variable with use_ema)",
    )
    need(lambda: isinstance(adam._learning_rate, keras.Variable), "Optimizer._learning_rate")
    need(_captures_nested_calls, "Layer.__call__ dispatching through the instance's `call`")
    if keras.backend.backend() == "tensorflow":
        _check_tensorflow_internals(need, model_cls, adam)
    return problems


def _check_tensorflow_internals(need: Callable, model_cls: type, adam: Any) -> None:
    """The entries only the TensorFlow backend uses: its trainer's symbolic build
    (`SymbolicBuildHook`) and `tf.distribute`'s merge call (`merge_call`)."""
    need(
        lambda: _has_parameters(model_cls._maybe_symbolic_build, ("iterator", "data_batch")),
        "Model._maybe_symbolic_build(iterator, data_batch) (TensorFlow trainer)",
    )
    need(
        lambda: callable(tf.__internal__.distribute.interim.maybe_merge_call),
        "tf.__internal__.distribute.interim.maybe_merge_call",
    )
    need(lambda: hasattr(adam, "_distribution_strategy"), "Optimizer._distribution_strategy")


def _captures_nested_calls() -> bool:
    inner = keras.layers.Dense(2, kernel_initializer="ones")
    outer = keras.Sequential([keras.Input((2,)), inner, keras.layers.Dense(1)])
    with capture_call_outputs([inner]) as captured:
        outer(np.ones((1, 2), "float32"))
    return 0 in captured and tuple(captured[0].shape) == (1, 2) and "call" not in inner.__dict__
