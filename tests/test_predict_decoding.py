"""`keras-transfer predict` sees an image exactly as the run's validation did: one decode
function (`data.decode_for_model`) with the run's crop_fraction and resize, and the class
names stored in the model rather than a stale labels.txt."""

import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer.apps import predict as predict_lib

# (height, width): wider, much larger (JPEG ratio 4 and 8 at 32 px), odd and taller, square.
JPEG_SIZES = [(200, 300), (700, 1000), (131, 97), (256, 256)]


def _noise(rng, height, width):
    """Random pixels, smoothed a little: JPEG keeps detail that a reduced-scale decode and
    a full one resize differently (flat colours would hide any difference)."""
    image = rng.uniform(0, 255, (height, width, 3)).astype("float32")
    return tf.cast(tf.nn.avg_pool2d(image[None], 2, 1, "SAME")[0], tf.uint8)


@pytest.fixture
def validation_folder(tmp_path):
    """train/ and val/ with two classes; val/ holds JPEGs of several sizes and a PNG."""
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for name in ("ants", "bees"):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            for i, (height, width) in enumerate(JPEG_SIZES):
                encoded = tf.io.encode_jpeg(_noise(rng, height, width), quality=95)
                (folder / f"{i}.jpg").write_bytes(encoded.numpy())
            png = tf.io.encode_png(_noise(rng, 90, 120))
            (folder / "z.png").write_bytes(png.numpy())
    return tmp_path / "images"


def _validation_images(folder, image_size, **options):
    data = kt.image_folder_dataset(
        str(folder), image_size=image_size, batch_size=4, augment=False, **options
    )
    images = np.concatenate([batch for batch, _ in data.validation.as_numpy_iterator()])
    paths = data_lib.list_dataset_folder(str(folder)).validation_paths
    return images, paths


@pytest.mark.parametrize(
    "options", [{}, {"crop_fraction": 0.6}, {"crop_fraction": 1.0, "resize": "squash"}]
)
def test_predict_reads_each_image_exactly_as_the_validation_pipeline(validation_folder, options):
    validation, paths = _validation_images(validation_folder, 32, **options)
    assert len(paths) == 2 * (len(JPEG_SIZES) + 1)

    predicted = np.stack([predict_lib.load_image(path, (32, 32), **options) for path in paths])
    np.testing.assert_array_equal(predicted, validation)
    direct = np.stack([data_lib.decode_for_model(pathlib.Path(p), 32, **options) for p in paths])
    np.testing.assert_array_equal(direct, validation)


def _save_model_folder(model_dir, model, labels=None, config=None):
    model_dir.mkdir(parents=True, exist_ok=True)
    kt.save_model(model, model_dir / predict_lib.MODEL_FILE)
    if labels is not None:
        (model_dir / predict_lib.LABELS_FILE).write_text("".join(f"{n}\n" for n in labels))
    if config is not None:
        (model_dir / "config.json").write_text(json.dumps(config))


def test_predict_files_uses_the_runs_crop_fraction_and_resize(validation_folder, tmp_path):
    # Every pixel weighs in: any difference in decoding moves the probabilities.
    inputs = keras.Input((32, 32, 3))
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(flat))
    model_dir = tmp_path / "run"
    config = {"image_size": 32, "crop_fraction": 1.0, "resize": "squash"}
    _save_model_folder(model_dir, model, labels=["ants", "bees"], config=config)
    validation, paths = _validation_images(
        validation_folder, 32, crop_fraction=1.0, resize="squash"
    )

    settings = predict_lib.decode_settings(str(model_dir))
    assert settings == {"crop_fraction": 1.0, "resize": "squash"}
    loaded, labels = predict_lib.load_trained(str(model_dir))
    rows, skipped = predict_lib.predict_files(
        loaded, labels, paths, top_k=2, batch_size=3, **settings
    )

    assert skipped == {}
    expected = model.predict(validation, verbose=0)
    for row, probabilities in zip(rows, expected):
        by_label = dict(zip(row["labels"], row["probabilities"]))
        np.testing.assert_allclose(
            [by_label["ants"], by_label["bees"]], probabilities, atol=1e-6, rtol=0
        )


def test_decode_settings_default_without_config_json_and_refuse_bad_ones(tmp_path):
    assert predict_lib.decode_settings(str(tmp_path)) == {"crop_fraction": 0.875, "resize": "crop"}
    (tmp_path / "config.json").write_text(json.dumps({"image_size": 64}))
    assert predict_lib.decode_settings(str(tmp_path)) == {"crop_fraction": 0.875, "resize": "crop"}
    (tmp_path / "config.json").write_text(json.dumps({"resize": "stretch"}))
    with pytest.raises(ValueError, match=r"config\.json.*resize='stretch'.*'crop' or 'squash'"):
        predict_lib.decode_settings(str(tmp_path))


def test_predict_keeps_readable_decode_errors_and_the_max_pixels_check(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"^cannot decode it as an image \(") as error:
        predict_lib.load_image(str(broken), (32, 32))
    assert "\n" not in str(error.value) and "{{" not in str(error.value)
    large = tmp_path / "large.png"
    large.write_bytes(tf.io.encode_png(tf.zeros((60, 50, 3), tf.uint8)).numpy())
    with pytest.raises(ValueError, match=r"50x60 pixels is more than max_pixels=1000"):
        predict_lib.load_image(str(large), (32, 32), max_pixels=1000)


def test_the_models_class_names_win_and_a_stale_labels_file_is_refused(
    new_tiny_classifier, tmp_path
):
    model = new_tiny_classifier(class_names=["ants", "bees"])
    model_dir = tmp_path / "run"
    _save_model_folder(model_dir, model, labels=["bees", "ants"])

    with pytest.raises(ValueError) as error:
        predict_lib.load_trained(str(model_dir))
    message = str(error.value)
    assert "labels.txt" in message and "model.keras" in message
    assert "line 1 is 'bees', the model's output 0 is 'ants'" in message
    assert "delete it" in message and "\n" not in message

    (model_dir / "labels.txt").unlink()
    assert predict_lib.load_trained(str(model_dir))[1] == ["ants", "bees"]
    (model_dir / "labels.txt").write_text("ants\nbees\n")
    assert predict_lib.load_trained(str(model_dir))[1] == ["ants", "bees"]


def test_labels_file_names_the_classes_of_a_model_without_stored_names(
    new_tiny_classifier, tmp_path
):
    model_dir = tmp_path / "run"
    _save_model_folder(model_dir, new_tiny_classifier(), labels=["wasps", "flies"])
    assert predict_lib.load_trained(str(model_dir))[1] == ["wasps", "flies"]


def test_predict_images_labels_every_image_with_the_models_class_names(
    image_folder, new_tiny_classifier, tmp_path, caplog
):
    root = image_folder({"ants": 3, "bees": 3})
    (root / "bees" / "broken.jpg").write_bytes(b"not an image")
    model = new_tiny_classifier(class_names=["ants", "bees"])

    with caplog.at_level("WARNING", logger="keras_transfer"):
        rows = kt.predict_images(model, root, top_k=2)

    assert len(rows) == 6 and all(set(r["labels"]) == {"ants", "bees"} for r in rows)
    assert "broken.jpg" in caplog.text and "Skipped 1 of 7" in caplog.text
    # Each row is the model's prediction on kt.load_image of that file.
    first = rows[0]
    probabilities = model.predict(kt.load_image(first["file"], model)[None], verbose=0)[0]
    assert first["labels"][0] == ["ants", "bees"][int(np.argmax(probabilities))]
    assert first["probabilities"][0] == pytest.approx(float(np.max(probabilities)), abs=1e-6)


def test_predict_images_reads_a_model_folder_and_one_file(
    image_folder, new_tiny_classifier, tmp_path
):
    root = image_folder({"ants": 2, "bees": 2})
    model = new_tiny_classifier(class_names=["ants", "bees"])
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    kt.save_model(model, str(model_dir / "model.keras"), include_optimizer=False)
    (model_dir / "config.json").write_text(json.dumps({"crop_fraction": 1.0, "resize": "squash"}))
    image = sorted((root / "bees").iterdir())[0]

    (row,) = kt.predict_images(str(model_dir), image)

    squashed = kt.load_image(str(image), model, crop_fraction=1.0, resize="squash")
    expected = model.predict(squashed[None], verbose=0)[0]
    assert row["file"] == str(image)
    assert row["labels"] == [["ants", "bees"][int(np.argmax(expected))]]
    assert row["probabilities"][0] == pytest.approx(float(np.max(expected)), abs=1e-6)
