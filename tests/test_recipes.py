"""Tests of the recipe table, the from-scratch baseline, the negative-transfer warning,
and the accuracy benchmark's smoke path."""

import inspect
import json
import os
import pathlib
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_png_image
from conftest import colour_dataset
from conftest import make_tiny_classifier
from conftest import tiny_images

import keras_transfer as kt
from keras_transfer.diagnostics import recipes
from keras_transfer.diagnostics import scratch
from keras_transfer.training import callbacks

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "num, similarity, name",
    [
        (244, "similar", "feature_extraction"),
        (244, 0.9, "feature_extraction"),
        (244, "different", "lower_block_features"),
        (300, 0.1, "lower_block_features"),
        (50_000, "similar", "fine_tune_top"),
        (50_000, "different", "fine_tune_all"),
    ],
)
def test_table(num, similarity, name):
    recommended = recipes.recommend_recipe(num, similarity)
    assert recommended.name == name
    assert str(num) in recommended.reason and len(recommended.reason) > 80
    if name == "feature_extraction":
        assert recommended.fine_tune_epochs == 0 and recommended.feature_block is None
    if name == "lower_block_features":
        assert 0 < recommended.feature_block < 1
    if name == "fine_tune_top":
        assert recommended.fine_tune_epochs > 0 and recommended.unfreeze != "all"
        assert recommended.fine_tune_lr < recommended.head_lr
    if name == "fine_tune_all":
        assert recommended.unfreeze == "all" and recommended.train_bn


def test_threshold_is_a_setting():
    assert recipes.recommend_recipe(4000, "similar").name == "feature_extraction"
    assert recipes.recommend_recipe(4000, "similar", small_data_threshold=1000).name == (
        "fine_tune_top"
    )


def test_settings_plug_into_the_package():
    backbone = kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None, alpha=0.25)
    lower = recipes.recommend_recipe(100, "different", backbone=backbone)
    assert lower.feature_block in backbone.block_names()
    assert backbone.block_names().index(lower.feature_block) < len(backbone.blocks) - 1
    model = kt.create_classifier(backbone, 2, **lower.classifier_kwargs())
    assert model.backbone.output_shape[-1] < backbone.model.output_shape[-1]

    top = recipes.recommend_recipe(100_000, "similar")
    accepted = inspect.signature(kt.fit_two_phase).parameters
    assert set(top.fit_kwargs()) <= set(accepted)
    images = tiny_images(8)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(8) % 2)).batch(4)
    settings = {**top.fit_kwargs(), "head_epochs": 1, "fine_tune_epochs": 1}
    history = kt.fit_two_phase_cached(
        kt.create_classifier(backbone, 2), dataset, dataset, verbose=0, **settings
    )
    # unfreeze=1/3 of the blocks
    assert len(history.unfrozen_blocks) == round(len(backbone.blocks) / 3)


@pytest.mark.parametrize(
    "num, similarity, message",
    [
        (0, "similar", "positive integer"),
        (10.5, "similar", "positive integer"),
        (100, "close", "domain_similarity must be one of"),
        (100, 1.5, r"in \[0, 1\]"),
        (100, True, "domain_similarity must be one of"),
    ],
)
def test_bad_arguments(num, similarity, message):
    with pytest.raises(ValueError, match=message):
        recipes.recommend_recipe(num, similarity)


def test_fractional_block_needs_a_backbone():
    with pytest.raises(ValueError, match="backbone"):
        recipes.recommend_recipe(100, "different").classifier_kwargs()


def test_scratch_model_is_the_same_architecture_with_new_trainable_weights():
    model = make_tiny_classifier(head={})
    kt.freeze(model)
    before = [np.array(w).copy() for w in model.weights]
    baseline = scratch.scratch_model(model)
    assert [w.shape for w in baseline.weights] == [w.shape for w in model.weights]
    kernels = [(a, b) for a, b in zip(model.weights, baseline.weights) if "kernel" in a.path]
    assert kernels and not any(np.allclose(np.array(a), np.array(b)) for a, b in kernels)
    # Everything trains, BatchNorm included (it has no pretrained statistics to protect).
    assert len(baseline.trainable_weights) == len(
        [w for w in baseline.weights if "moving" not in w.path]
    )
    assert len(model.trainable_weights) == 2  # the original is untouched
    for old, now in zip(before, model.weights):
        np.testing.assert_array_equal(old, np.array(now))
    with pytest.raises(TypeError, match="clone_model"):
        scratch.scratch_model(keras.Sequential([keras.layers.Dense(1)]))


def test_scratch_model_sets_batchnorm_momentum():
    model = make_tiny_classifier(head={"batch_norm": True, "hidden_units": [8]})

    def momenta(m):
        return {
            layer.momentum
            for layer in m._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)
        }

    assert momenta(model) == {0.99}
    baseline = scratch.scratch_model(model)
    assert momenta(baseline) == {0.9}  # backbone and head
    assert momenta(model) == {0.99}  # the original is untouched
    # The backbone's setting survives a rebuild from the config (and so a .keras save); the
    # head rebuilds its BatchNormalization from its own arguments.
    assert momenta(type(baseline).from_config(baseline.get_config()).backbone) == {0.9}
    assert momenta(scratch.scratch_model(model, bn_momentum=None)) == {0.99}
    assert momenta(scratch.scratch_model(model, bn_momentum=0.5)) == {0.5}
    for bad in (1.0, -0.1, True, "0.9"):
        with pytest.raises(ValueError, match="bn_momentum must be a number in"):
            scratch.scratch_model(model, bn_momentum=bad)


@pytest.mark.parametrize("fixed", [True, False])
def test_scratch_baseline_predicts_in_inference_mode_after_a_short_run(fixed):
    # 4 steps x 6 epochs. Without the fix (Keras' momentum 0.99, no recalibration) the
    # moving statistics still hold 0.99**24 = 79% of their initial values: training
    # accuracy reaches ~1 while the inference-mode model predicts one class.
    keras.utils.set_random_seed(0)
    model = make_tiny_classifier(head={})
    train, validation = colour_dataset(64, seed=0), colour_dataset(64, seed=1)
    settings = {} if fixed else {"bn_momentum": None, "recalibrate_bn": False}
    baseline, history = scratch.fit_scratch_baseline(
        model, train, validation, epochs=6, learning_rate=1e-2, verbose=0, **settings
    )
    assert history.history["accuracy"][-1] > 0.9
    accuracy = baseline.evaluate(validation, verbose=0, return_dict=True)["accuracy"]
    if fixed:
        assert accuracy > 0.9
        assert history.history["val_accuracy"][-1] == pytest.approx(accuracy)
    else:
        assert accuracy == 0.5  # the failure the fix removes


def test_recalibrate_batchnorm_uses_batch_statistics_and_skips_frozen_layers():
    model = make_tiny_classifier(head={})
    images = tiny_images(8)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(8, "int32"))).batch(4)
    bn = model.backbone.get_layer("conv1_bn")
    kernel_before = [np.array(w).copy() for w in model.trainable_weights]
    assert callbacks.recalibrate_batchnorm(model, dataset, steps=1) == 1
    probe = keras.Model(model.backbone.inputs, bn.input)
    inputs = np.array(probe(model.preprocess_layer(images[:4]))).reshape(
        -1, bn.moving_mean.shape[0]
    )
    np.testing.assert_allclose(np.array(bn.moving_mean), inputs.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(bn.moving_variance), inputs.var(0), rtol=1e-3, atol=1e-6)
    assert bn.momentum == 0.99  # restored
    for before, after in zip(kernel_before, model.trainable_weights):
        np.testing.assert_array_equal(before, np.array(after))
    kt.freeze(model)
    frozen = np.array(bn.moving_mean).copy()
    assert callbacks.recalibrate_batchnorm(model, dataset) == 0
    np.testing.assert_array_equal(frozen, np.array(bn.moving_mean))


def test_fit_scratch_baseline_trains_for_the_budget():
    model = make_tiny_classifier(head={})
    images = tiny_images(8)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(8) % 2)).batch(4)
    baseline, history = scratch.fit_scratch_baseline(model, dataset, dataset, epochs=2, verbose=0)
    assert len(history.history["val_accuracy"]) == 2
    assert baseline is not model


def test_negative_transfer_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scratch.check_negative_transfer(0.95, 0.70) is False
    with pytest.warns(scratch.NegativeTransferWarning, match=r"0\.6000.*0\.7000"):
        assert scratch.check_negative_transfer(0.60, 0.70) is True
    with pytest.warns(scratch.NegativeTransferWarning):
        assert scratch.check_negative_transfer(0.71, 0.70, margin=0.02) is True
    # Losses: lower is better.
    assert scratch.check_negative_transfer(0.2, 0.5, higher_is_better=False) is False
    with pytest.warns(scratch.NegativeTransferWarning, match="val_loss"):
        scratch.check_negative_transfer(0.5, 0.2, metric="val_loss", higher_is_better=False)


@pytest.mark.slow
def test_accuracy_benchmark_smoke(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "accuracy.py"),
            "--smoke",
            f"--output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert set(result) == {
        "dataset",
        "feature_extraction_acc",
        "two_phase_acc",
        "scratch_acc",
        "seconds",
    }
    assert set(result["seconds"]) == {"feature_extraction", "two_phase", "scratch"}
    details = json.loads((tmp_path / "results.json").read_text())
    # Each accuracy is measured on the 16 validation images (a whole number of them) and is
    # the one results.json and results.md report.
    assert details["num_validation"] == 16
    table = (tmp_path / "results.md").read_text()
    for key in ("feature_extraction_acc", "two_phase_acc", "scratch_acc"):
        correct = result[key] * 16
        assert correct == pytest.approx(round(correct), abs=1e-6), (key, result[key])
        assert details[key] == result[key]
        assert f"| {key[: -len('_acc')]} | {result[key]:.4f} |" in table
    assert_png_image(tmp_path / "curves.png", min_size=(300, 200))
    settings = details["settings"]
    assert settings["deterministic"] is True
    assert settings["head_dropout"] == 0.5 and settings["fine_tune_lr"] == 5e-6


def test_size_scaled_plan_from_data_size_and_measured_logme():
    backbone = kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None)
    names = backbone.block_names()  # 14 blocks
    rising = {name: -1.0 + 0.05 * i for i, name in enumerate(names)}  # the last is best
    small = kt.size_scaled_plan(245, rising, backbone=backbone)
    assert (small.head_epochs, small.fine_tune_epochs, small.patience) == (100, 10, 3)
    assert (small.fine_tune_lr, small.unfreeze, small.train_bn) == (1e-5, 7, False)
    assert small.ema_momentum == 0.0  # as the suite measured it
    assert "the last block conv_dw_13" in small.reason and "top 7 of 14 blocks" in small.reason
    # A lower block scoring better: the top features are too specific, fine-tune everything.
    peaked = {**rising, "conv_dw_11": 0.5}
    medium = kt.size_scaled_plan(2000, peaked, backbone=backbone, cached_head=False)
    assert (medium.head_epochs, medium.fine_tune_lr, medium.unfreeze) == (20, 2e-5, "all")
    assert "below conv_dw_11" in medium.reason
    large = kt.size_scaled_plan(6000)
    assert (large.fine_tune_epochs, large.fine_tune_lr, large.unfreeze) == (20, 5e-5, 0.5)
    assert "assumed similar" in large.reason
    with pytest.raises(ValueError, match="positive integer"):
        kt.size_scaled_plan(0)


def test_the_command_plans_from_the_size_scaled_rules_with_plan_scaled():
    from keras_transfer.apps import image_config
    from keras_transfer.apps import image_plan

    backbone = kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None)
    logme = {name: -1.0 + 0.05 * i for i, name in enumerate(backbone.block_names())}

    class Data:
        num_train = 245

    config = image_config.Config(data_dir="x", model_dir="y", plan="scaled", fine_tune_epochs=3)
    planned, plan = image_plan.plan_training(config, backbone, Data(), {"logme": logme})
    expected = kt.size_scaled_plan(245, logme, backbone=backbone)
    assert (planned.head_epochs, planned.fine_tune_epochs) == (expected.head_epochs, 3)
    assert (planned.patience, planned.restore_best, planned.ema_momentum) == (3, True, 0.0)
    assert (plan["source"], plan["unfreeze_blocks"]) == ("scaled", "7")


def test_the_advisor_gives_the_suites_plan_for_every_size_and_quotes_the_measured_logme():
    backbone = kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None)
    names = backbone.block_names()  # 14 blocks
    rising = {name: -1.0 + 0.05 * i for i, name in enumerate(names)}  # the last is best
    small = kt.recommend_training_plan(245, rising, backbone=backbone)
    # One set of defaults everywhere: the advisor's plan is fit_two_phase's defaults.
    defaults = inspect.signature(kt.fit_two_phase).parameters
    for name, value in small.fit_kwargs().items():
        assert value == defaults[name].default, name
    assert (small.patience, small.ema_momentum) == (0, 0.5)
    assert kt.diagnostics.ADVISOR_RULE in small.reason
    # The reason spells the values the plan holds.
    assert "the head 20 epochs at 0.001, then every block 5 epochs at 2e-05" in small.reason
    assert "momentum 0.5 per epoch" in small.reason
    assert "best block conv_dw_13 (-0.350)" in small.reason and "not used" in small.reason
    large = kt.recommend_training_plan(6000)
    assert large.fit_kwargs() == small.fit_kwargs()  # the rule does not depend on the size
    assert "LogME" not in large.reason
    with pytest.raises(ValueError, match="positive integer"):
        kt.recommend_training_plan(0)
    with pytest.raises(ValueError, match="does not have"):
        kt.recommend_training_plan(245, {"block_99": 0.1}, backbone=backbone)


def test_the_advisor_rule_is_the_one_the_committed_defaults_suite_fitted_on_every_task():
    results = pathlib.Path(__file__).parents[1] / "benchmarks/results/defaults_suite.json"
    summary = json.loads(results.read_text())["details"]["summary"]
    assert kt.diagnostics.ADVISOR_RULE == summary["advisor_rule_all_tasks"]
