"""AdaBN (`kt.adapt_batchnorm`) and TENT (`kt.fit_tent`): adaptation of a trained model to
unlabeled target images, without the source data."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_tiny_classifier

import keras_transfer as kt


def _conv_bn_classifier():
    """Conv -> frozen BatchNormalization (source statistics) -> pooling -> softmax."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="top")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("bn").trainable = False
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _target(n=32, seed=1):
    # A shifted domain: brighter and lower-contrast than the source statistics (0, 1).
    images = np.random.default_rng(seed).normal(3.0, 0.5, (n, 8, 8, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((images, np.zeros(n, "int32"))).batch(8), images


def test_adapt_batchnorm_gives_frozen_layers_the_target_statistics():
    model = _conv_bn_classifier()
    bn = model.get_layer("bn")
    data, images = _target()
    conv_outputs = np.array(model.get_layer("conv")(images)).reshape(-1, 4)

    used = kt.adapt_batchnorm(model, data)

    assert used == 4
    np.testing.assert_allclose(np.array(bn.moving_mean), conv_outputs.mean(axis=0), rtol=1e-4)
    assert bn.trainable is False  # flags unchanged
    np.testing.assert_allclose(np.array(bn.gamma), np.ones(4))  # weights unchanged


def test_fit_tent_lowers_the_entropy_training_only_batchnorm_scales_and_offsets():
    model = _conv_bn_classifier()
    data, images = _target()
    before = {w.path: np.array(w).copy() for w in model.weights}
    entropy = kt.PredictionEntropy()

    start = float(entropy(np.zeros(len(images)), model.predict(images, verbose=0)))
    kt.fit_tent(model, data, epochs=20, learning_rate=5e-2, verbose=0)
    end = float(entropy(np.zeros(len(images)), model.predict(images, verbose=0)))

    assert end < start
    changed = {p for p, w in before.items() if not np.allclose(w, _value(model, p))}
    assert changed and all("bn/" in p for p in changed), changed
    # The model's flags and compiled loss are back as they were.
    assert model.get_layer("bn").trainable is False and model.get_layer("conv").trainable
    assert model.loss == "sparse_categorical_crossentropy"


def _value(model, path):
    return next(np.array(w) for w in model.weights if w.path == path)


def test_test_time_adaptation_needs_batchnorm():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    with pytest.raises(ValueError, match="no BatchNormalization layer"):
        kt.adapt_batchnorm(model, [np.zeros((2, 4), "float32")])


def test_prediction_entropy_of_probabilities_and_logits():
    probabilities = np.array([[0.5, 0.5], [1.0, 0.0]], "float32")
    # The zero probability is clipped to 1e-7 before the log: 1e-7 * ln(1e-7) ~ 2e-6 more.
    entropy = float(kt.PredictionEntropy()(np.zeros(2), probabilities))
    assert entropy == pytest.approx(np.log(2) / 2, abs=2e-6)
    logits = np.log(np.array([[0.25, 0.75]], "float32"))
    expected = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert float(kt.PredictionEntropy(from_logits=True)(np.zeros(1), logits)) == pytest.approx(
        expected
    )


# ---------------------------------------------------------------------------------------
# MCC and SHOT's losses, against NumPy versions of the papers' equations.


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def numpy_mcc(logits, temperature=2.5):
    """Jin et al. 2020, eq. 1-6: entropy-weighted class correlation, rows normalised."""
    p = _softmax(logits / temperature)
    entropy = -(p * np.log(p + 1e-7)).sum(axis=1)
    w = 1 + np.exp(-entropy)
    w = len(p) * w / w.sum()
    c = (p * w[:, None]).T @ p
    c = c / c.sum(axis=1, keepdims=True)
    return (c.sum() - np.trace(c)) / c.shape[0]


def test_minimum_class_confusion_matches_the_paper():
    logits = np.random.default_rng(0).normal(0, 3, (16, 4)).astype("float32")
    loss = kt.MinimumClassConfusion()
    assert float(loss(None, logits)) == pytest.approx(numpy_mcc(logits), rel=1e-4)
    # Uniform predictions confuse every class: (k - 1) / k; confident distinct ones hardly.
    assert float(loss(None, np.zeros((8, 4), "float32"))) == pytest.approx(0.75, rel=1e-5)
    confident = np.array([[9.0, 0.0], [0.0, 9.0]], "float32")
    assert float(loss(None, confident)) == pytest.approx(numpy_mcc(confident), rel=1e-4)
    assert float(loss(None, confident)) < 0.06
    # One sigmoid logit z is the two classes (0, z) of a softmax.
    z = logits[:, :1]
    two = np.concatenate([np.zeros_like(z), z], axis=1)
    assert float(loss(None, z)) == pytest.approx(numpy_mcc(two), rel=1e-4)
    # Probabilities in, the same value as their logits.
    probabilities = _softmax(logits)
    from_probabilities = kt.MinimumClassConfusion(from_logits=False)(None, probabilities)
    assert float(from_probabilities) == pytest.approx(numpy_mcc(logits), rel=1e-3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kt.MinimumClassConfusion(temperature=0)


def test_information_maximization_is_confidence_minus_diversity_plus_pseudo_labels():
    p = _softmax(np.random.default_rng(1).normal(0, 2, (10, 3))).astype("float32")
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], "int32")
    entropy = -(p * np.log(p)).sum(axis=1).mean()
    mean = p.mean(axis=0)
    diversity = -(mean * np.log(mean)).sum()
    cross_entropy = -np.log(p[np.arange(10), labels]).mean()
    loss = kt.InformationMaximization(pseudo_label_weight=0.3, diversity_weight=0.5)
    expected = entropy - 0.5 * diversity + 0.3 * cross_entropy
    assert float(loss(labels, p)) == pytest.approx(expected, rel=1e-4)
    plain = kt.InformationMaximization(pseudo_label_weight=0.0)
    assert float(plain(labels, p)) == pytest.approx(entropy - diversity, rel=1e-4)
    # A collapse onto one class is penalised by the diversity term, not rewarded.
    collapsed = np.tile([[0.98, 0.01, 0.01]], (10, 1)).astype("float32")
    spread = np.eye(3, dtype="float32")[labels] * 0.97 + 0.01
    assert float(plain(labels, spread)) < float(plain(labels, collapsed))


def test_shot_pseudo_labels_follow_the_feature_clusters_not_the_wrong_predictions():
    rng = np.random.default_rng(2)
    truth = np.repeat([0, 1, 2], 10)
    centres = np.eye(3) * 5.0
    features = centres[truth] + rng.normal(0, 0.3, (30, 3))
    probabilities = np.eye(3)[truth] * 0.5 + 0.5 / 3  # 2/3 on the predicted class
    # Four examples predicted wrongly (the source hypothesis errs on the target).
    for index, wrong in ((0, 1), (11, 2), (12, 0), (25, 0)):
        probabilities[index] = np.roll(probabilities[index], wrong - truth[index])
    assert (probabilities.argmax(1) != truth).sum() == 4
    labels = kt.shot_pseudo_labels(features, probabilities)
    np.testing.assert_array_equal(labels, truth)
    # A sigmoid unit's probability p is the two classes (1 - p, p).
    p = np.where(truth[:20] == 1, 0.6, 0.4)[:, None]
    p[3] = 0.55  # class 0, predicted 1
    np.testing.assert_array_equal(kt.shot_pseudo_labels(features[:20], p), truth[:20])


def _tiny_mobilenet():
    # Fitted BatchNormalization statistics: with fresh ones the random network's features
    # vanish and no backbone weight could move.
    keras.utils.set_random_seed(0)
    return make_tiny_classifier(fitted_norms=True)


def test_fit_shot_trains_the_backbone_with_the_head_fixed_and_restores_the_flags():
    model = _tiny_mobilenet()
    kt.freeze(model)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(3).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    target = tf.data.Dataset.from_tensor_slices((images, np.zeros(16, "int32"))).batch(8)
    head_before = [np.array(w).copy() for w in model.head.weights]
    kernels = [w for w in model.backbone.weights if w.path.endswith("kernel")]
    kernels_before = [np.array(w).copy() for w in kernels]
    bn_before = [np.array(w).copy() for w in model.backbone.weights if "moving" in w.path]

    history = kt.fit_shot(model, target, epochs=3, learning_rate=1e-3, train_bn=False, verbose=0)

    assert history.epoch == [0, 1, 2] and len(history.history["loss"]) == 3
    for before, after in zip(head_before, model.head.weights):
        np.testing.assert_array_equal(before, np.array(after))
    assert any(not np.allclose(b, np.array(w)) for b, w in zip(kernels_before, kernels))
    # BatchNormalization stayed frozen (train_bn=False): its statistics did not move.
    moving = [np.array(w) for w in model.backbone.weights if "moving" in w.path]
    assert all(np.array_equal(b, a) for b, a in zip(bn_before, moving))
    assert model.backbone.trainable is False  # the flags as they were
    assert model.loss == "sparse_categorical_crossentropy"


def test_fit_shot_with_train_bn_trains_batchnorm_and_ends_with_the_target_statistics():
    model = _tiny_mobilenet()
    kt.freeze(model)
    images = np.random.default_rng(4).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    target = tf.data.Dataset.from_tensor_slices(images).batch(8)
    norms = [n for n in model.backbone.layers if isinstance(n, keras.layers.BatchNormalization)]
    gammas_before = [np.array(layer.gamma).copy() for layer in norms]
    means_before = [np.array(layer.moving_mean).copy() for layer in norms]

    kt.fit_shot(model, target, epochs=2, learning_rate=1e-3, train_bn=True, verbose=0)

    # As SHOT's reference trains its feature network: the scales train too ...
    assert any(not np.allclose(b, np.array(n.gamma)) for b, n in zip(gammas_before, norms))
    # ... and the moving statistics are the adapted network's on the target images: a new
    # AdaBN pass on the same images leaves them where they are.
    adapted = [np.array(layer.moving_mean).copy() for layer in norms]
    assert any(not np.allclose(b, a) for b, a in zip(means_before, adapted))
    kt.adapt_batchnorm(model, target)
    for layer, mean in zip(norms, adapted):
        np.testing.assert_allclose(np.array(layer.moving_mean), mean, rtol=1e-4, atol=1e-5)
    assert all(layer.trainable is False for layer in norms)  # the flags as they were


def _top_classes(model, images):
    return kt.adaptation.test_time.class_probabilities(
        model, model.predict(images, verbose=0)
    ).argmax(1)


def test_fit_shot_min_unchanged_undoes_the_epoch_that_changes_too_many_predictions():
    images = np.random.default_rng(6).uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    target = tf.data.Dataset.from_tensor_slices(images).batch(8)

    # Without a limit that binds, every epoch is kept and each one's share is reported.
    model = _tiny_mobilenet()
    start = _top_classes(model, target)
    history = kt.fit_shot(model, target, epochs=2, learning_rate=0.05, min_unchanged=1e-9)
    shares = history.history["unchanged_top1"]
    assert history.kept_epochs == 2 and len(shares) == 2
    assert shares[-1] == pytest.approx(np.mean(_top_classes(model, target) == start))
    assert shares[0] < 1.0  # this rate changes top classes in the first epoch

    # The same first epoch with the limit above its share: undone, and SHOT stops there.
    model = _tiny_mobilenet()
    initial = [np.array(w).copy() for w in model.weights]
    history = kt.fit_shot(model, target, epochs=2, learning_rate=0.05, min_unchanged=1.0)
    assert history.kept_epochs == 0 and history.epoch == [0]
    assert history.history["unchanged_top1"] == pytest.approx(shares[:1])
    for before, after in zip(initial, model.weights):  # BatchNorm statistics included
        np.testing.assert_array_equal(before, np.array(after))
    with pytest.raises(ValueError, match="min_unchanged must be in"):
        kt.fit_shot(model, target, epochs=1, min_unchanged=1.5)


def _saturated_binary_classifier():
    """A linear backbone (pooled features = the image's constant channel values) and a
    frozen sigmoid head whose logit is `100 * f0 - 50`."""
    conv = keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Conv2D(3, 1, use_bias=False)], name="linear"
    )
    conv.layers[0].kernel.assign(np.eye(3, dtype="float32").reshape(1, 1, 3, 3))
    head = {"task": "binary", "dropout": 0.0}
    model = kt.create_classifier(kt.Backbone("linear", conv, 4), 2, head=head)
    model.head.output_dense.kernel.assign(np.array([[100.0], [0.0], [0.0]], "float32"))
    model.head.output_dense.bias.assign(np.array([-50.0], "float32"))
    return model


def test_fit_shot_trains_on_the_logits_so_a_saturated_prediction_follows_its_pseudo_label():
    # Three groups of images: two clusters the head separates (logits 50 and -50), and a
    # third predicted as class 1 (logit 20) whose features lie in class 0's cluster.
    values = np.array([[1.0, 0.1, 0.0]] * 8 + [[0.0, 1.0, 0.0]] * 8 + [[0.7, 3.0, 0.0]] * 4)
    images = np.broadcast_to(values[:, None, None, :], (20, 4, 4, 3)).astype("float32")
    target = tf.data.Dataset.from_tensor_slices(images).batch(8)
    model = _saturated_binary_classifier()
    probabilities = model.predict(target, verbose=0)
    # Every prediction lies beyond the 1e-7 clip of a loss on probabilities, where it has no
    # gradient; the third group's are exactly 1 in float32.
    assert np.all((probabilities <= 1e-7) | (probabilities >= 1 - 1e-7))
    assert probabilities[16:].min() == 1.0
    np.testing.assert_array_equal(kt.shot_pseudo_labels(values, probabilities)[16:], 0)
    kernel_before = np.array(model.backbone.weights[0]).copy()

    kt.fit_shot(model, target, epochs=1, learning_rate=1e-2, diversity_weight=0.0, verbose=0)

    assert not np.allclose(kernel_before, np.array(model.backbone.weights[0]))
    features = kt.adaptation.pooled_feature_model(model)(images[16:])
    logits = np.array(model.head.compute_logits(features))
    assert logits.max() < 20.0 - 1.0  # moved towards its pseudo-label, class 0


def test_fit_shot_on_a_backbone_without_batchnorm_trains_without_recalibrating():
    conv = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu")], name="plain"
    )
    model = kt.create_classifier(kt.Backbone("plain", conv, 8), 2, head={"dropout": 0.0})
    images = np.random.default_rng(5).normal(size=(16, 8, 8, 3)).astype("float32")
    kernel_before = np.array(model.backbone.weights[0]).copy()

    history = kt.fit_shot(
        model, tf.data.Dataset.from_tensor_slices(images).batch(8), epochs=1, train_bn=True
    )

    assert len(history.history["loss"]) == 1
    assert not np.allclose(kernel_before, np.array(model.backbone.weights[0]))


def test_shot_training_batches_shuffle_each_image_with_its_own_pseudo_label():
    # Image i is filled with i and its pseudo-label is i: a pair split by the shuffle shows.
    images = np.arange(40, dtype="float32")[:, None, None, None] * np.ones((1, 2, 2, 3), "float32")
    in_order = tf.data.Dataset.from_tensor_slices(images).batch(8)
    labels = np.arange(40, dtype="int32")

    batches = list(kt.shot_training_batches(in_order, labels, seed=0).as_numpy_iterator())

    assert [len(y) for _, y in batches] == [8] * 5  # batched as the images were
    seen = np.concatenate([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(40))  # every image once
    assert seen.tolist() != list(range(40))  # in another order (class-sorted batches mix)
    for x, y in batches:
        np.testing.assert_array_equal(x[:, 0, 0, 0], y)
    kept = list(kt.shot_training_batches(in_order, labels, 1).as_numpy_iterator())
    assert np.concatenate([y for _, y in kept]).tolist() == list(range(40))
    with pytest.raises(ValueError, match="shuffle_buffer must be a positive integer"):
        kt.shot_training_batches(in_order, labels, 0)


def test_fit_shot_refuses_a_target_that_reshuffles():
    model = _tiny_mobilenet()
    images = np.random.default_rng(4).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    shuffled = tf.data.Dataset.from_tensor_slices(images).shuffle(16, seed=1).batch(8)
    with pytest.raises(ValueError, match="other images on each pass"):
        kt.fit_shot(model, shuffled, epochs=1, verbose=0)
    with pytest.raises(TypeError, match="needs a classifier from create_classifier"):
        kt.fit_shot(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), shuffled)
