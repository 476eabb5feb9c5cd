"""WiSE-FT interpolation, model soups and the per-epoch EMA momentum
(`keras_transfer.training.weight_averaging`)."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import colour_dataset
from conftest import make_tiny_classifier

import keras_transfer as kt


def _linear_classifier(first_feature_weight: float) -> keras.Model:
    """Two features in, two classes out; class 1's logit minus class 0's is
    `2 * first_feature_weight * x0` (the second feature and the biases weigh nothing)."""
    inputs = keras.Input((2,))
    outputs = keras.layers.Dense(2, name="dense")(inputs)
    model = keras.Model(inputs, outputs)
    w = first_feature_weight
    model.get_layer("dense").set_weights([np.array([[-w, w], [0.0, 0.0]]), np.zeros(2)])
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model


def _sign_data(n=64):
    """Class 1 where x0 > 0; x0 never 0, half the points of each class."""
    x0 = np.concatenate([np.linspace(0.1, 2, n // 2), -np.linspace(0.1, 2, n // 2)])
    x = np.stack([x0, np.random.default_rng(0).normal(size=n)], axis=1).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, (x0 > 0).astype("int32"))).batch(16)


def test_interpolate_weights_gives_the_weighted_sum_of_every_weight(new_tiny_classifier):
    start = new_tiny_classifier(fitted_norms=True)
    end = new_tiny_classifier(fitted_norms=True)
    end.set_weights([w + np.float32(1.0) for w in end.get_weights()])
    expected = [0.75 * s + 0.25 * e for s, e in zip(start.get_weights(), end.get_weights())]

    returned = kt.interpolate_weights(end, start, 0.25)

    assert returned is end
    for got, want in zip(end.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_interpolate_weights_at_alpha_0_and_1_gives_start_and_end():
    start, model = _linear_classifier(1.0), _linear_classifier(-3.0)
    fine_tuned = model.get_weights()

    kt.interpolate_weights(model, start, 0.0, end=fine_tuned)
    np.testing.assert_array_equal(model.get_weights()[0], start.get_weights()[0])
    kt.interpolate_weights(model, start, 1.0, end=fine_tuned)
    np.testing.assert_array_equal(model.get_weights()[0], fine_tuned[0])


def test_interpolate_weights_reads_a_weights_file_and_keeps_the_model_otherwise(tmp_path):
    start, model = _linear_classifier(1.0), _linear_classifier(3.0)
    path = str(tmp_path / "head.weights.h5")
    start.save_weights(path)

    kt.interpolate_weights(model, path, 0.5)

    np.testing.assert_allclose(model.get_layer("dense").kernel.numpy()[0], [-2.0, 2.0])


def test_interpolate_weights_refuses_another_architecture_naming_the_weight():
    model = _linear_classifier(1.0)
    inputs = keras.Input((2,))
    other = keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))

    with pytest.raises(ValueError, match=r"dense/kernel.*shape \(2, 3\).*one architecture"):
        kt.interpolate_weights(model, other, 0.5)
    with pytest.raises(ValueError, match="alpha must lie in"):
        kt.interpolate_weights(model, model, 1.5)


def test_wise_ft_keeps_the_largest_alpha_of_the_best_validation_accuracy():
    # Start: logit gap +4 x0 (right); fine-tuned: -2 x0 (wrong). Their mix is right while
    # 4 (1 - a) - 2 a > 0, i.e. for alpha < 2/3: 0.0 .. 0.6 all score 1.0, the rest 0.0.
    start, model = _linear_classifier(2.0), _linear_classifier(-1.0)
    data = _sign_data()

    result = kt.wise_ft(model, start, data)

    assert result.alpha == pytest.approx(0.6)
    assert result.scores[0.6] == 1.0 and result.scores[0.7] == 0.0
    assert model.evaluate(data, verbose=0, return_dict=True)["accuracy"] == 1.0


def test_greedy_soup_leaves_out_the_run_that_lowers_validation_accuracy():
    # Gaps of x0: a +2, b +4 (both right), c -6 (wrong): the uniform soup's gap is 0 (every
    # image goes to class 0: accuracy 0.5); the greedy one keeps a and b.
    runs = [_linear_classifier(1.0), _linear_classifier(2.0), _linear_classifier(-3.0)]
    data = _sign_data()

    greedy = kt.soup(runs, data, method="greedy")
    uniform = kt.soup(runs, data, method="uniform")

    assert greedy.soup_ingredients == [0, 1]
    assert greedy.soup_score == 1.0
    np.testing.assert_allclose(greedy.get_layer("dense").kernel.numpy()[0], [-1.5, 1.5])
    assert uniform.soup_ingredients == [0, 1, 2]
    assert uniform.soup_score == 0.5
    assert greedy.soup_scores == [1.0, 1.0, 0.0]
    # The runs themselves are untouched: the soup is a clone.
    np.testing.assert_allclose(runs[2].get_layer("dense").kernel.numpy()[0], [3.0, -3.0])


def test_soup_of_transfer_classifiers_is_a_compiled_transfer_classifier(new_tiny_classifier):
    runs = [new_tiny_classifier(fitted_norms=True) for _ in range(2)]
    for run in runs:
        run.compile()
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((images, np.arange(8) % 2)).batch(4)

    souped = kt.soup(runs, data, method="uniform")

    assert isinstance(souped, kt.TransferClassifier)
    assert souped is not runs[0]
    mean = [(a + b) / 2 for a, b in zip(runs[0].get_weights(), runs[1].get_weights())]
    for got, want in zip(souped.get_weights(), mean):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "accuracy" in souped.evaluate(data, verbose=0, return_dict=True)


def test_soup_and_wise_ft_name_a_metric_the_model_does_not_report():
    runs = [_linear_classifier(1.0), _linear_classifier(2.0)]
    with pytest.raises(ValueError, match="returned no 'auc'"):
        kt.soup(runs, _sign_data(), metric="auc")
    with pytest.raises(ValueError, match="'uniform' or 'greedy'"):
        kt.soup(runs, _sign_data(), method="best")


def test_ema_momentum_per_step_decays_by_the_epoch_momentum_over_an_epoch():
    for steps in (1, 7, 63):
        per_step = kt.ema_momentum_per_step(0.5, steps)
        assert per_step**steps == pytest.approx(0.5)
    assert kt.ema_momentum_per_step(0.0, 10) == 0.0
    with pytest.raises(ValueError, match="steps_per_epoch"):
        kt.ema_momentum_per_step(0.5, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        kt.ema_momentum_per_step(1.0, 5)


def test_the_command_states_its_ema_momentum_per_epoch():
    from keras_transfer.apps import image_config
    from keras_transfer.apps import image_training

    config = image_config.Config(data_dir="d", model_dir="m", ema_momentum=0.5)
    small, large = (image_training.ema_arguments(config, steps) for steps in (6, 63))
    assert small["use_ema"] and large["use_ema"]
    assert small["ema_momentum"] ** 6 == pytest.approx(0.5)
    assert large["ema_momentum"] ** 63 == pytest.approx(0.5)
    # Unset, the plan fills it in: fit_two_phase's default, 0.5 per epoch.
    assert image_config.Config(data_dir="d", model_dir="m").ema_momentum is None
    default = inspect.signature(kt.fit_two_phase).parameters["ema_momentum"].default
    assert image_config.FIXED_DEFAULTS["ema_momentum"] == default == 0.5
    off = image_config.Config(data_dir="d", model_dir="m", ema_momentum=0.0)
    assert image_training.ema_arguments(off, 6) == {"use_ema": False}


def test_the_command_keeps_the_wise_ft_alpha_with_the_best_validation_accuracy(
    image_folder, tmp_path, tiny_run_config
):
    from keras_transfer.apps import image_classifier as image_classifier_lib

    root = image_folder({"a": 8, "b": 8})
    config = tiny_run_config(
        root, tmp_path / "out", head_epochs=2, fine_tune_epochs=2, fine_tune_lr=1e-2, wise_ft=True
    )

    results = image_classifier_lib.run(config)

    wise = results["wise_ft"]
    scores = {float(a): v for a, v in wise["val_accuracy_by_alpha"].items()}
    assert sorted(scores) == pytest.approx([i / 10 for i in range(11)])
    best = max(scores.values())
    assert wise["alpha"] == max(a for a, v in scores.items() if v == best)
    # The saved model is the chosen interpolation: its validation accuracy is that alpha's.
    assert results["saved_model_val_accuracy"] == pytest.approx(best, abs=1e-6)


def test_the_command_refuses_wise_ft_without_the_head_phase_backup(tmp_path):
    from keras_transfer.apps import image_config
    from keras_transfer.apps.config import ConfigError

    for bad in (dict(resume=False), dict(fine_tune="lora"), dict(freeze_strategy="none")):
        with pytest.raises(ConfigError, match="wise_ft interpolates"):
            image_config.Config(data_dir="d", model_dir="m", wise_ft=True, **bad)


def test_with_ema_copies_the_optimizer_with_its_average_at_the_per_epoch_momentum():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5)
    adam = keras.optimizers.AdamW(schedule, weight_decay=0.01)
    averaged = kt.with_ema(adam, 0.5, steps_per_epoch=10)
    assert type(averaged) is keras.optimizers.AdamW and averaged.use_ema
    assert averaged.ema_momentum**10 == pytest.approx(0.5)
    assert averaged.weight_decay == 0.01
    assert averaged.get_config()["learning_rate"] == adam.get_config()["learning_rate"]
    assert kt.with_ema(adam, 0.0, steps_per_epoch=10) is adam  # 0: off
    adam.build([keras.Variable(np.zeros(2))])
    with pytest.raises(ValueError, match="not been built"):
        kt.with_ema(adam, 0.5, steps_per_epoch=10)


class _OptimizerWatch(keras.callbacks.Callback):
    """Records, per fit, the input rank of the trained model (2: cached features) and its
    optimizer's EMA settings."""

    def __init__(self):
        super().__init__()
        self.fits = []

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        self.fits.append(
            (len(self.model.input_shape), optimizer.use_ema, float(optimizer.ema_momentum))
        )


def test_fit_two_phase_validates_and_keeps_an_ema_stated_per_epoch(new_tiny_classifier):
    model = new_tiny_classifier(fitted_norms=True)
    train, validation = colour_dataset(40, seed=0, batch_size=8), colour_dataset(16, seed=1)
    watch = _OptimizerWatch()
    history = kt.fit_two_phase(
        model,
        train,
        validation,
        head_epochs=2,
        fine_tune_epochs=2,
        head_lr=1e-2,
        fine_tune_lr=1e-3,
        callbacks=[watch],
        verbose=0,
    )  # the default ema_momentum: 0.5 per epoch of 5 batches
    assert [(rank, on) for rank, on, _ in watch.fits] == [(4, True), (4, True)]
    assert all(momentum**5 == pytest.approx(0.5) for _, _, momentum in watch.fits)
    # Validation scored the averaged weights, and the model ends with them: evaluating it
    # gives the last epoch's validation loss (the raw weights of the last step differ).
    assert model.evaluate(validation, verbose=0, return_dict=True)["loss"] == pytest.approx(
        history.history["val_loss"][-1], rel=1e-5
    )


def test_a_cached_head_phase_states_its_ema_over_the_cached_batches(new_tiny_classifier):
    model = new_tiny_classifier(fitted_norms=True)
    watch = _OptimizerWatch()
    kt.fit_two_phase(
        model,
        colour_dataset(40, seed=0, batch_size=8),  # 5 batches of images
        head_features=kt.FeatureCache(batch_size=4),  # 10 batches of cached features
        head_epochs=1,
        fine_tune_epochs=1,
        callbacks=[watch],
        verbose=0,
    )
    (head_rank, head_on, head_momentum), (image_rank, image_on, image_momentum) = watch.fits
    assert (head_rank, head_on, image_rank, image_on) == (2, True, 4, True)
    assert head_momentum**10 == pytest.approx(0.5)
    assert image_momentum**5 == pytest.approx(0.5)


def test_fit_two_phase_turns_its_ema_off_with_a_warning_when_an_epoch_has_no_known_length(
    tiny_classifier, caplog
):
    unknown = colour_dataset(16, seed=0, batch_size=8).filter(lambda images, labels: True)
    watch = _OptimizerWatch()
    with caplog.at_level("WARNING", logger="keras_transfer"):
        kt.fit_two_phase(
            tiny_classifier, unknown, head_epochs=1, fine_tune_epochs=0, callbacks=[watch]
        )
    assert "ema_momentum=0.5 is off" in caplog.text and "steps_per_epoch" in caplog.text
    assert watch.fits[0][1] is False
    watch = _OptimizerWatch()  # with the epoch's length given, it is on
    kt.fit_two_phase(
        make_tiny_classifier(),
        unknown.repeat(),
        head_epochs=1,
        fine_tune_epochs=0,
        steps_per_epoch=2,
        callbacks=[watch],
        verbose=0,
    )
    assert watch.fits[0][1] is True and watch.fits[0][2] ** 2 == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        kt.fit_two_phase(make_tiny_classifier(), unknown, ema_momentum=1.0)
