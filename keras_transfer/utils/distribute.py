"""Distribution strategies and mixed precision for training runs: one flag each.

`create_strategy("tpu", tpu="local")` does the TPU dance (`TPUClusterResolver`,
`experimental_connect_to_cluster`, `initialize_tpu_system`); `mixed_precision_policy` picks
the policy the hardware runs fast (`mixed_bfloat16` on TPU, `mixed_float16` on GPU, float32 on
CPU) and `default_jit_compile` whether XLA pays (GPU: yes; CPU: no), each choice logged.
Build and compile the model inside `strategy.scope()`; Keras' `fit` distributes the data.

On the JAX backend the same names drive `keras.distribution`: `create_strategy("mirrored")` (or
`"tpu"` on a TPU VM) sets a `keras.distribution.DataParallel` over every device and returns it
in a `KerasDistribution`, which answers the two things a run asks of a strategy, `scope()` and
`num_replicas_in_sync`; `model_scope(model)` is the scope a model's variables belong to on
either backend.
`MultiWorkerFitMixin` / `enable_multi_worker_fit` make Keras 3's `fit` and `evaluate` work
under `MultiWorkerMirroredStrategy` (`TransferClassifier` has it built in).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from typing import Any

import keras
import tensorflow as tf

from keras_transfer import _keras_compat
from keras_transfer.utils import backend

__all__ = [
    "KerasDistribution",
    "MultiWorkerFitMixin",
    "STRATEGIES",
    "accelerator",
    "create_strategy",
    "default_jit_compile",
    "enable_multi_worker_fit",
    "hub_load_options",
    "is_chief",
    "is_multi_worker",
    "is_tpu",
    "mixed_precision_policy",
    "model_scope",
    "model_strategy",
    "set_mixed_precision",
    "static_batches",
    "tpu_expected",
]

logger = logging.getLogger("keras_transfer")

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def create_strategy(name: str = "default", tpu: str | None = None) -> Any:
    """A distribution strategy by name, for the running Keras backend.

    Args:
        name: `"default"` (one device, no distribution), `"mirrored"` (all local GPUs, or
            the logical CPU devices when there is no GPU; on JAX every local device),
            `"multi_worker"` (synchronous data parallelism over the workers in the
            `TF_CONFIG` environment variable; on JAX the processes `jax.distributed` finds)
            or `"tpu"`.
        tpu: for `"tpu"` on TensorFlow: the TPU's gRPC address (`grpc://10.0.0.2:8470`),
            its name, or `"local"` for a TPU VM; `None` or `""` lets `TPUClusterResolver`
            find it from the environment (Colab's `COLAB_TPU_ADDR`, `TPU_NAME`). On JAX only
            the TPU VM's own chips (`None` or `"local"`).

    Returns:
        On TensorFlow a `tf.distribute.Strategy` (for `"tpu"` the TPU system is
        initialised); on JAX a `KerasDistribution` whose `keras.distribution.DataParallel`
        is set as Keras' global distribution.

    Example:
    ```python
    strategy = create_strategy("mirrored")
    with strategy.scope():
        model = keras_transfer.create_classifier("mobilenet_v2", 5, weights=None)
    ```
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}.")
    if tpu and name != "tpu":
        raise ValueError(
            f"A TPU address was given ({tpu!r}) but strategy is {name!r}; pass strategy='tpu'."
        )
    if not backend.is_tensorflow():
        return _keras_distribution(name, tpu)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu)


class KerasDistribution:
    """A `keras.distribution` layout (or none) where a run expects a strategy.

    `create_strategy` returns it on the JAX backend. `scope()` enters the distribution (a
    no-op without one: `create_strategy` also sets it globally, Keras' documented way, so
    `fit` shards every batch over the devices) and `num_replicas_in_sync` is the number of
    devices a batch is split over.

    Args:
        distribution: a `keras.distribution.Distribution`, or `None` for one device.

    Example:
    ```python
    distribution = KerasDistribution(keras.distribution.DataParallel())
    with distribution.scope():
        model = keras_transfer.create_classifier("mobilenet_v2", 5, weights=None)
    ```
    """

    def __init__(self, distribution: Any = None):
        self.distribution = distribution

    def scope(self):
        if self.distribution is None:
            return contextlib.nullcontext()
        return self.distribution.scope()

    @property
    def devices(self) -> list[str]:
        if self.distribution is None:
            return keras.distribution.list_devices()[:1]
        return [str(device) for device in self.distribution.device_mesh.devices.flatten()]

    @property
    def num_replicas_in_sync(self) -> int:
        return len(self.devices)

    def __repr__(self) -> str:
        kind = type(self.distribution).__name__ if self.distribution else "no distribution"
        return f"KerasDistribution({kind} over {', '.join(self.devices)})"


def _keras_distribution(name: str, tpu: str | None) -> KerasDistribution:
    """`create_strategy` on JAX: `DataParallel` over the devices `name` asks for."""
    if tpu not in (None, "", "local"):
        raise ValueError(
            f"On the {backend.backend()} backend strategy='tpu' uses this TPU VM's own chips; "
            f"a TPU address ({tpu!r}) needs the TensorFlow backend (KERAS_BACKEND=tensorflow)."
        )
    if name == "default":
        return KerasDistribution(None)
    if name == "multi_worker":
        keras.distribution.initialize()  # jax.distributed: the processes of the job
    devices = keras.distribution.list_devices()
    if name == "tpu" and not any(device.startswith("tpu") for device in devices):
        raise RuntimeError(
            f"strategy='tpu' on {backend.backend()}: no TPU among the devices ({', '.join(devices)}"
            "). On Colab choose Runtime > Change runtime type > TPU (a TPU VM runs JAX)."
        )
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    logger.info("keras.distribution.DataParallel over %d devices: %s", len(devices), devices)
    return KerasDistribution(distribution)


def model_strategy(model: keras.Model) -> Any:
    """The `tf.distribute.Strategy` `model` was built under on TensorFlow; on another
    backend the current `keras.distribution` in a `KerasDistribution`."""
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None or backend.is_tensorflow():
        return strategy
    return KerasDistribution(keras.distribution.distribution())


def model_scope(model: keras.Model):
    """The scope new variables of `model` (an optimizer, a wrapper model) belong in: its
    strategy's on TensorFlow, the current `keras.distribution`'s on JAX."""
    strategy = model_strategy(model)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _tpu_strategy(tpu: str | None) -> tf.distribute.TPUStrategy:
    resolver, tpu = _tpu_resolver(tpu)
    if tpu != "local":
        # A remote TPU (Colab's TPU node, a named Cloud TPU) runs the graph on its workers.
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
    logger.info("TPU strategy with %d replicas", strategy.num_replicas_in_sync)
    return strategy


def _tpu_resolver(tpu: str | None):
    """`(resolver, the address it used)`. Without an address: the environment's TPU
    (`TPU_NAME`, Colab's `COLAB_TPU_ADDR`), then the TPU VM's own chips (`"local"`: today's
    Colab TPU runtimes set neither variable)."""
    attempts = [tpu] if tpu else [None, "local"]
    errors = []
    for address in attempts:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
            # A "local" resolver is built without looking for chips: ask it for them.
            if address == "local" and not resolver.num_accelerators().get("TPU"):
                raise RuntimeError("this machine has no TPU chips")
            return resolver, address
        except (ValueError, RuntimeError, tf.errors.NotFoundError) as error:
            errors.append(f"{address or 'from the environment'}: {str(error).splitlines()[0]}")
    raise RuntimeError(
        f"No TPU found ({'; '.join(errors)}). On Colab choose Runtime > Change runtime type > "
        "TPU; elsewhere pass the TPU's name or grpc:// address."
    )


def tpu_expected() -> bool:
    """Whether this machine looks like a TPU runtime (a TPU address in the environment, or
    TPU device files): a failed TPU start there is an error, not a reason to use the CPU."""
    if any(os.environ.get(name) for name in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE")):
        return True
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def is_tpu(strategy: Any) -> bool:
    """Whether `strategy` runs on TPU (which needs static batch shapes): a `TPUStrategy`, or
    on JAX a distribution over TPU devices."""
    if isinstance(strategy, KerasDistribution):
        return strategy.devices[0].startswith("tpu")
    return isinstance(strategy, tf.distribute.TPUStrategy)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process should write outputs: always, except on the non-chief workers
    of a multi-worker strategy."""
    if not backend.is_tensorflow():
        import jax  # the only backend besides TensorFlow with several processes here

        return jax.process_index() == 0
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0)


def accelerator(strategy: tf.distribute.Strategy | None = None) -> str:
    """The kind of device a run's steps execute on: `"TPU"`, `"GPU"` or `"CPU"`."""
    if is_tpu(strategy):
        return "TPU"
    if not backend.is_tensorflow():
        return keras.distribution.list_devices()[0].split(":")[0].upper()
    if tf.config.list_logical_devices("GPU"):
        return "GPU"
    return "CPU"


def mixed_precision_policy(
    mixed_precision: bool | str, strategy: tf.distribute.Strategy | None = None
) -> str:
    """The dtype policy name for a run.

    Args:
        mixed_precision: `False` / `"float32"` for full precision; `True` / `"auto"` for
            the hardware's fast policy: `mixed_bfloat16` on TPU, `mixed_float16` on GPU,
            and `float32` on CPU, where `mixed_bfloat16` made a MobileNet V1 fine-tuning
            step about 2x slower (benchmarks/throughput.py, `bf16_vs_fp32_cpu`); or a
            policy name (`"mixed_float16"`, `"mixed_bfloat16"`), used as given on any
            device (e.g. to save memory on CPU).
        strategy: the strategy the run uses (to detect a TPU).
    """
    if mixed_precision in (False, None, "", "false", "float32", "none"):
        return "float32"
    if mixed_precision in ("mixed_float16", "mixed_bfloat16"):
        return mixed_precision
    if mixed_precision not in (True, "auto", "true"):
        raise ValueError(
            f"mixed_precision must be a bool, 'auto', 'float32', 'mixed_float16' or "
            f"'mixed_bfloat16', got {mixed_precision!r}."
        )
    device = accelerator(strategy)
    if device == "TPU":
        return "mixed_bfloat16"
    if device == "GPU":
        return "mixed_float16"
    logger.info(
        "mixed precision on CPU: keeping float32, measured faster than mixed_bfloat16 on CPU "
        "(benchmarks/throughput.py bf16_vs_fp32_cpu); pass 'mixed_bfloat16' to force it."
    )
    return "float32"


def set_mixed_precision(
    mixed_precision: bool | str, strategy: tf.distribute.Strategy | None = None
) -> str:
    """Sets the global Keras dtype policy (see `mixed_precision_policy`) and returns its name.

    Set it before building the model: layers read the global policy when they are created.
    `keras_transfer` heads keep a float32 output layer, so losses stay stable. On CPU,
    `True` keeps float32 (measured faster there); pass `"mixed_bfloat16"` to force it.
    """
    policy = mixed_precision_policy(mixed_precision, strategy)
    keras.config.set_dtype_policy(policy)
    # float32 is the default: worth a line only when it overrides a mixed-precision request.
    quiet = policy == "float32" and not mixed_precision
    (logger.debug if quiet else logger.info)("dtype policy: %s", policy)
    return policy


def default_jit_compile(
    strategy: tf.distribute.Strategy | None = None, model: keras.Model | None = None
) -> bool:
    """Whether to compile training steps with XLA (`compile(jit_compile=...)`) on this device.

    An explicit, logged choice instead of Keras' `"auto"`: `False` on CPU, where XLA made
    fine-tuning steps 2-13x slower here (benchmarks/throughput.py, `jit_vs_nojit_cpu`);
    `True` on a GPU with one replica, where XLA fuses the many small ops of a fine-tuning
    step; `False` under a multi-replica GPU strategy (Keras' own `"auto"` also turns XLA off
    with `tf.distribute`); `False` on TPU, whose strategy compiles every step with XLA
    anyway. Also `False` when a layer of `model` does not support XLA (`layer.supports_jit`).

    Args:
        strategy: the strategy the model trains under; default the current one.
        model: the model to compile, to check its layers.

    Returns:
        The `jit_compile` value to pass to `model.compile`.

    Example:
    ```python
    model.compile(optimizer="adam", loss="mse", jit_compile=default_jit_compile(strategy, model))
    ```
    """
    if not backend.is_tensorflow():
        # Without jit the JAX trainer dispatches every op of a step from Python.
        logger.info("jit_compile=True: on %s a step without jit runs op by op.", backend.backend())
        return True
    strategy = strategy or tf.distribute.get_strategy()
    device = accelerator(strategy)
    if device == "CPU":
        reason, choice = "on CPU XLA made fine-tuning steps 2-13x slower", False
    elif device == "TPU":
        reason, choice = "the TPU strategy compiles every step with XLA itself", False
    elif strategy.num_replicas_in_sync > 1:
        reason, choice = "Keras does not combine XLA with multi-replica tf.distribute", False
    elif model is not None and not all(
        getattr(layer, "supports_jit", True) for layer in _keras_compat.flatten_layers(model)
    ):
        reason, choice = "a layer of the model does not support XLA", False
    else:
        reason, choice = "XLA fuses the step's small ops on GPU", True
    logger.info("jit_compile=%s: %s.", choice, reason)
    return choice


def hub_load_options(strategy: tf.distribute.Strategy | None) -> dict[str, Any] | None:
    """`HubBackbone(load_options=...)` for `strategy`: on TPU the SavedModel's files are
    read by the local host (`experimental_io_device="/job:localhost"`), since the TPU
    workers cannot see the VM's disk; `None` elsewhere."""
    return {"experimental_io_device": "/job:localhost"} if is_tpu(strategy) else None


def static_batches(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether datasets must drop their last partial batch (`drop_remainder=True`): TPUs
    compile for one static batch shape, and on JAX a batch is split evenly over the devices."""
    if isinstance(strategy, KerasDistribution) and strategy.num_replicas_in_sync > 1:
        return True
    return is_tpu(strategy)


def is_multi_worker(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` spanning more than one worker."""
    return (
        backend.is_tensorflow()
        and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and (strategy.num_replicas_in_sync > len(strategy.extended.worker_devices))
    )


# Keras 3.15's TensorFlow trainer fails twice under a MultiWorkerMirroredStrategy with more
# than one worker (reproduced with two workers on 127.0.0.1: tests/test_distribute.py):
# 1. Before the first step, `fit` and `evaluate` build the model from the first batch averaged
#    over the replicas, `strategy.reduce("MEAN", (x, y), axis=None)`. MirroredStrategy maps
#    `reduce` over the `(x, y)` structure; the collective strategy does not and passes the
#    tuple of per-replica tensors to `convert_to_tensor`: "Attempt to convert a value
#    (PerReplica...) with an unsupported type". Building only needs shapes and dtypes, which
#    this worker's own first replica batch has: no reduce (and no network traffic) needed.
# 2. Each step averages the per-replica logs (loss, metrics: scalars) with
#    `strategy.reduce("MEAN", value, axis=0)` in multi-worker mode, which fails on scalars:
#    "Invalid reduction dimension 0 for input with 0 dimensions". Giving each log a leading
#    axis of length 1 makes that reduce the mean over all replicas, the value
#    MirroredStrategy reports.


def _first_local_batch(strategy: tf.distribute.Strategy, batch: Any) -> Any:
    def first(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(first, batch)


def _symbolic_build_iterator(model: keras.Model, iterator: Any) -> Any:
    """The first batch the model is built from under a multi-worker strategy."""
    for _, _, batches in iterator:
        return _first_local_batch(model.distribute_strategy, next(batches))
    return None


def _logs_with_replica_axis(logs: Any) -> Any:
    return tf.nest.map_structure(
        lambda value: value[None] if tf.is_tensor(value) and value.shape.rank == 0 else value,
        logs,
    )


class MultiWorkerFitMixin(_keras_compat.SymbolicBuildHook):
    """Makes Keras 3's `fit` and `evaluate` run under `MultiWorkerMirroredStrategy`.

    Keras 3.15's TensorFlow trainer cannot train under a `MultiWorkerMirroredStrategy` with
    more than one worker: it averages the first data batch with `strategy.reduce`, which the
    collective strategy rejects for an `(x, y)` structure, and it reduces the scalar step
    logs along an axis they do not have. This mixin builds the model from the worker's own
    first batch and gives the logs the axis. With any other strategy it changes nothing.
    Put it before `keras.Model` in the bases; for a `Sequential` or functional model use
    `enable_multi_worker_fit`.

    Example:
    ```python
    class MyModel(MultiWorkerFitMixin, keras.Model):
        ...
    ```
    """

    # On JAX the steps take `(state, data)` and return `(logs, state)`: passed through as they
    # are (`*args`), since the fix is for TensorFlow's trainer only.

    def symbolic_build_inputs(self, iterator, data_batch):
        if iterator is not None and is_multi_worker(model_strategy(self)):
            return None, _symbolic_build_iterator(self, iterator)
        return iterator, data_batch

    def train_step(self, *args):
        logs = super().train_step(*args)
        return _logs_with_replica_axis(logs) if is_multi_worker(model_strategy(self)) else logs

    def test_step(self, *args):
        logs = super().test_step(*args)
        return _logs_with_replica_axis(logs) if is_multi_worker(model_strategy(self)) else logs


def enable_multi_worker_fit(model: keras.Model) -> keras.Model:
    """Makes `model.fit` and `model.evaluate` run under `MultiWorkerMirroredStrategy`.

    The same fix as `MultiWorkerFitMixin`, for a model whose class you do not control (a
    `Sequential` or functional model); it wraps the model's own `train_step` / `test_step`,
    so custom ones keep working. A no-op under any other strategy. `TransferClassifier`
    needs no call.

    Args:
        model: a model built in a `MultiWorkerMirroredStrategy` scope.

    Returns:
        `model`, for chaining.

    Example:
    ```python
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = enable_multi_worker_fit(keras.Sequential([...]))
        model.compile(...)
    model.fit(dataset)
    ```
    """
    if isinstance(model, MultiWorkerFitMixin) or not is_multi_worker(model_strategy(model)):
        return model
    train_step, test_step = model.train_step, model.test_step

    def choose_build_inputs(iterator, data_batch):
        if iterator is not None:
            return None, _symbolic_build_iterator(model, iterator)
        return iterator, data_batch

    _keras_compat.patch_symbolic_build(model, choose_build_inputs)
    model.train_step = lambda data: _logs_with_replica_axis(train_step(data))
    model.test_step = lambda data: _logs_with_replica_axis(test_step(data))
    return model
