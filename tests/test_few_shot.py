"""Few-shot prototypes (SimpleShot CL2N): the prototypes, the Keras model around them,
add_classes, refinement, save/load and bad input."""

import keras
import numpy as np
import pytest
from conftest import tiny_images

import keras_transfer as kt
from keras_transfer import few_shot


@pytest.fixture(scope="module")
def backbone():
    return kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None, alpha=0.25)


def support_images():
    # Colour-coded classes, so that even a random backbone separates them.
    rng = np.random.default_rng(0)
    images = {}
    for c, name in enumerate(("red", "green", "blue")):
        batch = rng.uniform(0, 60, (3, 32, 32, 3))
        batch[..., c] += 190
        images[name] = batch.astype("float32")
    return images


def normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_prototypes_are_the_normalised_class_means_of_centred_normalised_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 6)).astype("float32") + 2.0
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    head = few_shot.prototype_head_from_features(x, y, temperature=0.5)
    centre = x.mean(axis=0)
    transformed = normalise(x - centre)
    means = np.stack([transformed[y == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(np.array(head.centre), centre, rtol=1e-6)
    np.testing.assert_allclose(np.array(head.class_means), means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(head.class_counts), [3, 2, 4])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(head.prototypes()), normalise(means), atol=1e-6
    )
    # Scores: softmax of cosine similarity / temperature.
    query = rng.normal(size=(4, 6)).astype("float32")
    logits = normalise(query - centre) @ normalise(means).T / 0.5
    expected = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(np.array(head(query)), expected, rtol=1e-5, atol=1e-6)


def test_temperature_is_calibrated_by_leave_one_out_unless_one_shot():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (5, 8)) + 3, rng.normal(0, 1, (5, 8)) - 3])
    y = np.repeat([0, 1], 5)
    head = few_shot.prototype_head_from_features(x, y)
    assert head.temperature in few_shot.TEMPERATURE_GRID
    # All left-out examples are right: their mean confidence is set to (10 + 1) / (10 + 2).
    transformed = few_shot.centre_and_normalise(x, x.mean(axis=0))
    assert few_shot.calibrate_temperature(transformed, y, 2) == head.temperature
    one_shot = few_shot.prototype_head_from_features(x[[0, 5]], y[[0, 5]])
    assert one_shot.temperature == few_shot.DEFAULT_TEMPERATURE


def test_fit_prototypes_builds_a_model_of_the_support_features(backbone, tmp_path):
    images = support_images()
    model = kt.fit_prototypes(backbone, images)
    assert isinstance(model, kt.TransferClassifier) and isinstance(model.head, kt.PrototypeHead)
    assert model.class_names == ["red", "green", "blue"]
    assert not model.backbone.trainable and not model.trainable_weights
    # The head holds exactly the SimpleShot statistics of the backbone's pooled features.
    extractor = kt.feature_extractor(model)
    features = np.concatenate([extractor.predict(v, verbose=0) for v in images.values()])
    labels = np.repeat([0, 1, 2], 3)
    reference = few_shot.prototype_head_from_features(features, labels)
    np.testing.assert_allclose(
        np.array(model.head.class_means), np.array(reference.class_means), atol=1e-5
    )
    np.testing.assert_allclose(np.array(model.head.centre), np.array(reference.centre), atol=1e-5)
    predictions = model.predict(np.concatenate(list(images.values())), verbose=0)
    np.testing.assert_allclose(predictions, np.array(reference(features)), atol=1e-5)

    path = tmp_path / "prototypes.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert type(reloaded.head) is kt.PrototypeHead
    assert reloaded.class_names == model.class_names
    assert reloaded.head.temperature == model.head.temperature
    query = tiny_images(4, seed=5)
    np.testing.assert_allclose(
        reloaded.predict(query, verbose=0), model.predict(query, verbose=0), atol=1e-6
    )


def test_add_classes_grows_the_head_and_keeps_the_old_scores(backbone):
    images = support_images()
    model = kt.fit_prototypes(backbone, {k: images[k] for k in ("red", "green")})
    query = np.concatenate(list(images.values()))
    before = model.predict(query, verbose=0)
    grown = kt.add_classes(model, {"blue": images["blue"]})
    assert grown.class_names == ["red", "green", "blue"] and grown.output_shape == (None, 3)
    after = grown.predict(query, verbose=0)
    # Same logits for the old classes: their renormalised probabilities are unchanged.
    np.testing.assert_allclose(
        after[:, :2] / after[:, :2].sum(-1, keepdims=True), before, rtol=1e-4
    )
    # The new prototype: CL2N with the model's own centre, averaged.
    blue = kt.feature_extractor(model).predict(images["blue"], verbose=0)
    expected = few_shot.centre_and_normalise(blue, np.array(model.head.centre)).mean(axis=0)
    np.testing.assert_allclose(np.array(grown.head.class_means)[2], expected, atol=1e-5)
    np.testing.assert_allclose(model.predict(query, verbose=0), before)  # model untouched
    # More images of an existing class merge into its prototype.
    updated = kt.add_classes(grown, {"blue": images["blue"][:1]})
    assert updated.class_names == grown.class_names
    np.testing.assert_allclose(np.array(updated.head.class_counts), [3, 3, 4])


def test_refinement_starts_at_the_prototypes_and_trains():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, (6, 8)) + 0.3, rng.normal(0, 1, (6, 8)) - 0.3])
    y = np.repeat([0, 1], 6)
    head = few_shot.prototype_head_from_features(x, y, temperature=0.5)
    loss = keras.losses.SparseCategoricalCrossentropy()
    start = few_shot.refine_prototype_head(head, x, y, epochs=1, learning_rate=1e-12)
    np.testing.assert_allclose(np.array(start(x)), np.array(head(x)), atol=1e-5)
    refined = few_shot.refine_prototype_head(head, x, y, epochs=50, learning_rate=0.05)
    assert refined.linear and not np.allclose(
        np.array(refined.dense.kernel), np.array(start.dense.kernel)
    )
    assert float(loss(y, refined(x))) < 0.5 * float(loss(y, head(x)))


def test_fit_prototypes_refined_round_trip_and_add_classes(backbone, tmp_path):
    images = support_images()
    model = kt.fit_prototypes(backbone, {k: images[k] for k in ("red", "green")}, refine_epochs=3)
    assert model.head.linear
    path = tmp_path / "refined.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    query = np.concatenate(list(images.values()))
    np.testing.assert_allclose(
        reloaded.predict(query, verbose=0), model.predict(query, verbose=0), atol=1e-6
    )
    grown = kt.add_classes(reloaded, {"blue": images["blue"]})
    kernel = np.array(grown.head.dense.kernel)
    np.testing.assert_allclose(kernel[:, :2], np.array(model.head.dense.kernel), rtol=1e-6)


def test_bad_support_sets_are_clear_errors(backbone):
    images = support_images()
    with pytest.raises(ValueError, match="'green' has no images"):
        kt.fit_prototypes(backbone, {"red": images["red"], "green": np.zeros((0, 32, 32, 3))})
    with pytest.raises(ValueError, match="1 class.*at least 2"):
        kt.fit_prototypes(backbone, {"red": images["red"]})
    with pytest.raises(ValueError, match=r"backbone takes \(32, 32, 3\).*image_size=32"):
        kt.fit_prototypes(backbone, {"a": tiny_images(2, size=40), "b": tiny_images(2, size=40)})
    with pytest.raises(ValueError, match="temperature"):
        kt.fit_prototypes(backbone, images, temperature=0)
    with pytest.raises(TypeError, match="PrototypeHead"):
        kt.add_classes(kt.create_classifier(backbone, 2), {"c": images["red"]})


def test_fit_prototypes_on_an_image_folder(backbone, image_folder):
    folder = image_folder({"ants": 3, "bees": 2}, size=(32, 32))
    data = kt.image_folder_dataset(folder, 32, batch_size=4, validation_split=0.0)
    model = kt.fit_prototypes(backbone, data, temperature=0.2)
    assert model.class_names == ["ants", "bees"] and model.head.temperature == 0.2
    np.testing.assert_allclose(np.array(model.head.class_counts), [3, 2])
