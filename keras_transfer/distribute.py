"""Distribution strategies and mixed precision for training runs: one flag each.

`create_strategy("tpu", tpu="local")` does the TPU dance (`TPUClusterResolver`,
`experimental_connect_to_cluster`, `initialize_tpu_system`); `mixed_precision_policy` picks
the policy the hardware runs fast (`mixed_bfloat16` on TPU, `mixed_float16` on GPU).
Build and compile the model inside `strategy.scope()`; Keras' `fit` distributes the data.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import tensorflow as tf

logger = logging.getLogger("keras_transfer")

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def create_strategy(name: str = "default", tpu: str | None = None) -> tf.distribute.Strategy:
    """A `tf.distribute.Strategy` by name.

    Args:
        name: `"default"` (one device, no distribution), `"mirrored"` (all local GPUs, or
            the logical CPU devices when there is no GPU), `"multi_worker"` (synchronous
            data parallelism over the workers in the `TF_CONFIG` environment variable) or
            `"tpu"`.
        tpu: for `"tpu"`: the TPU's gRPC address (`grpc://10.0.0.2:8470`), its name, or
            `"local"` for a TPU VM; `None` or `""` lets `TPUClusterResolver` find it from
            the environment (Colab's `COLAB_TPU_ADDR`, `TPU_NAME`).

    Returns:
        The strategy. For `"tpu"` the TPU system is initialised.

    Example:
    >>> strategy = create_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = keras_transfer.create_classifier("mobilenet_v2", 5, weights=None)
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}.")
    if tpu and name != "tpu":
        raise ValueError(
            f"A TPU address was given ({tpu!r}) but strategy is {name!r}; pass strategy='tpu'."
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu)


def _tpu_strategy(tpu: str | None) -> tf.distribute.TPUStrategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
    except (ValueError, RuntimeError) as error:
        raise RuntimeError(
            f"No TPU found ({error}). On Colab choose Runtime > Change runtime type > TPU; on "
            "a TPU VM pass tpu='local'; elsewhere pass the TPU's name or grpc:// address."
        ) from error
    if tpu != "local":
        # A remote TPU (Colab's TPU node, a named Cloud TPU) runs the graph on its workers.
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
    logger.info("TPU strategy with %d replicas", strategy.num_replicas_in_sync)
    return strategy


def is_tpu(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether `strategy` runs on TPU (which needs static batch shapes)."""
    return isinstance(strategy, tf.distribute.TPUStrategy)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process should write outputs: always, except on the non-chief workers
    of a multi-worker strategy."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0)


def mixed_precision_policy(
    mixed_precision: bool | str, strategy: tf.distribute.Strategy | None = None
) -> str:
    """The dtype policy name for a run.

    Args:
        mixed_precision: `False` / `"float32"` for full precision; `True` / `"auto"` for
            the hardware's fast policy (`mixed_bfloat16` on TPU, `mixed_float16` on GPU,
            `mixed_bfloat16` on CPU, where it saves memory but is rarely faster); or a policy
            name (`"mixed_float16"`, `"mixed_bfloat16"`).
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
    if is_tpu(strategy):
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    logger.info("mixed precision on CPU: using mixed_bfloat16 (saves memory, rarely faster)")
    return "mixed_bfloat16"


def set_mixed_precision(
    mixed_precision: bool | str, strategy: tf.distribute.Strategy | None = None
) -> str:
    """Sets the global Keras dtype policy (see `mixed_precision_policy`) and returns its name.

    Set it before building the model: layers read the global policy when they are created.
    `keras_transfer` heads keep a float32 output layer, so losses stay stable.
    """
    policy = mixed_precision_policy(mixed_precision, strategy)
    keras.config.set_dtype_policy(policy)
    return policy


def hub_load_options(strategy: tf.distribute.Strategy | None) -> dict[str, Any] | None:
    """`HubBackbone(load_options=...)` for `strategy`: on TPU the SavedModel's files are
    read by the local host (`experimental_io_device="/job:localhost"`), since the TPU
    workers cannot see the VM's disk; `None` elsewhere."""
    return {"experimental_io_device": "/job:localhost"} if is_tpu(strategy) else None


def static_batches(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether datasets must drop their last partial batch (`drop_remainder=True`): TPUs
    compile for one static batch shape."""
    return is_tpu(strategy)
