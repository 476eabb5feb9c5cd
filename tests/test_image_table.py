"""Images labelled by a table (`kt.image_table_dataset`, `keras-transfer train --labels_csv`):
each bad row named by its row number and reason, stable splits, the labels of each task, and
a run of the command from a CSV file."""

import csv
import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer.apps import config as config_lib
from keras_transfer.apps import image_classifier
from keras_transfer.apps import image_config
from keras_transfer.data import tables

# Colour of each class: the images are plain colours, so a label can be checked on its image.
COLOURS = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}


def write_image(path, colour, fmt="png", size=(12, 16)):
    """A plain-colour image file (PNG or JPEG) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = tf.constant(np.broadcast_to(np.uint8(colour), (*size, 3)).copy())
    encode = tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg
    path.write_bytes(encode(pixels).numpy())


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def data_rows(path):
    """The rows of a CSV file after its header."""
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


@pytest.fixture
def colour_table(tmp_path):
    """A factory: `colour_table({"red": 6, "green": 6})` writes that many images of each
    colour under `tmp_path/images/<colour>/` (JPEG every third) and a CSV `file,colour`;
    returns (csv path, image root)."""

    def make(counts, name="labels.csv"):
        root = tmp_path / "images"
        rows = []
        for colour, count in counts.items():
            for i in range(count):
                fmt = "jpeg" if i % 3 == 2 else "png"
                relative = f"{colour}/{i}.{'jpg' if fmt == 'jpeg' else 'png'}"
                write_image(root / relative, COLOURS[colour], fmt)
                rows.append([relative, colour])
        return write_csv(tmp_path / name, ["file", "colour"], rows), root

    return make


def batches(dataset):
    """All `(images, labels)` of a dataset as two arrays."""
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def dominant_channel(images):
    return images.mean(axis=(1, 2)).argmax(axis=-1)


def test_multiclass_labels_are_int32_class_indices_of_their_images(colour_table):
    labels_csv, root = colour_table({"red": 6, "green": 6, "blue": 6})
    data = kt.image_table_dataset(
        labels_csv, root, "file", "colour", image_size=8, batch_size=4, validation_split=0.25,
        test_split=0.2, shuffle=False,
    )  # fmt: skip
    assert data.task == "multiclass"
    assert data.class_names == ["blue", "green", "red"]
    assert data.num_train + data.num_validation + data.num_test == 18
    assert data.num_validation > 0 and data.num_test > 0
    assert sum(data.class_counts) == data.num_train and len(data.class_counts) == 3
    for split in (data.train, data.validation, data.test):
        images, labels = batches(split)
        assert images.dtype == np.float32 and images.shape[1:] == (8, 8, 3)
        assert labels.dtype == np.int32 and labels.ndim == 1
        # blue -> channel 2, green -> 1, red -> 0: each label is its image's colour.
        np.testing.assert_array_equal(dominant_channel(images), 2 - labels)


def test_each_bad_row_is_named_by_row_number_and_reason(colour_table, tmp_path):
    labels_csv, root = colour_table({"red": 3, "green": 3})
    write_image(root / "green" / "extra.png", COLOURS["green"])
    write_image(root / "red" / "extra.png", COLOURS["red"])
    rows = data_rows(labels_csv)
    rows += [
        ["red/missing.png", "red"],  # row 7
        ["red/0.png", "red"],  # row 8: again
        ["green/../green/1.png", "green"],  # row 9: the same file as row 5, once normalised
        ["/etc/passwd", "red"],  # row 10
        ["../outside.png", "red"],  # row 11
        ["green/extra.png", ""],  # row 12
        ["", "red"],  # row 13
        ["red/extra.png", "purple"],  # row 14: not one of `classes`
    ]
    bad_csv = write_csv(tmp_path / "bad.csv", ["file", "colour"], rows)
    with pytest.raises(kt.BadRowsError) as caught:
        kt.image_table_dataset(
            bad_csv, root, "file", "colour", classes=["green", "red"], image_size=8
        )
    message = str(caught.value)
    assert message.startswith("8 of 14 rows of label table")
    expected = {
        7: "no file 'red/missing.png' under image_root",
        8: "'red/0.png' is listed again: the same image as row 1 (line 2)",
        9: "the same image as row 5 (line 6)",
        10: "absolute path '/etc/passwd'",
        11: "path '../outside.png' leads out of image_root",
        12: "empty label cell 'colour'",
        13: "empty path cell",
        14: "unknown class 'purple'",
    }
    assert [row for row, _ in caught.value.rows] == list(expected)
    for row, reason in expected.items():
        assert f"row {row} (line {row + 1}): " in message
        assert reason in dict(caught.value.rows)[row]
    assert "bad_rows='skip'" in message


def test_bad_rows_skip_leaves_them_out_with_a_warning(colour_table, tmp_path, caplog):
    labels_csv, root = colour_table({"red": 3, "green": 3})
    rows = data_rows(labels_csv) + [["red/missing.png", "red"], ["x", ""]]
    bad_csv = write_csv(tmp_path / "bad.csv", ["file", "colour"], rows)
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        data = kt.image_table_dataset(
            bad_csv, root, "file", "colour", image_size=8, validation_split=0.0, bad_rows="skip"
        )
    assert data.num_train == 6
    assert data.skip_reasons == {
        "row 7 (line 8)": "no file 'red/missing.png' under image_root",
        "row 8 (line 9)": "no file 'x' under image_root",
    }
    assert any("Skipped 2 of 8 rows" in message for message in data.warnings)
    assert "Skipped 2 of 8 rows" in caplog.text


def test_an_undecodable_file_is_skipped_with_its_row(colour_table, tmp_path):
    labels_csv, root = colour_table({"red": 3, "green": 3})
    (root / "red" / "broken.png").write_bytes(b"not an image")
    rows = data_rows(labels_csv) + [["red/broken.png", "red"]]
    data = kt.image_table_dataset(
        write_csv(tmp_path / "more.csv", ["file", "colour"], rows), root, "file", "colour",
        image_size=8, validation_split=0.0,
    )  # fmt: skip
    assert data.num_train == 6
    ((path, reason),) = data.skip_reasons.items()
    assert path.endswith("broken.png")
    assert reason.startswith("row 7 (line 8): not a decodable image")


def test_non_numeric_regression_targets_are_bad_rows(colour_table, tmp_path):
    _, root = colour_table({"red": 2})
    rows = [["red/0.png", "1.5", "2"], ["red/1.png", "tall", "nan"]]
    table = write_csv(tmp_path / "targets.csv", ["file", "height", "age"], rows)
    with pytest.raises(kt.BadRowsError) as caught:
        kt.image_table_dataset(table, root, "file", "height,age", "regression", image_size=8)
    assert caught.value.rows == [(2, "'height' is 'tall', not a number")]
    rows[1] = ["red/1.png", "3", "inf"]
    table = write_csv(tmp_path / "targets.csv", ["file", "height", "age"], rows)
    with pytest.raises(kt.BadRowsError, match="row 2 .line 3.: 'age' is 'inf', not a finite"):
        kt.image_table_dataset(table, root, "file", "height,age", "regression", image_size=8)


def test_regression_targets_are_float32_vectors(colour_table, tmp_path):
    _, root = colour_table({"red": 4, "green": 4})
    paths = [
        f"{c}/{i}.{'jpg' if i % 3 == 2 else 'png'}" for c in ("red", "green") for i in range(4)
    ]
    targets = {path: (float(i), 10.0 * i) for i, path in enumerate(paths)}
    rows = [[path, *values] for path, values in targets.items()]
    table = write_csv(tmp_path / "targets.csv", ["file", "height", "age"], rows)
    files = kt.data.list_table_files(table, root, "file", ["height", "age"], "regression")
    assert files.class_names == ["height", "age"]
    for path, label in zip(
        files.train_paths + files.validation_paths, files.train_labels + files.validation_labels
    ):
        relative = path[len(str(root)) + 1 :]
        np.testing.assert_array_equal(label, np.float32(targets[relative]))
    data = kt.image_table_dataset(
        table, root, "file", ["height", "age"], "regression", image_size=8
    )
    _, labels = batches(data.train)
    assert labels.dtype == np.float32 and labels.shape == (data.num_train, 2)
    assert data.task == "regression" and data.class_counts is None


def multilabel_rows():
    """(relative path, colour list) of images whose colour mixes the listed colours."""
    combos = [["red"], ["green"], ["red", "blue"], ["green", "blue"], [], ["red", "green"]] * 2
    return [(f"mix/{i}.png", combo) for i, combo in enumerate(combos)]


def write_multilabel_images(root):
    for path, combo in multilabel_rows():
        colour = np.sum([COLOURS[c] for c in combo], axis=0) if combo else (0, 0, 0)
        write_image(root / path, np.clip(colour, 0, 255))


def test_multilabel_columns_and_delimited_names_give_the_same_labels(tmp_path):
    root = tmp_path / "images"
    write_multilabel_images(root)
    names = ["blue", "green", "red"]
    columns_rows = [[p, *[int(n in combo) for n in names]] for p, combo in multilabel_rows()]
    columns_csv = write_csv(tmp_path / "columns.csv", ["path", *names], columns_rows)
    data = kt.image_table_dataset(
        columns_csv, root, label_columns=names, task="multilabel", image_size=8,
        validation_split=0.25, shuffle=False,
    )  # fmt: skip
    assert data.task == "multilabel" and data.class_names == names
    images, labels = batches(data.train)
    assert labels.dtype == np.float32 and labels.shape == (data.num_train, 3)
    # Each label is 1 exactly where its colour's channel is lit.
    np.testing.assert_array_equal(labels, (images.mean(axis=(1, 2)) > 100)[:, ::-1])
    # The one-column form, without the negative image (an empty cell is an error there).
    named = [(p, ";".join(combo)) for p, combo in multilabel_rows() if combo]
    named_csv = write_csv(tmp_path / "named.csv", ["path", "labels"], named)
    by_columns = kt.data.list_table_files(columns_csv, root, "path", names, "multilabel")
    by_names = kt.data.list_table_files(named_csv, root, "path", "labels", "multilabel")
    assert by_names.class_names == names
    expected = dict(zip(by_columns.train_paths + by_columns.validation_paths,
                        by_columns.train_labels + by_columns.validation_labels))  # fmt: skip
    for path, label in zip(by_names.train_paths + by_names.validation_paths,
                           by_names.train_labels + by_names.validation_labels):  # fmt: skip
        np.testing.assert_array_equal(label, expected[path])


def test_multilabel_bad_cells_are_named(tmp_path):
    root = tmp_path / "images"
    write_multilabel_images(root)
    rows = [["mix/0.png", "1", "0"], ["mix/1.png", "2", "0"], ["mix/2.png", "1", ""]]
    table = write_csv(tmp_path / "t.csv", ["path", "red", "blue"], rows)
    with pytest.raises(kt.BadRowsError) as caught:
        kt.image_table_dataset(table, root, label_columns="red,blue", task="multilabel")
    assert caught.value.rows == [(2, "'red' is '2', not 0 or 1"), (3, "empty label cell 'blue'")]
    table = write_csv(tmp_path / "n.csv", ["path", "labels"], [["mix/0.png", ""]])
    with pytest.raises(kt.BadRowsError, match="row 1 .line 2.: empty label cell 'labels'"):
        kt.image_table_dataset(table, root, label_columns="labels", task="multilabel")


def test_splits_are_stable_when_rows_are_appended(colour_table, tmp_path):
    labels_csv, root = colour_table({"red": 20, "green": 20, "blue": 20})
    rows = data_rows(labels_csv)
    first = write_csv(tmp_path / "first.csv", ["file", "colour"], rows[::2])  # 30 rows
    settings = dict(validation_split=0.25, test_split=0.2, seed=5)
    before = kt.data.list_table_files(first, root, "file", "colour", **settings)
    after = kt.data.list_table_files(labels_csv, root, "file", "colour", **settings)
    for split in ("train", "validation", "test"):
        old, new = getattr(before, f"{split}_paths"), getattr(after, f"{split}_paths")
        assert old and set(old) <= set(new), split
    # The split of a row is the package's rule on its path: the folder loader's too.
    assert len(after.test_paths) > len(before.test_paths)


def test_a_dataframe_reads_like_its_csv(colour_table):
    pandas = pytest.importorskip("pandas")
    labels_csv, root = colour_table({"red": 4, "green": 4})
    frame = pandas.read_csv(labels_csv)
    from_csv = kt.data.list_table_files(labels_csv, root, "file", "colour")
    from_frame = kt.data.list_table_files(frame, root, "file", "colour")
    assert from_frame.train_paths == from_csv.train_paths
    assert from_frame.validation_labels == from_csv.validation_labels
    frame.loc[2, "colour"] = None
    with pytest.raises(kt.BadRowsError, match=r"row 3: empty label cell"):
        kt.data.list_table_files(frame, root, "file", "colour")


def test_bad_arguments_are_named(colour_table):
    labels_csv, root = colour_table({"red": 2, "green": 2})
    with pytest.raises(ValueError, match=r"no column\(s\) \['species'\]; its columns are"):
        kt.image_table_dataset(labels_csv, root, "file", "species")
    with pytest.raises(ValueError, match="task must be one of"):
        kt.image_table_dataset(labels_csv, root, "file", "colour", task="ranking")
    with pytest.raises(ValueError, match="mixup and cutmix"):
        kt.image_table_dataset(labels_csv, root, "file", "colour", "multilabel", augment="mixup")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        kt.image_table_dataset(root / "none.csv", root, "file", "colour")


@pytest.mark.slow  # ~30 s on 2 loaded cores: tracing MobileNet's training step
def test_a_multilabel_table_trains_a_sigmoid_head(tmp_path):
    root = tmp_path / "images"
    write_multilabel_images(root)
    names = ["blue", "green", "red"]
    rows = [[p, *[int(n in combo) for n in names]] for p, combo in multilabel_rows()]
    table = write_csv(tmp_path / "columns.csv", ["path", *names], rows)
    data = kt.image_table_dataset(
        table, root, label_columns=names, task="multilabel", image_size=32, batch_size=4
    )
    model = kt.create_classifier("mobilenet", data, weights=None, alpha=0.25)
    assert model.head.task == "multilabel" and model.output_shape == (None, 3)
    model.compile(optimizer="adam")
    history = model.fit(data.train, validation_data=data.validation, epochs=1, verbose=0)
    assert np.isfinite(history.history["val_loss"][0])


def test_the_command_takes_every_task_of_a_table():
    # What each task trains and reports: tests/test_table_tasks.py.
    for task in tables.TABLE_TASKS:
        config = image_config.Config(
            data_dir="x", model_dir="y", labels_csv="l.csv", label_columns="a,b", task=task
        )
        assert config.task == task
    with pytest.raises(config_lib.ConfigError, match="task must be one of"):
        image_config.Config(data_dir="x", model_dir="y", labels_csv="l.csv", task="ranking")


def test_the_command_trains_from_a_csv(colour_table, tmp_path, tiny_run_config):
    labels_csv, root = colour_table({"red": 8, "green": 8})
    model_dir = tmp_path / "run"
    config = tiny_run_config(
        root, model_dir, labels_csv=str(labels_csv), path_column="file", label_columns="colour",
        test_split=0.2,
    )  # fmt: skip
    results = image_classifier.run(config)
    written = json.loads((model_dir / "results.json").read_text())
    assert written["task"] == results["task"] == "multiclass"
    assert written["class_names"] == ["green", "red"]
    assert written["num_train"] + written["num_validation"] + written["num_test"] == 16
    assert written["config"]["labels_csv"] == str(labels_csv)
    assert (model_dir / "labels.txt").read_text().split() == ["green", "red"]
    model = kt.load_model(model_dir / "model.keras")
    assert model.output_shape == (None, 2)
    assert written["backend"] == keras.backend.backend()


def test_folder_data_is_multiclass(tiny_image_folder):
    data = kt.image_folder_dataset(tiny_image_folder, image_size=8)
    assert data.task == "multiclass"
    assert tables.TABLE_TASKS == ("multiclass", "multilabel", "regression")


def test_average_precision_and_the_multilabel_report():
    # Positives ranked 1st and 3rd: precisions 1 and 2/3 at the two recall steps.
    assert kt.diagnostics.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(
        (1 + 2 / 3) / 2
    )
    # Tied scores enter together: 1 positive of 2 at the one threshold.
    assert kt.diagnostics.average_precision([1, 0], [0.5, 0.5]) == 0.5
    assert kt.diagnostics.average_precision([0, 0], [0.5, 0.1]) is None
    labels = [[1, 0, 0], [0, 1, 0], [1, 1, 0]]
    scores = [[0.9, 0.2, 0.1], [0.6, 0.7, 0.3], [0.8, 0.4, 0.2]]
    report = kt.multilabel_report(labels, scores, ["cat", "dog", "bird"])
    cat, dog = report["per_label"]["cat"], report["per_label"]["dog"]
    assert cat["precision"] == pytest.approx(2 / 3) and cat["recall"] == 1.0
    assert cat["f1"] == pytest.approx(0.8) and cat["average_precision"] == 1.0
    assert dog["recall"] == 0.5 and dog["f1"] == pytest.approx(2 / 3)
    # bird has no positive: no average precision, and mAP averages cat and dog only.
    assert report["per_label"]["bird"]["average_precision"] is None
    assert report["mAP"] == pytest.approx((1.0 + dog["average_precision"]) / 2)


def test_the_regression_report():
    report = kt.regression_report([[1.0, 5.0], [3.0, 5.0]], [[2.0, 4.0], [3.0, 7.0]], ["a", "b"])
    assert report["per_target"]["a"] == pytest.approx({"mae": 0.5, "rmse": 0.5**0.5, "r2": 0.5})
    b = report["per_target"]["b"]
    assert b["mae"] == 1.5 and b["r2"] is None  # b is constant: R² is undefined
    assert report["mae"] == 1.0 and report["r2"] == 0.5


def test_evaluate_outputs_reports_a_regression_model(colour_table, tmp_path):
    _, root = colour_table({"red": 4, "green": 4})
    rows = [[f"{c}/{i}.{'jpg' if i % 3 == 2 else 'png'}", float(c == "red")]
            for c in ("red", "green") for i in range(4)]  # fmt: skip
    table = write_csv(tmp_path / "redness.csv", ["file", "redness"], rows)
    data = kt.image_table_dataset(
        table, root, "file", "redness", "regression", image_size=32, batch_size=4,
        validation_split=0.0,
    )  # fmt: skip
    model = kt.create_classifier("mobilenet", data, weights=None, alpha=0.25)
    assert model.head.task == "regression" and model.output_shape == (None, 1)
    unshuffled = data.train_unaugmented
    report = kt.diagnostics.evaluate_outputs(model, unshuffled, data.task, data.class_names)
    assert report["num_examples"] == 8 and set(report["per_target"]) == {"redness"}
    images, targets = batches(unshuffled)
    assert targets.shape == (8, 1) and sorted(targets[:, 0]) == [0.0] * 4 + [1.0] * 4
    errors = keras.ops.convert_to_numpy(model(images, training=False)) - targets
    assert report["mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-4)
    assert report["rmse"] == pytest.approx(np.sqrt((errors**2).mean()), rel=1e-4)
