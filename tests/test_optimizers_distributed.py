"""Per-variable learning rates under tf.distribute: MirroredStrategy over 2 logical CPUs and
MultiWorkerMirroredStrategy with two worker processes, each against a single-device run.

Distribution strategies must be set up before TensorFlow initialises its devices, so the
distributed runs happen in subprocesses that run this file as a script.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

GLOBAL_BATCH = 8
EPOCHS = 2


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * GLOBAL_BATCH, 8)).astype("float32")
    y = rng.integers(0, 3, size=(4 * GLOBAL_BATCH,)).astype("int32")
    return x, y


def _model_and_optimizer():
    """A 3-layer model (seeded) and AdamW with per-layer multipliers, one of them 0."""
    import keras

    from keras_transfer.optimizers.layerwise import with_layerwise_lr

    keras.utils.set_random_seed(1)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="relu", name="low")(inputs)
    x = keras.layers.Dense(16, activation="relu", name="mid")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    optimizer = with_layerwise_lr(
        keras.optimizers.AdamW,
        {"^low/": 0.25, "^mid/kernel": 0.0},
        learning_rate=0.01,
        weight_decay=0.1,
    )
    return keras.Model(inputs, outputs), optimizer


def train(strategy=None) -> list[np.ndarray]:
    """Trains the model with `fit`, on one device or under `strategy`."""
    import tensorflow as tf

    with strategy.scope() if strategy else contextlib.nullcontext():
        model, optimizer = _model_and_optimizer()
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    model.fit(dataset, epochs=EPOCHS, verbose=0, shuffle=False)
    return [np.asarray(w) for w in model.get_weights()]


def train_custom_loop(strategy=None) -> list[np.ndarray]:
    """The same training as `train`, as a custom loop (`strategy.run` + `apply_gradients`).

    A custom loop exercises the optimizer's own distributed code (all-reduce, merge_call
    updates and decay) without Keras' `fit`, whose multi-worker support needs
    `keras_transfer.utils.distribute.MultiWorkerFitMixin` (tested in tests/test_distribute.py).
    """
    import keras
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model, optimizer = _model_and_optimizer()
        optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                losses = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
                loss = tf.reduce_sum(losses) / GLOBAL_BATCH
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        strategy.run(replica_step, args=(x, y))

    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = strategy.experimental_distribute_dataset(dataset.with_options(options))
    for _ in range(EPOCHS):
        for x_batch, y_batch in dataset:
            step(x_batch, y_batch)
    return [np.asarray(w) for w in model.get_weights()]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _check_same(distributed: list[np.ndarray], reference: list[np.ndarray]) -> None:
    assert len(distributed) == len(reference)
    for got, want in zip(distributed, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference() -> list[np.ndarray]:
    return train()


def test_mirrored_strategy_matches_single_device(tmp_path, reference):
    out = tmp_path / "mirrored.npz"
    subprocess.run(
        [sys.executable, __file__, "mirrored", str(out)],
        check=True,
        timeout=180,
        env=_env(),
    )
    weights = np.load(out)
    mirrored = [weights[f"w{i}"] for i in range(len(weights.files))]
    _check_same(mirrored, reference)
    # The multiplier-0 kernel ("mid/kernel", the 3rd weight) did not move at all.
    initial = np.load(out.with_suffix(".initial.npz"))
    np.testing.assert_array_equal(mirrored[2], initial["w2"])
    assert not np.array_equal(mirrored[0], initial["w0"])


def test_multi_worker_mirrored_strategy_matches_single_device(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(
            subprocess.Popen(
                [sys.executable, __file__, "worker", str(tmp_path / f"worker{index}.npz")],
                env=_env(TF_CONFIG=tf_config),
            )
        )
    try:
        for worker in workers:
            assert worker.wait(timeout=180) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    reference = train_custom_loop()
    for index in range(2):
        weights = np.load(tmp_path / f"worker{index}.npz")
        _check_same([weights[f"w{i}"] for i in range(len(weights.files))], reference)


def _save(path: str, weights: list[np.ndarray]) -> None:
    np.savez(path, **{f"w{i}": w for i, w in enumerate(weights)})


def _main(mode: str, out: str) -> None:
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        # The initial weights, to check that a multiplier of 0 leaves a variable untouched.
        _save(out.replace(".npz", ".initial.npz"), _model_and_optimizer()[0].get_weights())
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        assert strategy.num_replicas_in_sync == 2
        _save(out, train_custom_loop(strategy))
        return
    _save(out, train(strategy))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
