"""Tests of cached feature extraction: exactness of the re-attached model, memory vs disk
caching, augmented passes, two-phase with a cached phase 1, bad input, and the
feature_cache benchmark's smoke path."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_images

import keras_transfer as kt
from keras_transfer.data import folders as data_lib
from keras_transfer.training import extraction
from keras_transfer.training import features

SIZE = 32
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_backbone():
    backbone = kt.create_backbone(
        "mobilenet", input_shape=(SIZE, SIZE, 3), weights=None, alpha=0.25
    )
    perturb_batchnorm(backbone)
    return backbone


def image_batches(n=20, batch_size=8, num_classes=3, seed=0):
    images = tiny_images(n, SIZE, seed)
    labels = (np.arange(n) % num_classes).astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return images, labels, dataset


def perturb_batchnorm(backbone):
    """Non-trivial moving statistics, so that a BN run in training mode would differ. Small
    variances also keep the activations of a randomly initialised MobileNet from vanishing
    (with the default statistics its features are ~1e-17)."""
    rng = np.random.default_rng(1)
    for layer in backbone.model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.02, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.03, 0.08, layer.moving_variance.shape))


@pytest.mark.parametrize("pooling", ["avg", "max", "avgmax", "flatten"])
def test_reattached_model_predicts_head_of_cached_features(pooling):
    images, labels, dataset = image_batches()
    backbone = tiny_backbone()
    start = {}
    # The callback sees the head's model at the start of its fit: its initial weights.
    record_start = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: start.update(weights=record_start.model.get_weights())
    )
    result = features.fit_feature_extractor(
        backbone,
        dataset,
        dataset,
        num_classes=3,
        head={"pooling": pooling},
        epochs=3,
        callbacks=[record_start],
        verbose=0,
    )
    model = result.model
    assert isinstance(model, kt.TransferClassifier)
    assert result.train_features.features.shape[0] == 20
    assert result.train_features.features.ndim == 2  # pooled vectors are cached
    np.testing.assert_array_equal(result.train_features.labels, labels)
    from_images = model.predict(images, verbose=0)
    from_features = np.array(model.head(result.train_features.features, training=False))
    np.testing.assert_allclose(from_images, from_features, atol=1e-5)
    # The head was trained: its weights moved from their initial values and its loss on
    # the cached training features fell; the backbone stayed frozen.
    assert len(result.history.history["loss"]) == 3
    trained = model.head.get_weights()
    assert len(trained) == len(start["weights"])
    assert all(not np.allclose(a, b) for a, b in zip(trained, start["weights"]))
    cached = np.asarray(result.train_features.features)
    loss = keras.losses.SparseCategoricalCrossentropy()
    loss_after = float(loss(labels, model.head(cached, training=False)))
    model.head.set_weights(start["weights"])
    loss_before = float(loss(labels, model.head(cached, training=False)))
    model.head.set_weights(trained)
    assert loss_after < loss_before, (loss_before, loss_after)
    assert not model.backbone.trainable
    evaluated = model.evaluate(dataset, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        evaluated["accuracy"], result.history.history["val_accuracy"][-1], atol=1e-6
    )


def test_preprocessing_is_applied_before_the_backbone():
    images, _, _ = image_batches(4)
    backbone = tiny_backbone()
    assert backbone.preprocessing == "tf"
    extractor = extraction.feature_extractor(backbone)
    expected = keras.ops.mean(backbone.model(images / 127.5 - 1.0, training=False), axis=(1, 2))
    np.testing.assert_allclose(extractor.predict(images, verbose=0), expected, atol=1e-5)


def test_head_learns_on_cached_features():
    rng = np.random.default_rng(0)
    labels = (np.arange(48) % 2).astype("int32")
    images = rng.uniform(0, 60, (48, SIZE, SIZE, 3)).astype("float32")
    images[labels == 1, ..., 0] += 190  # class 1 is red
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    # A one-conv backbone: any `Backbone` works, and its features keep the colour.
    inputs = keras.Input((SIZE, SIZE, 3))
    conv = keras.Model(inputs, keras.layers.Conv2D(8, 3, activation="relu")(inputs))
    backbone = kt.Backbone("conv", conv, SIZE, preprocessing="unit")
    result = features.fit_feature_extractor(
        backbone,
        dataset,
        dataset,
        num_classes=2,
        epochs=30,
        learning_rate=5e-2,
        verbose=0,
        head={"dropout": 0.0},
    )
    losses = result.history.history["loss"]
    assert losses[-1] < 0.7 * losses[0]
    assert result.history.history["val_accuracy"][-1] > 0.9


def test_features_spill_to_disk_past_the_memory_budget(tmp_path):
    images, labels, dataset = image_batches(20)
    extractor = extraction.feature_extractor(tiny_backbone())
    in_memory = extraction.extract_features(extractor, dataset, verbose=0)
    assert not in_memory.on_disk
    on_disk = extraction.extract_features(
        extractor, dataset, cache_dir=tmp_path / "cache", max_memory_bytes=1000, verbose=0
    )
    assert on_disk.on_disk and isinstance(on_disk.features, np.memmap)
    # Each extraction has its own folder inside cache_dir.
    assert os.path.dirname(on_disk.path) == str(tmp_path / "cache")
    assert os.path.getsize(os.path.join(on_disk.path, "features.f32")) == 20 * 256 * 4
    np.testing.assert_allclose(on_disk.features, in_memory.features, atol=1e-6)
    np.testing.assert_array_equal(on_disk.labels, labels)
    # Read back shuffled: every row once, features still paired with their labels.
    rows = {}
    for x, y in on_disk.as_dataset(6, shuffle=True, seed=0):
        assert x.shape[1:] == (256,)
        for row, label in zip(np.array(x), np.array(y)):
            index = int(np.argmin(np.abs(in_memory.features - row).sum(axis=1)))
            rows[index] = label
    assert sorted(rows) == list(range(20))
    assert all(rows[i] == labels[i] for i in rows)


def test_training_from_a_disk_cache(tmp_path):
    images, _, dataset = image_batches(16)
    result = features.fit_feature_extractor(
        tiny_backbone(),
        dataset,
        dataset,
        num_classes=3,
        epochs=2,
        verbose=0,
        cache_dir=tmp_path,
        max_memory_bytes=100,
    )
    assert result.train_features.on_disk and result.validation_features.on_disk
    for split, cached in (
        ("train", result.train_features),
        ("validation", result.validation_features),
    ):
        assert os.path.dirname(cached.path) == str(tmp_path / split)
        assert os.path.isfile(os.path.join(cached.path, "features.f32"))
    assert np.all(np.isfinite(result.history.history["loss"]))
    np.testing.assert_allclose(
        result.model.predict(images, verbose=0),
        np.array(result.model.head(np.array(result.train_features.features))),
        atol=1e-5,
    )


def test_augmented_passes_cache_k_copies_and_keep_epoch_length():
    _, _, dataset = image_batches(20, batch_size=10)
    augment = keras.layers.RandomFlip("horizontal", seed=0)
    augmented = dataset.map(lambda x, y: (augment(x, training=True), y))
    result = features.fit_feature_extractor(
        tiny_backbone(),
        augmented,
        dataset,
        num_classes=3,
        epochs=2,
        passes=3,
        batch_size=5,
        verbose=0,
    )
    cache = result.train_features
    assert cache.passes == 3 and cache.num_examples == 60
    # The passes differ (different flips), but labels repeat pass after pass.
    assert not np.allclose(cache.features[:20], cache.features[20:40])
    np.testing.assert_array_equal(cache.labels[:20], cache.labels[40:])
    # One epoch is one dataset's worth of steps (20 / 5), not three.
    assert result.history.params["steps"] == 4


def test_unpooled_maps_for_heads_that_pool_themselves():
    images, _, dataset = image_batches(8)
    backbone = tiny_backbone()
    head = kt.ClassificationHead(3, pooling="max")
    extractor = extraction.feature_extractor(backbone, head, pool=False)
    cache = extraction.extract_features(extractor, dataset, verbose=0)
    assert cache.features.shape == (8, 1, 1, 256)
    pooled = extraction.extract_features(
        extraction.feature_extractor(backbone, head), dataset, verbose=0
    )
    np.testing.assert_allclose(head(cache.features), head(pooled.features), atol=1e-6)


def test_image_data_gives_class_names_and_validation(tiny_image_folder):
    data = data_lib.image_folder_dataset(tiny_image_folder, SIZE, 4, validation_split=0.25)
    result = features.fit_feature_extractor(tiny_backbone(), data, epochs=1, verbose=0)
    assert result.model.class_names == ["ants", "bees"]
    assert result.validation_features.num_examples == data.num_validation == 2
    assert result.train_features.num_examples == data.num_train == 10


def test_reattached_model_saves_and_reloads(tmp_path):
    images, _, dataset = image_batches(8)
    result = features.fit_feature_extractor(
        tiny_backbone(), dataset, num_classes=3, epochs=1, verbose=0
    )
    path = tmp_path / "model.keras"
    result.model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), result.model.predict(images, verbose=0), atol=1e-6
    )


def test_two_phase_with_cached_phase_1():
    images, _, dataset = image_batches(16)
    model = kt.create_classifier(tiny_backbone(), 3)
    backbone_before = [np.array(w).copy() for w in model.backbone.weights]
    head_before = [np.array(w).copy() for w in model.head.weights]
    seen_epochs = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen_epochs.append(e))
    history = kt.fit_two_phase_cached(
        model,
        dataset,
        dataset,
        head_epochs=2,
        fine_tune_epochs=0,
        verbose=0,
        callbacks=[callback],
    )
    # Phase 1 trained the head only: the backbone (and its BN statistics) did not move.
    for before, after in zip(backbone_before, model.backbone.weights):
        np.testing.assert_array_equal(before, np.array(after))
    assert any(not np.allclose(b, np.array(a)) for b, a in zip(head_before, model.head.weights))
    assert history.phases == ["feature_extraction"] * 2 and seen_epochs == [0, 1]

    begun, ended = [], []
    timeline = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: begun.append(e),
        on_epoch_end=lambda e, logs: ended.append(e),
    )
    history = kt.fit_two_phase_cached(
        model,
        dataset,
        dataset,
        head_epochs=2,
        fine_tune_epochs=2,
        unfreeze=2,
        verbose=0,
        callbacks=[timeline],
    )
    # Callbacks see one timeline across both phases (phase 2 does not restart at 0).
    assert begun == ended == [0, 1, 2, 3]
    assert history.epoch == [0, 1, 2, 3]
    assert history.phases == ["feature_extraction"] * 2 + ["fine_tune"] * 2
    assert set(history.seconds) == {"feature_extraction", "fine_tune"}
    assert len(history.unfrozen_blocks) == 2
    assert all(len(v) == 4 for v in history.history.values())
    assert any(
        not np.allclose(b, np.array(a)) for b, a in zip(backbone_before, model.backbone.weights)
    )


def test_two_phase_cached_continues_from_initial_epoch(tmp_path):
    _, _, dataset = image_batches(8)
    model = kt.create_classifier(tiny_backbone(), 3)
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(e))
    history = kt.fit_two_phase_cached(
        model,
        dataset,
        dataset,
        head_epochs=1,
        fine_tune_epochs=2,
        unfreeze=1,
        initial_epoch=3,
        callbacks=[callback],
        backup_dir=tmp_path / "backup",
        verbose=0,
    )
    assert seen == history.epoch == [3, 4, 5]
    assert history.phases == ["feature_extraction"] + ["fine_tune"] * 2
    assert not (tmp_path / "backup").exists()  # finished: the backup is deleted
    with pytest.raises(ValueError, match="initial_epoch must be an integer >= 0"):
        kt.fit_two_phase_cached(model, dataset, initial_epoch=-1)


def test_bad_input_is_a_clear_error():
    images, labels, dataset = image_batches(8)
    backbone = tiny_backbone()
    extractor = extraction.feature_extractor(backbone)
    with pytest.raises(ValueError, match="passes must be a positive integer"):
        extraction.extract_features(extractor, dataset, passes=0)
    with pytest.raises(TypeError, match="from_tensor_slices"):
        extraction.extract_features(extractor, (images, labels))
    with pytest.raises(ValueError, match="empty"):
        extraction.extract_features(extractor, dataset.take(0), verbose=0)
    with pytest.raises(ValueError, match=r"\(images, labels\)"):
        extraction.extract_features(extractor, dataset.map(lambda x, y: (x, y, y)), verbose=0)
    with pytest.raises(ValueError, match="pool=False"):
        extraction.feature_extractor(backbone, kt.ClassificationHead(3, pooling=None))
    with pytest.raises(TypeError, match="create_classifier"):
        extraction.feature_extractor(backbone.model)
    with pytest.raises(ValueError, match="num_classes"):
        features.fit_feature_extractor(backbone, dataset, verbose=0)
    with pytest.raises(TypeError, match="sets `x`"):
        features.fit_feature_extractor(backbone, dataset, num_classes=3, x=1)
    with pytest.raises(TypeError, match="TransferClassifier"):
        kt.fit_two_phase_cached(backbone.model, dataset)


def run_benchmark(name, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / name),
            "--smoke",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_feature_cache_benchmark_smoke(tmp_path):
    output = tmp_path / "feature_cache.json"
    result = run_benchmark("feature_cache.py", f"--output={output}")
    record = json.loads(output.read_text())
    rounds = record["details"]["rounds"]
    assert len(rounds) == 2 == record["repeats"]
    # The speedup is paired within each round, and the summary is their median.
    for arm in rounds:
        assert arm["speedup"] == pytest.approx(arm["guide"]["seconds"] / arm["cached"]["seconds"])
    assert result["speedup_per_round"] == [arm["speedup"] for arm in rounds]
    assert record["arms"]["cached"]["speedup_vs_guide"]["per_seed"] == result["speedup_per_round"]
    assert record["selection"]["pairing"] and record["git_commit"]
    # The re-attached model evaluated on images agrees with the head's last validation epoch.
    for arm in rounds:
        cached = arm["cached"]
        assert cached["end_to_end_val_accuracy"] == pytest.approx(cached["val_accuracy"])


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"unfreeze": 1000}, "Cannot unfreeze the top 1000 blocks"),
        ({"unfreeze": "conv_dw_99"}, "conv_dw_99"),
        ({"lr_decay": 2.0}, "lr_decay must be"),
        ({"fine_tune_epochs": -1}, "fine_tune_epochs must be"),
        ({"optimizer": "no_such_optimizer"}, "no_such_optimizer"),
        ({"passes": 0}, "passes must be a positive integer"),
    ],
)
def test_two_phase_cached_checks_every_argument_before_extracting(monkeypatch, bad, message):
    _, _, dataset = image_batches(8)
    model = kt.create_classifier(tiny_backbone(), 3)

    def fail(*args, **kwargs):
        raise AssertionError("features were extracted before the arguments were checked")

    monkeypatch.setattr(extraction, "extract_features", fail)
    with pytest.raises((ValueError, TypeError), match=message):
        kt.fit_two_phase_cached(model, dataset, dataset, head_epochs=1, verbose=0, **bad)


def test_feature_extractor_predicts_in_inference_mode_and_trains_through_in_training_mode():
    images = tiny_images(8, SIZE, 3)
    backbone = tiny_backbone()  # BatchNormalization trainable, moving statistics perturbed
    extractor = extraction.feature_extractor(backbone)
    # What a cache holds (predict): the moving statistics.
    cached = extractor.predict(images, verbose=0)
    np.testing.assert_allclose(cached, np.array(extractor(images, training=False)), atol=1e-5)
    # Called in training mode (domain adaptation trains through it), Keras passes the mode to
    # every layer: trainable BatchNormalization normalises with the batch's statistics.
    assert not np.allclose(np.array(extractor(images, training=True)), cached, atol=1e-3)
    # Its layers are the backbone's own: what trains through it trains the backbone.
    assert {id(w) for w in backbone.model.weights} <= {id(w) for w in extractor.weights}
