"""WiSE-FT interpolation, model soups and the per-epoch EMA momentum
(`keras_transfer.training.weight_averaging`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

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
    assert image_config.Config(data_dir="d", model_dir="m").ema_momentum == 0.0
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
