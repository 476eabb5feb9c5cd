"""Domain adaptation: the gradient reversal layer, the CORAL and MMD losses against NumPy,
DANN/CORAL/MMD training on a synthetic shifted task, the domain distance, bad input, and
MirroredStrategy on two logical CPUs (in a subprocess)."""

import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import load_benchmark
from conftest import make_tiny_classifier
from helpers import DOMAIN_SIZE as SIZE
from helpers import shifted_task
from helpers import two_conv_classifier as tiny_classifier

import keras_transfer as kt
from keras_transfer.adaptation import distance
from keras_transfer.adaptation import domain
from keras_transfer.adaptation import model as adaptation_model
from keras_transfer.adaptation import schedules

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def linear_classifier():
    """A per-pixel linear backbone (1x1 convolution): the features are a linear map of the
    mean colour, so the domain shift can be removed from them."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 1, name="conv_a")(x)
    backbone = keras.Model(inputs, x, name="linear_backbone")
    head = kt.ClassificationHead(2, dropout=0.0, name="head")
    return kt.TransferClassifier(backbone, head, name="linear")


def pooled(model, images):
    return adaptation_model.pooled_feature_model(model).predict(images, verbose=0)


# ---------------------------------------------------------------------------------------
# GradientReversal.


@pytest.mark.tensorflow_only
def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    layer = kt.layers.GradientReversal(factor=0.3)
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 5)).astype("float32"))
    upstream = tf.constant(np.random.default_rng(1).normal(size=(4, 5)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
        y_override = layer(x, factor=tf.constant(2.0))
        loss = tf.reduce_sum(y * upstream)
        loss_override = tf.reduce_sum(y_override * upstream)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), -0.3 * upstream.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        tape.gradient(loss_override, x).numpy(), -2.0 * upstream.numpy(), rtol=1e-6
    )
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, kt.layers.GradientReversal) and restored.factor == 0.3
    with pytest.raises(ValueError, match="factor must be a number >= 0"):
        kt.layers.GradientReversal(factor=-1.0)


@pytest.mark.jax_only
def test_gradient_reversal_reverses_the_jax_gradient():
    import jax

    layer = kt.layers.GradientReversal(factor=0.3)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    upstream = np.random.default_rng(1).normal(size=(4, 5)).astype("float32")
    y, backward = jax.vjp(layer, x)
    np.testing.assert_array_equal(np.array(y), x)
    np.testing.assert_allclose(np.array(backward(upstream)[0]), -0.3 * upstream, rtol=1e-6)
    _, backward = jax.vjp(lambda v: layer(v, factor=2.0), x)
    np.testing.assert_allclose(np.array(backward(upstream)[0]), -2.0 * upstream, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# CORAL and MMD against NumPy.


def numpy_coral(source, target):
    d = source.shape[1]
    difference = np.cov(source, rowvar=False) - np.cov(target, rowvar=False)
    return np.sum(difference**2) / (4 * d * d)


def numpy_mmd(source, target, multipliers=(0.125, 0.25, 0.5, 1.0, 2.0), bandwidth=None):
    z = np.concatenate([source, target]).astype("float64")
    distances = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    base = distances.mean() if bandwidth is None else bandwidth
    kernel = np.mean([np.exp(-distances / (2 * m * base)) for m in multipliers], axis=0)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def test_coral_and_mmd_match_numpy_and_are_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(20, 6)).astype("float32")
    target = (rng.normal(size=(30, 6)) * [1, 2, 1, 3, 1, 1] + 0.5).astype("float32")
    coral, mmd = kt.losses.CoralLoss(), kt.losses.MMDLoss()
    np.testing.assert_allclose(float(coral(source, target)), numpy_coral(source, target), rtol=1e-4)
    np.testing.assert_allclose(float(mmd(source, target)), numpy_mmd(source, target), rtol=1e-4)
    fixed = kt.losses.MMDLoss(kernel_multipliers=(1.0, 4.0), bandwidth=3.0)
    np.testing.assert_allclose(
        float(fixed(source, target)), numpy_mmd(source, target, (1.0, 4.0), 3.0), rtol=1e-4
    )
    assert float(coral(source, source)) == pytest.approx(0.0, abs=1e-7)
    assert float(mmd(source, source)) == pytest.approx(0.0, abs=1e-6)
    assert float(mmd(source, target)) > 0.05 and float(coral(source, target)) > 0.05
    restored = keras.losses.deserialize(keras.losses.serialize(fixed))
    assert restored.kernel_multipliers == (1.0, 4.0) and restored.bandwidth == 3.0


def test_alignment_losses_reject_feature_maps_and_mismatched_sizes():
    with pytest.raises(ValueError, match="Pool or flatten"):
        kt.losses.CoralLoss()(np.zeros((2, 3, 3, 4)), np.zeros((2, 3, 3, 4)))
    with pytest.raises(ValueError, match="differ in size"):
        kt.losses.MMDLoss()(np.zeros((2, 4)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="kernel_multipliers"):
        kt.losses.MMDLoss(kernel_multipliers=(1.0, -1.0))


def test_schedules_follow_the_paper():
    assert float(schedules.reversal_weight(0.0)) == pytest.approx(0.0)
    assert float(schedules.reversal_weight(0.5)) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    schedule = kt.DannLearningRate(0.01, total_steps=100)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(50)) == pytest.approx(0.01 / 6**0.75, rel=1e-5)
    assert float(schedule(500)) == pytest.approx(0.01 / 11**0.75, rel=1e-5)  # p clipped to 1
    assert kt.DannLearningRate.from_config(schedule.get_config()).total_steps == 100


# ---------------------------------------------------------------------------------------
# Training.


def _adapt(method, weight, epochs=4, make_model=tiny_classifier, **options):
    keras.utils.set_random_seed(0)
    source_x, labels, target_x = shifted_task()
    model = make_model()
    options.setdefault("domain_hidden_units", (16,))
    history = kt.fit_domain_adaptation(
        model,
        (source_x, labels),
        target_x,
        method=method,
        epochs=epochs,
        batch_size=16,
        optimizer=keras.optimizers.Adam(1e-2),
        alignment_weight=weight,
        weight_schedule="constant",
        verbose=0,
        **options,
    )
    return model, history, source_x, target_x


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("method", ["coral", "mmd"])
def test_coral_and_mmd_training_aligns_the_features(method):
    loss = kt.losses.CoralLoss() if method == "coral" else kt.losses.MMDLoss()
    weight = 1000.0 if method == "coral" else 1.0  # CORAL's 1 / (4 d^2) makes it tiny
    plain, plain_history, source_x, target_x = _adapt(method, 0.0)
    adapted, history, _, _ = _adapt(method, weight)
    before = float(loss(pooled(plain, source_x), pooled(plain, target_x)))
    after = float(loss(pooled(adapted, source_x), pooled(adapted, target_x)))
    # Same initial weights, data and steps: only the alignment term differs.
    assert after < 0.5 * before
    assert history.history["alignment_loss"][-1] < plain_history.history["alignment_loss"][-1]


@pytest.mark.tensorflow_only
def test_dann_makes_the_domains_harder_to_tell_apart():
    options = {"epochs": 8, "make_model": linear_classifier, "domain_dropout": 0.0}
    options["domain_hidden_units"] = (32,)
    plain, plain_history, source_x, target_x = _adapt("dann", 0.0, **options)
    adapted, history, _, _ = _adapt("dann", 1.0, **options)
    # Without reversal the domain classifier separates the domains and its loss falls;
    # with it the features fight back: its loss stays higher and the features closer.
    assert plain_history.history["domain_accuracy"][-1] > 0.9
    assert history.history["alignment_loss"][-1] > plain_history.history["alignment_loss"][-1] + 0.1
    mmd = kt.losses.MMDLoss()
    assert float(mmd(pooled(adapted, source_x), pooled(adapted, target_x))) < 0.8 * float(
        mmd(pooled(plain, source_x), pooled(plain, target_x))
    )
    # The classifier still learns the source task.
    assert history.history["accuracy"][-1] > 0.9


@pytest.mark.tensorflow_only
def test_returned_model_is_the_plain_classifier_and_saves(tmp_path):
    source_x, labels, target_x = shifted_task(n=32)
    model = tiny_classifier()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    weights_before = [w.numpy().copy() for w in model.weights]
    history = kt.fit_domain_adaptation(
        model,
        (source_x, labels),
        target_x,
        method="dann",
        epochs=2,
        batch_size=16,
        validation_data=(target_x, labels),
        domain_hidden_units=(8,),
        verbose=0,
    )
    assert set(history.history) == {
        "loss",
        "accuracy",
        "alignment_loss",
        "alignment_weight",
        "domain_accuracy",
        "val_loss",
        "val_accuracy",
    }
    # The reversal weight ramps up with lambda_p = 2 / (1 + exp(-10 p)) - 1.
    assert history.history["alignment_weight"][0] < history.history["alignment_weight"][1]
    assert len(model.weights) == len(weights_before)
    assert any(not np.array_equal(w.numpy(), b) for w, b in zip(model.weights, weights_before))
    assert not any("domain" in w.path or "reversal" in w.path for w in model.weights)
    path = tmp_path / "adapted.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is kt.TransferClassifier
    np.testing.assert_allclose(
        restored.predict(target_x, verbose=0), model.predict(target_x, verbose=0), atol=1e-6
    )


@pytest.mark.tensorflow_only
def test_domain_adaptation_model_config_round_trips():
    adapter = adaptation_model.DomainAdaptation(
        tiny_classifier(), "mmd", total_steps=5, alignment_weight=2.0
    )
    restored = adaptation_model.DomainAdaptation.from_config(adapter.get_config())
    assert (restored.method, restored.total_steps, restored.alignment_weight) == ("mmd", 5, 2.0)
    assert type(restored.classifier) is kt.TransferClassifier
    with pytest.raises(TypeError, match="needs a classifier from create_classifier"):
        adaptation_model.DomainAdaptation(keras.Sequential([keras.layers.Dense(2)]), "dann")


@pytest.mark.tensorflow_only
def test_target_labels_are_never_used():
    source_x, labels, target_x = shifted_task(n=32)

    def train(target):
        keras.utils.set_random_seed(0)
        model = tiny_classifier()
        kt.fit_domain_adaptation(
            model,
            tf.data.Dataset.from_tensor_slices((source_x, labels)).batch(16),
            target,
            method="mmd",
            epochs=1,
            optimizer=keras.optimizers.Adam(1e-2),
            verbose=0,
        )
        return [w.numpy() for w in model.weights]

    without_labels = train(tf.data.Dataset.from_tensor_slices(target_x).batch(16))
    garbage = np.full(len(target_x), np.nan, dtype="float32")
    with_nan_labels = train(tf.data.Dataset.from_tensor_slices((target_x, garbage)).batch(16))
    for a, b in zip(without_labels, with_nan_labels):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(w).all() for w in with_nan_labels)


@pytest.mark.tensorflow_only
def test_layerwise_lr_and_lr_annealing_are_honoured():
    source_x, labels, target_x = shifted_task(n=32)
    model = tiny_classifier()
    backbone_before = [w.numpy().copy() for w in model.backbone.weights]
    optimizer = kt.with_layerwise_lr(
        keras.optimizers.SGD, {"conv_": 0.0}, learning_rate=0.05, momentum=0.9
    )
    seen = {}

    class LearningRate(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            seen["lr"] = float(self.model.optimizer.learning_rate)

    kt.fit_domain_adaptation(
        model,
        (source_x, labels),
        target_x,
        method="coral",
        epochs=2,
        batch_size=16,
        optimizer=optimizer,
        lr_annealing=True,
        callbacks=[LearningRate()],
        verbose=0,
    )
    # A multiplier of 0 keeps the convolutions bit-identical.
    for w, b in zip(model.backbone.weights, backbone_before):
        np.testing.assert_array_equal(w.numpy(), b)
    # After all 4 steps p = 1: mu_0 / (1 + 10)^0.75.
    assert seen["lr"] == pytest.approx(0.05 / 11**0.75, rel=1e-5)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize(("train_bn", "trains"), [(False, False), (True, True)])
def test_adaptation_phase_trains_batchnorm_only_when_asked(train_bn, trains):
    source_x, labels, target_x = shifted_task(n=32)
    model = make_tiny_classifier()  # MobileNet: its blocks have BatchNormalization
    bn = next(layer for layer in model.backbone.layers if "_bn" in layer.name)
    before = np.array(bn.moving_mean)
    _, blocks = kt.domain.fit_adaptation_phase(
        model, (source_x, labels), target_x, "mcc", train_bn=train_bn, batch_size=16, verbose=0
    )
    assert blocks and bn.trainable is trains
    # Trained, its moving statistics followed the source and target batches together.
    assert (not np.allclose(np.array(bn.moving_mean), before)) is trains


# ---------------------------------------------------------------------------------------
# Bad input and documented behaviour.


def test_unequal_lengths_cycle_the_shorter_and_other_sizes_are_resized():
    source = tf.data.Dataset.from_tensor_slices(
        (np.arange(8, dtype="float32")[:, None, None, None] * np.ones((1, 8, 8, 3)), np.arange(8))
    ).batch(2)
    target = tf.data.Dataset.from_tensor_slices(
        100 + np.arange(4, dtype="float32")[:, None, None, None] * np.ones((1, 20, 20, 3))
    ).batch(2)
    paired, steps = domain.paired_batches(source, target, (8, 8, 3))
    assert steps == 4  # max(4 source batches, 2 target batches)
    batches = list(paired.take(steps).as_numpy_iterator())
    assert [b[0][1].shape for b in batches] == [(2, 8, 8, 3)] * 4  # 20x20 resized to 8x8
    target_firsts = [float(b[0][1][0, 0, 0, 0]) for b in batches]
    assert target_firsts == [100.0, 102.0, 100.0, 102.0]  # the target cycles
    assert [int(b[1][0]) for b in batches] == [0, 2, 4, 6]  # the source is seen once
    paired, steps = domain.paired_batches(
        target.map(lambda x: (x, x[:, 0, 0, 0])), source, (8, 8, 3)
    )
    assert steps == 4


@pytest.mark.tensorflow_only
def test_fit_on_other_image_sizes_and_more_target_batches():
    source_x, labels, target_x = shifted_task(n=16)
    bigger = tf.image.resize(np.concatenate([target_x] * 3), (24, 24)).numpy()
    counted = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            counted.append(batch)

    kt.fit_domain_adaptation(
        tiny_classifier(),
        (source_x, labels),
        bigger,
        method="coral",
        epochs=1,
        batch_size=8,
        callbacks=[Count()],
        verbose=0,
    )
    assert len(counted) == 6  # 48 target images / 8: the 2 source batches cycle


@pytest.mark.tensorflow_only
def test_bad_input_is_a_clear_error_and_changes_nothing():
    source_x, labels, target_x = shifted_task(n=16)
    model = tiny_classifier()
    weights = [w.numpy().copy() for w in model.weights]
    empty = tf.data.Dataset.from_tensor_slices(target_x[:0]).batch(4)
    with pytest.raises(ValueError, match="target dataset is empty"):
        kt.fit_domain_adaptation(model, (source_x, labels), empty, epochs=1)
    unknown_empty = tf.data.Dataset.from_tensor_slices(target_x).filter(lambda x: False).batch(4)
    with pytest.raises(ValueError, match="target dataset is empty"):
        kt.fit_domain_adaptation(model, (source_x, labels), unknown_empty, epochs=1)
    with pytest.raises(ValueError, match=r"source must yield \(images, labels\)"):
        kt.fit_domain_adaptation(
            model, tf.data.Dataset.from_tensor_slices(source_x).batch(4), target_x
        )
    with pytest.raises(ValueError, match="Batch the dataset"):
        kt.fit_domain_adaptation(
            model, (source_x, labels), tf.data.Dataset.from_tensor_slices(target_x)
        )
    with pytest.raises(ValueError, match="method must be one of"):
        kt.fit_domain_adaptation(model, (source_x, labels), target_x, method="adda")
    schedule_optimizer = keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)
    )
    with pytest.raises(ValueError, match="already has a schedule"):
        kt.fit_domain_adaptation(
            model, (source_x, labels), target_x, optimizer=schedule_optimizer, lr_annealing=True
        )
    for w, before in zip(model.weights, weights):
        np.testing.assert_array_equal(w.numpy(), before)

    plain = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    with pytest.raises(TypeError, match="needs a classifier from create_classifier"):
        kt.fit_domain_adaptation(plain, (source_x, labels), target_x)


@pytest.mark.jax_only
def test_domain_adaptation_stops_on_other_backends_before_any_work():
    source_x, labels, target_x = shifted_task(n=16)
    model = tiny_classifier()
    model.backbone.trainable = False
    weights = [np.array(w) for w in model.weights]
    expected = (
        r"^Domain adaptation .* needs the TensorFlow backend, but Keras runs on '\w+': .*adabn"
    )
    with pytest.raises(kt.BackendError, match=expected):
        kt.fit_domain_adaptation(model, (source_x, labels), target_x, method="coral")
    with pytest.raises(kt.BackendError, match=expected):
        kt.domain.fit_adaptation_phase(model, (source_x, labels), target_x, unfreeze="all")
    with pytest.raises(kt.BackendError, match=expected) as info:
        kt.DomainAdaptation(model, "dann")
    assert "\n" not in str(info.value)
    # Nothing was unfrozen or trained.
    assert not model.backbone.trainable
    for w, before in zip(model.weights, weights):
        np.testing.assert_array_equal(np.array(w), before)


# ---------------------------------------------------------------------------------------
# Domain distance and the recipe advisor.


def test_domain_distance_separates_shifted_from_identical_sets():
    source_x, _, target_x = shifted_task(n=96)
    model = tiny_classifier()
    same = kt.domain_distance(model, source_x, source_x)
    shifted = kt.domain_distance(model, source_x, (target_x, np.zeros(len(target_x))))
    assert same.proxy_a_distance < 0.5 and same.mmd == pytest.approx(0.0, abs=1e-5)
    assert shifted.proxy_a_distance > 1.5 and shifted.mmd > 0.01
    assert shifted.proxy_a_distance == pytest.approx(2 * (1 - 2 * shifted.domain_error))
    assert shifted.level == "far" and "far apart" in shifted.describe()
    assert same.num_examples == 96
    # A Backbone pools its own feature map.
    backbone = kt.Backbone(name="tiny", model=model.backbone, default_size=SIZE)
    assert kt.domain_distance(backbone, source_x, target_x).proxy_a_distance > 1.5
    sequence = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), keras.layers.Reshape((SIZE, SIZE * 3))]
    )
    with pytest.raises(ValueError, match=r"not \(batch, features\)"):
        kt.domain_distance(sequence, source_x, target_x)


def test_recommend_recipe_accepts_a_measured_distance():
    far = distance.DomainDistance(
        proxy_a_distance=1.8, domain_error=0.05, mmd=0.3, num_examples=500
    )
    recipe = kt.recommend_recipe(300, far)
    assert recipe.name == "lower_block_features"
    assert recipe.domain_adaptation == "dann"
    assert "proxy A-distance 1.80" in recipe.reason
    close = kt.recommend_recipe(300, proxy_a_distance=0.2)
    assert close.name == "feature_extraction" and close.domain_adaptation is None
    assert "proxy A-distance 0.20" in close.reason
    assert kt.recommend_recipe(300, "similar").domain_adaptation is None
    with pytest.raises(ValueError, match="not both"):
        kt.recommend_recipe(300, "similar", proxy_a_distance=0.2)
    with pytest.raises(ValueError, match=r"proxy_a_distance must be in \[0, 2\]"):
        kt.recommend_recipe(300, proxy_a_distance=3.0)


# ---------------------------------------------------------------------------------------
# MirroredStrategy.

_MIRRORED = textwrap.dedent(
    """
    import json, os, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    import keras, numpy as np
    import keras_transfer as kt
    from helpers import shifted_task, two_conv_classifier as tiny_classifier

    source_x, labels, target_x = shifted_task(n=32)

    def train(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = tiny_classifier()
        history = kt.fit_domain_adaptation(
            model, (source_x, labels), target_x, method="dann", epochs=2, batch_size=16,
            optimizer=keras.optimizers.SGD(0.05), domain_hidden_units=(8,), domain_dropout=0.0,
            validation_data=(target_x, labels), verbose=0,
        )
        return model, history.history

    single, single_logs = train(tf.distribute.get_strategy())
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored, mirrored_logs = train(strategy)
    difference = max(
        float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(single.weights, mirrored.weights)
    )
    print("RESULTS " + json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "max_weight_difference": difference,
        "single_loss": single_logs["loss"], "mirrored_loss": mirrored_logs["loss"],
        "mirrored_keys": sorted(mirrored_logs),
    }))
    """
)


@pytest.mark.tensorflow_only
def test_dann_under_mirrored_strategy_matches_one_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO_ROOT)
    env.pop("TF_CONFIG", None)
    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED, os.path.join(REPO_ROOT, "tests")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = [x for x in completed.stdout.splitlines() if x.startswith("RESULTS ")][-1]
    results = json.loads(line[len("RESULTS ") :])
    assert results["replicas"] == 2
    # The per-replica losses are scaled so that the summed gradients are the global batch's.
    assert results["max_weight_difference"] < 1e-4
    np.testing.assert_allclose(results["mirrored_loss"], results["single_loss"], rtol=1e-4)
    assert (
        "domain_accuracy" in results["mirrored_keys"] and "val_accuracy" in results["mirrored_keys"]
    )


def test_target_images_in_any_layout_labelled_only_under_training_class_folders(tmp_path):
    from conftest import write_image_folder

    # Class subfolders named like the training classes (one nested deeper): labelled.
    labelled = tmp_path / "labelled"
    write_image_folder(labelled, {"cats": 3, "dogs": 2}, size=(30, 40))
    write_image_folder(labelled / "dogs", {"more": 1}, seed=1)
    target = kt.data.target_image_dataset(labelled, ["cats", "dogs"], image_size=32, batch_size=4)
    assert target.num_images == 6
    images = np.concatenate(list(target.unshuffled.as_numpy_iterator()))
    assert images.shape == (6, 32, 32, 3)
    labels = np.concatenate([y for _, y in target.labelled.as_numpy_iterator()])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    # One fixed order that is not the class-by-class listing (AdaBN and SHOT batch it).
    assert labels.tolist() != [0, 0, 0, 1, 1, 1]
    again = np.concatenate([y for _, y in target.labelled.as_numpy_iterator()])
    np.testing.assert_array_equal(labels, again)
    shuffled = np.concatenate(list(target.images.as_numpy_iterator()))
    assert shuffled.shape == (6, 32, 32, 3)

    # Loose images, or folders that are not training classes: unlabeled, and why.
    loose = tmp_path / "loose"
    write_image_folder(loose, {"x": 2}, size=(30, 40))
    (loose / "x" / "x_0.jpg").rename(loose / "top.jpg")
    target = kt.data.target_image_dataset(loose, ["cats", "dogs"], image_size=32)
    assert target.labelled is None and "directly in the target folder" in target.labelled_reason
    target = kt.data.target_image_dataset(labelled, ["ants", "bees"], image_size=32)
    assert target.labelled is None and "are not training classes" in target.labelled_reason

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="No decodable images under the target folder"):
        kt.data.target_image_dataset(empty, ["cats", "dogs"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kt.data.target_image_dataset(tmp_path / "missing")


@pytest.mark.tensorflow_only
def test_coral_on_logits_aligns_the_heads_pre_activation_outputs():
    source_x, labels, target_x = shifted_task(n=32)
    keras.utils.set_random_seed(0)
    model = tiny_classifier()
    features = adaptation_model.pooled_feature_model(model)
    # The head's outputs are the softmax of its pre-activation values.
    logits = model.head.compute_logits(features(source_x)).numpy()
    np.testing.assert_allclose(
        model.predict(source_x, verbose=0), keras.ops.softmax(logits).numpy(), atol=1e-6
    )
    expected = float(
        kt.losses.CoralLoss()(logits, model.head.compute_logits(features(target_x)).numpy())
    )
    history = kt.fit_domain_adaptation(
        model,
        (source_x, labels),
        target_x,
        method="coral",
        epochs=1,
        batch_size=32,  # one step, from the weights the expected loss was computed with
        alignment_layer="logits",
        verbose=0,
    )
    assert history.history["alignment_loss"][0] == pytest.approx(expected, rel=1e-4)
    # DANN on logits: the domain classifier reads the 2 logits, and the option is saved.
    adapter = adaptation_model.DomainAdaptation(tiny_classifier(), "dann", alignment_layer="logits")
    assert adapter.domain_classifier.layers[1].kernel.shape[0] == 2  # on the 2 logits
    restored = adaptation_model.DomainAdaptation.from_config(adapter.get_config())
    assert restored.alignment_layer == "logits"


@pytest.mark.tensorflow_only
def test_coral_on_logits_training_lowers_the_logits_covariance_gap():
    def logits_gap(model, source_x, target_x):
        features = adaptation_model.pooled_feature_model(model)
        return float(
            kt.losses.CoralLoss()(
                model.head.compute_logits(features(source_x)),
                model.head.compute_logits(features(target_x)),
            )
        )

    plain, _, source_x, target_x = _adapt("coral", 0.0, alignment_layer="logits")
    adapted, _, _, _ = _adapt("coral", 1000.0, alignment_layer="logits")
    assert logits_gap(adapted, source_x, target_x) < 0.5 * logits_gap(plain, source_x, target_x)


@pytest.mark.tensorflow_only
def test_alignment_layer_is_checked():
    with pytest.raises(ValueError, match="alignment_layer must be one of"):
        adaptation_model.DomainAdaptation(tiny_classifier(), "coral", alignment_layer="pooled")
    backbone = tiny_classifier().backbone
    multi = kt.TransferClassifier(
        backbone, kt.MultiTaskHead({"a": {"num_classes": 2}, "b": {"num_classes": 3}})
    )
    with pytest.raises(ValueError, match="needs one ClassificationHead"):
        adaptation_model.DomainAdaptation(multi, "coral", alignment_layer="logits")


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_benchmark_smoke_writes_a_schema_file_chosen_on_target_validation(tmp_path, monkeypatch):
    """photo_shift --smoke: the cats-vs-dogs photos of ../shared (synthetic photos without
    it), a few images per class, two epochs per grid point, two seeds."""
    aligned = {}

    def recording(*args, method, alignment_layer, **kwargs):
        aligned[method] = alignment_layer
        return fit(*args, method=method, alignment_layer=alignment_layer, **kwargs)

    fit = kt.fit_domain_adaptation
    monkeypatch.setattr(kt, "fit_domain_adaptation", recording)
    output = tmp_path / "domain.json"
    arms = ["source_only", "dann", "coral", "best_on_target_val"]
    script = load_benchmark("domain_adaptation")
    common = sys.modules["_common"]
    record = script.main(
        ["--task", "photo_shift", "--smoke", "--arms", ",".join(arms), "--lr", "0.001"]
        + ["--image_size", "32", "--output", str(output)]
    )
    saved = json.loads(output.read_text())
    assert saved == json.loads(json.dumps(record))
    # Schema-valid except the seed minimum a smoke run does not meet.
    problems = common.validate_results(saved)
    assert problems and all("seed" in problem for problem in problems), problems
    assert saved["seeds"] == [0, 1] and saved["evaluated_on"] == "test"
    assert list(saved["arms"]) == arms
    for metrics in saved["arms"].values():
        assert set(metrics) == {"target_test_acc", "target_test_acc_source_val_rule"}
        assert all(len(m["per_seed"]) == 2 for m in metrics.values())
    selection = saved["selection"]
    assert selection["tuned_on"] == "target_validation"
    assert selection["grid"]["dann"] == [{"lr": 0.001, "weight": 1.0}]
    assert selection["checkpoints"] == [1, 2]
    splits = saved["splits"]
    assert splits["test"] > 0 and splits["target_validation"] > 0
    per_seed = saved["details"]["per_seed"]
    for s, seed in enumerate(per_seed):
        for arm in ("source_only", "dann", "coral"):
            chosen = seed[arm]["chosen_by_target_val"]
            (curve,) = seed[arm]["grid_curves"]
            # The kept checkpoint is the best target-validation one (the earlier on ties).
            best = max(curve["epoch_target_val_source_val"], key=lambda row: (row[1], -row[0]))
            assert (chosen["epoch"], chosen["acc"]) == (best[0], best[1])
            assert saved["arms"][arm]["target_test_acc"]["per_seed"][s] == chosen["test_acc"]
        winner = seed["best_on_target_val"]["chosen_by_target_val"]["method"]
        assert (
            saved["arms"]["best_on_target_val"]["target_test_acc"]["per_seed"][s]
            == (seed[winner]["chosen_by_target_val"]["test_acc"])
        )
    # Deep CORAL's layer for CORAL; DANN's domain classifier reads the pooled features.
    assert aligned == {"dann": "features", "coral": "logits"}


class _Chosen:
    """A stand-in for `CheckpointChooser` after training: fixed best checkpoints."""

    def __init__(self, target_val, source_val):
        self.curve = []
        self.best = {
            "target_val": {"acc": target_val[0], "epoch": target_val[1], "weights": target_val},
            "source_val": {"acc": source_val[0], "epoch": source_val[1], "weights": source_val},
        }


class _Model:
    def set_weights(self, weights):
        self.kept = weights


def test_benchmark_keeps_the_grid_point_and_epoch_best_on_target_validation(monkeypatch):
    script = load_benchmark("domain_adaptation")
    # (validation accuracy, epoch) per grid point; the test accuracy of each checkpoint.
    runs = {
        (0.1, 0.3): _Chosen((0.70, 3), (0.95, 1)),
        (0.1, 1.0): _Chosen((0.80, 2), (0.90, 2)),
        (1.0, 0.3): _Chosen((0.80, 1), (0.99, 4)),  # ties the best: the earlier point wins
        (1.0, 1.0): _Chosen((0.60, 5), (0.50, 5)),
    }
    test_acc = {(0.70, 3): 0.9, (0.80, 2): 0.55, (0.80, 1): 0.99, (0.60, 5): 0.95}
    test_acc.update({(0.95, 1): 0.1, (0.90, 2): 0.2, (0.99, 4): 0.3, (0.50, 5): 0.4})

    def train(task, arm, setting, data, args, seed, assets):
        return _Model(), runs[(setting["lr"], setting["weight"])]

    monkeypatch.setattr(script, "train_candidate", train)
    monkeypatch.setattr(script, "accuracy", lambda model, x, y: test_acc[model.kept])
    args = script.parse_args(["--lr", "0.1,1", "--dann_weight", "0.3,1"])
    record, model, source_weights = script.run_arm(
        "digits_m", "dann", {"test": (None, None)}, args, 0, None
    )
    assert source_weights == (0.99, 4)  # the source-validation choice, for source-free arms
    chosen = record["chosen_by_target_val"]
    assert (chosen["lr"], chosen["weight"], chosen["epoch"], chosen["acc"]) == (0.1, 1.0, 2, 0.8)
    assert chosen["test_acc"] == 0.55  # not the 0.99 or 0.95 of other points
    assert model.kept == (0.80, 2)  # the model leaves holding the target-validation choice
    by_source = record["chosen_by_source_val"]
    assert (by_source["lr"], by_source["weight"], by_source["epoch"]) == (1.0, 0.3, 4)
    assert by_source["test_acc"] == 0.3

    # The best method is the target-validation winner of the seed, whatever its test score.
    results = {
        "source_only": {"chosen_by_target_val": {"acc": 0.5, "test_acc": 0.9}},
        "dann": {"chosen_by_target_val": {"acc": 0.7, "test_acc": 0.6}},
        "coral": {"chosen_by_target_val": {"acc": 0.7, "test_acc": 0.8}},
    }
    best = script.best_method(results, ["source_only", "dann", "coral"], "target_val")
    assert best == {"method": "dann", "acc": 0.7, "test_acc": 0.6}


def test_benchmark_needs_two_methods_for_the_best_method_arm():
    script = load_benchmark("domain_adaptation")
    with pytest.raises(SystemExit):
        script.parse_args(["--arms", "dann,best_on_target_val"])
    args = script.parse_args(["--task", "photo_shift"])
    assert (args.seeds, args.lr, args.epochs) == (5, [1e-4, 1e-3], 3)


def test_benchmark_later_seeds_train_the_grid_points_the_first_seeds_chose():
    script = load_benchmark("domain_adaptation")

    def chosen(target, source):
        return {
            "chosen_by_target_val": {"lr": target[0], "weight": target[1]},
            "chosen_by_source_val": {"lr": source[0], "weight": source[1]},
        }

    first = [
        {"dann": chosen((1e-3, 1.0), (1e-4, 0.3)), "best_on_target_val": {}},
        {"dann": chosen((1e-4, 0.3), (1e-4, 0.3))},
    ]
    # (1e-4, 0.3): 1 + 2 + 1 votes; (1e-3, 1.0): 2.
    fixed = script.fixed_settings(first)
    assert fixed == {"dann": [{"lr": 1e-4, "weight": 0.3}]}
    args = script.parse_args(["--task", "photo_shift", "--grid_seeds", "1"])
    assert "seeds 0..0 only" in script.selection(args)["tuned"]


@pytest.mark.tensorflow_only
def test_mcc_training_lowers_the_target_class_confusion():
    loss = kt.MinimumClassConfusion()

    def confusion(model, target_x):
        logits = model.head.compute_logits(pooled(model, target_x))
        return float(loss(None, logits))

    plain, _, _, target_x = _adapt("mcc", 0.0)
    adapted, history, _, _ = _adapt("mcc", 1.0)
    # Same initial weights, data and steps: only the MCC term differs.
    assert confusion(adapted, target_x) < confusion(plain, target_x)
    assert history.history["alignment_loss"][-1] < history.history["alignment_loss"][0]
    adapter = kt.DomainAdaptation(tiny_classifier(), "mcc", mcc_temperature=2.0)
    restored = kt.DomainAdaptation.from_config(adapter.get_config())
    assert (restored.method, restored.mcc_temperature) == ("mcc", 2.0)


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_benchmark_source_free_arms_adapt_the_source_model_source_validation_chose(tmp_path):
    output = tmp_path / "domain.json"
    arms = ["source_only", "mcc", "adabn", "tent", "shot"]
    script = load_benchmark("domain_adaptation")
    script.main(
        ["--task", "photo_shift", "--smoke", "--arms", ",".join(arms), "--lr", "0.001"]
        + ["--image_size", "32", "--output", str(output)]
    )
    saved = json.loads(output.read_text())
    assert list(saved["arms"]) == arms
    assert set(saved["arms"]["mcc"]) == {"target_test_acc", "target_test_acc_source_val_rule"}
    for arm in ("adabn", "tent", "shot"):
        assert set(saved["arms"][arm]) == {"target_test_acc", "target_test_acc_declared_defaults"}
    assert set(saved["details"]["label_free_selection"]) == {
        "domain_adaptation_arms",
        "source_free_arms",
    }
    for seed in saved["details"]["per_seed"]:
        source = seed["source_only"]
        kept = source["chosen_by_source_val"]
        (curve,) = source["grid_curves"]
        start = next(
            row[1] for row in curve["epoch_target_val_source_val"] if row[0] == kept["epoch"]
        )
        for arm, declared_epoch, last in (("adabn", 1, 1), ("tent", 1, 3), ("shot", 5, 5)):
            record = seed[arm]
            # Checkpoint 0 is the source model source validation chose, before adapting.
            assert record["curve"][0] == [0, start]
            assert [row[0] for row in record["curve"]] == list(range(last + 1))
            assert record["declared"]["epoch"] == declared_epoch
            best = max(record["curve"], key=lambda row: (row[1], -row[0]))
            assert record["chosen_by_target_val"]["epoch"] == best[0]
    with pytest.raises(SystemExit):
        script.parse_args(["--task", "digits_m", "--arms", "source_only,tent"])
    with pytest.raises(SystemExit):
        script.parse_args(["--task", "photo_shift", "--arms", "dann,shot"])
