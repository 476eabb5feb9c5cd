"""Image folders and TFDS: splits, sizes, crops, augmentation and bad files."""

import logging
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_transfer import data


def _all_labels(dataset):
    return np.concatenate([y.numpy() for _, y in dataset])


def test_folder_with_validation_split(image_folder):
    root = image_folder({"ants": 10, "bees": 10})
    loaded = data.image_folder_dataset(root, image_size=32, batch_size=4, validation_split=0.25)
    assert loaded.class_names == ["ants", "bees"]
    # Each file's split is drawn from a hash of the seed and its path, so the sizes are
    # near 0.25 (not exactly); every class has validation images (stratified).
    assert (loaded.num_train, loaded.num_validation) == (17, 3)
    assert set(_all_labels(loaded.validation)) == {0, 1}
    images, labels = next(iter(loaded.train))
    assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    assert len(_all_labels(loaded.train)) == 17
    assert len(_all_labels(loaded.validation)) == 3
    # The same seed gives the same split; the split does not depend on the batch size.
    again = data.image_folder_dataset(root, image_size=32, batch_size=5, validation_split=0.25)
    assert sorted(_all_labels(again.validation)) == sorted(_all_labels(loaded.validation))


def test_is_image_data_recognises_a_loader_result(image_folder):
    root = image_folder({"ants": 4, "bees": 4})
    loaded = data.image_folder_dataset(root, image_size=16, batch_size=4, validation_split=0)
    assert data.is_image_data(loaded)
    assert not data.is_image_data(loaded.train)
    assert not data.is_image_data(np.zeros(3))
    assert not data.is_image_data(None)


def test_train_and_val_folders_are_used(image_folder):
    image_folder({"a": 6, "b": 4}, subdir="train")
    root = image_folder({"a": 2, "b": 3}, subdir="val").parent
    loaded = data.image_folder_dataset(root, image_size=32, batch_size=8)
    assert (loaded.num_train, loaded.num_validation) == (10, 5)
    assert sorted(_all_labels(loaded.validation)) == [0, 0, 1, 1, 1]


def test_validation_is_deterministic_and_training_reshuffles(image_folder):
    root = image_folder({"a": 8, "b": 8})
    loaded = data.image_folder_dataset(root, image_size=32, batch_size=16, validation_split=0.5)
    first = next(iter(loaded.validation))[0].numpy()
    np.testing.assert_array_equal(first, next(iter(loaded.validation))[0].numpy())
    orders = {tuple(_all_labels(loaded.train)) for _ in range(5)}
    assert len(orders) > 1


def test_an_uncached_training_split_shuffles_files_not_decoded_images(image_folder, monkeypatch):
    # A shuffle buffer of decoded images would decode all 240 files before the first
    # batch (and, on a large dataset, hold up to 50,000 decoded images in memory).
    from keras_transfer.data import pipeline

    decoded = []

    def counting_decode(contents, *args, **kwargs):
        image = data.decode_central_crop(contents, *args, **kwargs)
        with tf.control_dependencies([tf.py_function(lambda: decoded.append(1), [], [])]):
            return tf.identity(image)

    # Without the random crop, training images decode straight to their central crop.
    monkeypatch.setattr(pipeline, "decode_central_crop", counting_decode)
    folder = image_folder({"cats": 120, "dogs": 120}, size=(16, 16))
    options = dict(validation_split=0.0, batch_size=4, seed=3)
    uncached = data.image_folder_dataset(folder, 8, cache=False, **options).train
    next(iter(uncached))
    assert 4 <= len(decoded) < 120
    epochs = [np.concatenate([y for _, y in uncached]) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == [0] * 120 + [1] * 120
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch


def test_center_crop_keeps_aspect_ratio():
    # A 40x80 image whose left and right quarters are black and centre white: scaling to
    # cover 32x32 and cropping the centre keeps only white; stretching would keep black.
    image = np.zeros((40, 80, 3), "uint8")
    image[:, 20:60] = 255
    cropped = data.resize_and_crop(tf.constant(image), (32, 32), "crop").numpy()
    squashed = data.resize_and_crop(tf.constant(image), (32, 32), "squash").numpy()
    assert cropped.min() >= 250
    assert squashed[:, 0].max() == 0
    assert data.load_size((224, 224), 0.875) == (256, 256)


def test_random_crop_and_flip_augment_training_only(image_folder):
    root = image_folder({"a": 4, "b": 4})
    loaded = data.image_folder_dataset(
        root, image_size=32, batch_size=8, validation_split=0.5, augment="flip,crop", shuffle=False
    )
    first = next(iter(loaded.train))[0].numpy()
    second = next(iter(loaded.train))[0].numpy()
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(
        next(iter(loaded.validation))[0].numpy(), next(iter(loaded.validation))[0].numpy()
    )
    with pytest.raises(ValueError, match="Unknown augmentation 'blur'"):
        data.image_folder_dataset(root, image_size=32, augment="blur")
    with pytest.raises(ValueError, match="crop_fraction < 1"):
        data.image_folder_dataset(root, image_size=32, augment="crop", crop_fraction=1.0)


def test_undecodable_files_are_skipped_and_reported(image_folder, caplog):
    root = image_folder({"a": 5, "b": 5})
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "notes.png").write_text("not an image")
    good = (root / "b" / "b_0.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    rgba = np.full((20, 20, 4), 200, "uint8")
    (root / "b" / "alpha.png").write_bytes(tf.io.encode_png(rgba).numpy())
    gray = np.full((20, 20, 1), 90, "uint8")
    (root / "a" / "gray.jpg").write_bytes(tf.io.encode_jpeg(gray).numpy())
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        loaded = data.image_folder_dataset(root, image_size=32, batch_size=4, validation_split=0)
    assert sorted(os.path.basename(p) for p in loaded.skipped) == [
        "empty.jpg",
        "notes.png",
        "truncated.jpg",
    ]
    assert "Skipped 3 file(s)" in caplog.text and "truncated.jpg" in caplog.text
    assert loaded.num_train == 12  # 10 + RGBA PNG + grayscale JPEG, both now RGB
    for images, _ in loaded.train:  # a full epoch runs without a decode error
        assert images.shape[-1] == 3


def test_folder_errors(tmp_path, image_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.image_folder_dataset(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="No class folders"):
        data.image_folder_dataset(tmp_path / "flat")
    single = image_folder({"only": 3})
    with pytest.raises(ValueError, match="at least two classes"):
        data.image_folder_dataset(single, validation_split=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        data.image_folder_dataset(single, batch_size=0)


def test_class_missing_from_validation_folder(image_folder):
    image_folder({"a": 3, "b": 3}, subdir="train")
    root = image_folder({"a": 2}, subdir="val").parent
    with pytest.raises(ValueError, match=r"missing in validation \['b'\]"):
        data.image_folder_dataset(root, image_size=32)


def test_drop_remainder_gives_static_batches(image_folder):
    root = image_folder({"a": 5, "b": 6})
    loaded = data.image_folder_dataset(
        root, image_size=32, batch_size=4, validation_split=0, drop_remainder=True
    )
    assert loaded.train.element_spec[0].shape.as_list() == [4, 32, 32, 3]
    assert sum(1 for _ in loaded.train) == 2


def test_tfds_dataset_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        loaded = data.tfds_dataset(
            "tf_flowers",
            image_size=32,
            batch_size=4,
            train_split="train[:75%]",
            validation_split="train[75%:]",
        )
        assert loaded.class_names[:2] == ["dandelion", "daisy"]
        images, labels = next(iter(loaded.train))
        assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
        assert int(tf.reduce_max(labels)) < len(loaded.class_names)
        # mock_data serves num_examples for every split, slice or not.
        assert sum(int(tf.shape(x)[0]) for x, _ in loaded.validation) == loaded.num_validation == 12


def test_tfds_failure_says_how_to_work_offline(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(RuntimeError, match="data_dir="):
        data.tfds_dataset("tf_flowers", data_dir=str(tmp_path), download=False)


def test_tfds_dataset_without_tfds_names_the_extra(monkeypatch):
    # TensorFlow Datasets is an optional dependency: `None` in sys.modules makes its import fail.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"keras-transfer\[tfds\]"):
        data.tfds_dataset("tf_flowers")


def test_large_jpegs_decode_at_reduced_scale_with_the_same_result(tmp_path, monkeypatch):
    # A smooth 400x300 photo-like image: scaled decoding must give nearly the same pixels.
    rows, cols = np.mgrid[0:300, 0:400]
    image = np.stack([rows * 0.8, cols * 0.6, (rows + cols) * 0.35], -1).astype("uint8")
    jpeg = tmp_path / "big.jpg"
    jpeg.write_bytes(tf.io.encode_jpeg(image, quality=95).numpy())
    png = tmp_path / "big.png"
    png.write_bytes(tf.io.encode_png(image).numpy())
    ratios = []
    decode_jpeg = tf.io.decode_jpeg

    def recording(contents, **kwargs):
        ratios.append(kwargs.get("ratio", 1))
        return decode_jpeg(contents, **kwargs)

    monkeypatch.setattr(tf.io, "decode_jpeg", recording)
    # The largest ratio that keeps both sides >= the target: 300 // 100 = 3 -> 2;
    # min(400 // 40, 300 // 40) = 7 -> 4; 300 // 200 = 1 -> full size.
    for size, ratio in (((100, 100), 2), ((40, 40), 4), ((200, 200), 1)):
        ratios.clear()
        scaled = data.decode_and_resize(tf.constant(str(jpeg)), size)
        full = data.decode_and_resize(tf.constant(str(jpeg)), size, scaled_jpeg=False)
        assert ratios == [ratio]
        assert scaled.shape == (*size, 3) and scaled.dtype == tf.uint8
        difference = np.abs(scaled.numpy().astype(int) - full.numpy().astype(int))
        assert difference.mean() < 2.0, size
    # Other formats are decoded in full, without the JPEG decoder.
    ratios.clear()
    from_png = data.decode_and_resize(tf.constant(str(png)), (40, 40))
    assert ratios == [] and from_png.shape == (40, 40, 3)
