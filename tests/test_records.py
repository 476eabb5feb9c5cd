"""TFRecord shards of an image dataset (`kt.data.write_records`, `kt.data.records_dataset`):
what is written, the same images, labels, splits and skip report as the folder loader, the
seeded order, the refusals, the command reading a records folder, and
benchmarks/input_pipeline.py --smoke."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

import keras_transfer as kt
from keras_transfer.apps import config as config_lib
from keras_transfer.apps import export_check
from keras_transfer.apps import image_config

SIZE = 32


def arrays(dataset):
    """All `(images, labels)` of a batched dataset, as two arrays, in its order."""
    images, labels = zip(*[(np.asarray(x), np.asarray(y)) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def as_set(images, labels):
    """Images and labels in an order that does not depend on the dataset's."""
    pairs = sorted((int(label), image.tobytes()) for image, label in zip(images, labels))
    return [label for label, _ in pairs], [image for _, image in pairs]


def test_write_records_writes_shards_and_a_manifest_of_the_folders_classes(image_folder, tmp_path):
    folder = image_folder({"ants": 7, "bees": 6, "wasps": 5})
    manifest = kt.data.write_records(folder, tmp_path / "records", shard_size=3, seed=5)
    files = kt.data.list_dataset_folder(str(folder), seed=5)

    assert manifest["class_names"] == files.class_names == ["ants", "bees", "wasps"]
    train, validation = manifest["splits"]["train"], manifest["splits"]["validation"]
    assert set(manifest["splits"]) == {"train", "validation"}  # no test split asked for
    assert train["count"] == len(files.train_paths) and train["count"] + validation["count"] == 18
    assert train["class_counts"] == np.bincount(files.train_labels).tolist()
    assert validation["class_counts"] == np.bincount(files.validation_labels).tolist()
    shards = math.ceil(train["count"] / 3)
    assert train["shards"] == [
        f"train/part-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)
    ]
    on_disk = sorted(os.listdir(tmp_path / "records" / "train"))
    assert on_disk == [name.split("/")[1] for name in train["shards"]]
    saved = json.loads((tmp_path / "records" / kt.data.MANIFEST_FILE).read_text())
    assert saved == json.loads(json.dumps(manifest))
    assert kt.data.is_records_folder(tmp_path / "records") and not kt.data.is_records_folder(folder)


def test_records_hold_the_folder_loaders_splits_labels_and_pixels(image_folder, tmp_path):
    folder = image_folder({"ants": 9, "bees": 8, "wasps": 7}, size=(40, 48))
    kt.data.write_records(
        folder, tmp_path / "records", shard_size=2, validation_split=0.3, test_split=0.2, seed=3
    )
    options = dict(image_size=SIZE, batch_size=4, seed=3)
    records = kt.data.records_dataset(tmp_path / "records", **options)
    images = kt.image_folder_dataset(folder, validation_split=0.3, test_split=0.2, **options)

    for name in ("class_names", "num_train", "num_validation", "num_test", "class_counts"):
        assert getattr(records, name) == getattr(images, name), name
    assert records.num_validation >= 3 and records.num_test >= 3  # several shards each
    # Validation and test come out in the folder loader's order, pixel for pixel: the same
    # decoder on the same bytes.
    for split in ("validation", "test"):
        got, want = arrays(getattr(records, split)), arrays(getattr(images, split))
        assert got[0].dtype == want[0].dtype == np.float32
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # The training images were written shuffled: the same images and labels, in another order.
    got, want = arrays(records.train_unaugmented), arrays(images.train_unaugmented)
    assert as_set(*got) == as_set(*want)
    assert not np.array_equal(got[1], want[1])
    assert as_set(*arrays(records.train)) == as_set(*want)


def order(data):
    """The training labels and a fingerprint of each image, in the order of one epoch."""
    images, labels = arrays(data.train)
    return labels.tolist(), images.sum(axis=(1, 2, 3)).round(3).tolist()


def test_training_order_is_set_by_the_seed_and_changes_every_epoch(image_folder, tmp_path):
    folder = image_folder({"ants": 12, "bees": 12})
    kt.data.write_records(folder, tmp_path / "records", shard_size=4, validation_split=0.0)

    def read(seed):
        return kt.data.records_dataset(tmp_path / "records", SIZE, 4, seed=seed)

    first = read(1)
    epoch_1, epoch_2 = order(first), order(first)
    assert order(read(1)) == epoch_1  # a new pipeline, the same seed: the same order
    assert order(read(1)) != order(read(2))
    assert epoch_2 != epoch_1  # shuffled again every epoch
    assert sorted(epoch_2[1]) == sorted(epoch_1[1])  # the same images


def test_bad_files_are_left_out_and_reported_with_their_reasons(image_folder, tmp_path):
    folder = image_folder({"ants": 5, "bees": 5})
    (folder / "ants" / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    (folder / "bees" / "empty.png").write_bytes(b"")
    (folder / "bees" / "scan.tif").write_bytes(b"II*\x00")
    manifest = kt.data.write_records(folder, tmp_path / "records", shard_size=3)
    data = kt.data.records_dataset(tmp_path / "records", SIZE, 4)

    reasons = {os.path.basename(path): reason for path, reason in data.skip_reasons.items()}
    assert reasons.keys() == {"broken.jpg", "empty.png", "scan.tif"}
    assert "not a decodable image" in reasons["broken.jpg"]
    assert "not a decodable image" in reasons["empty.png"]
    assert "TIFF" in reasons["scan.tif"]
    assert sorted(data.skipped) == sorted(manifest["skip_reasons"]) == sorted(data.skip_reasons)
    assert data.num_train + data.num_validation == 10  # only the good images were written
    assert any("Skipped 3 file(s)" in warning for warning in data.warnings)


def test_a_non_empty_out_dir_is_refused_unless_overwrite(image_folder, tmp_path):
    folder = image_folder({"ants": 6, "bees": 6})
    out = tmp_path / "records"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*overwrite=True"):
        kt.data.write_records(folder, out)
    assert sorted(os.listdir(out)) == ["notes.txt"]  # nothing written

    kt.data.write_records(folder, out, shard_size=2, overwrite=True, validation_split=0.0)
    assert len(os.listdir(out / "train")) == 6
    manifest = kt.data.write_records(folder, out, shard_size=100, overwrite=True)
    # The earlier shards are gone, the user's file stays.
    assert sorted(os.listdir(out / "train")) == ["part-00000-of-00001.tfrecord"]
    assert sorted(os.listdir(out)) == sorted(
        [kt.data.MANIFEST_FILE, "notes.txt", "train", "validation"]
    )
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["validation"]["count"] == 12
    with pytest.raises(ValueError, match="inside the image folder"):
        kt.data.write_records(folder, folder / "records")


def test_records_from_pairs_and_from_a_table_label_by_class_name(image_folder, tmp_path):
    folder = image_folder({"ants": 5, "bees": 4})
    paths = sorted(folder.rglob("*.jpg"))
    pairs = [(str(path), path.parent.name) for path in paths]
    missing, repeated = str(folder / "ants" / "gone.jpg"), pairs[0]
    manifest = kt.data.write_records(
        [*pairs, (missing, "ants"), repeated], tmp_path / "from_pairs", validation_split=0.0
    )
    assert manifest["class_names"] == ["ants", "bees"]
    assert manifest["splits"]["train"]["class_counts"] == [5, 4]
    assert manifest["skip_reasons"][missing] == "no such file"
    # The repeated pair is named by its number: its path names the image that is used.
    assert manifest["skip_reasons"][f"pair 11: {repeated[0]}"].startswith("listed again")
    assert repeated[0] not in manifest["skip_reasons"]
    indexed = [(path, ["ants", "bees"].index(label)) for path, label in pairs]
    manifest = kt.data.write_records(
        indexed, tmp_path / "from_indices", class_names=["ant", "bee"], validation_split=0.0
    )
    assert manifest["class_names"] == ["ant", "bee"]
    assert manifest["splits"]["train"]["class_counts"] == [5, 4]

    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "species"])
        for path in paths:
            writer.writerow([path.relative_to(folder).as_posix(), path.parent.name.upper()])
    manifest = kt.data.write_records(
        table, tmp_path / "from_table", image_root=folder, path_column="file",
        label_column="species", validation_split=0.0,
    )  # fmt: skip
    assert manifest["class_names"] == ["ANTS", "BEES"]
    assert manifest["splits"]["train"]["class_counts"] == [5, 4]
    data = kt.data.records_dataset(tmp_path / "from_table", SIZE, 4)
    assert data.class_names == ["ANTS", "BEES"] and data.validation is None
    with pytest.raises(ValueError, match="image_root"):
        kt.data.write_records(table, tmp_path / "no_root")


def test_an_incomplete_records_folder_names_the_missing_shard(image_folder, tmp_path):
    folder = image_folder({"ants": 6, "bees": 6})
    manifest = kt.data.write_records(folder, tmp_path / "records", shard_size=2)
    missing = manifest["splits"]["train"]["shards"][1]
    os.remove(tmp_path / "records" / missing)
    with pytest.raises(FileNotFoundError, match=f"lacks 1 shard.*{missing}.*overwrite=True"):
        kt.data.records_dataset(tmp_path / "records")
    with pytest.raises(FileNotFoundError, match="not a records folder"):
        kt.data.records_dataset(folder)


def test_records_folder_refuses_labels_csv_and_test_dir_and_export_checks(image_folder, tmp_path):
    folder = image_folder({"ants": 6, "bees": 6})
    kt.data.write_records(folder, tmp_path / "records")
    for setting in ({"test_dir": str(folder)}, {"labels_csv": str(tmp_path / "x.csv")}):
        if "labels_csv" in setting:
            (tmp_path / "x.csv").write_text("path,label\n")
        config = image_config.Config(
            data_dir=str(tmp_path / "records"), model_dir=str(tmp_path / "run"), **setting
        )
        with pytest.raises(config_lib.ConfigError, match="holds TFRecord shards"):
            image_config.check_config(config)
    with pytest.raises(ValueError, match="TFRecord shards.*--check_on=none"):
        export_check.run_files(str(tmp_path), config={"data_dir": str(tmp_path / "records")})


def command(*args, timeout=600):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(REPO_ROOT),
    )


def test_the_command_trains_from_a_records_folder(image_folder, tmp_path):
    folder = image_folder({"ants": 8, "bees": 8})
    kt.data.write_records(folder, tmp_path / "records", shard_size=3, validation_split=0.25)
    process = command(
        "-m", "keras_transfer", "train", f"--data_dir={tmp_path / 'records'}",
        f"--model_dir={tmp_path / 'run'}", "--backbone=mobilenet", "--weights=none",
        "--image_size=32", "--batch_size=4", "--head_epochs=1", "--fine_tune_epochs=1",
        "--unfreeze_blocks=2", "--plan=fixed", "--validation_split=0.25", "--verbose=0",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    folder_files = kt.data.list_dataset_folder(str(folder), validation_split=0.25)
    assert results["class_names"] == ["ants", "bees"]
    # The records' split is the folder loader's, with the same seed and fraction.
    assert results["num_train"] == len(folder_files.train_paths)
    assert results["num_validation"] == len(folder_files.validation_paths) > 0
    assert results["class_counts"] == np.bincount(folder_files.train_labels).tolist()
    assert len(results["history"]["epoch"]) == 2  # one head and one fine-tuning epoch
    assert (tmp_path / "run" / "labels.txt").read_text().split() == ["ants", "bees"]
    assert "does not apply to the records" not in process.stderr  # the same split


def test_input_pipeline_benchmark_smoke(tmp_path):
    output = tmp_path / "input_pipeline.json"
    process = command("benchmarks/input_pipeline.py", "--smoke", f"--output={output}")
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    assert set(summary) == {
        "folder_images_per_s", "records_images_per_s", "records_smaller_images_per_s",
        "records_raw_images_per_s",
        "keras_images_per_s", "peak_rss_mb",
    }  # fmt: skip
    record = json.loads(output.read_text())
    rounds = record["details"]["rounds"]
    assert len(rounds) == record["repeats"] == 2
    # Every arm read every image once per round; the arms' order rotates between rounds.
    for arm in ("folder", "records", "records_smaller", "records_raw", "keras"):
        assert [r[arm]["images"] for r in rounds] == [record["splits"]["train"]] * 2
        cpu = [1000 * r[arm]["cpu_seconds"] / r[arm]["images"] for r in rounds]
        assert record["arms"][arm]["cpu_ms_per_image"]["per_seed"] == pytest.approx(cpu)
        per_round = [r[arm]["images"] / r[arm]["seconds"] for r in rounds]
        assert record["arms"][arm]["images_per_second"]["per_seed"] == pytest.approx(per_round)
        assert summary[f"{arm}_images_per_s"] == pytest.approx(np.median(per_round))
    assert rounds[0]["order"] != rounds[1]["order"]
    assert record["details"]["data"]["records_smaller_shorter_side"] == 37  # 32 px / 0.875
    assert record["comparisons"][2] == ["records_raw", "folder"]
    # Pixels take more disk than the JPEGs of the same images at the same size.
    stored = record["details"]["data"]["bytes"]
    assert stored["records_raw"] > stored["records_smaller"]
    assert summary["peak_rss_mb"] > 100  # TensorFlow alone takes more
