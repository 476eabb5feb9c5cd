"""Training, validation and test splits: the stable, stratified rule (`data.splits`) and the
image folder loader's test split (a test/ folder, test_dir, test_split)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_image_folder

from keras_transfer import data
from keras_transfer.data import splits


def _keys(class_counts, start=0):
    keys, labels = [], []
    for label, (name, count) in enumerate(class_counts.items()):
        keys += [f"{name}/{name}_{i}.jpg" for i in range(start, start + count)]
        labels += [label] * count
    return keys, labels


def test_fractions_are_near_the_asked_ones_and_adding_files_moves_none():
    keys, labels = _keys({"a": 3000, "b": 2000})
    first = splits.assign_splits(keys, labels, validation_split=0.2, test_split=0.1, seed=7)
    shares = np.bincount(first, minlength=3) / len(keys)
    np.testing.assert_allclose(shares, [0.7, 0.2, 0.1], atol=0.015)
    more_keys, more_labels = _keys({"a": 500, "b": 300}, start=5000)
    again = splits.assign_splits(
        more_keys + keys, more_labels + labels, validation_split=0.2, test_split=0.1, seed=7
    )
    # Each old file keeps its split, wherever it sits in the list.
    np.testing.assert_array_equal(again[len(more_keys) :], first)
    other_seed = splits.assign_splits(keys, labels, validation_split=0.2, test_split=0.1, seed=8)
    assert np.mean(other_seed != first) > 0.3


def test_a_lone_minority_image_always_trains():
    # 1 ant, 28 bees: whatever the seed, the ant trains and the bees fill every split.
    keys, labels = _keys({"ants": 1, "bees": 28})
    for seed in range(40):
        split = splits.assign_splits(keys, labels, validation_split=0.2, test_split=0.2, seed=seed)
        assert split[0] == splits.TRAIN, seed
        assert set(split[1:]) == {splits.TRAIN, splits.VALIDATION, splits.TEST}, seed


def test_every_class_of_two_keeps_a_training_image():
    keys, labels = _keys({f"class_{i}": 2 for i in range(300)})
    split = splits.assign_splits(keys, labels, validation_split=0.5, seed=0)
    trained = np.bincount(np.asarray(labels)[split == splits.TRAIN], minlength=300)
    assert trained.min() == 1
    assert (split == splits.VALIDATION).sum() > 100  # the other image often validates


@pytest.mark.parametrize("count", [3, 4, 5])
def test_small_classes_get_one_image_of_each_split_they_can(count):
    keys, labels = _keys({"a": count})
    for seed in range(30):
        split = splits.assign_splits(keys, labels, validation_split=0.1, test_split=0.1, seed=seed)
        wanted = {splits.TRAIN, splits.VALIDATION} | ({splits.TEST} if count >= 4 else set())
        assert wanted <= set(split), (seed, split)
        only_validation = splits.assign_splits(keys, labels, validation_split=0.1, seed=seed)
        assert {splits.TRAIN, splits.VALIDATION} == set(only_validation)


def test_bad_fractions_are_errors():
    with pytest.raises(ValueError, match=r"test_split must be in \[0, 1\), got 1.5"):
        splits.assign_splits(["a"], [0], test_split=1.5)
    with pytest.raises(ValueError, match="their sum must be below 1"):
        splits.assign_splits(["a"], [0], validation_split=0.5, test_split=0.5)


def _labels(dataset):
    return sorted(np.concatenate([y.numpy() for _, y in dataset]).tolist())


def test_test_split_is_held_out_stratified_and_disjoint(image_folder):
    root = image_folder({"ants": 12, "bees": 9}, size=(16, 16))
    files = data.list_dataset_folder(str(root), validation_split=0.2, test_split=0.25, seed=3)
    train, validation, test = (
        set(files.train_paths),
        set(files.validation_paths),
        set(files.test_paths),
    )
    assert not (train & validation or train & test or validation & test)
    assert len(train | validation | test) == 21
    assert set(files.test_labels) == set(files.validation_labels) == {0, 1}
    loaded = data.image_folder_dataset(
        root, image_size=16, batch_size=4, validation_split=0.2, test_split=0.25, seed=3
    )
    assert loaded.num_test == len(test) and _labels(loaded.test) == sorted(files.test_labels)
    assert loaded.num_train + loaded.num_validation + loaded.num_test == 21
    # Without test_split there is no test set, and the validation images are the same:
    # validation and test hold out opposite ends of the hash range.
    plain = data.list_dataset_folder(str(root), validation_split=0.2, seed=3)
    assert plain.test_paths == [] and set(plain.validation_paths) == validation


def test_adding_images_moves_no_image_between_splits(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, {"ants": 15, "bees": 15}, size=(8, 8))

    def assignment():
        files = data.list_dataset_folder(str(root), validation_split=0.2, test_split=0.2)
        named = zip(
            ("train", "validation", "test"),
            (files.train_paths, files.validation_paths, files.test_paths),
        )
        return {os.path.relpath(p, root): split for split, paths in named for p in paths}

    before = assignment()
    for name in ("ants", "bees"):
        extra = tf.io.encode_jpeg(tf.zeros((8, 8, 3), tf.uint8)).numpy()
        for i in range(10):
            (root / name / f"new_{i}.jpg").write_bytes(extra)
    after = assignment()
    assert len(after) == 50
    assert {name: after[name] for name in before} == before


def test_lone_minority_image_trains_and_the_warnings_name_the_class(image_folder):
    root = image_folder({"ants": 1, "bees": 28}, size=(8, 8))
    for seed in (0, 1, 2, 3):
        loaded = data.image_folder_dataset(
            root, image_size=8, batch_size=4, validation_split=0.2, test_split=0.2, seed=seed
        )
        assert loaded.class_counts[0] == 1  # the ant trains
        warnings = "\n".join(loaded.warnings)
        assert "1 of 2 classes have no validation images" in warnings and "'ants'" in warnings
        assert "1 of 2 classes have no test images" in warnings


def test_many_two_image_classes_all_train(image_folder):
    root = image_folder({f"c{i:02d}": 2 for i in range(40)}, size=(8, 8))
    files = data.list_dataset_folder(str(root), validation_split=0.2, seed=1)
    assert np.bincount(files.train_labels, minlength=40).min() == 1
    missing = 40 - len(set(files.validation_labels))
    assert any(f"{missing} of 40 classes have no validation images" in w for w in files.warnings)
    # No warning claims a class folder is empty: none is.
    assert not any("no training images" in w for w in files.warnings)


def test_a_held_out_split_that_drew_nothing_is_a_warning(image_folder):
    root = image_folder({"a": 2, "b": 2}, size=(8, 8))
    files = data.list_dataset_folder(str(root), validation_split=0.1, test_split=0.1, seed=0)
    assert files.validation_paths == [] and files.test_paths == []
    for split in ("validation", "test"):
        assert any(f"{split}_split drew no image" in w for w in files.warnings), split


def test_test_folder_beside_train_and_val(image_folder):
    image_folder({"a": 5, "b": 4}, subdir="train", size=(8, 8))
    image_folder({"a": 2, "b": 2}, subdir="val", size=(8, 8))
    root = image_folder({"a": 3, "b": 1}, subdir="test", size=(8, 8)).parent
    loaded = data.image_folder_dataset(root, image_size=8, batch_size=4)
    assert (loaded.num_train, loaded.num_validation, loaded.num_test) == (9, 4, 4)
    assert _labels(loaded.test) == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="there is a test folder .*test_split=0 to use"):
        data.image_folder_dataset(root, image_size=8, test_split=0.2)


def test_test_folder_beside_train_alone_holds_validation_out_of_train(image_folder):
    image_folder({"a": 10, "b": 10}, subdir="train", size=(8, 8))
    root = image_folder({"a": 2, "b": 3}, subdir="test", size=(8, 8)).parent
    files = data.list_dataset_folder(str(root), validation_split=0.25)
    assert files.directory == str(root / "train") and files.class_names == ["a", "b"]
    assert len(files.test_paths) == 5
    assert all(p.startswith(str(root / "train")) for p in files.validation_paths)
    assert set(files.validation_labels) == {0, 1}
    assert len(files.train_paths) + len(files.validation_paths) == 20


def test_explicit_test_dir_with_the_same_classes(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6}, size=(8, 8))
    test_dir = tmp_path / "held_out"
    write_image_folder(test_dir, {"a": 2, "b": 2}, size=(8, 8))
    loaded = data.image_folder_dataset(
        root,
        image_size=8,
        batch_size=3,
        validation_split=0.25,
        test_dir=test_dir,
        drop_remainder=True,
    )
    # drop_remainder drops no test image: every one of them is evaluated.
    assert loaded.num_test == 4 and _labels(loaded.test) == [0, 0, 1, 1]
    assert loaded.num_train + loaded.num_validation == 12
    write_image_folder(tmp_path / "other", {"a": 1, "c": 1}, size=(8, 8))
    with pytest.raises(ValueError, match=r"missing in test \['b'\], only in test \['c'\]"):
        data.image_folder_dataset(root, image_size=8, test_dir=tmp_path / "other")


def test_a_file_linked_into_train_and_test_is_an_error(image_folder):
    train = image_folder({"a": 3, "b": 3}, subdir="train", size=(8, 8))
    test = train.parent / "test"
    (test / "a").mkdir(parents=True)
    (test / "b").mkdir()
    os.symlink(train / "a" / "a_0.jpg", test / "a" / "linked.jpg")
    with pytest.raises(ValueError, match="both training and test images"):
        data.list_dataset_folder(str(train.parent))


def test_tfds_test_split_keeps_every_example():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        loaded = data.tfds_dataset(
            "tf_flowers",
            image_size=16,
            batch_size=5,
            train_split="train[:60%]",
            validation_split="train[60%:80%]",
            test_split="train[80%:]",
            drop_remainder=True,
        )
        # mock_data serves num_examples for every split; the test set keeps its partial batch.
        assert loaded.num_test == 12
        assert sum(int(tf.shape(x)[0]) for x, _ in loaded.test) == 12
        assert sum(int(tf.shape(x)[0]) for x, _ in loaded.validation) == 10
        without = data.tfds_dataset("tf_flowers", image_size=16, batch_size=4)
        assert without.test is None and without.num_test == 0
    with pytest.raises(ValueError, match="validation and test splits are both 'test'"):
        data.tfds_dataset("tf_flowers", validation_split="test", test_split="test")
