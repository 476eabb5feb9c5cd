"""Multi-task classifiers: several named heads on one backbone (`create_classifier(heads=...)`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_images

import keras_transfer as kt
from keras_transfer.training import extraction as features

HEADS = {
    "species": {"num_classes": 3, "dropout": 0.0},
    "colour": {"num_classes": 2, "task": "multilabel", "dropout": 0.0, "pooling": "max"},
    "size": {"num_classes": 1, "task": "regression", "dropout": 0.0},
}


def make_multi(heads=HEADS, **kwargs):
    return kt.create_classifier(
        "mobilenet", heads=heads, input_shape=(32, 32, 3), weights=None, alpha=0.25, **kwargs
    )


def make_trainable_multi(heads=HEADS):
    """`make_multi` with BatchNorm statistics of the test images: a randomly initialised
    backbone with unit moving variances shrinks its features to ~1e-16, too small for a
    gradient step to move any kernel."""
    model = make_multi(heads)
    kt.recalibrate_batchnorm(model, [multi_data(16)[0]])
    return model


def multi_data(n=16, seed=0):
    """Images whose three targets all follow from their colour: learnable by each head."""
    rng = np.random.default_rng(seed)
    species = np.arange(n) % 3
    images = rng.uniform(0, 40, (n, 32, 32, 3)).astype("float32")
    for c in range(3):
        images[species == c, :, :, c] += 200
    labels = {
        "species": species.astype("int32"),
        "colour": np.stack([species == 0, species != 2], axis=1).astype("float32"),
        "size": (species / 2.0).astype("float32")[:, None],
    }
    return images, labels


def dataset(n=16, batch_size=8):
    images, labels = multi_data(n)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def head_weights(model):
    return {
        name: [np.array(w).copy() for w in head.weights] for name, head in model.head.heads.items()
    }


def test_outputs_are_a_dict_by_head_name():
    model = make_multi(class_names={"species": ["ant", "bee", "wasp"]})
    outputs = model.predict(tiny_images(2), verbose=0)
    assert set(outputs) == set(HEADS)
    assert outputs["species"].shape == (2, 3)
    np.testing.assert_allclose(outputs["species"].sum(axis=1), 1.0, rtol=1e-5)  # softmax
    assert outputs["colour"].shape == (2, 2) and 0 < outputs["colour"].min()  # sigmoids
    assert outputs["size"].shape == (2, 1)
    assert model.class_names == {"species": ["ant", "bee", "wasp"]}


def test_compile_picks_each_outputs_loss_metric_and_weight():
    model = make_multi(loss_weights={"colour": 0.5, "size": 2.0})
    model.compile()
    assert isinstance(model.loss["species"], keras.losses.SparseCategoricalCrossentropy)
    assert isinstance(model.loss["colour"], kt.BinaryLabelCrossentropy)
    assert isinstance(model.loss["size"], keras.losses.MeanSquaredError)
    images, labels = multi_data(8)
    logs = model.evaluate(images, labels, verbose=0, return_dict=True)
    assert {"species_accuracy", "colour_accuracy", "size_mae"} <= set(logs)
    # The total is the weighted sum of the per-output losses, computed by hand here.
    predictions = model.predict(images, verbose=0)
    species = keras.losses.SparseCategoricalCrossentropy()(
        labels["species"], predictions["species"]
    )
    colour = keras.losses.BinaryCrossentropy()(labels["colour"], predictions["colour"])
    size = np.mean((labels["size"] - predictions["size"]) ** 2)
    np.testing.assert_allclose(logs["species_loss"], float(species), rtol=1e-4)
    np.testing.assert_allclose(logs["colour_loss"], float(colour), rtol=1e-4)
    np.testing.assert_allclose(
        logs["loss"], float(species) + 0.5 * float(colour) + 2.0 * size, rtol=1e-4
    )


def test_each_head_trains():
    # The head on informative features (a random frozen backbone gives nearly constant
    # ones): every head's weights move and every head's own loss falls.
    rng = np.random.default_rng(0)
    _, labels = multi_data(32)
    vectors = np.eye(3, dtype="float32")[labels["species"]] * 2.0
    vectors = np.concatenate([vectors, rng.normal(size=(32, 5)).astype("float32")], axis=1)
    head = kt.MultiTaskHead(HEADS)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, head(inputs))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-2),
        loss=head.default_loss(),
        metrics=head.default_metrics(),
    )
    before = {name: [np.array(w).copy() for w in h.weights] for name, h in head.heads.items()}
    history = model.fit(vectors, labels, epochs=10, batch_size=8, verbose=0).history
    for name, h in head.heads.items():
        changed = [not np.array_equal(a, np.array(w)) for a, w in zip(before[name], h.weights)]
        assert all(changed), f"head {name!r} did not train"
        assert history[f"{name}_loss"][-1] < 0.5 * history[f"{name}_loss"][0], name
    assert history["species_accuracy"][-1] == 1.0


def test_save_load_round_trip(tmp_path):
    model = make_multi(loss_weights={"size": 0.25}, class_names={"colour": ["red", "green"]})
    model.compile()
    images, _ = multi_data(4)
    path = tmp_path / "multi.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded.head, kt.MultiTaskHead)
    assert reloaded.head.head_names == list(HEADS)
    assert reloaded.head.loss_weights == {"species": 1.0, "colour": 1.0, "size": 0.25}
    assert reloaded.class_names == {"colour": ["red", "green"]}
    expected, got = model.predict(images, verbose=0), reloaded.predict(images, verbose=0)
    for name in HEADS:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-6)
    # The compiled state came back too: each output's loss.
    assert isinstance(reloaded.loss["species"], keras.losses.SparseCategoricalCrossentropy)
    assert isinstance(reloaded.loss["colour"], kt.BinaryLabelCrossentropy)
    assert isinstance(reloaded.loss["size"], keras.losses.MeanSquaredError)


def test_two_phase_freezing_and_layerwise_lr():
    model = make_trainable_multi()
    backbone_before = {v.path: np.array(v).copy() for v in model.backbone.weights}
    history = kt.fit_two_phase(
        model,
        dataset(),
        dataset(),
        head_epochs=1,
        fine_tune_epochs=0,
        head_lr=1e-2,
        verbose=0,
    )
    # Phase 1: backbone frozen, every head trained.
    for variable in model.backbone.weights:
        np.testing.assert_array_equal(backbone_before[variable.path], np.array(variable))
    assert {"val_species_accuracy", "val_colour_accuracy", "val_size_mae"} <= set(history.history)
    heads_before = head_weights(model)
    backbone_before = {v.path: np.array(v).copy() for v in model.backbone.weights}
    history = kt.fit_two_phase(
        model,
        dataset(),
        head_epochs=0,
        fine_tune_epochs=1,
        fine_tune_lr=1e-3,
        unfreeze=2,
        lr_decay=0.5,
        verbose=0,
    )
    assert history.unfrozen_blocks == ["conv_dw_12", "conv_dw_13"]
    assert isinstance(model.optimizer, kt.optimizers.LayerwiseLearningRate)
    changed = {
        v.path.split("/")[-2]
        for v in model.backbone.weights
        if not np.array_equal(backbone_before[v.path], np.array(v))
    }
    # Only the two unfrozen blocks' convolutions moved (their BatchNorm stays frozen).
    assert changed == {"conv_dw_12", "conv_pw_12", "conv_dw_13", "conv_pw_13"}
    assert all(
        not np.array_equal(a, b)
        for name in HEADS
        for a, b in zip(heads_before[name], head_weights(model)[name])
    )


@pytest.mark.parametrize("poolings", [("avg", "avg"), ("avg", "max")])
def test_cached_features_keep_dict_labels(poolings):
    heads = {
        "species": {"num_classes": 3, "dropout": 0.0, "pooling": poolings[0]},
        "colour": {"num_classes": 2, "task": "multilabel", "dropout": 0.0, "pooling": poolings[1]},
    }
    model = make_trainable_multi(heads)
    images, labels = multi_data(16)
    labels.pop("size")
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    extractor = features.feature_extractor(model)
    # One pooling for all heads: pooled once; different poolings: maps, each head pools.
    expected_rank = 2 if poolings[0] == poolings[1] else 4
    for budget in (2**30, 1):  # in memory, and streamed to disk
        cached = features.extract_features(extractor, data, max_memory_bytes=budget, verbose=0)
        assert cached.on_disk == (budget == 1)
        assert cached.features.ndim == expected_rank
        assert set(cached.labels) == {"species", "colour"}
        np.testing.assert_array_equal(cached.labels["species"], labels["species"])
        np.testing.assert_array_equal(cached.labels["colour"], labels["colour"])
        x, y = next(iter(cached.as_dataset(16)))
        np.testing.assert_array_equal(np.array(y["colour"]), labels["colour"])
        # The head on cached features predicts what the model predicts on images.
        expected = model.predict(images, verbose=0)
        got = model.head(x)
        for name in heads:
            np.testing.assert_allclose(np.array(got[name]), expected[name], atol=1e-5)

    if expected_rank == 2:
        return  # fit_two_phase_cached once, on the harder case (feature maps on disk)
    heads_before = head_weights(model)
    history = kt.fit_two_phase_cached(
        model, data, data, head_epochs=2, fine_tune_epochs=0, max_memory_bytes=1, verbose=0
    )
    assert history.phases == ["feature_extraction"] * 2
    assert history.history["loss"][1] < history.history["loss"][0]
    for name in heads:
        assert not np.array_equal(heads_before[name][0], head_weights(model)[name][0])


def test_bad_input():
    with pytest.raises(ValueError, match="differ only in case"):
        make_multi({"Species": {"num_classes": 2}, "species": {"num_classes": 3}})
    with pytest.raises(ValueError, match="clashes with Keras' log keys"):
        make_multi({"loss": {"num_classes": 2}})
    with pytest.raises(ValueError, match="clashes with Keras' log keys"):
        make_multi({"val_species": {"num_classes": 2}})
    with pytest.raises(ValueError, match="not valid"):
        make_multi({"my head": {"num_classes": 2}})
    with pytest.raises(ValueError, match="heads is empty"):
        make_multi({})
    with pytest.raises(ValueError, match="not both"):
        kt.create_classifier(
            "mobilenet", 3, heads=HEADS, input_shape=(32, 32, 3), weights=None, alpha=0.25
        )
    with pytest.raises(ValueError, match="not both"):
        make_multi(head={"dropout": 0.1})
    with pytest.raises(ValueError, match="Head 'colour': unknown option"):
        make_multi({"colour": {"num_classes": 2, "pool": "max"}})
    with pytest.raises(ValueError, match="Head 'colour' needs 'num_classes'"):
        make_multi({"colour": {"task": "multilabel"}})
    with pytest.raises(ValueError, match="Head 'colour': task='binary'"):
        make_multi({"colour": {"num_classes": 3, "task": "binary"}})
    with pytest.raises(ValueError, match=r"loss_weights for unknown head\(s\) \['shape'\]"):
        make_multi(loss_weights={"shape": 1.0})
    with pytest.raises(ValueError, match="loss_weights weighs the outputs of several heads"):
        kt.create_classifier(
            "mobilenet", 2, loss_weights={"a": 1.0}, input_shape=(32, 32, 3), weights=None
        )
    with pytest.raises(ValueError, match="Head 'species': 2 class names"):
        make_multi(class_names={"species": ["a", "b"]})
    with pytest.raises(ValueError, match="Pass num_classes"):
        kt.create_classifier("mobilenet", input_shape=(32, 32, 3), weights=None)
