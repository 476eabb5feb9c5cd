import re

import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.backbones import freezing
from keras_transfer.training import callbacks as callbacks_lib


def tiny_data(n=16):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32"), rng.integers(0, 2, n)


class Snapshots(keras.callbacks.Callback):
    """Every model variable by path, at train begin and at each epoch end."""

    def __init__(self):
        super().__init__()
        self.values = []

    def _take(self):
        self.values.append({v.path: v.numpy().copy() for v in self.model.variables})

    def on_train_begin(self, logs=None):
        self._take()

    def on_epoch_end(self, epoch, logs=None):
        self._take()

    def changed(self, path, epoch):
        """Whether `path` changed during `epoch`."""
        return not np.array_equal(self.values[epoch][path], self.values[epoch + 1][path])


def block_paths(model, name, kind):
    block = next(b for b in kt.get_blocks(model) if b.name == name)
    bn = [v.path for layer in block.layers for v in layer.weights if "_bn/" in v.path]
    other = [v.path for v in block.variables if v.path not in bn]
    return {"bn": bn, "weights": other}[kind]


@pytest.mark.tensorflow_only
def test_blocks_start_changing_at_their_epoch_and_get_optimizer_slots(new_tiny_classifier):
    model = new_tiny_classifier(head={}, fitted_norms=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    snapshots = Snapshots()
    unfreezing = callbacks_lib.GradualUnfreezing({1: 1, 2: 2})
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[unfreezing, snapshots], verbose=0)

    names = [b.name for b in model.blocks]
    assert unfreezing.unfrozen_blocks == {0: [], 1: ["conv_dw_13"], 2: ["conv_dw_12", "conv_dw_13"]}
    first_epoch = {"conv_dw_13": 1, "conv_dw_12": 2}
    for name in names:
        for path in block_paths(model, name, "weights"):
            changed = [snapshots.changed(path, epoch) for epoch in range(3)]
            start = first_epoch.get(name, 3)
            assert changed == [epoch >= start for epoch in range(3)], (path, changed)
        # Frozen BatchNormalization runs in inference mode: moving statistics never move.
        for path in block_paths(model, name, "bn"):
            assert not any(snapshots.changed(path, epoch) for epoch in range(3)), path
    for variable in model.head.trainable_variables:
        assert snapshots.changed(variable.path, 0)

    optimizer = model.optimizer
    known = {id(v) for v in optimizer._trainable_variables}
    slots = {v.path: v for v in optimizer.variables}
    for name in ("conv_dw_12", "conv_dw_13"):
        for path in block_paths(model, name, "weights"):
            variable = next(v for v in model.variables if v.path == path)
            assert id(variable) in known
            momentum = slots[f"{optimizer.name}/{path.replace('/', '_')}_momentum"]
            assert np.any(momentum.numpy() != 0), path
    for path in block_paths(model, "conv_dw_11", "weights"):
        assert f"{optimizer.name}/{path.replace('/', '_')}_momentum" not in slots
    assert int(optimizer.iterations) == 6


@pytest.mark.tensorflow_only
def test_train_bn_trains_batchnorm_in_frozen_blocks_too(new_tiny_classifier):
    model = new_tiny_classifier(head={}, fitted_norms=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    snapshots = Snapshots()
    x, y = tiny_data()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        callbacks=[callbacks_lib.GradualUnfreezing({1: 1}, train_bn=True), snapshots],
        verbose=0,
    )
    assert all(snapshots.changed(p, 0) for p in block_paths(model, "conv_dw_5", "bn"))
    assert not any(snapshots.changed(p, 0) for p in block_paths(model, "conv_dw_5", "weights"))


@pytest.mark.tensorflow_only
def test_reloaded_model_with_built_optimizer_keeps_its_state(tmp_path, new_tiny_classifier):
    # A plain functional model reloads compiled, with its optimizer built on the
    # variables trainable when it was saved (the head only).
    model = new_tiny_classifier(head={}, fitted_norms=True, functional=True)
    freezing.freeze(model)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    loaded_optimizer = restored.optimizer
    assert loaded_optimizer.built and int(loaded_optimizer.iterations) == 2
    head_slots = {
        v.path: v.numpy().copy() for v in loaded_optimizer.variables if "top_dense" in v.path
    }
    assert head_slots

    captured = {}

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            optimizer = self.model.optimizer
            captured.update(
                {v.path: v.numpy().copy() for v in optimizer.variables if "top_dense" in v.path}
            )

    # Resumes at epoch 1: the top block was already due at epoch 0, the stem joins at 2.
    unfreezing = callbacks_lib.GradualUnfreezing({0: 1, 2: "all"})
    snapshots = Snapshots()
    restored.fit(
        x,
        y,
        batch_size=8,
        initial_epoch=1,
        epochs=3,
        callbacks=[unfreezing, Capture(), snapshots],
        verbose=0,
    )
    assert restored.optimizer is not loaded_optimizer  # rebuilt on the larger variable set
    assert captured.keys() == head_slots.keys()
    for path, value in head_slots.items():
        np.testing.assert_array_equal(captured[path], value)
    assert int(restored.optimizer.iterations) == 2 + 4
    assert unfreezing.unfrozen_blocks[1] == ["conv_dw_13"]
    top, stem = (
        block_paths(restored, "conv_dw_13", "weights"),
        block_paths(restored, "stem", "weights"),
    )
    # snapshots.changed(path, 0) is epoch 1 of this run, (path, 1) epoch 2.
    assert all(snapshots.changed(p, 0) for p in top)
    assert not any(snapshots.changed(p, 0) for p in stem)
    assert all(snapshots.changed(p, 1) for p in stem)
    assert freezing.trainable_blocks(restored) == [b.name for b in kt.get_blocks(restored)]


@pytest.mark.tensorflow_only
def test_reloaded_transfer_classifier(tmp_path, capsys, new_tiny_classifier):
    model = new_tiny_classifier(head={}, fitted_norms=True)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    restored.compile(optimizer=keras.optimizers.Adam(1e-2))
    snapshots = Snapshots()
    x, y = tiny_data(8)
    restored.fit(
        x,
        y,
        epochs=2,
        callbacks=[callbacks_lib.GradualUnfreezing({1: 1}, verbose=1), snapshots],
        verbose=0,
    )
    assert "GradualUnfreezing: epoch 2: 1 trainable backbone block(s): conv_dw_13" in (
        capsys.readouterr().out
    )
    top = block_paths(restored, "conv_dw_13", "weights")
    assert not any(snapshots.changed(p, 0) for p in top)
    assert all(snapshots.changed(p, 1) for p in top)


@pytest.mark.tensorflow_only
def test_works_with_jit_compile(new_tiny_classifier):
    model = new_tiny_classifier(head={}, fitted_norms=True)
    model.compile(optimizer=keras.optimizers.SGD(1e-2), jit_compile=True)
    snapshots = Snapshots()
    x, y = tiny_data(8)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        callbacks=[callbacks_lib.GradualUnfreezing({1: 1}), snapshots],
        verbose=0,
    )
    top = block_paths(model, "conv_dw_13", "weights")
    assert not any(snapshots.changed(p, 0) for p in top)
    assert all(snapshots.changed(p, 1) for p in top)


@pytest.mark.tensorflow_only
def test_weight_averaging_optimizer_writes_each_average_into_its_own_variable(new_tiny_classifier):
    # Keras writes `use_ema` averages back into `model.trainable_weights` by position at
    # the end of fit, so the optimizer's variable order must be the final trainable order.
    model = new_tiny_classifier(head={}, fitted_norms=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.5))
    x, y = tiny_data(8)
    model.fit(
        x,
        y,
        batch_size=4,
        epochs=3,
        callbacks=[callbacks_lib.GradualUnfreezing({1: 1, 2: 3})],
        verbose=0,
    )
    optimizer = model.optimizer
    assert [v.path for v in model.trainable_weights] == [
        v.path for v in optimizer._trainable_variables
    ]
    for variable, average in zip(
        optimizer._trainable_variables, optimizer._model_variables_moving_average
    ):
        np.testing.assert_array_equal(variable.numpy(), average.numpy())


@pytest.mark.tensorflow_only  # on JAX the constructor stops (test below)
def test_config_round_trip_and_flag_syntax():
    callback = callbacks_lib.GradualUnfreezing("3:1, 8:2, 12:all", train_bn=True)
    assert callback.schedule == {3: 1, 8: 2, 12: "all"}
    config = keras.saving.serialize_keras_object(callback)
    again = keras.saving.deserialize_keras_object(config)
    assert isinstance(again, callbacks_lib.GradualUnfreezing)
    assert again.schedule == callback.schedule and again.train_bn
    assert [again.state_at(e) for e in (0, 2, 3, 7, 8, 12, 30)] == [0, 0, 1, 1, 2, "all", "all"]
    assert callbacks_lib.parse_unfreeze_schedule("0:0.5,4:conv_dw_10") == {0: 0.5, 4: "conv_dw_10"}


@pytest.mark.tensorflow_only  # on JAX the constructor stops first (test below)
@pytest.mark.parametrize(
    "schedule, message",
    [({-1: 1}, "epochs must be integers"), ({1: True}, "unfreeze must be"), ({}, "non-empty")],
)
def test_bad_schedules_are_clear_errors(schedule, message):
    with pytest.raises(ValueError, match=message):
        callbacks_lib.GradualUnfreezing(schedule)


def test_bad_flag_syntax_is_a_clear_error():
    with pytest.raises(ValueError, match="epoch:blocks"):
        callbacks_lib.parse_unfreeze_schedule("3=1")


@pytest.mark.jax_only
@pytest.mark.parametrize("layerwise", [False, True], ids=["adam", "layerwise_adam"])
def test_gradual_unfreezing_stops_when_built_on_another_backend(new_tiny_classifier, layerwise):
    # Keras' JAX trainer pairs the optimizer's slots with the trainable variables of the
    # start of `fit`: a trainable set that grows between epochs needs TensorFlow's trainer.
    # The stop comes from the constructor, before any fit: with a per-layer learning-rate
    # optimizer, Keras' JAX trainer fails before any callback runs, with its own error.
    from keras_transfer.optimizers import layerwise as optimizers

    model = new_tiny_classifier(head={}, fitted_norms=True)
    kt.unfreeze(model, 2)  # the multipliers name the blocks a schedule would train
    multipliers = optimizers.layer_decay_multipliers(model, 0.5)
    freezing.freeze(model)
    optimizer = keras.optimizers.Adam(1e-2)
    if layerwise:
        optimizer = optimizers.with_layerwise_lr(
            keras.optimizers.Adam, multipliers, learning_rate=1e-2
        )
    model.compile(optimizer=optimizer)
    running = re.escape(repr(keras.backend.backend()))
    for schedule in ({1: 1}, "0:all", {2: "not_a_block"}):
        with pytest.raises(
            kt.BackendError, match=rf"^GradualUnfreezing.*TensorFlow.*{running}"
        ) as error:
            callbacks_lib.GradualUnfreezing(schedule)
        assert "\n" not in str(error.value) and "unfreeze once" in str(error.value)
    with pytest.raises(kt.BackendError, match="^GradualUnfreezing"):
        keras.saving.deserialize_keras_object(
            {
                "module": "keras_transfer.training.callbacks.unfreezing",
                "class_name": "GradualUnfreezing",
                "config": {"schedule": {"1": 1}, "train_bn": False, "verbose": 0},
                "registered_name": "keras_transfer>GradualUnfreezing",
            }
        )
    assert freezing.trainable_blocks(model) == []
    assert int(model.optimizer.iterations) == 0


@pytest.mark.tensorflow_only
def test_request_the_backbone_cannot_satisfy_fails_before_training(new_tiny_classifier):
    model = new_tiny_classifier(head={}, fitted_norms=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y = tiny_data(8)
    with pytest.raises(ValueError, match="has 14"):
        model.fit(x, y, epochs=1, callbacks=[callbacks_lib.GradualUnfreezing({1: 99})], verbose=0)


@pytest.mark.tensorflow_only
def test_newly_unfrozen_blocks_get_their_layerwise_multiplier(new_tiny_classifier):
    from keras_transfer.optimizers import layerwise as optimizers

    model = new_tiny_classifier(head={}, fitted_norms=True)
    kt.unfreeze(model, 2)  # the multipliers name every block the schedule will train
    multipliers = optimizers.layer_decay_multipliers(model, 0.5)
    top_pattern, next_pattern = sorted(multipliers, key=multipliers.get, reverse=True)
    # conv_dw_12 gets multiplier 0: unfrozen at epoch 2, it must still never move.
    multipliers = {top_pattern: multipliers[top_pattern], next_pattern: 0.0}
    freezing.freeze(model)
    optimizer = optimizers.with_layerwise_lr(keras.optimizers.Adam, multipliers, learning_rate=1e-2)
    model.compile(optimizer=optimizer)
    snapshots = Snapshots()
    x, y = tiny_data()
    unfreezing = callbacks_lib.GradualUnfreezing({1: 1, 2: 2})
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[unfreezing, snapshots], verbose=0)

    assert model.optimizer is optimizer  # built once, on every variable the schedule trains
    top = block_paths(model, "conv_dw_13", "weights")
    second = block_paths(model, "conv_dw_12", "weights")
    assert [any(snapshots.changed(p, e) for p in top) for e in range(3)] == [False, True, True]
    assert not any(snapshots.changed(p, e) for p in second for e in range(3))
    by_path = {v.path: v for v in model.variables}
    assert [optimizer.multiplier_of(by_path[p]) for p in top] == [0.5, 0.5]
    assert [optimizer.multiplier_of(by_path[p]) for p in second] == [0.0, 0.0]
    assert freezing.trainable_blocks(model) == ["conv_dw_12", "conv_dw_13"]


@pytest.mark.tensorflow_only
def test_rebuilt_layerwise_optimizer_keeps_multipliers_and_state(new_tiny_classifier):
    from keras_transfer.optimizers import layerwise as optimizers

    model = new_tiny_classifier(head={}, fitted_norms=True, functional=True)
    freezing.freeze(model)
    optimizer = optimizers.with_layerwise_lr(
        keras.optimizers.Adam, {"^(top_dense|conv_dw_13|conv_pw_13)/": 0.5}, learning_rate=1e-2
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    x, y = tiny_data(8)
    model.fit(x, y, epochs=1, verbose=0)  # builds the optimizer on the head only
    head_slots = {v.path: v.numpy().copy() for v in optimizer.variables if "top_dense" in v.path}

    captured = {}

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            for variable in self.model.optimizer.variables:
                if variable.path in head_slots:
                    captured[variable.path] = variable.numpy().copy()

    model.fit(
        x,
        y,
        initial_epoch=1,
        epochs=2,
        callbacks=[callbacks_lib.GradualUnfreezing({0: 1}), Capture()],
        verbose=0,
    )
    rebuilt = model.optimizer
    assert rebuilt is not optimizer and isinstance(rebuilt, optimizers.LayerwiseLearningRate)
    assert int(rebuilt.iterations) == 2
    by_path = {v.path: v for v in model.variables}
    top = block_paths(model, "conv_dw_13", "weights")
    assert [rebuilt.multiplier_of(by_path[p]) for p in top] == [0.5, 0.5]
    assert captured.keys() == head_slots.keys()  # the head's slots carried over
    for path, value in head_slots.items():
        np.testing.assert_array_equal(captured[path], value)


@pytest.mark.tensorflow_only
def test_fine_tuning_recipes_script_smoke():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "fine_tuning_recipes.py"
    spec = importlib.util.spec_from_file_location("fine_tuning_recipes", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = script.main(["--smoke"])
    for name in ("two_phase", "gradual", "two_phase_discriminative_cosine"):
        per_epoch = report[name]["val_accuracy_per_epoch"]
        assert len(per_epoch) == 2
        # The reported numbers are the run's: the last and the best epoch of its curve, each
        # a fraction of the 16 smoke validation images.
        assert report[name]["val_accuracy"] == per_epoch[-1]
        assert report[name]["best_val_accuracy"] == max(per_epoch)
        for accuracy in per_epoch:
            assert accuracy * 16 == pytest.approx(round(accuracy * 16), abs=1e-3), per_epoch
    assert report["head_lr_finder"]["steps"] > 0


class _ScriptedValLoss(keras.callbacks.Callback):
    """Replaces `val_loss` by scripted values, one per epoch (a list per `fit`)."""

    def __init__(self, *fits):
        super().__init__()
        self.fits, self.fit = [list(values) for values in fits], -1

    def on_train_begin(self, logs=None):
        self.fit += 1

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.fits[self.fit].pop(0)


def _dense_model(ema):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(
        optimizer=keras.optimizers.Adam(0.05, use_ema=ema, ema_momentum=0.8),
        loss="sparse_categorical_crossentropy",
    )
    return model


def _separable(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")


class _WeightsSeen(keras.callbacks.Callback):
    """The weights validation scored and the raw weights at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.validated, self.raw, self.epoch = [], [], 0

    def on_test_end(self, logs=None):
        self.validated.append(self.model.get_weights())

    def on_epoch_end(self, epoch, logs=None):
        self.raw.append(self.model.get_weights())


def test_validated_early_stopping_restores_the_averaged_weights_validation_scored():
    x, y = _separable()
    model = _dense_model(ema=True)
    seen = _WeightsSeen()
    stop = callbacks_lib.ValidatedEarlyStopping(patience=10, restore_best_weights=True)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=4,
        validation_data=_separable(32, seed=1),
        callbacks=[
            _ScriptedValLoss([0.5, 0.1, 0.3, 0.4]),
            seen,
            stop,
            keras.callbacks.SwapEMAWeights(),
        ],
        verbose=0,
    )
    assert stop.best_epoch == 1
    # The model ends with the averaged weights validation scored in epoch 2, not that
    # epoch's raw weights (which Keras' EarlyStopping would restore).
    for restored, validated in zip(model.get_weights(), seen.validated[1]):
        np.testing.assert_array_equal(restored, validated)
    assert any(not np.array_equal(a, b) for a, b in zip(seen.validated[1], seen.raw[1]))


def test_validated_early_stopping_carries_the_best_score_into_the_next_fit():
    x, y = _separable()
    validation = _separable(32, seed=1)
    model = _dense_model(ema=False)
    stop = callbacks_lib.ValidatedEarlyStopping(
        patience=2, restore_best_weights=True, carry_over=True
    )
    script = _ScriptedValLoss([0.5, 0.2, 0.3], [0.25, 0.3, 0.4, 0.1])
    model.fit(x, y, epochs=3, validation_data=validation, callbacks=[script, stop], verbose=0)
    after_first = [w.copy() for w in model.get_weights()]
    assert stop.best_epoch == 1 and stop.previous_best == pytest.approx(0.2)
    # The second fit never beats 0.2 within its patience: it stops after 2 epochs and
    # gives back the weights it started from (the first fit's best).
    history = model.fit(
        x, y, epochs=4, validation_data=validation, callbacks=[script, stop], verbose=0
    )
    assert len(history.epoch) == 2 and stop.best_epoch == -1
    for restored, kept in zip(model.get_weights(), after_first):
        np.testing.assert_array_equal(restored, kept)
