"""Integration with the real ImageNet weights and datasets (skipped without them)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.data import folders as data

pytestmark = pytest.mark.assets


def test_real_weights_load_at_any_size_and_match_the_top_model(assets):
    no_top = str(assets / "weights" / "mobilenet_1_0_224_tf_no_top.h5")
    with_top = assets / "weights" / "mobilenet_1_0_224_tf.h5"
    backbone = kt.create_backbone("mobilenet", input_shape=(224, 224, 3), weights=no_top)
    import keras

    reference = keras.applications.MobileNet(weights=str(with_top), input_shape=(224, 224, 3))
    for ours, theirs in zip(backbone.model.weights, reference.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    # A fully convolutional file loads at another input size too.
    small = kt.create_backbone("mobilenet", input_shape=(160, 160, 3), weights=no_top)
    np.testing.assert_array_equal(small.model.weights[0].numpy(), backbone.model.weights[0].numpy())


def test_imagenet_weights_come_from_the_keras_cache(assets, tmp_path):
    """weights='imagenet' works offline once the file is where Keras caches it."""
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(
        assets / "weights" / "mobilenet_1_0_224_tf_no_top.h5",
        models / "mobilenet_1_0_224_tf_no_top.h5",
    )
    code = (
        "import keras_transfer as kt;"
        "b = kt.create_backbone('mobilenet', weights='imagenet');"
        "print(float(abs(b.model.weights[0].numpy()).sum()))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert float(completed.stdout.strip().splitlines()[-1]) > 1.0


def test_pretrained_features_classify_ants_and_bees(assets):
    """Real transfer: a head on frozen ImageNet features separates ants from bees."""
    loaded = data.image_folder_dataset(
        assets / "datasets" / "hymenoptera_data", image_size=160, batch_size=32
    )
    assert loaded.class_names == ["ants", "bees"]
    assert (loaded.num_train, loaded.num_validation) == (245, 153)
    model = kt.create_classifier(
        "mobilenet",
        2,
        input_shape=(160, 160, 3),
        weights=str(assets / "weights" / "mobilenet_1_0_224_tf_no_top.h5"),
    )
    history = kt.fit_two_phase(
        model,
        loaded.train,
        loaded.validation,
        head_epochs=4,
        fine_tune_epochs=0,
        ema_momentum=0.0,  # the last epoch's head itself, not an average of 4 epochs
        verbose=0,
    )
    assert history.history["val_accuracy"][-1] >= 0.85
